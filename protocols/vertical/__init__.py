"""Vertical (column-split) logistic regression: the encrypted-gradient exchange of
Hardy et al. 2017 / FATE hetero-LR with the guest's packed Paillier key
(:mod:`protocols.vertical.gradient`) and the plaintext model maths every party
runs on its own columns (:mod:`protocols.vertical.logistic`)."""

from protocols.vertical.gradient import (
    FEATURE_BITS,
    FEATURE_CLIP,
    RESIDUAL_BITS,
    GradientLayout,
    HostGradient,
    decrypt_masked,
    encrypt_residuals,
)
from protocols.vertical.logistic import (
    Standardizer,
    auc,
    batches,
    log_loss,
    sigmoid,
    train_plaintext,
)

__all__ = [
    "FEATURE_BITS",
    "FEATURE_CLIP",
    "RESIDUAL_BITS",
    "GradientLayout",
    "HostGradient",
    "Standardizer",
    "auc",
    "batches",
    "decrypt_masked",
    "encrypt_residuals",
    "log_loss",
    "sigmoid",
    "train_plaintext",
]
