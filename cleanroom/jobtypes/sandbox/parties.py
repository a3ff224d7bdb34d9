"""The ``sandbox`` parties: the node runs the approved bundle through its sandbox
service and releases vetted output at once, held output only after the holder
releases it; the coordinator collects the node's signed, vetted files."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import pandas as pd

from cleanroom.errors import ProtocolError, SandboxError
from cleanroom.jobtypes.base import AnalystContext, CoordinatorContext, NodeContext
from cleanroom.jobtypes.sealing import (
    CommitmentCollector,
    ReportsAnalyst,
    attest_commitment,
    seal_report,
)
from protocols.party import (
    COORDINATOR,
    CoordinatorParty,
    Inbound,
    LocalEvent,
    NodeParty,
    NodeUsage,
    Outbound,
    Progress,
)

STAGE_OUTPUT: Final = "sandbox.output"
STAGE_HELD: Final = "sandbox.output_held_for_holder_review"
HOLDER_DECIDED: Final = "sandbox.holder_decided"
"""The local event once the holder decided on held output; the decision itself is
read from the node's own records."""
CPU_UNIT: Final = "sandbox_cpu_seconds"


@dataclass(frozen=True)
class SandboxOutcome:
    """What the node's sandbox service made of one run.

    ``pass``: ``outputs`` are the vetted, cleaned files. ``held``: vetting found
    ``reasons``; ``outputs`` are what would be released if the holder releases
    them anyway.
    """

    status: Literal["pass", "held"]
    outputs: Mapping[str, bytes]
    reasons: tuple[str, ...]
    digest: str
    image: str
    runner: str
    cpu_s: float


class SandboxHost(Protocol):
    """The node-side service a sandbox party needs (``service.SandboxService``)."""

    def execute(self, ctx: NodeContext) -> SandboxOutcome:
        """Verify the approved digest, run the code, vet its output."""
        ...

    def output_decision(self, job_id: str) -> tuple[str, str] | None:
        """``("released" | "rejected", reason)`` once the holder decided, else None."""
        ...


class SandboxNode(NodeParty):
    """Runs the approved bundle through the node's sandbox service; releases
    vetted output at once, held output only after the holder releases it."""

    def __init__(self, ctx: NodeContext) -> None:
        host = ctx.service
        if host is None:
            raise SandboxError("this node offers no sandbox service")
        self._ctx = ctx
        self._host: SandboxHost = host
        self._outcome: SandboxOutcome | None = None
        self._cpu_s = 0.0
        self._done = False
        self._digest: str | None = None

    def start(self) -> list[Outbound]:
        try:
            outcome = self._host.execute(self._ctx)
        except SandboxError as exc:
            self._cpu_s = exc.cpu_s  # billed although the run failed
            raise
        self._outcome, self._cpu_s = outcome, outcome.cpu_s
        if outcome.status == "pass":
            return self._release("vetting")
        notice = json.dumps({"reasons": list(outcome.reasons)}).encode()
        return [Outbound(COORDINATOR, STAGE_HELD, notice)]

    def receive(self, message: Inbound) -> list[Outbound]:
        raise ProtocolError(f"sandbox expects no message at stage '{message.stage}'")

    def local_event(self, event: LocalEvent) -> list[Outbound]:
        if event.kind != HOLDER_DECIDED or self._outcome is None or self._done:
            raise ProtocolError(f"sandbox expects no event '{event.kind}' now")
        decision = self._host.output_decision(self._ctx.job_id)
        if decision is None:
            return []
        verdict, reason = decision
        if verdict == "released":
            return self._release("holder")
        raise SandboxError(
            "the data holder rejected the output"
            + (f": {reason}" if reason else "")
            + " (vetting: "
            + "; ".join(self._outcome.reasons)
            + ")"
        )

    def _release(self, released_by: str) -> list[Outbound]:
        ctx, outcome = self._ctx, self._outcome
        assert outcome is not None
        statement = {
            "job_id": ctx.job_id,
            "spec_hash": ctx.spec.spec_hash,
            "node": ctx.node,
            "dataset": ctx.dataset,
            "dataset_hash": ctx.dataset_hash,
            "bundle_digest": outcome.digest,
            "image": outcome.image,
            "runner": outcome.runner,
            "released_by": released_by,
            "vetting": list(outcome.reasons),
            "files": {
                name: base64.b64encode(data).decode("ascii")
                for name, data in sorted(outcome.outputs.items())
            },
        }
        out, self._digest = seal_report(ctx, STAGE_OUTPUT, statement)
        self._done = True
        return out

    def attest(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        assert self._digest is not None
        return attest_commitment(self._ctx.node, self._digest, result)

    @property
    def finished(self) -> bool:
        return self._done

    def progress(self) -> Progress:
        if self._outcome is not None and not self._done:
            return Progress(stage="waiting for the holder's review of the output")
        return Progress(stage="running the code")

    def usage(self) -> NodeUsage:
        ran = self._outcome is not None or self._cpu_s > 0
        return NodeUsage(
            rows_touched=len(self._ctx.data) if ran else 0,
            units={CPU_UNIT: self._cpu_s},
        )


class SandboxCoordinator(CoordinatorParty):
    """Relays: it learns that output was held, and a commitment to the sealed
    output, never the output itself."""

    def __init__(self, ctx: CoordinatorContext) -> None:
        self._ctx = ctx
        self._collector = CommitmentCollector(ctx, STAGE_OUTPUT)
        self._held = False

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        if message.sender not in self._ctx.parties:
            raise ProtocolError(f"'{message.sender}' is not a party of this job")
        if message.stage == STAGE_HELD:
            # Only a progress notice: the job waits for the holder's decision.
            self._held = True
            return []
        self._collector.receive(message)
        return []

    @property
    def finished(self) -> bool:
        return self._collector.finished

    def waiting_for(self) -> frozenset[str]:
        # Held output waits for a person: no deadline applies to that.
        return frozenset() if self._held else self._collector.waiting_for()

    def progress(self) -> Progress:
        if self._held and not self.finished:
            return Progress(stage="output held for the holder's review")
        return self._collector.progress()

    def result(self) -> Mapping[str, Any]:
        return {**self._collector.result(), "held_for_review": self._held}


class SandboxAnalyst(ReportsAnalyst):
    """Opens the node's sealed, signed outputs."""

    def __init__(self, ctx: AnalystContext) -> None:
        super().__init__(ctx, STAGE_OUTPUT)

    def finalize(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        (report,) = self._opener.open(result).values()
        statement = report.statement
        try:
            files = {
                str(n): base64.b64decode(d, validate=True)
                for n, d in statement["files"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProtocolError("malformed sandbox output") from exc
        return {
            **result,
            "node": statement["node"],
            "dataset": statement["dataset"],
            "bundle_digest": statement["bundle_digest"],
            "image": statement["image"],
            "runner": statement["runner"],
            "released_by": statement["released_by"],
            "vetting": statement["vetting"],
            "outputs": {n: _readable(n, d) for n, d in sorted(files.items())},
            "reports": [report.to_json()],
        }


def _readable(name: str, data: bytes) -> Any:
    """A released file as the analyst gets it: JSON parsed, CSV records, else text."""
    lower = name.lower()
    try:
        if lower.endswith(".json"):
            return json.loads(data.decode("utf-8"))
        if lower.endswith(".csv"):
            frame = pd.read_csv(io.BytesIO(data))
            return json.loads(frame.to_json(orient="records", double_precision=15))
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError):
        pass
    return data.decode("utf-8", errors="replace")
