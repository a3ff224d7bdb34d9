"""The ``psi`` job's parties: each node runs a :mod:`protocols.psi` party whose
messages to its peers the executor seals node to node; once its part is done a
node keeps its output (``store``) and seals a signed report to the analyst, with
a salted commitment for the coordinator, which never sees a key or a tag."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cleanroom.errors import ConfigError, ProtocolError
from cleanroom.jobtypes.base import AnalystContext, CoordinatorContext, NodeContext
from cleanroom.jobtypes.lookup.service import cell_text
from cleanroom.jobtypes.psi import store
from cleanroom.jobtypes.psi.params import PsiParams
from cleanroom.jobtypes.sealing import (
    CommitmentCoordinator,
    ReportsAnalyst,
    attest_commitment,
    seal_report,
)
from cleanroom.localdb import LocalDatabase
from protocols.party import (
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
)
from protocols.psi import BatchRunner, ProcessRunner, psi_party
from protocols.psi.group import SERIAL

REPORT: Final = "psi/report"


@dataclass(frozen=True)
class PsiSettings:
    """The node config's ``[jobtypes.psi]``: the output modes this holder allows,
    the largest set it takes part with, processes for the group operations, and
    whether receivers tell the analyst the intersection's size."""

    outputs: tuple[str, ...] = ("intersection", "cardinality", "aligned")
    max_items: int = 1 << 24
    workers: int = 1
    report_cardinality: bool = True

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> PsiSettings:
        allowed = ("outputs", "max_items", "workers", "report_cardinality")
        extra = sorted(set(raw) - set(allowed))
        if extra:
            raise ConfigError(f"jobtypes.psi: unknown setting '{extra[0]}'")
        outputs = tuple(raw.get("outputs", cls.outputs))
        if any(o not in cls.outputs for o in outputs):
            raise ConfigError(f"jobtypes.psi.outputs: a list of {cls.outputs}")
        for name in ("max_items", "workers"):
            value = raw.get(name, getattr(cls, name))
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"jobtypes.psi.{name}: must be a positive integer")
        report = raw.get("report_cardinality", True)
        if not isinstance(report, bool):
            raise ConfigError("jobtypes.psi.report_cardinality: must be a boolean")
        return cls(
            outputs, int(raw.get("max_items", cls.max_items)),
            int(raw.get("workers", 1)), report,
        )  # fmt: skip


@dataclass(frozen=True)
class PsiService:
    """A node's PSI settings and where outputs are kept."""

    settings: PsiSettings
    db: LocalDatabase

    def runner(self) -> BatchRunner:
        workers = self.settings.workers
        return SERIAL if workers == 1 else ProcessRunner(workers)

    def result(self, job_id: str, dataset: str) -> store.StoredResult:
        """What a PSI job left here (the holder's view; never sent anywhere)."""
        return store.load(self.db, job_id, dataset)


class PsiNode(NodeParty):
    """One holder's PSI party, then its stored output and sealed report."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        params: PsiParams = ctx.params
        self._params = params
        service: PsiService = ctx.service
        self._service = service
        if params.output not in service.settings.outputs:
            raise ProtocolError(f"this holder does not allow '{params.output}' output")
        if params.max_items > service.settings.max_items:
            raise ProtocolError(
                f"params.max_items exceeds this holder's {service.settings.max_items}"
            )
        self._config = params.config(ctx.job_id, [i.node for i in ctx.spec.inputs])
        frame = ctx.data[list(params.column_names)]
        rows = [tuple(map(cell_text, r)) for r in frame.itertuples(False, None)]
        self._runner = service.runner()
        # Normalises, deduplicates and refuses blanks and a set above max_items,
        # before any group operation.
        self._psi = psi_party(
            self._config, ctx.node, rows, random=ctx.random, runner=self._runner
        )
        self._digest: str | None = None

    def start(self) -> list[Outbound]:
        return self._after(self._psi.start())

    def receive(self, message: Inbound) -> list[Outbound]:
        return self._after(self._psi.receive(message))

    def _after(self, out: list[Outbound]) -> list[Outbound]:
        if not self._psi.finished or self._digest is not None:
            return out
        self._close_runner()
        ctx = self._ctx
        receiver = self._psi.is_receiver
        cardinality: int | None = None
        stored = False
        if receiver:
            output = self._psi.output()
            if self._service.settings.report_cardinality:
                cardinality = output.cardinality
            if output.rows is not None:
                store.save(
                    self._service.db,
                    store.StoredResult(
                        ctx.job_id,
                        ctx.dataset,
                        ctx.dataset_hash,
                        self._params.output,
                        output.rows,
                    ),
                )
                stored = True
        statement: dict[str, Any] = {
            "job_id": ctx.job_id,
            "spec_hash": ctx.spec.spec_hash,
            "node": ctx.node,
            "dataset": ctx.dataset,
            "dataset_hash": ctx.dataset_hash,
            "output": self._params.output,
            "receiver": receiver,
            "cardinality": cardinality,
            "stored": stored,
        }
        sealed, self._digest = seal_report(ctx, REPORT, statement)
        return out + sealed

    def _close_runner(self) -> None:
        if isinstance(self._runner, ProcessRunner):
            self._runner.close()

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        peers = parties & set(self._config.parties)
        if not peers:
            return []  # the analyst only reads the report; the PSI goes on
        try:
            return self._psi.dropped(peers)
        finally:
            self._close_runner()

    @property
    def finished(self) -> bool:
        return self._digest is not None

    def usage(self) -> NodeUsage:
        return NodeUsage(rows_touched=len(self._ctx.data))

    def attest(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        if self._digest is None:
            raise ProtocolError("this node has not reported")
        return attest_commitment(self._ctx.node, self._digest, result)


class PsiCoordinator(CommitmentCoordinator):
    """Relays sealed PSI traffic (it never sees it) and keeps the commitments."""

    def __init__(self, ctx: CoordinatorContext) -> None:
        super().__init__(ctx, REPORT)


class PsiAnalyst(ReportsAnalyst):
    """Opens the nodes' reports: who received what, and the size if reported."""

    def __init__(self, ctx: AnalystContext) -> None:
        super().__init__(ctx, REPORT)

    def finalize(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        reports = self._opener.open(result)
        nodes = [
            {
                "node": node,
                "dataset": reports[node].statement["dataset"],
                "receiver": reports[node].statement["receiver"],
                "cardinality": reports[node].statement["cardinality"],
                "stored": reports[node].statement["stored"],
            }
            for node in self._ctx.parties
        ]
        sizes = {n["cardinality"] for n in nodes if n["cardinality"] is not None}
        if len(sizes) > 1:
            raise ProtocolError("the receivers report different intersection sizes")
        return {
            **result,
            "output": self._ctx.params.output,
            "cardinality": sizes.pop() if sizes else None,
            "nodes": nodes,
            "reports": [reports[n].to_json() for n in self._ctx.parties],
        }
