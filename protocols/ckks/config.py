"""What buyer and owner agree on before a private-inference run, and its digest.

The owner plans a run from its model (:func:`plan_inference`), which picks the
parameter set from the model's depth, its output range and the declared precision;
the resulting :class:`InferenceConfig` holds only what the buyer may know: model
id, version, kind and link, the input schema (names, order, standardisation), the
row count, the parameter set, the precision and the input bound. The weights are
not in it. Every message carries the config's digest, so two parties holding
different configurations fail at the first message.

What the chosen set tells the buyer: that the model's worst-case output over
inputs within +-``input_bound`` fits the set's value range, a coarse bound on the
weights' size.

What no configuration can bound: the owner cannot see the inputs, so a buyer whose
party ignores the input bound, or fills the unused and imaginary parts of its
slots, gets up to ``N`` noisy evaluations per block (two per slot, real and
imaginary part) at inputs of its choice, whatever ``row_count`` says. The model is
a polynomial in its inputs, so values at complex points tell no more than values
at more real points, but a linear model is recovered from about ``features + 1``
scores, to roughly p / |x| at inputs of size |x|. Quotas should therefore count
:attr:`InferenceConfig.evaluations_exposed`, not rows.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

from cleanroom.errors import ConfigError
from protocols.ckks.evaluate import check_model_fits, value_bits_needed
from protocols.ckks.flooding import FloodPlan
from protocols.ckks.params import ParameterSet, check_allowed, choose_parameters
from protocols.models.asset import InputSchema, Link, ModelAsset, ModelKind

MAX_ROWS: Final = 2**24
MAX_NAME_BYTES: Final = 255
DEFAULT_PRECISION_BITS: Final = 10
DEFAULT_INPUT_BOUND: Final = 16.0
"""Standardised features beyond 16 standard deviations are refused by the buyer's
party rather than risk an overflow that would return garbage."""
MAX_INPUT_BOUND: Final = 2.0**10
_DIGEST_DOMAIN: Final = b"cleanroom/ckks/v1/config\x00"


@dataclass(frozen=True, eq=False)
class InferenceConfig:
    """Validated, immutable parameters both parties of one run must share."""

    session_id: str
    buyer: str
    owner: str
    model_id: str
    model_version: str
    kind: ModelKind
    link: Link
    schema: InputSchema
    row_count: int
    params: ParameterSet
    precision_bits: int = DEFAULT_PRECISION_BITS
    input_bound: float = DEFAULT_INPUT_BOUND

    def __post_init__(self) -> None:
        for field in ("session_id", "buyer", "owner", "model_id", "model_version"):
            value = getattr(self, field)
            if (
                not isinstance(value, str)
                or not 0 < len(value.encode()) <= MAX_NAME_BYTES
            ):
                raise ConfigError(f"{field} must be 1..{MAX_NAME_BYTES} bytes of text")
        if self.buyer == self.owner:
            raise ConfigError("buyer and owner must be different parties")
        if isinstance(self.row_count, bool) or not isinstance(self.row_count, int):
            raise ConfigError("row_count must be an int")
        if not 1 <= self.row_count <= MAX_ROWS:
            raise ConfigError(f"row_count must be in 1..{MAX_ROWS}")
        check_allowed(self.params)
        bound = self.input_bound
        if not (isinstance(bound, float) and math.isfinite(bound)) or not (
            0 < bound <= MAX_INPUT_BOUND
        ):
            raise ConfigError(f"input_bound must be a float in (0, {MAX_INPUT_BOUND}]")
        bits = self.precision_bits
        if isinstance(bits, bool) or not isinstance(bits, int):
            raise ConfigError("precision_bits must be an int")
        FloodPlan.for_output(self.params, bits)  # refuses a precision the set lacks

    @property
    def feature_count(self) -> int:
        return self.schema.feature_count

    @property
    def blocks(self) -> int:
        """Slot blocks of rows; each is one ciphertext per feature."""
        return -(-self.row_count // self.params.slots)

    def block_rows(self, block: int) -> int:
        """Rows in ``block`` (the last one may be partial)."""
        if not 0 <= block < self.blocks:
            raise ConfigError(f"block {block} is outside 0..{self.blocks - 1}")
        return min(self.params.slots, self.row_count - block * self.params.slots)

    @property
    def evaluations_exposed(self) -> int:
        """Model evaluations a dishonest buyer can obtain from this run (see above)."""
        return self.blocks * self.params.poly_modulus_degree

    @cached_property
    def flood(self) -> FloodPlan:
        """The owner's flood for this run (see :mod:`protocols.ckks.flooding`)."""
        return FloodPlan.for_output(self.params, self.precision_bits)

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of every field (the schema's standardisation included)."""
        h = hashlib.sha256(_DIGEST_DOMAIN)
        texts = (
            self.session_id,
            self.buyer,
            self.owner,
            self.model_id,
            self.model_version,
            self.kind,
            self.link,
            *self.schema.features,
        )
        for text in texts:
            raw = text.encode()
            h.update(len(raw).to_bytes(4, "big") + raw)
        h.update(self.feature_count.to_bytes(4, "big"))
        for array in (self.schema.mean, self.schema.scale):
            h.update(
                b"\x00" if array is None else b"\x01" + array.astype("<f8").tobytes()
            )
        h.update(self.row_count.to_bytes(8, "big") + self.params.digest)
        h.update(
            self.precision_bits.to_bytes(4, "big") + struct.pack(">d", self.input_bound)
        )
        return h.digest()

    def matches(self, model: ModelAsset) -> None:
        """Refuse to serve ``model`` unless it is the model this config describes."""
        if (model.model_id, model.version) != (self.model_id, self.model_version):
            raise ConfigError("the config names another model or version")
        if (model.kind, model.link) != (self.kind, self.link):
            raise ConfigError("the config names another model kind or link")
        if model.feature_count != self.feature_count:
            raise ConfigError(
                f"the model takes {model.feature_count} features; the config says "
                f"{self.feature_count}"
            )
        if not _same_schema(model.schema, self.schema):
            raise ConfigError("the config's input schema is not the model's")
        check_model_fits(model, self.params, self.input_bound)

    def to_json(self) -> dict[str, Any]:
        """What a result records about the run (no weights, no keys)."""
        return {
            "session_id": self.session_id,
            "model": {
                "id": self.model_id,
                "version": self.model_version,
                "kind": self.kind,
            },
            "features": self.feature_count,
            "rows": self.row_count,
            "blocks": self.blocks,
            "evaluations_exposed": self.evaluations_exposed,
            "parameters": self.params.to_json(),
            "precision": f"2^-{self.precision_bits}",
            "input_bound": self.input_bound,
            "flood": self.flood.to_json(),
        }


def plan_inference(
    model: ModelAsset,
    *,
    session_id: str,
    buyer: str,
    owner: str,
    row_count: int,
    precision_bits: int = DEFAULT_PRECISION_BITS,
    input_bound: float = DEFAULT_INPUT_BOUND,
) -> InferenceConfig:
    """The owner's plan: the cheapest allowed set that fits ``model``."""
    params = choose_parameters(
        depth=model.depth,
        precision_bits=precision_bits,
        value_bits=value_bits_needed(model, input_bound),
    )
    config = InferenceConfig(
        session_id=session_id,
        buyer=buyer,
        owner=owner,
        model_id=model.model_id,
        model_version=model.version,
        kind=model.kind,
        link=model.link,
        schema=model.schema,
        row_count=row_count,
        params=params,
        precision_bits=precision_bits,
        input_bound=float(input_bound),
    )
    config.matches(model)
    return config


def _same_schema(a: InputSchema, b: InputSchema) -> bool:
    if a.features != b.features:
        return False
    for x, y in ((a.mean, b.mean), (a.scale, b.scale)):
        if (x is None) != (y is None):
            return False
        if x is not None and y is not None and not (x == y).all():
            return False
    return True
