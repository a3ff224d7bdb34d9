"""The coordinator's and the analyst's parties of both vertical job types.

The coordinator relays sealed node-to-node envelopes it cannot read, counts the
guest's epoch marks (an epoch number, nothing else) so each epoch has its own
deadline, and releases one salted commitment per node. The analyst opens the
nodes' sealed reports (``cleanroom.jobtypes.sealing``) and checks them against
the release."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cleanroom.errors import ProtocolError
from cleanroom.jobtypes.base import AnalystContext, CoordinatorContext
from cleanroom.jobtypes.sealing import COMMITMENT, CommitmentCollector, ReportsAnalyst
from cleanroom.jobtypes.vertical import codec
from protocols.party import CoordinatorParty, Inbound, Outbound, Progress

LOSSES = 2  # training and validation loss, in that order


class VerticalCoordinator(CoordinatorParty):
    def __init__(
        self, ctx: CoordinatorContext, stage: str, *, guest: str, mark: str, epochs: int
    ) -> None:
        self._ctx, self._stage, self._guest = ctx, stage, guest
        self._mark, self._epochs = mark, epochs
        self._collector = CommitmentCollector(ctx, stage)
        self._epoch = 0

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        if message.stage == self._mark:
            if message.sender != self._guest:
                raise ProtocolError(f"'{message.sender}' may not mark epochs")
            header, _ = codec.unpack(message.payload, message.stage)
            codec.expect(header, e=self._epoch)
            self._epoch += 1
            return []
        if message.stage != self._stage + COMMITMENT:
            raise ProtocolError(f"unexpected stage '{message.stage}'")
        self._collector.receive(message)
        return []

    def waiting_for(self) -> frozenset[str]:
        return self._collector.waiting_for()

    def progress(self) -> Progress:
        if self._collector.commitments:
            return self._collector.progress()
        return Progress(stage="vertical/train", round=self._epoch, rounds=self._epochs)

    @property
    def finished(self) -> bool:
        return self._collector.finished

    def result(self) -> Mapping[str, Any]:
        return {**self._collector.result(), "epochs": self._epoch}


class VerticalAnalyst(ReportsAnalyst):
    """Opens every node's sealed report; ``shape`` turns them into the reading."""

    def __init__(
        self,
        ctx: AnalystContext,
        stage: str,
        shape: Callable[[Mapping[str, Mapping[str, Any]]], Mapping[str, Any]],
    ) -> None:
        super().__init__(ctx, stage)
        self._shape = shape

    def finalize(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        reports = self._opener.open(result)
        statements = {node: dict(r.statement) for node, r in reports.items()}
        return {
            **result,
            **self._shape(statements),
            "reports": [reports[n].to_json() for n in sorted(reports)],
        }


class TrainingAnalyst(VerticalAnalyst):
    """The analyst's party of ``vertical_logreg``: the reports, and meanwhile the
    guest's per-epoch losses as progress; the released curve must repeat them."""

    def __init__(
        self,
        ctx: AnalystContext,
        stage: str,
        shape: Callable[[Mapping[str, Mapping[str, Any]]], Mapping[str, Any]],
        *,
        guest: str,
        progress_stage: str,
        epochs: int,
    ) -> None:
        super().__init__(ctx, stage, shape)
        self._guest, self._progress_stage, self._epochs = guest, progress_stage, epochs
        self.losses: list[tuple[float, float]] = []

    def receive(self, message: Inbound) -> list[Outbound]:
        if message.stage != self._progress_stage:
            return super().receive(message)
        if message.sender != self._guest:
            raise ProtocolError(f"'{message.sender}' may not report losses")
        header, body = codec.unpack(message.payload, message.stage)
        codec.expect(header, e=len(self.losses))
        if len(self.losses) >= self._epochs:
            raise ProtocolError(f"{message.stage}: more epochs than the spec allows")
        train, validation = codec.read_floats(body, LOSSES, message.stage)
        self.losses.append((float(train), float(validation)))
        return []

    def progress(self) -> Progress:
        if not self.losses or self._opener.reports:
            return super().progress()
        train, validation = self.losses[-1]
        return Progress(
            stage=self._progress_stage,
            note=f"epoch {len(self.losses)} of at most {self._epochs}: training "
            f"loss {train:.4f}, validation loss {validation:.4f}",
        )

    def finalize(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        reading = super().finalize(result)
        curve = [
            (p["train_loss"], p["validation_loss"]) for p in reading["training_curve"]
        ]
        if curve != self.losses:
            raise ProtocolError("the released curve is not the losses the guest sent")
        return reading
