"""The ``fedavg`` spec's params, checked and typed once: the public training plan
(``protocols.fl.plan``), the columns it reads and how a node turns its rows into
features and class indices. Every error names its field path."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd

from cleanroom.catalog import DatasetInfo
from cleanroom.errors import ConfigError, DatasetError, SpecError
from protocols.fl.local import LocalTraining
from protocols.fl.models import Model, Task, Vector
from protocols.fl.plan import FedAvgParams, FedAvgPlan
from protocols.fl.privacy import DPConfig

ALGORITHMS: Final = ("logistic", "multinomial", "linear", "mlp")
_NUMERIC: Final = ("int", "float", "bool", "number", "integer")
_KEYS: Final = frozenset(
    {
        "features", "label", "algorithm", "classes", "hidden", "activation",
        "feature_bounds", "target_bounds", "rounds", "threshold", "max_rows",
        "local", "l2", "server_learning_rate", "validation_fraction",
        "update_clip", "loss_clip", "patience", "min_improvement",
        "divergence_factor", "dp", "model_seed", "graph",
    }
)  # fmt: skip
_REALS: Final = frozenset(
    {
        "l2", "server_learning_rate", "validation_fraction", "update_clip",
        "loss_clip", "min_improvement", "divergence_factor", "dp", "local",
    }
)  # fmt: skip
_LOCAL_KEYS: Final = frozenset(
    {"epochs", "batch_size", "learning_rate", "learning_rate_decay", "proximal_mu"}
)
_DP_KEYS: Final = frozenset({"epsilon", "delta", "example_clip"})


@dataclass(frozen=True)
class FedSpec:
    """A ``fedavg`` job's parsed params and the plan every party derives."""

    algorithm: str
    features: tuple[str, ...]
    label: str
    classes: tuple[float, ...]
    """Declared class labels, sorted (empty for regression); index = position."""
    plan: FedAvgPlan
    raw: Mapping[str, Any]
    graph: str = "complete"
    """SecAgg+'s neighbour graph: ``complete`` or ``k-regular`` (sparse, Bell et
    al.'s sound degree and threshold, drawn from the job's graph seed)."""

    @property
    def params(self) -> FedAvgParams:
        return self.plan.params

    @property
    def model(self) -> Model:
        return self.plan.params.model

    @property
    def epsilon(self) -> tuple[float, float]:
        privacy = self.plan.privacy
        if privacy is None:
            return (0.0, 0.0)
        return (privacy.epsilon_total, privacy.config.delta)

    def columns(self) -> frozenset[str]:
        return frozenset({*self.features, self.label})

    def learning_rate(self) -> float:
        local = self.params.local
        return (
            self.params.server_learning_rate if local is None else local.learning_rate
        )

    def rows(self, data: pd.DataFrame) -> tuple[np.ndarray, Vector]:
        """A node's complete-case rows as (features, class indices or targets)."""
        missing = [c for c in (*self.features, self.label) if c not in data.columns]
        if missing:
            raise DatasetError(f"the dataset has no column {missing[0]!r}")
        frame = data[[*self.features, self.label]].dropna()
        try:
            x = frame[list(self.features)].to_numpy(dtype=np.float64)
            y = frame[self.label].to_numpy(dtype=np.float64)
        except (TypeError, ValueError):
            raise DatasetError("features and label must be numeric") from None
        if self.classes:
            lookup = np.array(self.classes)
            index = np.searchsorted(lookup, y)
            inside = (index < len(lookup)) & (
                lookup[np.minimum(index, len(lookup) - 1)] == y
            )
            if not np.all(inside):
                raise DatasetError(
                    f"the label column {self.label!r} holds a value outside the "
                    "declared classes"
                )
            y = index.astype(np.float64)
        return x, y


def _numbers(value: Any) -> Any:
    """YAML 1.1 reads ``1e-5`` (no dot) as a string: take such strings as reals."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, Mapping):
        return {k: _numbers(v) for k, v in value.items()}
    return value


def parse(raw: Mapping[str, Any], parties: int) -> FedSpec:
    """The spec's ``params`` checked; SpecError with the field path otherwise."""
    if not isinstance(raw, Mapping):
        raise SpecError("params", "expected a mapping")
    raw = {k: _numbers(v) if k in _REALS else v for k, v in raw.items()}
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise SpecError(f"params.{unknown[0]}", "unknown field")
    features = _names(raw.get("features"), "params.features")
    label = raw.get("label")
    if not isinstance(label, str) or not label:
        raise SpecError("params.label", "expected a column name")
    if label in features:
        raise SpecError("params.label", "the label cannot also be a feature")
    algorithm = raw.get("algorithm", "logistic")
    if algorithm not in ALGORITHMS:
        raise SpecError("params.algorithm", f"expected one of {', '.join(ALGORITHMS)}")
    classes = _classes(raw, algorithm)
    if "dp" in raw and "local" in raw:
        raise SpecError(
            "params.local",
            "with dp each round is one clipped gradient sum: no local training "
            "(set server_learning_rate instead)",
        )
    try:
        model = _model(raw, algorithm, len(features), len(classes))
        bounds = _feature_bounds(raw.get("feature_bounds"), features)
        params = FedAvgParams(
            model=model,
            feature_bounds=bounds,
            parties=parties,
            max_rows=raw.get("max_rows", 1_000_000),
            rounds=raw.get("rounds", 30),
            threshold=raw.get("threshold"),
            local=None if "dp" in raw else _local(raw.get("local", {})),
            l2=raw.get("l2", 0.0),
            server_learning_rate=raw.get("server_learning_rate", 1.0),
            target_bounds=_pair(raw.get("target_bounds"), "target_bounds"),
            validation_fraction=raw.get("validation_fraction", 0.2),
            update_clip=raw.get("update_clip", 100.0),
            loss_clip=raw.get("loss_clip", 100.0),
            patience=raw.get("patience", 5),
            min_improvement=raw.get("min_improvement", 0.0),
            divergence_factor=raw.get("divergence_factor", 10.0),
            modulus_bits=64,
            privacy=_dp(raw.get("dp")),
            model_seed=raw.get("model_seed", 0),
        )
        plan = FedAvgPlan.create(params)
    except ConfigError as exc:
        raise SpecError("params", str(exc)) from None
    graph = raw.get("graph", "complete")
    if graph not in ("complete", "k-regular"):
        raise SpecError("params.graph", "expected complete or k-regular")
    return FedSpec(str(algorithm), features, label, classes, plan, dict(raw), graph)


