"""The ``he_inference`` parties: the owner's plan, the buyer's encrypted rows,
the owner's flooded scores, and a signed summary for the release.

    owner -> analyst (sealed)   he_inference/plan   signed plan (schema, set, rows)
    analyst -> owner (sealed)   ckks/context, ckks/features (one per slot block)
    owner -> analyst (sealed)   ckks/scores (one per block)
    owner -> coordinator        he_inference/done   signed summary of the run

The coordinator relays the sealed envelopes (it sees their sizes, never a
feature or a score) and releases the owner's summary, which records the CKKS
parameter set; the scores exist only in the analyst's party.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd

from cleanroom.errors import (
    ConfigError,
    InvalidSignature,
    ProtocolAbort,
    ProtocolError,
)
from cleanroom.jobtypes.base import (
    AnalystContext,
    CoordinatorContext,
    NodeContext,
    check_node_statement,
)
from cleanroom.jobtypes.he_inference.params import (
    EXPOSED,
    UNIT,
    InferenceParams,
    plan_from_json,
    plan_to_json,
)
from cleanroom.jobtypes.he_inference.service import ModelRegistry, RegisteredModel
from cleanroom.keys import canonical_json, sign_statement, verify_statement
from protocols.ckks import CkksBuyer, CkksOwner, InferenceConfig, plan_inference
from protocols.ckks.messages import CONTEXT, FEATURES
from protocols.party import (
    ANALYST,
    COORDINATOR,
    AnalystParty,
    CoordinatorParty,
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
    Progress,
)

PLAN: Final = "he_inference/plan"
DONE: Final = "he_inference/done"
ROWS_INPUT: Final = "rows"
"""The analyst's local input: its rows as CSV bytes or a pandas DataFrame."""
_MAX_PLAN_BYTES: Final = 4 << 20


def _signed(key: Any, statement: Mapping[str, Any]) -> bytes:
    return canonical_json(
        {"statement": dict(statement), "signature": sign_statement(key, statement)}
    )


def _base(ctx: NodeContext) -> dict[str, Any]:
    return {
        "job_id": ctx.job_id,
        "spec_hash": ctx.spec.spec_hash,
        "node": ctx.node,
        "dataset": ctx.dataset,
    }


class HeInferenceOwner(NodeParty):
    """Plans the run from its model, then serves it to the buyer."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._params: InferenceParams = ctx.params
        registry: ModelRegistry | None = ctx.service
        model = (
            None if registry is None else registry.get(self._params.model, ctx.dataset)
        )
        if model is None:
            raise ProtocolError(
                f"this node offers no model {self._params.model!r} on {ctx.dataset!r}"
            )
        self._registry = registry
        self._model: RegisteredModel = model
        self._config: InferenceConfig = plan_inference(
            model.asset,
            session_id=ctx.job_id,
            buyer=ANALYST,
            owner=ctx.node,
            row_count=self._params.rows,
            precision_bits=self._params.precision_bits,
            input_bound=self._params.input_bound,
        )
        self._owner = CkksOwner(ctx.node, self._config, model.asset, random=ctx.random)
        self._summary: dict[str, Any] | None = None

    def start(self) -> list[Outbound]:
        self._owner.start()
        statement = {**_base(self._ctx), "plan": plan_to_json(self._config)}
        return [Outbound(ANALYST, PLAN, _signed(self._ctx.signing_key, statement))]

    def receive(self, message: Inbound) -> list[Outbound]:
        if message.sender != ANALYST or message.stage not in (CONTEXT, FEATURES):
            raise ProtocolError(f"unexpected {message.stage} from '{message.sender}'")
        out = self._owner.receive(Inbound(ANALYST, message.stage, message.payload))
        if self._owner.finished and self._summary is None:
            out.append(self._finish())
        return out

    def _finish(self) -> Outbound:
        ctx, config = self._ctx, self._config
        self._summary = {
            **_base(ctx),
            "model": {
                "name": self._model.name,
                "id": config.model_id,
                "version": config.model_version,
                "content_hash": self._model.digest,
            },
            "rows": self._owner.rows_evaluated,
            "ckks": config.to_json(),
        }
        if self._registry is not None:
            self._registry.record_scoring(
                ctx.job_id,
                model=self._model,
                buyer=ctx.analyst,
                purpose=ctx.spec.purpose,
                rows=self._owner.rows_evaluated,
                parameter_set=config.params.name,
            )
        return Outbound(COORDINATOR, DONE, _signed(ctx.signing_key, self._summary))

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        return self._owner.dropped(parties)

    def waiting_for(self) -> frozenset[str]:
        return frozenset() if self._owner.finished else frozenset({ANALYST})

    def progress(self) -> Progress:
        return Progress(
            stage="ckks/scores",
            done=self._owner.rows_evaluated,
            total=self._config.row_count,
            unit="rows evaluated",
        )

    @property
    def finished(self) -> bool:
        return self._summary is not None

    def usage(self) -> NodeUsage:
        exposed = self._owner.usage().units["evaluations_exposed"]
        return NodeUsage(
            units={UNIT: self._owner.rows_evaluated, EXPOSED: float(exposed)}
        )

    def attest(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        if self._summary is None or result.get("summary") != self._summary:
            raise ProtocolError("the release is not this node's summary of the run")
        return {"/summary/rows": self._summary["rows"]}


class HeInferenceCoordinator(CoordinatorParty):
    """Relays; releases the owner's signed summary once the run is done."""

    def __init__(self, ctx: CoordinatorContext) -> None:
        self._ctx = ctx
        self._summary: dict[str, Any] | None = None
        self._signature = ""

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        if message.stage != DONE or message.sender not in self._ctx.parties:
            raise ProtocolError(f"unexpected {message.stage} from '{message.sender}'")
        if self._summary is not None:
            raise ProtocolError("the run was already summarised")
        try:
            body = json.loads(message.payload)
            statement, signature = body["statement"], body["signature"]
        except (ValueError, KeyError, TypeError):
            raise ProtocolError("malformed run summary") from None
        self._summary = check_node_statement(
            self._ctx, message.sender, statement, signature, "the run summary"
        )
        self._signature = str(signature)
        return []

    def waiting_for(self) -> frozenset[str]:
        return frozenset() if self._summary else frozenset(self._ctx.parties)

    @property
    def finished(self) -> bool:
        return self._summary is not None

    def result(self) -> Mapping[str, Any]:
        assert self._summary is not None
        return {"summary": self._summary, "signature": self._signature}


