"""``he_inference`` params and the plan the owner sends the buyer.

model: churn            # a model the input node registers on this dataset
rows: 569               # how many rows the buyer scores (metered up front)
precision_bits: 10      # optional: scores to 2^-precision_bits
input_bound: 16.0       # optional: standardised features beyond it refused
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from cleanroom.errors import ConfigError, DatasetError, ProtocolError, SpecError
from cleanroom.jobspec import JobSpec
from protocols.ckks import ALLOWED_SETS, InferenceConfig, parameter_set
from protocols.ckks.config import (
    DEFAULT_INPUT_BOUND,
    DEFAULT_PRECISION_BITS,
    MAX_INPUT_BOUND,
    MAX_ROWS,
)
from protocols.models.asset import InputSchema

UNIT: Final = "scored_rows"
EXPOSED: Final = "evaluations_exposed"
"""Model evaluations a dishonest buyer could obtain (it may fill every slot of
every block it sends, real and imaginary parts): see ``protocols.ckks.config``."""


def exposed_bound(rows: int) -> int:
    """The most evaluations ``rows`` rows can expose under any allowed set."""
    return max(
        -(-rows // (n // 2)) * n for n in {p.poly_modulus_degree for p in ALLOWED_SETS}
    )


_KEYS: Final = ("model", "rows", "precision_bits", "input_bound")


@dataclass(frozen=True)
class InferenceParams:
    model: str
    rows: int
    precision_bits: int
    input_bound: float


def parse_params(spec: JobSpec) -> InferenceParams:
    raw: Mapping[str, Any] = spec.params
    if len(spec.inputs) != 1:
        raise SpecError("inputs", "an he_inference job names exactly one model owner")
    extra = sorted(set(raw) - set(_KEYS))
    if extra:
        raise SpecError(
            f"params.{extra[0]}", f"unknown parameter (allowed: {', '.join(_KEYS)})"
        )
    model = raw.get("model")
    if not isinstance(model, str) or not model:
        raise SpecError("params.model", "required: the name of the model to query")
    rows = raw.get("rows")
    if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= MAX_ROWS:
        raise SpecError("params.rows", f"required: the row count, 1..{MAX_ROWS}")
    bits = raw.get("precision_bits", DEFAULT_PRECISION_BITS)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 40:
        raise SpecError("params.precision_bits", "expected an integer in 1..40")
    bound = raw.get("input_bound", DEFAULT_INPUT_BOUND)
    if isinstance(bound, bool) or not isinstance(bound, int | float):
        raise SpecError("params.input_bound", "expected a number")
    if not 0 < float(bound) <= MAX_INPUT_BOUND:
        raise SpecError(
            "params.input_bound", f"expected a number in (0, {MAX_INPUT_BOUND}]"
        )
    return InferenceParams(model, rows, bits, float(bound))


def plan_to_json(config: InferenceConfig) -> dict[str, Any]:
    """Everything the buyer needs to rebuild the owner's config (no weights)."""
    schema = config.schema
    return {
        "session_id": config.session_id,
        "buyer": config.buyer,
        "owner": config.owner,
        "model_id": config.model_id,
        "model_version": config.model_version,
        "kind": config.kind,
        "link": config.link,
        "features": list(schema.features),
        "mean": None if schema.mean is None else schema.mean.tolist(),
        "scale": None if schema.scale is None else schema.scale.tolist(),
        "row_count": config.row_count,
        "parameter_set": config.params.name,
        "precision_bits": config.precision_bits,
        "input_bound": config.input_bound,
    }


def plan_from_json(raw: Any) -> InferenceConfig:
    """The owner's plan, checked as a config; ProtocolError if it is not one."""
    try:
        schema = InputSchema(
            tuple(raw["features"]),
            None if raw["mean"] is None else np.asarray(raw["mean"], dtype=float),
            None if raw["scale"] is None else np.asarray(raw["scale"], dtype=float),
        )
        return InferenceConfig(
            session_id=raw["session_id"],
            buyer=raw["buyer"],
            owner=raw["owner"],
            model_id=raw["model_id"],
            model_version=raw["model_version"],
            kind=raw["kind"],
            link=raw["link"],
            schema=schema,
            row_count=raw["row_count"],
            params=parameter_set(raw["parameter_set"]),
            precision_bits=raw["precision_bits"],
            input_bound=float(raw["input_bound"]),
        )
    except (KeyError, TypeError, ValueError, ConfigError, DatasetError) as exc:
        raise ProtocolError(f"the owner's plan is malformed: {exc}") from None
