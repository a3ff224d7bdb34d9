"""Runs the vertical job types' real node parties in one process (no federation):
a message queue between them, an optional tamper hook on what one party sends."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom import jobtypes
from cleanroom.catalog import ColumnInfo, DatasetInfo
from cleanroom.jobspec import parse_spec
from cleanroom.jobtypes.hooks import NodeEnvironment
from cleanroom.jobtypes.vertical.service import VerticalService
from cleanroom.localdb import LocalDatabase
from protocols.party import ANALYST, COORDINATOR, Inbound, NodeParty, Outbound

Tamper = Callable[[Outbound], Outbound]
Observer = Callable[[str, Outbound], None]


class _Datasets:
    def __init__(self, name: str, frame: pd.DataFrame, id_column: str) -> None:
        cols = tuple(ColumnInfo(c, "float") for c in frame.columns)
        self._info = DatasetInfo(name, cols, "<100", id_column=id_column)
        self._frame = frame

    def info(self, name: str) -> DatasetInfo:
        return self._info

    def frame(self, name: str) -> pd.DataFrame:
        return self._frame

    def names(self) -> list[str]:
        return [self._info.name]


class _Policy:
    def __init__(self, columns: list[str], min_group: int) -> None:
        self._columns = columns
        self._min_group = min_group

    def permitted_columns(self, dataset: str) -> list[str]:
        return self._columns

    def min_group_size(self, dataset: str) -> int:
        return self._min_group


class _Audit:
    def append(
        self, kind: str, *, job_id: str | None = None, data: dict[str, Any]
    ) -> Any:
        return None


def environment(
    node: str,
    frame: pd.DataFrame,
    settings: Mapping[str, Any],
    root: Path,
    id_column: str = "customer_id",
    min_group: int = 5,
) -> NodeEnvironment:
    """A node's environment over one in-memory dataset, every column permitted."""
    return NodeEnvironment(
        node=node,
        data_dir=root / node,
        settings=settings,
        audit=_Audit(),
        datasets=_Datasets(node, frame, id_column),
        policy=_Policy(list(frame.columns), min_group),
        db=LocalDatabase(root / node / "local.db"),
    )


def node_parties(
    spec_yaml: str,
    frames: Mapping[str, pd.DataFrame],
    settings: Mapping[str, Mapping[str, Any]],
    root: Path,
    *,
    id_column: str = "customer_id",
) -> dict[str, NodeParty]:
    spec = parse_spec(spec_yaml)
    job = jobtypes.get(spec.type)
    keys = {n: Ed25519PrivateKey.generate() for n in frames}
    parties: dict[str, NodeParty] = {}
    for node, frame in frames.items():
        env = environment(node, frame, settings.get(node, {}), root, id_column)
        service: VerticalService = job.node_service(env)
        ctx = jobtypes.NodeContext(
            job_id="job-" + "ab" * 12,
            spec=spec,
            node=node,
            dataset=node,
            data=frame,
            dataset_hash="h-" + node,
            min_group_size=5,
            signing_key=keys[node],
            parties=spec.nodes,
            peer_signing_keys={},
            service=service,
        )
        parties[node] = job.node_party(ctx)
    return parties


def run(
    parties: Mapping[str, NodeParty],
    tamper: Tamper = lambda o: o,
    observe: Observer = lambda sender, o: None,
) -> None:
    """Deliver every node-to-node message until every party has finished;
    ``observe`` sees every message sent (to the coordinator and analyst too)."""
    queue: deque[tuple[str, Outbound]] = deque()
    for name, party in parties.items():
        queue.extend((name, o) for o in party.start())
    while queue:
        sender, out = queue.popleft()
        observe(sender, out)
        if out.recipient in (COORDINATOR, ANALYST):
            continue
        out = tamper(out)
        got = parties[out.recipient].receive(Inbound(sender, out.stage, out.payload))
        queue.extend((out.recipient, o) for o in got)
