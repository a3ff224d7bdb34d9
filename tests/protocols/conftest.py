"""Shared fixtures for protocol tests: identity keys made once per test session."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

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
