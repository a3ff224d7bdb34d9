"""Reports sealed to the analyst: a node's signed statement travels to the analyst
in an envelope only the analyst can open, and the coordinator gets a salted
commitment to it — enough to bind the release, nothing it could guess a value
from (the 32-byte salt goes only to the analyst).

    node:        Outbound(ANALYST, stage, sealed {statement, signature, salt})
                 Outbound(COORDINATOR, stage + "/commitment", digest)
    coordinator: releases {"commitments": {node: digest}} — nodes attest theirs
    analyst:     opens the reports, checks every signature and commitment

``commitment(salt, statement)`` = SHA-256("cleanroom/sealed-report/v1" | salt |
canonical JSON of the statement). Anyone holding an opened report can recompute
it and check it against the document every node signed (``cleanroom.opened``
replays the analyst party to do so).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cleanroom.errors import InvalidSignature, ProtocolError
from cleanroom.jobtypes.base import AnalystContext, CoordinatorContext, NodeContext
from cleanroom.keys import canonical_json, sign_statement, verify_statement
from protocols.party import (
    ANALYST,
    COORDINATOR,
    AnalystParty,
    CoordinatorParty,
    Inbound,
    Outbound,
    Progress,
)

_DOMAIN: Final = b"cleanroom/sealed-report/v1\x00"
COMMITMENT: Final = "/commitment"
MAX_REPORT_BYTES: Final = 1 << 30
_MAX_COMMITMENT_BYTES: Final = 128


def commitment(salt: bytes, statement: Mapping[str, Any]) -> str:
    return hashlib.sha256(_DOMAIN + salt + canonical_json(dict(statement))).hexdigest()


def seal_report(
    ctx: NodeContext, stage: str, statement: Mapping[str, Any]
) -> tuple[list[Outbound], str]:
    """The node's two messages for a sealed report, and its commitment."""
    salt = ctx.random(32)
    digest = commitment(salt, statement)
    body = canonical_json(
        {
            "statement": dict(statement),
            "signature": sign_statement(ctx.signing_key, statement),
            "salt": salt.hex(),
        }
    )
    return [
        Outbound(ANALYST, stage, body),
        Outbound(COORDINATOR, stage + COMMITMENT, digest.encode()),
    ], digest


def attest_commitment(
    node: str, digest: str, result: Mapping[str, Any]
) -> dict[str, Any]:
    """What a node vouches for in a sealed release: its own commitment."""
    released = result.get("commitments", {})
    if not isinstance(released, dict) or released.get(node) != digest:
        raise ProtocolError("the release does not hold this node's commitment")
    return {f"/commitments/{node}": digest}


class CommitmentCollector:
    """The coordinator's part: one commitment per node, for ``stage``."""

    def __init__(self, ctx: CoordinatorContext, stage: str) -> None:
        self._ctx = ctx
        self._stage = stage + COMMITMENT
        self.commitments: dict[str, str] = {}

    def receive(self, message: Inbound) -> None:
        if message.stage != self._stage:
            raise ProtocolError(f"unexpected stage '{message.stage}'")
        if message.sender not in self._ctx.parties:
            raise ProtocolError(f"'{message.sender}' is not a party of this job")
        if message.sender in self.commitments:
            raise ProtocolError(f"'{message.sender}' already committed")
        text = message.payload.decode("ascii", errors="replace")
        if len(message.payload) > _MAX_COMMITMENT_BYTES or len(text) != 64:
            raise ProtocolError(f"malformed commitment from '{message.sender}'")
        try:
            bytes.fromhex(text)
        except ValueError:
            raise ProtocolError(
                f"malformed commitment from '{message.sender}'"
            ) from None
        self.commitments[message.sender] = text

    def waiting_for(self) -> frozenset[str]:
        return frozenset(self._ctx.parties) - set(self.commitments)

    def progress(self) -> Progress:
        return Progress(
            stage=self._stage,
            heard=len(self.commitments),
            expected=len(self._ctx.parties),
        )

    @property
    def finished(self) -> bool:
        return set(self.commitments) == set(self._ctx.parties)

    def result(self) -> dict[str, Any]:
        return {"commitments": dict(sorted(self.commitments.items()))}


@dataclass(frozen=True)
class OpenedReport:
    node: str
    statement: Mapping[str, Any]
    signature: str
    salt: str

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "statement": dict(self.statement),
            "signature": self.signature,
            "salt": self.salt,
        }


