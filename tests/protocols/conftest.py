"""Shared fixtures for protocol tests: keys, models and runs made once per session."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocols.ckks import CkksBuyer, InferenceConfig, plan_inference
from protocols.models import (
    InputSchema,
    ModelAsset,
    ModelCard,
    fit_poly_mlp,
    from_sklearn,
    standardiser,
)
from protocols.paillier import KeyPair, generate_keypair
from protocols.party import Outbound
from protocols.secagg import SecAggClient, SecAggConfig, SecAggServer
from protocols.secagg.simulate import build_session

NAMES = tuple(f"p{i:02d}" for i in range(24))

Session = tuple[SecAggConfig, dict[str, np.ndarray]]
MakeSession = Callable[..., Session]
BuildParties = Callable[
    [SecAggConfig, dict[str, np.ndarray]], tuple[SecAggServer, dict[str, SecAggClient]]
]


@pytest.fixture(scope="session")
def secagg_identities() -> dict[str, Ed25519PrivateKey]:
    return {name: Ed25519PrivateKey.generate() for name in NAMES}


@pytest.fixture(scope="session")
def make_session() -> MakeSession:
    """``make_session(n, d=16, bits=64, seed=0, **config)`` -> (config, inputs).

    A k-regular session gets a fixed test graph seed unless ``config`` names one.
    """

    def make(
        n: int, d: int = 16, bits: int = 64, seed: int = 0, **config: object
    ) -> Session:
        if config.get("graph") == "k-regular":
            config.setdefault("graph_seed", bytes([seed]) * 32)
        cfg = SecAggConfig.create(
            session_id=f"job-{n}-{d}-{bits}-{seed}",
            parties=NAMES[:n],
            vector_length=d,
            modulus_bits=bits,  # type: ignore[arg-type]
            **config,  # type: ignore[arg-type]
        )
        rng = np.random.default_rng(seed)
        inputs = {p: rng.integers(0, 2**bits, d, dtype=cfg.dtype) for p in cfg.parties}
        return cfg, inputs

    return make


@pytest.fixture(scope="session")
def build_parties(secagg_identities: dict[str, Ed25519PrivateKey]) -> BuildParties:
    """Honest coordinator and clients for a config, using the session's identities."""

    def build(
        cfg: SecAggConfig, inputs: dict[str, np.ndarray]
    ) -> tuple[SecAggServer, dict[str, SecAggClient]]:
        ids = {p: secagg_identities[p] for p in cfg.parties}
        return build_session(inputs, cfg, identities=ids)

    return build


# CKKS private inference: models trained and runs planned once per session.


@pytest.fixture(scope="session")
def breast_cancer() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return data.data, data.target, list(data.feature_names)


@pytest.fixture(scope="session")
def logistic_model(
    breast_cancer: tuple[np.ndarray, np.ndarray, list[str]],
) -> ModelAsset:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, names = breast_cancer
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    card = ModelCard.of("breast cancer", provenance="sklearn breast_cancer, C=1")
    return from_sklearn(
        pipe, feature_names=names, model_id="bc-lr", version="1", card=card
    )


@pytest.fixture(scope="session")
def mlp_model(breast_cancer: tuple[np.ndarray, np.ndarray, list[str]]) -> ModelAsset:
    x, y, names = breast_cancer
    mean, scale = standardiser(x)
    params = fit_poly_mlp((x - mean) / scale, y, task="binary", hidden=4, seed=1)
    return ModelAsset(
        kind="poly_mlp",
        model_id="bc-mlp",
        version="1",
        schema=InputSchema(tuple(names), mean, scale),
        card=ModelCard.of("breast cancer MLP", provenance="fit_poly_mlp seed=1"),
        parameters=params,
        link="logistic",
    )


@pytest.fixture(scope="session")
def logistic_config(
    logistic_model: ModelAsset, breast_cancer: tuple[np.ndarray, np.ndarray, list[str]]
) -> InferenceConfig:
    return plan_inference(
        logistic_model,
        session_id="run-lr",
        buyer="bank",
        owner="clinic",
        row_count=len(breast_cancer[0]),
    )


@pytest.fixture(scope="session")
def logistic_messages(
    logistic_config: InferenceConfig,
    breast_cancer: tuple[np.ndarray, np.ndarray, list[str]],
) -> list[Outbound]:
    """What an honest buyer sends for the logistic run: context, then one batch."""
    return CkksBuyer("bank", logistic_config, breast_cancer[0]).start()


@pytest.fixture(scope="session")
def paillier_keys() -> KeyPair:
    """One 3072-bit Paillier key pair for the whole session (generation is slow)."""
    return generate_keypair()


@pytest.fixture(scope="session")
def other_paillier_keys() -> KeyPair:
    """A second 3072-bit key pair, for ciphertexts under another key."""
    return generate_keypair()
