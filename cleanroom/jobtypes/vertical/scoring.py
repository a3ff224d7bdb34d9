"""The node parties of ``vertical_predict``: each node loads its own part of a
split model (kept on the node by ``vertical_logreg``) and scores the requested
ids it holds; hosts send their partial scores u_h = x_h . w_h, sealed, to the
guest, which adds its part and the intercept and seals the scores of the ids
every input holds to the analyst. Stage ``vlr/partial`` (host -> guest)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from cleanroom.errors import ProtocolAbort, ProtocolError
from cleanroom.jobtypes.base import NodeContext
from cleanroom.jobtypes.sealing import attest_commitment, seal_report
from cleanroom.jobtypes.vertical import codec
from cleanroom.jobtypes.vertical.params import PredictParams
from cleanroom.jobtypes.vertical.service import VerticalService
from protocols.party import Inbound, NodeParty, NodeUsage, Outbound, Progress
from protocols.vertical import FEATURE_CLIP, Standardizer, sigmoid

PARTIAL: Final = "vlr/partial"
SCORES: Final = "vlr/scores"


def check_model(ctx: NodeContext, part: Mapping[str, Any], guest: str) -> None:
    """The stored part must be this node's, for these parties and this guest."""
    role = "guest" if ctx.node == guest else "host"
    if (
        part.get("role") != role
        or part.get("guest") != guest
        or sorted(ctx.spec.nodes) != part.get("parties")
    ):
        raise ProtocolAbort("the model was trained by other parties or roles")
    missing = set(part["columns"]) - set(ctx.data.columns)
    if missing:
        raise ProtocolAbort("the dataset lacks a column the model part uses")


class _Scorer(NodeParty):
    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._params: PredictParams = ctx.params
        service: VerticalService = ctx.service
        self._part = service.load(self._params.model)
        check_model(ctx, self._part, self._params.guest)
        id_column = service.id_column(ctx.dataset)
        index = {str(v): i for i, v in enumerate(ctx.data[id_column].tolist())}
        rows = [index.get(i, -1) for i in self._params.ids]
        self.present = np.array([r >= 0 for r in rows], dtype=bool)
        raw = ctx.data[self._part["columns"]].to_numpy(dtype=np.float64)
        picked = raw[[max(r, 0) for r in rows]]
        scaler = Standardizer(tuple(self._part["mean"]), tuple(self._part["scale"]))
        x = np.clip(scaler.apply(picked), -FEATURE_CLIP, FEATURE_CLIP)
        self.present &= np.isfinite(x).all(axis=1)
        self.partial = np.where(
            self.present, np.nan_to_num(x) @ np.array(self._part["weights"]), 0.0
        )
        self._digest: str | None = None

    def _seal(self, statement: Mapping[str, Any]) -> list[Outbound]:
        ctx = self._ctx
        full = {
            "job_id": ctx.job_id,
            "spec_hash": ctx.spec.spec_hash,
            "node": ctx.node,
            "dataset": ctx.dataset,
            "dataset_hash": ctx.dataset_hash,
            "model": self._params.model,
            **statement,
        }
        out, self._digest = seal_report(ctx, SCORES, full)
        return out

    @property
    def finished(self) -> bool:
        return self._digest is not None

    def usage(self) -> NodeUsage:
        return NodeUsage(rows_touched=int(self.present.sum()))

    def attest(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        assert self._digest is not None
        return attest_commitment(self._ctx.node, self._digest, result)


class HostScorer(_Scorer):
    def start(self) -> list[Outbound]:
        body = np.where(self.present, self.partial, np.nan)
        out = [
            Outbound(self._params.guest, PARTIAL, codec.pack({}, codec.floats(body)))
        ]
        return out + self._seal({"role": "host", "scored": int(self.present.sum())})

    def receive(self, message: Inbound) -> list[Outbound]:
        raise ProtocolError(f"unexpected stage '{message.stage}'")


class GuestScorer(_Scorer):
    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self._hosts = tuple(
            n for n in sorted(ctx.spec.nodes) if n != self._params.guest
        )
        self._partials: dict[str, np.ndarray] = {}

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        host = message.sender
        if message.stage != PARTIAL or host not in self._hosts:
            raise ProtocolError(f"unexpected stage '{message.stage}' from '{host}'")
        if host in self._partials:
            raise ProtocolError(f"'{host}' sent its partial scores twice")
        _, body = codec.unpack(message.payload, PARTIAL)
        count = len(self._params.ids)
        if len(body) != 8 * count:
            raise ProtocolError(f"{PARTIAL}: expected {count} values")
        values = np.frombuffer(body, dtype="<f8").astype(np.float64)
        if np.isinf(values).any():
            raise ProtocolError(f"{PARTIAL}: values must be finite or missing")
        self._partials[host] = values
        if set(self._partials) != set(self._hosts):
            return []
        present = self.present.copy()
        z = self.partial + float(self._part["intercept"])
        for values in self._partials.values():
            present &= ~np.isnan(values)
            z = z + np.nan_to_num(values)
        scores = sigmoid(z)
        ids = [i for i, keep in zip(self._params.ids, present, strict=True) if keep]
        return self._seal(
            {
                "role": "guest",
                "ids": ids,
                "scores": [float(s) for s in scores[present]],
                "unscored": int((~present).sum()),
            }
        )

    def progress(self) -> Progress:
        return Progress(
            stage=PARTIAL, heard=len(self._partials), expected=len(self._hosts)
        )
