"""Model assets for private inference: format, sklearn import, trainer, reference."""

from protocols.models.asset import (
    InputSchema,
    LinearParameters,
    ModelAsset,
    ModelCard,
    Origin,
    PolyMLPParameters,
)
from protocols.models.codec import content_hash, dump_model, load_model
from protocols.models.reference import apply_link, decision_function, predict
from protocols.models.sklearn_import import from_sklearn
from protocols.models.train import fit_poly_mlp, standardiser

__all__ = [
    "InputSchema",
    "LinearParameters",
    "ModelAsset",
    "ModelCard",
    "Origin",
    "PolyMLPParameters",
    "apply_link",
    "content_hash",
    "decision_function",
    "dump_model",
    "fit_poly_mlp",
    "from_sklearn",
    "load_model",
    "predict",
    "standardiser",
]
