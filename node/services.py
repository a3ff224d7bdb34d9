"""Job types' node-side services: built once when the node starts, each with a
``NodeEnvironment`` of narrow views onto this node's audit log, datasets and policy."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from cleanroom import jobtypes
from cleanroom.audit.log import AuditLog
from cleanroom.catalog import AssetInfo, DatasetInfo
from cleanroom.errors import ConfigError
from cleanroom.jobtypes.hooks import NodeEnvironment
from cleanroom.localdb import LocalDatabase
from node.config import NodeConfig
from node.datasets import DatasetRegistry
from node.policy import PolicySet
from protocols.party import LocalEvent

log = logging.getLogger(__name__)


class Datasets:
    """``DatasetAccess`` over the node's registry (every use re-checks the file)."""

    def __init__(self, registry: DatasetRegistry) -> None:
        self._registry = registry

    def info(self, name: str) -> DatasetInfo:
        return self._registry.fresh(name).info

    def frame(self, name: str) -> pd.DataFrame:
        return self._registry.fresh(name).frame

    def names(self) -> list[str]:
        return self._registry.names()


class Policies:
    """``PolicyAccess`` over the node's policy set."""

    def __init__(self, policy: PolicySet, registry: DatasetRegistry) -> None:
        self._policy = policy
        self._registry = registry

    def permitted_columns(self, dataset: str) -> list[str]:
        policy = self._policy.for_dataset(dataset)
        return [
            name
            for name in self._registry.fresh(dataset).info.column_names()
            if name not in policy.columns_forbidden
            and policy.columns_allowed.permits(name)
        ]

    def min_group_size(self, dataset: str) -> int:
        return self._policy.for_dataset(dataset).min_group_size

    def job_type_rules(self, dataset: str, job_type: str) -> Mapping[str, Any]:
        return self._policy.for_dataset(dataset).rules_for(job_type)


def build_services(
    config: NodeConfig,
    *,
    audit: AuditLog,
    datasets: DatasetRegistry,
    policy: PolicySet,
    db: LocalDatabase,
    notify: Callable[[str, LocalEvent], None],
) -> dict[str, Any]:
    """Every registered job type's node service, by job-type name."""
    unknown = sorted(set(config.jobtypes) - set(jobtypes.names()))
    if unknown:
        raise ConfigError(
            f"node config: [jobtypes.{unknown[0]}] names no known job type "
            f"(known: {', '.join(jobtypes.names())})"
        )
    services: dict[str, Any] = {}
    for job_type in jobtypes.all_types():
        env = NodeEnvironment(
            node=config.name,
            data_dir=config.data_dir,
            settings=config.jobtypes.get(job_type.name, {}),
            audit=audit,
            datasets=Datasets(datasets),
            policy=Policies(policy, datasets),
            db=db,
            notify=notify,
        )
        service = job_type.node_service(env)
        if service is not None:
            services[job_type.name] = service
    return services


def catalog_assets(services: dict[str, Any]) -> list[AssetInfo]:
    """What the services offer beside datasets, for the catalog (metadata only)."""
    found: list[AssetInfo] = []
    for service in services.values():
        listing = getattr(service, "catalog_assets", None)
        if listing is not None:
            found.extend(listing())
    return found


def poll(services: dict[str, Any]) -> None:
    """Give every service that polls (e.g. for the holder's decisions) its turn."""
    for name, service in services.items():
        step = getattr(service, "poll", None)
        if step is None:
            continue
        try:
            step()
        except Exception:  # one service must not stop the others
            log.exception("the %s service's poll failed", name)
