"""The job-type interface and registry: each protocol adds its type without
touching the scheduler, the node or the CLI."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom.catalog import DatasetInfo
from cleanroom.errors import ConfigError, InvalidSignature, ProtocolError, SpecError
from cleanroom.jobspec import JobInput, JobSpec
from cleanroom.keys import verify_statement
from protocols.party import (
    SYSTEM_RANDOM,
    CoordinatorParty,
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
    RandomSource,
)


@dataclass(frozen=True)
class NodeContext:
    """Everything a node-side party may use: its own dataset and keys, nothing else."""

    job_id: str
    spec: JobSpec
    node: str
    dataset: str
    data: pd.DataFrame
    dataset_hash: str
    min_group_size: int
    signing_key: Ed25519PrivateKey
    parties: tuple[str, ...]
    peer_signing_keys: Mapping[str, bytes]
    random: RandomSource = SYSTEM_RANDOM
    services: Mapping[str, Any] = field(default_factory=dict)
    """Node-side services a job type needs by name (e.g. ``sandbox``)."""


@dataclass(frozen=True)
class CoordinatorContext:
    """What the coordinator's party may use: public keys and the spec, never data."""

    job_id: str
    spec: JobSpec
    parties: tuple[str, ...]
    signing_keys: Mapping[str, bytes]
    random: RandomSource = SYSTEM_RANDOM
    extra: Mapping[str, Any] = field(default_factory=dict)


def check_node_statement(
    ctx: CoordinatorContext,
    sender: str,
    statement: object,
    signature: object,
    what: str,
) -> dict[str, Any]:
    """A node's signed statement about its part of this job, checked: it must name
    this job, its spec, the sender and the sender's dataset, and be signed by the
    sender's identity key. ``what`` names the report in the errors."""
    expected = {
        "job_id": ctx.job_id,
        "spec_hash": ctx.spec.spec_hash,
        "node": sender,
        "dataset": ctx.spec.input_for(sender).dataset,
    }
    if not isinstance(statement, dict) or any(
        statement.get(k) != v for k, v in expected.items()
    ):
        raise ProtocolError(f"{what} is for another job, node or dataset")
    try:
        verify_statement(ctx.signing_keys[sender], statement, str(signature))
    except InvalidSignature:
        raise ProtocolError(f"{what} from '{sender}' is not signed by it") from None
    return statement


class OneShotNode(NodeParty):
    """A node party that sends one report in ``start`` and is then done."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._done = False

    @abstractmethod
    def report(self) -> Outbound:
        """The node's one message."""

    def start(self) -> list[Outbound]:
        out = self.report()
        self._done = True
        return [out]

    def receive(self, message: Inbound) -> list[Outbound]:
        raise ProtocolError(
            f"{type(self).__name__} expects no messages, got stage '{message.stage}'"
        )

    @property
    def finished(self) -> bool:
        return self._done

    def usage(self) -> NodeUsage:
        return NodeUsage(rows_touched=len(self._ctx.data))


class JobType(ABC):
    """A kind of job: how its spec is checked and which parties run it."""

    name: ClassVar[str]
    summary: ClassVar[str]
    units: ClassVar[tuple[str, ...]] = ()
    """Usage units this job type meters beyond jobs and rows (e.g. ``lookups``)."""
    min_inputs: ClassVar[int] = 1

    def validate(self, spec: JobSpec, catalog: Mapping[JobInput, DatasetInfo]) -> None:
        """Check ``spec.params`` against the inputs' schemas; SpecError has the path."""
        if len(spec.inputs) < self.min_inputs:
            raise SpecError(
                "inputs", f"'{self.name}' needs at least {self.min_inputs} inputs"
            )
        self.validate_params(spec, catalog)

    @abstractmethod
    def validate_params(
        self, spec: JobSpec, catalog: Mapping[JobInput, DatasetInfo]
    ) -> None:
        """Job-type specific checks of ``params``."""

    @abstractmethod
    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        """Every column the job reads, for the node's column policy."""

    def epsilon(self, spec: JobSpec) -> tuple[float, float]:
        """The (epsilon, delta) the job spends on each input; (0, 0) without DP."""
        return (0.0, 0.0)

    def estimate_units(self, spec: JobSpec, rows: int) -> Mapping[str, float]:
        """The declared units the job will consume on a dataset of ``rows`` rows."""
        return {}

    @abstractmethod
    def node_party(self, ctx: NodeContext) -> NodeParty:
        """The data holder's state machine."""

    @abstractmethod
    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        """The coordinator's state machine, which assembles the released result."""


_REGISTRY: dict[str, JobType] = {}


def register(job_type: JobType) -> JobType:
    """Add a job type; later registrations of the same name are refused."""
    if job_type.name in _REGISTRY:
        raise ValueError(f"job type '{job_type.name}' is already registered")
    _REGISTRY[job_type.name] = job_type
    return job_type


def _load_plugins() -> None:
    for ep in entry_points(group="cleanroom.job_types"):
        if ep.name not in _REGISTRY:
            register(ep.load()())


def load_plugins(modules: Sequence[str]) -> None:
    """Import modules named in a config; each registers its job types on import."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"cannot load job-type plugin '{module}': {exc}"
            ) from None


def get(name: str) -> JobType:
    """The registered job type; SpecError naming the known types otherwise."""
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise SpecError(
            "type", f"unknown job type '{name}' (known: {', '.join(names())})"
        )
    return _REGISTRY[name]


def names() -> list[str]:
    return sorted(_REGISTRY)