class ReportOpener:
    """The analyst's part: collect the sealed reports and check them."""

    def __init__(
        self,
        stage: str,
        parties: Sequence[str],
        signing_keys: Mapping[str, bytes],
        expected: Callable[[str], Mapping[str, Any]],
    ) -> None:
        """``expected(node)``: fields the node's statement must hold (its job,
        spec, dataset ...)."""
        self._stage = stage
        self._parties = tuple(parties)
        self._keys = signing_keys
        self._expected = expected
        self.reports: dict[str, OpenedReport] = {}

    def receive(self, message: Inbound) -> None:
        node = message.sender
        if message.stage != self._stage or node not in self._parties:
            raise ProtocolError(f"unexpected {message.stage} from '{node}'")
        if node in self.reports:
            raise ProtocolError(f"'{node}' already reported")
        if len(message.payload) > MAX_REPORT_BYTES:
            raise ProtocolError(f"the report from '{node}' is too large")
        try:
            body = json.loads(message.payload)
            statement, signature, salt = (
                body["statement"],
                body["signature"],
                body["salt"],
            )
            bytes.fromhex(salt)
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed report from '{node}'") from exc
        expected = {**self._expected(node), "node": node}
        if not isinstance(statement, dict) or any(
            statement.get(k) != v for k, v in expected.items()
        ):
            raise ProtocolError(f"the report from '{node}' is for another job")
        try:
            verify_statement(self._keys[node], statement, str(signature))
        except InvalidSignature:
            raise ProtocolError(
                f"the report from '{node}' is not signed by it"
            ) from None
        self.reports[node] = OpenedReport(node, statement, str(signature), str(salt))

    @property
    def finished(self) -> bool:
        return set(self.reports) == set(self._parties)

    def progress(self) -> Progress:
        return Progress(
            stage=self._stage, heard=len(self.reports), expected=len(self._parties)
        )

    def open(self, result: Mapping[str, Any]) -> dict[str, OpenedReport]:
        """The reports, each checked against its commitment in the release."""
        released = result.get("commitments")
        if not isinstance(released, dict) or set(released) != set(self.reports):
            raise ProtocolError("the release does not commit to every report")
        for node, report in self.reports.items():
            if (
                commitment(bytes.fromhex(report.salt), report.statement)
                != released[node]
            ):
                raise ProtocolError(f"the released commitment of '{node}' is wrong")
        return dict(self.reports)


class CommitmentCoordinator(CoordinatorParty):
    """The whole coordinator party of a job whose nodes seal their reports to the
    analyst: it relays, and keeps each node's commitment for the release; it
    never sees a report."""

    def __init__(self, ctx: CoordinatorContext, stage: str) -> None:
        self._collector = CommitmentCollector(ctx, stage)

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        self._collector.receive(message)
        return []

    @property
    def finished(self) -> bool:
        return self._collector.finished

    def waiting_for(self) -> frozenset[str]:
        return self._collector.waiting_for()

    def progress(self) -> Progress:
        return self._collector.progress()

    def result(self) -> Mapping[str, Any]:
        return self._collector.result()


def report_opener(
    ctx: AnalystContext, stage: str, parties: Sequence[str] | None = None
) -> ReportOpener:
    """The analyst's opener for reports sealed at ``stage`` by ``parties``
    (default: every party), each bound to this job, spec and the node's
    dataset."""
    return ReportOpener(
        stage,
        ctx.parties if parties is None else parties,
        ctx.peer_signing_keys,
        lambda node: {
            "job_id": ctx.job_id,
            "spec_hash": ctx.spec.spec_hash,
            "dataset": ctx.spec.input_for(node).dataset,
        },
    )


class ReportsAnalyst(AnalystParty):
    """An analyst party that only opens the reports sealed at ``stage``; a job
    type's subclass reads them in ``finalize`` (``self._opener.open(result)``)."""

    def __init__(
        self, ctx: AnalystContext, stage: str, parties: Sequence[str] | None = None
    ) -> None:
        self._ctx = ctx
        self._opener = report_opener(ctx, stage, parties)

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        self._opener.receive(message)
        return []

    @property
    def finished(self) -> bool:
        return self._opener.finished

    def progress(self) -> Progress:
        return self._opener.progress()
