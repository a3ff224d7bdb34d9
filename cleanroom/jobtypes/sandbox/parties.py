"""The ``sandbox`` parties: the node runs the approved bundle through its sandbox
service and releases vetted output at once, held output only after the holder
releases it; the coordinator collects the node's signed, vetted files."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import pandas as pd

from cleanroom.errors import ProtocolError, SandboxError
from cleanroom.jobtypes.base import (
    CoordinatorContext,
    NodeContext,
    check_node_statement,
)
from cleanroom.keys import sign_statement
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

    def start(self) -> list[Outbound]:
        try:
            outcome = self._host.execute(self._ctx)
        except SandboxError as exc:
            self._cpu_s = exc.cpu_s  # billed although the run failed
            raise
        self._outcome, self._cpu_s = outcome, outcome.cpu_s
        if outcome.status == "pass":
            return [self._release("vetting")]
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
            return [self._release("holder")]
        raise SandboxError(
            "the data holder rejected the output"
            + (f": {reason}" if reason else "")
            + " (vetting: "
            + "; ".join(self._outcome.reasons)
            + ")"
        )

    def _release(self, released_by: str) -> Outbound:
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
            "outputs": {
                name: hashlib.sha256(data).hexdigest()
                for name, data in sorted(outcome.outputs.items())
            },
        }
        payload = {
            "statement": statement,
            "signature": sign_statement(ctx.signing_key, statement),
            "files": {
                name: base64.b64encode(data).decode("ascii")
                for name, data in outcome.outputs.items()
            },
        }
        self._done = True
        return Outbound(COORDINATOR, STAGE_OUTPUT, json.dumps(payload).encode())

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


@dataclass
class _Collected:
    statement: dict[str, Any]
    signature: str
    outputs: dict[str, Any] = field(default_factory=dict)


class SandboxCoordinator(CoordinatorParty):
    """Collects the node's signed, vetted outputs; JSON parsed, CSV as records."""

    def __init__(self, ctx: CoordinatorContext) -> None:
        self._ctx = ctx
        self._collected: _Collected | None = None
        self._held = False

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        ctx = self._ctx
        if message.sender not in ctx.parties:
            raise ProtocolError(f"'{message.sender}' is not a party of this job")
        if message.stage == STAGE_HELD:
            # Only a progress notice: the job waits for the holder's decision.
            self._held = True
            return []
        if message.stage != STAGE_OUTPUT or self._collected is not None:
            raise ProtocolError(f"unexpected stage '{message.stage}'")
        try:
            report = json.loads(message.payload)
            statement, signature = report["statement"], report["signature"]
            files = {
                str(n): base64.b64decode(d, validate=True)
                for n, d in report["files"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProtocolError("malformed sandbox output") from exc
        statement = check_node_statement(
            ctx, message.sender, statement, signature, "sandbox output"
        )
        hashes = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
        if hashes != statement.get("outputs"):
            raise ProtocolError("sandbox output files do not match the signed hashes")
        collected = _Collected(statement, signature)
        for name, data in sorted(files.items()):
            collected.outputs[name] = _readable(name, data)
        self._collected = collected
        return []

    @property
    def finished(self) -> bool:
        return self._collected is not None

    def waiting_for(self) -> frozenset[str]:
        # Held output waits for a person: no deadline applies to that.
        held = self._held or self._collected is not None
        return frozenset() if held else frozenset(self._ctx.parties)

    def progress(self) -> Progress:
        if self._held and self._collected is None:
            return Progress(stage="output held for the holder's review")
        return Progress(
            stage="running", expected=1, heard=int(self._collected is not None)
        )

    def result(self) -> Mapping[str, Any]:
        collected = self._collected
        if collected is None:
            raise ProtocolError("the node has not released any output")
        statement = collected.statement
        return {
            "node": statement["node"],
            "dataset": statement["dataset"],
            "bundle_digest": statement["bundle_digest"],
            "image": statement["image"],
            "runner": statement["runner"],
            "released_by": statement["released_by"],
            "vetting": statement["vetting"],
            "outputs": collected.outputs,
            "attestations": [
                {
                    "node": statement["node"],
                    "statement": statement,
                    "signature": collected.signature,
                }
            ],
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
