"""``cleanroom model export`` for fedavg models: the formats the analyst can write
from its sealed reading.

- ``json`` (default): the cleanroom model file (``card.export_document``), loaded
  as a fitted scikit-learn estimator by ``card.load_model``.
- ``onnx``: a hand-built float64 ONNX graph (``protocols.fl.onnx_export``) for
  onnxruntime or any ONNX runtime.
- ``he-asset``: the ``he_inference`` model asset file (``protocols.models.codec``,
  documented in docs/he.md) of a binary logistic or linear regression model, with
  its ``origin``: the training job and every input it learned from, so that the
  holder who registers it can be required to name the other holders' consent.
  Multinomial models (one output per class) and tanh/ReLU MLPs have no
  he_inference form and are refused: he_inference serves one score per row and
  polynomial activations only.

Every format takes the standardisation the nodes released; none clips rows to
the public feature bounds, so each predicts as the federated model on rows inside
them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from cleanroom.errors import ConfigError, DatasetError, SpecError
from cleanroom.jobspec import JobSpec
from cleanroom.jobtypes.fedavg.card import export_document, model_and_standardisation
from protocols.fl.onnx_export import to_onnx
from protocols.models.asset import (
    InputSchema,
    LinearParameters,
    ModelAsset,
    ModelCard,
    Origin,
)
from protocols.models.codec import dump_model

FORMATS: Final = ("json", "onnx", "he-asset")


def export(
    reading: Mapping[str, Any],
    fmt: str | None,
    spec: JobSpec | None,
    job_id: str,
) -> bytes:
    """The exported file's bytes in ``fmt`` (default ``json``)."""
    fmt = fmt or FORMATS[0]
    if fmt not in FORMATS:
        raise SpecError("format", f"fedavg models export as {', '.join(FORMATS)}")
    doc = export_document(reading)
    if fmt == "json":
        return json.dumps(doc, indent=1).encode()
    if fmt == "onnx":
        return onnx_bytes(doc, job_id)
    if spec is None or not job_id:
        raise SpecError("format", "he-asset export needs the job's spec and id")
    history = reading.get("history")
    final = history[-1] if isinstance(history, list) and history else None
    document, arrays = dump_model(he_asset(doc, spec, job_id, final))
    assert arrays is None  # every array inline
    return document


def onnx_bytes(doc: Mapping[str, Any], job_id: str = "") -> bytes:
    model, std = model_and_standardisation(doc)
    metadata = {
        "cleanroom.format": str(doc["format"]),
        "cleanroom.features": json.dumps(list(doc["features"])),
    }
    if job_id:
        metadata["cleanroom.job_id"] = job_id
    return to_onnx(
        model,
        np.asarray(doc["weights"], dtype=np.float64),
        std,
        list(doc["classes"]) or None,
        metadata=metadata,
    )


def he_asset(
    doc: Mapping[str, Any],
    spec: JobSpec,
    job_id: str,
    final_metrics: Mapping[str, Any] | None = None,
) -> ModelAsset:
    """The he_inference asset of a binary logistic or a linear regression model:
    weights on standardised rows, the standardisation in the input schema."""
    model, std = model_and_standardisation(doc)
    if model.hidden:
        raise SpecError(
            "format",
            "he-asset takes logistic or linear models: he_inference evaluates "
            "polynomial activations only, this MLP uses " + model.activation,
        )
    if model.task == "multiclass":
        raise SpecError(
            "format", "he-asset takes binary or regression models: one score per row"
        )
    (layer,) = model.layers
    weights, bias = layer.unpack(np.asarray(doc["weights"], dtype=np.float64))
    coef, intercept = weights[:, 0], float(bias[0])
    if model.task == "regression":  # the nodes trained on the standardised target
        coef = coef * std.target_scale
        intercept = intercept * std.target_scale + std.target_mean
    metrics = _metrics(final_metrics)
    inputs = tuple((i.node, i.dataset) for i in spec.inputs)
    holders = ", ".join(dict.fromkeys(n for n, _ in inputs))
    try:
        return ModelAsset(
            kind="logistic_regression"
            if model.task == "binary"
            else "linear_regression",
            model_id=f"fedavg-{job_id}"[:255],
            version="1",
            schema=InputSchema(
                tuple(doc["features"]),
                np.array(std.mean, dtype=np.float64),
                np.array(std.scale, dtype=np.float64),
            ),
            card=ModelCard.of(
                f"fedavg {doc['algorithm']} on {doc['label']}"[:255],
                description=(spec.purpose or "")[:4096],
                provenance=(
                    f"fedavg job {job_id}, trained on the data of {holders}; "
                    "serving it needs every one of them to agree"
                )[:4096],
                metrics=metrics,
            ),
            parameters=LinearParameters(coef, intercept),
            link="logistic" if model.task == "binary" else "identity",
            origin=Origin("fedavg", job_id, inputs),
        )
    except DatasetError as exc:  # the asset's own checks (names, sizes)
        raise ConfigError(f"cannot write an he-asset from this model: {exc}") from None


def _metrics(final: Mapping[str, Any] | None) -> dict[str, float]:
    """The last round's metrics for the card (the analyst's reading has them)."""
    if not isinstance(final, Mapping):
        return {}
    return {
        k: float(v)
        for k, v in final.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)
    }
