"""Model assets a holder registers: linear, logistic and polynomial-activation MLPs.

A :class:`ModelAsset` is what a holder serves for private inference: the model's
parameters, the input schema a buyer must follow (feature names, order and the
optional standardisation), a model card, and a content hash. Every constructor
validates shapes and finiteness, so an asset that exists is well formed; arrays are
read-only float64. Parsing and writing files is :mod:`protocols.models.codec`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from cleanroom.errors import DatasetError

ModelKind = Literal["linear_regression", "logistic_regression", "poly_mlp"]
Link = Literal["identity", "logistic"]
Array = npt.NDArray[np.float64]

KINDS: Final[tuple[ModelKind, ...]] = (
    "linear_regression",
    "logistic_regression",
    "poly_mlp",
)
LINKS: Final[tuple[Link, ...]] = ("identity", "logistic")
MAX_FEATURES: Final = 4096
MAX_HIDDEN: Final = 1024
MAX_ACTIVATION_DEGREE: Final = 2
"""Degree 2 is one ciphertext-ciphertext product, what the CKKS parameter sets fit."""
MAX_TEXT_CHARS: Final = 4096
MAX_NAME_CHARS: Final = 255
MAX_METRICS: Final = 64


def fail(path: str, problem: str) -> DatasetError:
    """The error for a malformed model: it names the field, never its values."""
    return DatasetError(f"model field {path}: {problem}")


def checked_array(value: object, path: str, shape: tuple[int, ...]) -> Array:
    """A finite, read-only float64 copy of ``value`` with exactly ``shape``."""
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise fail(path, "must be an array of numbers") from None
    if array.shape != shape:
        raise fail(path, f"has shape {array.shape}, expected {shape}")
    if not np.isfinite(array).all():
        raise fail(path, "contains NaN or infinity")
    array.setflags(write=False)
    return array


def checked_float(value: object, path: str) -> float:
    """A finite float (bools refused: ``True`` is not a coefficient)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(path, "must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise fail(path, "must be finite")
    return number


def checked_text(value: object, path: str, limit: int = MAX_TEXT_CHARS) -> str:
    """A string of at most ``limit`` characters."""
    if not isinstance(value, str):
        raise fail(path, "must be a string")
    if len(value) > limit:
        raise fail(path, f"is longer than {limit} characters")
    return value


@dataclass(frozen=True, eq=False)
class InputSchema:
    """The features a buyer sends, in order, and how they are standardised first.

    ``mean`` and ``scale`` are both present or both absent; a buyer computes
    ``(x - mean) / scale`` before encrypting. The schema is public to the buyer
    (it cannot send features without it); the model's weights are not.
    """

    features: tuple[str, ...]
    mean: Array | None = None
    scale: Array | None = None

    def __post_init__(self) -> None:
        names = self.features
        if not isinstance(names, tuple) or not 1 <= len(names) <= MAX_FEATURES:
            raise fail("input.features", f"must list 1..{MAX_FEATURES} feature names")
        for i, name in enumerate(names):
            checked_text(name, f"input.features[{i}]", MAX_NAME_CHARS)
            if not name:
                raise fail(f"input.features[{i}]", "must not be empty")
        if len(set(names)) != len(names):
            raise fail("input.features", "names must be unique")
        object.__setattr__(self, "features", tuple(str(n) for n in names))
        if (self.mean is None) != (self.scale is None):
            raise fail("input", "mean and scale must be given together")
        if self.mean is not None and self.scale is not None:
            shape = (len(names),)
            object.__setattr__(
                self, "mean", checked_array(self.mean, "input.mean", shape)
            )
            scale = checked_array(self.scale, "input.scale", shape)
            if (scale <= 0).any():
                raise fail("input.scale", "every scale must be positive")
            object.__setattr__(self, "scale", scale)

    @property
    def feature_count(self) -> int:
        return len(self.features)

    def standardise(self, rows: npt.ArrayLike) -> Array:
        """Rows (n x features) as float64, standardised if the schema says so."""
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.feature_count:
            raise DatasetError(
                f"expected rows of {self.feature_count} features, got shape {x.shape}"
            )
        if self.mean is None or self.scale is None:
            return x
        return (x - self.mean) / self.scale


@dataclass(frozen=True)
class ModelCard:
    """What a buyer reads before paying: name, description, provenance, metrics."""

    name: str
    description: str = ""
    provenance: str = ""
    """Free text: training data, date, code version, who signed it off."""
    metrics: tuple[tuple[str, float], ...] = field(default=())
    """Sorted (name, value) pairs, e.g. ``(("auc", 0.99),)``."""

    def __post_init__(self) -> None:
        checked_text(self.name, "card.name", MAX_NAME_CHARS)
        if not self.name:
            raise fail("card.name", "must not be empty")
        checked_text(self.description, "card.description")
        checked_text(self.provenance, "card.provenance")
        if len(self.metrics) > MAX_METRICS:
            raise fail("card.metrics", f"has more than {MAX_METRICS} entries")
        for name, value in self.metrics:
            checked_text(name, "card.metrics", MAX_NAME_CHARS)
            checked_float(value, f"card.metrics.{name}")
        names = [name for name, _ in self.metrics]
        if names != sorted(set(names)):
            raise fail("card.metrics", "names must be unique (stored sorted)")

    @classmethod
    def of(
        cls,
        name: str,
        *,
        description: str = "",
        provenance: str = "",
        metrics: Mapping[str, float] | None = None,
    ) -> ModelCard:
        """Build a card from a metrics mapping."""
        pairs = tuple(sorted((k, float(v)) for k, v in (metrics or {}).items()))
        return cls(name, description, provenance, pairs)


@dataclass(frozen=True, eq=False)
class LinearParameters:
    """``y = coef . x + intercept`` on standardised features."""

    coef: Array
    intercept: float

    def validate(self, features: int) -> LinearParameters:
        return LinearParameters(
            checked_array(self.coef, "parameters.coef", (features,)),
            checked_float(self.intercept, "parameters.intercept"),
        )


@dataclass(frozen=True, eq=False)
class PolyMLPParameters:
    """Two layers: ``h = act(W x + b)``, ``y = v . h + c``, ``act`` a polynomial.

    ``activation`` holds the coefficients ``(a0, a1, a2)`` of ``a0 + a1 z + a2 z^2``
    (lowest degree first; trailing terms may be omitted).
    """

    hidden_weights: Array
    hidden_bias: Array
    activation: tuple[float, ...]
    output_weights: Array
    output_bias: float

    def validate(self, features: int) -> PolyMLPParameters:
        w = np.asarray(self.hidden_weights)
        if w.ndim != 2 or not 1 <= w.shape[0] <= MAX_HIDDEN:
            raise fail(
                "parameters.hidden_weights",
                f"must be a (hidden, features) matrix with 1..{MAX_HIDDEN} rows",
            )
        hidden = w.shape[0]
        act = self.activation
        if not isinstance(act, tuple) or not 1 <= len(act) <= MAX_ACTIVATION_DEGREE + 1:
            raise fail(
                "parameters.activation.coefficients",
                f"must hold 1..{MAX_ACTIVATION_DEGREE + 1} coefficients (degree "
                f"<= {MAX_ACTIVATION_DEGREE})",
            )
        return PolyMLPParameters(
            checked_array(w, "parameters.hidden_weights", (hidden, features)),
            checked_array(self.hidden_bias, "parameters.hidden_bias", (hidden,)),
            tuple(
                checked_float(a, f"parameters.activation.coefficients[{i}]")
                for i, a in enumerate(act)
            ),
            checked_array(self.output_weights, "parameters.output_weights", (hidden,)),
            checked_float(self.output_bias, "parameters.output_bias"),
        )

    @property
    def hidden_count(self) -> int:
        return int(self.hidden_weights.shape[0])

    def coefficient(self, degree: int) -> float:
        """The activation's coefficient of ``z**degree`` (0 beyond its length)."""
        return self.activation[degree] if degree < len(self.activation) else 0.0


Parameters = LinearParameters | PolyMLPParameters

MAX_ORIGIN_INPUTS: Final = 1024


@dataclass(frozen=True)
class Origin:
    """The federated job that trained the model and the inputs it learned from.

    Declared by whoever wrote the file (``cleanroom model export --format
    he-asset`` fills it from the signed job spec), not proven by it: a holder's
    node reads it to require the consent of every other holder whose data trained
    the model before serving it (``cleanroom.jobtypes.he_inference.service``).
    """

    job_type: str
    job_id: str
    inputs: tuple[tuple[str, str], ...]
    """(node, dataset) of every input of the training job, in spec order."""

    def __post_init__(self) -> None:
        checked_text(self.job_type, "origin.job_type", MAX_NAME_CHARS)
        checked_text(self.job_id, "origin.job_id", MAX_NAME_CHARS)
        if not self.job_type or not self.job_id:
            raise fail("origin", "job_type and job_id must not be empty")
        inputs = self.inputs
        if not isinstance(inputs, tuple) or not 1 <= len(inputs) <= MAX_ORIGIN_INPUTS:
            raise fail("origin.inputs", f"must list 1..{MAX_ORIGIN_INPUTS} inputs")
        for i, pair in enumerate(inputs):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise fail(f"origin.inputs[{i}]", "must be a (node, dataset) pair")
            for part, value in zip(("node", "dataset"), pair, strict=True):
                checked_text(value, f"origin.inputs[{i}].{part}", MAX_NAME_CHARS)
                if not value:
                    raise fail(f"origin.inputs[{i}].{part}", "must not be empty")
        if len(set(inputs)) != len(inputs):
            raise fail("origin.inputs", "must not repeat an input")

    @property
    def holders(self) -> tuple[str, ...]:
        """The distinct nodes whose data trained the model, in spec order."""
        return tuple(dict.fromkeys(node for node, _ in self.inputs))


@dataclass(frozen=True, eq=False)
class ModelAsset:
    """A validated model with its schema and card; see :mod:`protocols.models.codec`.

    ``link`` is applied after the model's raw output: ``logistic`` for logistic
    regression, ``identity`` for linear regression, either for an MLP.
    """

    kind: ModelKind
    model_id: str
    version: str
    schema: InputSchema
    card: ModelCard
    parameters: Parameters
    link: Link = "identity"
    origin: Origin | None = None
    """Set when a federated job trained the model (see :class:`Origin`)."""

    def __post_init__(self) -> None:
        if self.origin is not None and not isinstance(self.origin, Origin):
            raise fail("origin", "must be an Origin")
        if self.kind not in KINDS:
            raise fail("kind", f"must be one of {', '.join(KINDS)}")
        for name, value in (("id", self.model_id), ("version", self.version)):
            checked_text(value, name, MAX_NAME_CHARS)
            if not value:
                raise fail(name, "must not be empty")
        if self.link not in LINKS:
            raise fail("link", f"must be one of {', '.join(LINKS)}")
        wanted = {"linear_regression": "identity", "logistic_regression": "logistic"}
        if self.kind in wanted and self.link != wanted[self.kind]:
            raise fail("link", f"a {self.kind} uses the {wanted[self.kind]} link")
        linear = self.kind != "poly_mlp"
        expected = LinearParameters if linear else PolyMLPParameters
        if not isinstance(self.parameters, expected):
            raise fail("parameters", f"a {self.kind} needs {expected.__name__}")
        features = self.schema.feature_count
        object.__setattr__(self, "parameters", self.parameters.validate(features))

    @property
    def feature_count(self) -> int:
        return self.schema.feature_count

    @property
    def depth(self) -> int:
        """Multiplicative depth under CKKS: 1 for a linear map, 2 with a square."""
        p = self.parameters
        if isinstance(p, PolyMLPParameters) and p.coefficient(2) != 0.0:
            return 2
        return 1