def check_schemas(spec: FedSpec, schemas: Sequence[tuple[str, DatasetInfo]]) -> None:
    """Every input has every feature and the label, numeric: one feature schema."""
    for where, info in schemas:
        types = {c.name: c.type for c in info.columns}
        for column in (*spec.features, spec.label):
            if column not in types:
                what = "label" if column == spec.label else "feature"
                raise SpecError(
                    where, f"dataset '{info.name}' has no {what} column {column!r}"
                )
            if types[column] not in _NUMERIC:
                raise SpecError(
                    where, f"column {column!r} of '{info.name}' is not numeric"
                )


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise SpecError(where, "expected a non-empty list of column names")
    if not all(isinstance(v, str) and v for v in value):
        raise SpecError(where, "expected column names")
    if len(set(value)) != len(value):
        raise SpecError(where, "a column is named twice")
    return tuple(value)


def _classes(raw: Mapping[str, Any], algorithm: str) -> tuple[float, ...]:
    value = raw.get("classes")
    regression = algorithm == "linear" or (
        algorithm == "mlp" and raw.get("target_bounds") is not None
    )
    if regression:
        if value is not None:
            raise SpecError("params.classes", "regression has no classes")
        return ()
    if value is None:
        value = [0, 1]
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise SpecError("params.classes", "expected a list of numeric labels")
    labels = tuple(sorted(float(v) for v in value))
    if len(set(labels)) != len(labels) or len(labels) < 2:
        raise SpecError("params.classes", "expected at least two distinct labels")
    if algorithm == "logistic" and len(labels) != 2:
        raise SpecError("params.classes", "logistic is binary: use multinomial")
    if algorithm == "multinomial" and len(labels) < 3:
        raise SpecError("params.classes", "multinomial needs 3 or more classes")
    return labels


def _model(
    raw: Mapping[str, Any], algorithm: str, features: int, classes: int
) -> Model:
    if algorithm == "linear":
        return Model("regression", features)
    task: Task = "binary" if classes == 2 else "multiclass"
    if algorithm in ("logistic", "multinomial"):
        return Model(task, features, classes)
    hidden = raw.get("hidden", 8)
    activation = raw.get("activation", "tanh")
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise SpecError("params.hidden", "expected a positive number of hidden units")
    if classes == 0:
        return Model("regression", features, 0, hidden, activation)
    return Model(task, features, classes, hidden, activation)


def _feature_bounds(
    value: Any, features: Sequence[str]
) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, Mapping):
        raise SpecError(
            "params.feature_bounds", "required: public [low, high] per feature"
        )
    extra = sorted(set(value) - set(features))
    if extra:
        raise SpecError(f"params.feature_bounds.{extra[0]}", "not a feature")
    out = []
    for name in features:
        pair = _pair(value.get(name), f"feature_bounds.{name}")
        if pair is None:
            raise SpecError(f"params.feature_bounds.{name}", "required")
        out.append(pair)
    return tuple(out)


def _pair(value: Any, where: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        )
    ):
        raise SpecError(f"params.{where}", "expected [low, high]")
    return (float(value[0]), float(value[1]))


def _local(value: Any) -> LocalTraining:
    if not isinstance(value, Mapping):
        raise SpecError("params.local", "expected a mapping")
    unknown = sorted(set(value) - _LOCAL_KEYS)
    if unknown:
        raise SpecError(f"params.local.{unknown[0]}", "unknown field")
    return LocalTraining(**value)


def _dp(value: Any) -> DPConfig | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SpecError("params.dp", "expected {epsilon, delta}")
    unknown = sorted(set(value) - _DP_KEYS)
    if unknown:
        raise SpecError(f"params.dp.{unknown[0]}", "unknown field")
    if "epsilon" not in value or "delta" not in value:
        raise SpecError("params.dp", "epsilon and delta are required")
    return DPConfig(**value)
