"""Params of ``vertical_logreg`` and ``vertical_predict``, checked and typed once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cleanroom.catalog import NUMERIC_TYPES, DatasetInfo
from cleanroom.errors import SpecError
from cleanroom.jobspec import JobInput, JobSpec

GRADIENTS: Final = ("ckks", "paillier")
"""How hosts' gradients are computed under the guest's key (see docs/vertical.md)."""
KEY_BITS: Final = (2048, 3072, 4096)
"""2048 only where every node's ``allow_legacy_2048`` setting allows it (tests)."""
MAX_EPOCHS: Final = 1000
MAX_PREDICT_IDS: Final = 100_000


@dataclass(frozen=True)
class TrainParams:
    guest: str
    label: str
    features: Mapping[str, tuple[str, ...]]
    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 0.5
    l2: float = 1e-3
    class_weight: str = "none"
    validation_fraction: float = 0.2
    patience: int = 2
    min_delta: float = 1e-4
    key_bits: int = 3072
    gradient: str = "ckks"

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(sorted(n for n in self.features if n != self.guest))


@dataclass(frozen=True)
class PredictParams:
    guest: str
    model: str
    ids: tuple[str, ...]


_TRAIN_KEYS: Final = {
    "guest",
    "label",
    "features",
    "epochs",
    "batch_size",
    "learning_rate",
    "l2",
    "class_weight",
    "validation_fraction",
    "early_stopping",
    "key_bits",
    "gradient",
}


def parse_train(spec: JobSpec) -> TrainParams:
    raw = spec.params
    _no_extra(raw, _TRAIN_KEYS)
    guest = _guest(raw, spec)
    label = _name(raw.get("label"), "params.label")
    features_raw = raw.get("features")
    if not isinstance(features_raw, Mapping) or set(features_raw) != set(spec.nodes):
        raise SpecError(
            "params.features", "expected a list of feature columns for every input"
        )
    features: dict[str, tuple[str, ...]] = {}
    seen: set[str] = set()
    for node in spec.nodes:
        columns = features_raw[node]
        path = f"params.features.{node}"
        if not isinstance(columns, list) or not 1 <= len(columns) <= 1000:
            raise SpecError(path, "expected 1..1000 column names")
        names = tuple(_name(c, f"{path}[{i}]") for i, c in enumerate(columns))
        if len(set(names)) != len(names):
            raise SpecError(path, "a column is named twice")
        if label in names:
            raise SpecError(path, f"the label '{label}' cannot be a feature")
        features[node] = names
        seen |= set(names)
    stopping = raw.get("early_stopping", {})
    if not isinstance(stopping, Mapping) or set(stopping) - {"patience", "min_delta"}:
        raise SpecError("params.early_stopping", "expected {patience, min_delta}")
    class_weight = raw.get("class_weight", "none")
    if class_weight not in ("none", "balanced"):
        raise SpecError("params.class_weight", "expected 'none' or 'balanced'")
    key_bits = raw.get("key_bits", 3072)
    if key_bits not in KEY_BITS or isinstance(key_bits, bool):
        raise SpecError("params.key_bits", f"expected one of {KEY_BITS}")
    gradient = raw.get("gradient", "ckks")
    if gradient not in GRADIENTS:
        raise SpecError("params.gradient", f"expected one of {', '.join(GRADIENTS)}")
    params = TrainParams(
        guest=guest,
        label=label,
        features=features,
        epochs=_int(raw.get("epochs", 10), "params.epochs", 1, MAX_EPOCHS),
        batch_size=_int(raw.get("batch_size", 256), "params.batch_size", 8, 1 << 16),
        learning_rate=_real(raw.get("learning_rate", 0.5), "params.learning_rate"),
        l2=_real(raw.get("l2", 1e-3), "params.l2", low=0.0),
        class_weight=str(class_weight),
        validation_fraction=_real(
            raw.get("validation_fraction", 0.2),
            "params.validation_fraction",
            low=0.0,
            high=0.5,
        ),
        patience=_int(
            stopping.get("patience", 2), "params.early_stopping.patience", 1, MAX_EPOCHS
        ),
        min_delta=_real(
            stopping.get("min_delta", 1e-4), "params.early_stopping.min_delta", low=0.0
        ),
        key_bits=int(key_bits),
        gradient=str(gradient),
    )
    if not params.hosts:
        raise SpecError("inputs", "a vertical job needs a guest and at least one host")
    return params


def check_train_catalog(
    params: TrainParams, catalog: Mapping[JobInput, DatasetInfo]
) -> None:
    """Each input's columns against its own schema (a node passes only its own)."""
    for item, info in catalog.items():
        types = info.column_types()
        base = f"params.features.{item.node}"
        _check_id(info, item)
        for i, column in enumerate(params.features.get(item.node, ())):
            if types.get(column) not in NUMERIC_TYPES:
                raise SpecError(
                    f"{base}[{i}]", f"dataset '{info.name}' has no numeric '{column}'"
                )
            if column == info.id_column:
                raise SpecError(f"{base}[{i}]", "the id column cannot be a feature")
        if item.node == params.guest:
            if types.get(params.label) not in NUMERIC_TYPES:
                raise SpecError(
                    "params.label",
                    f"the guest's dataset '{info.name}' has no label '{params.label}'",
                )


def parse_predict(spec: JobSpec) -> PredictParams:
    raw = spec.params
    _no_extra(raw, {"guest", "model", "ids"})
    guest = _guest(raw, spec)
    model = _name(raw.get("model"), "params.model")
    ids = raw.get("ids")
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_PREDICT_IDS:
        raise SpecError("params.ids", f"expected 1..{MAX_PREDICT_IDS} ids")
    texts = tuple(_name(str(v), f"params.ids[{i}]") for i, v in enumerate(ids))
    if len(set(texts)) != len(texts):
        raise SpecError("params.ids", "an id is listed twice")
    if len(spec.nodes) < 2:
        raise SpecError("inputs", "a vertical job needs a guest and at least one host")
    return PredictParams(guest, model, texts)


def check_ids(catalog: Mapping[JobInput, DatasetInfo]) -> None:
    for item, info in catalog.items():
        _check_id(info, item)


def _check_id(info: DatasetInfo, item: JobInput) -> None:
    if not info.id_column:
        raise SpecError(
            "inputs", f"dataset '{info.name}' of '{item.node}' declares no id column"
        )


def _guest(raw: Mapping[str, Any], spec: JobSpec) -> str:
    guest = _name(raw.get("guest"), "params.guest")
    if guest not in spec.nodes:
        raise SpecError("params.guest", f"'{guest}' is not an input of this job")
    return guest


def _no_extra(raw: Mapping[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(raw) - allowed)
    if extra:
        raise SpecError(
            f"params.{extra[0]}",
            f"unknown parameter (allowed: {', '.join(sorted(allowed))})",
        )


def _name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise SpecError(path, "expected a non-empty name")
    return value.strip()


def _int(value: Any, path: str, low: int, high: int) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not low <= value <= high
    ):
        raise SpecError(path, f"expected an integer in {low}..{high}")
    return value


def _real(value: Any, path: str, *, low: float = 1e-9, high: float = 100.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(path, "expected a number")
    if not low <= float(value) <= high:
        raise SpecError(path, f"expected a number in [{low:g}, {high:g}]")
    return float(value)


def used_by(params: TrainParams, node: str) -> Sequence[str]:
    """The columns ``node`` reads: its features, and the label on the guest."""
    own = list(params.features.get(node, ()))
    return [*own, params.label] if node == params.guest else own
