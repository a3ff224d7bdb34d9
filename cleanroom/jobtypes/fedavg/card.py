"""A trained model's card for the coordinator's registry (from the spec and the
signed release: no weights), the export file the analyst writes from its sealed
reading, and the loader that rebuilds a fitted scikit-learn estimator from that
file (plain JSON: nothing is unpickled)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np

from cleanroom.errors import ConfigError
from cleanroom.jobspec import JobSpec
from cleanroom.jobtypes.fedavg.params import FedSpec
from protocols.fl.export import Estimator, raw_layers, to_sklearn
from protocols.fl.models import Model
from protocols.fl.standardise import Standardisation

FORMAT: Final = "cleanroom-fedavg-model/v1"
_HYPER: Final = (
    "rounds", "local", "l2", "server_learning_rate", "validation_fraction",
    "update_clip", "loss_clip", "patience", "min_improvement", "threshold",
    "hidden", "activation", "dp", "max_rows",
)  # fmt: skip


def model_card(
    spec: FedSpec, job: JobSpec, document: Mapping[str, Any]
) -> dict[str, Any]:
    """The registry entry of a released training job: what went in, how it was
    trained, what it scored, what it cost and who signed it."""
    result = document.get("result", {})
    provenance = document.get("provenance", {})
    history = list(result.get("history", []))
    epsilon, delta = spec.epsilon
    return {
        "job_id": document.get("job_id"),
        "job_type": job.type,
        "purpose": job.purpose,
        "inputs": [{"node": i.node, "dataset": i.dataset} for i in job.inputs],
        "columns": {"features": list(spec.features), "label": spec.label},
        "algorithm": spec.algorithm,
        "task": spec.model.task,
        "classes": list(spec.classes),
        "hyperparameters": {k: spec.raw[k] for k in _HYPER if k in spec.raw},
        "rounds_run": result.get("rounds_run"),
        "stop_reason": result.get("stop_reason"),
        "survivors": list(result.get("survivors", [])),
        "final_metrics": history[-1] if history else None,
        "metrics": history,
        "epsilon": {"charged": epsilon, "delta": delta},
        "audit": {
            "output_hash": provenance.get("output_hash"),
            "coordinator_head": provenance.get("coordinator_head"),
            "releases": [
                {"node": a.get("node"), "signature": a.get("signature")}
                for a in provenance.get("attestations", [])
            ],
        },
        "weights": "sealed to the analyst (job result)",
    }


def export_document(reading: Mapping[str, Any]) -> dict[str, Any]:
    """The export file's content from the analyst's reading of the result."""
    model = reading.get("model")
    if not isinstance(model, Mapping) or model.get("format") != FORMAT:
        raise ConfigError("this result holds no fedavg model")
    doc = dict(model)
    shape, std = model_and_standardisation(doc)
    layers = raw_layers(shape, np.asarray(doc["weights"], dtype=np.float64), std)
    # The same model on raw rows, layer by layer (``x @ coef + intercept``), for
    # readers without cleanroom: scikit-learn's coef_ is the transpose.
    doc["raw_layers"] = [
        {"coef": w.tolist(), "intercept": b.tolist()} for w, b in layers
    ]
    return doc


def model_and_standardisation(
    doc: Mapping[str, Any],
) -> tuple[Model, Standardisation]:
    """The model's shape and released standardisation from an export document."""
    if doc.get("format") != FORMAT:
        raise ConfigError(f"not a {FORMAT} file")
    try:
        model = Model(
            doc["task"],
            len(doc["features"]),
            int(doc["n_classes"]),
            int(doc["hidden"]),
            doc["activation"],
        )
        s = doc["standardisation"]
        std = Standardisation(
            tuple(float(v) for v in s["mean"]),
            tuple(float(v) for v in s["scale"]),
            float(s["train_rows"]),
            float(s["val_rows"]),
            float(s["target_mean"]),
            float(s["target_scale"]),
            float(s["val_target_sst"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"malformed model file: {exc}") from None
    return model, std


def estimator_from_document(doc: Mapping[str, Any]) -> Estimator:
    """A fitted scikit-learn estimator that predicts as the federated model."""
    model, std = model_and_standardisation(doc)
    weights = np.asarray(doc["weights"], dtype=np.float64)
    classes = list(doc["classes"]) or None
    return to_sklearn(model, weights, std, classes)


def load_model(path: str | Path) -> Estimator:
    """Load an exported file (``cleanroom model export``) as a fitted estimator:
    ``load_model("model.json").predict(rows)``."""
    return estimator_from_document(json.loads(Path(path).read_text()))