class HeInferenceBuyer(AnalystParty):
    """Checks the owner's plan, encrypts the analyst's rows, decrypts the scores."""

    def __init__(self, ctx: AnalystContext) -> None:
        self._ctx = ctx
        self._params: InferenceParams = ctx.params
        self._owner_name = ctx.parties[0]
        self._buyer: CkksBuyer | None = None
        self._config: InferenceConfig | None = None

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        if message.sender != self._owner_name:
            raise ProtocolError(f"unexpected {message.stage} from '{message.sender}'")
        if message.stage == PLAN:
            return self._on_plan(message.payload)
        if self._buyer is None:
            raise ProtocolError(f"{message.stage} before the owner's plan")
        return self._buyer.receive(message)

    def _on_plan(self, payload: bytes) -> list[Outbound]:
        ctx, params = self._ctx, self._params
        if self._buyer is not None:
            raise ProtocolError("the owner's plan was already received")
        if len(payload) > _MAX_PLAN_BYTES:
            raise ProtocolError("the owner's plan is too large")
        try:
            body = json.loads(payload)
            statement, signature = body["statement"], body["signature"]
            verify_statement(
                ctx.peer_signing_keys[self._owner_name], statement, signature
            )
        except InvalidSignature:
            raise ProtocolError("the plan is not signed by the model owner") from None
        except (ValueError, KeyError, TypeError):
            raise ProtocolError("malformed plan") from None
        expected = {
            "job_id": ctx.job_id,
            "spec_hash": ctx.spec.spec_hash,
            "node": self._owner_name,
            "dataset": ctx.spec.input_for(self._owner_name).dataset,
        }
        if any(statement.get(k) != v for k, v in expected.items()):
            raise ProtocolError("the plan is for another job")
        config = plan_from_json(statement.get("plan"))
        if (config.session_id, config.buyer, config.owner) != (
            ctx.job_id,
            ANALYST,
            self._owner_name,
        ) or config.row_count != params.rows:
            raise ProtocolError("the plan is for another run or row count")
        rows = buyer_rows(ctx.local_inputs.get(ROWS_INPUT), config, params.rows)
        try:
            buyer = CkksBuyer(ANALYST, config, rows)
        except ConfigError as exc:
            raise ProtocolError(f"the rows cannot be scored: {exc}") from None
        self._config, self._buyer = config, buyer
        return buyer.start()

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        if self._owner_name in parties and not self.finished:
            raise ProtocolAbort("the model owner went away")
        return []

    @property
    def finished(self) -> bool:
        return self._buyer is not None and self._buyer.finished

    def progress(self) -> Progress:
        if self._buyer is None:
            return Progress(stage=PLAN)
        buyer = self._buyer
        if buyer.rows_scored:
            return Progress(
                stage="ckks/scores",
                done=buyer.rows_scored,
                total=self._params.rows,
                unit="rows decrypted",
            )
        return Progress(
            stage="ckks/features",
            done=buyer.rows_encrypted,
            total=self._params.rows,
            unit="rows encrypted",
        )

    def finalize(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        if self._buyer is None or self._config is None or not self._buyer.finished:
            raise ProtocolError("this party has not received every score")
        summary = result.get("summary")
        if (
            not isinstance(summary, dict)
            or summary.get("ckks") != self._config.to_json()
        ):
            raise ProtocolError("the release describes another run")
        return {
            **result,
            "scores": self._buyer.scores.tolist(),
            "parameter_set": self._config.params.name,
        }


def buyer_rows(raw: Any, config: InferenceConfig, rows: int) -> npt.NDArray[np.float64]:
    """The analyst's rows in the model's feature order; refuses a table without
    the model's features or with another row count (before any encryption)."""
    if raw is None:
        raise ProtocolError(
            f"the analyst gave no '{ROWS_INPUT}' to score (a CSV or a DataFrame)"
        )
    if isinstance(raw, bytes | str):
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            frame = pd.read_csv(io.StringIO(text))
        except (ValueError, pd.errors.ParserError) as exc:
            raise ProtocolError(f"the rows are not a CSV table: {exc}") from None
    elif isinstance(raw, pd.DataFrame):
        frame = raw
    else:
        raise ProtocolError("the rows must be CSV bytes or a DataFrame")
    features = list(config.schema.features)
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise ProtocolError(
            f"the model takes {len(features)} features; the rows lack "
            f"{len(missing)} of them (first: {missing[0]!r})"
        )
    if len(frame) != rows:
        raise ProtocolError(f"the spec scores {rows} rows; the table has {len(frame)}")
    try:
        values: npt.NDArray[np.float64] = frame[features].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise ProtocolError("every feature must be numeric") from None
    return values
