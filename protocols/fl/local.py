"""A node's local step: mini-batch SGD (optionally FedProx), or, under row-level DP, one
sum of per-example clipped gradients encoded row by row.

Shuffling uses numpy's PCG64 seeded from the node's 32-byte seed (drawn from the
node's CSPRNG unless a test injects one), mixed with the round number through a
``SeedSequence``. A non-cryptographic generator is fine for this and only this:
the batch order is never released, nothing in the protocol's guarantees depends
on it staying secret (no privacy amplification by shuffling or subsampling is
claimed), and an adversary predicting it learns which of the node's own rows
shared a batch, nothing about their values. Noise is another matter: DP noise
must be unpredictable (PCG64's state follows from a few outputs, and whoever can
predict the noise can subtract it) and exactly distributed (floating-point
Gaussians leak through their low bits), so it comes from ``protocols.dp``'s exact
discrete Gaussian over the injected CSPRNG, never from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ConfigError, ProtocolError
from protocols.fl.checks import check_int, check_real
from protocols.fl.models import Matrix, Model, Vector

SEED_BYTES: Final = 32
_CHUNK_VALUES: Final = 1 << 20
"""Per-example gradients are materialised at most this many floats at a time."""


@dataclass(frozen=True)
class LocalTraining:
    """How a node trains from the round's global model: ``epochs`` passes of
    mini-batch SGD with step ``learning_rate * learning_rate_decay**(round - 1)``.

    ``proximal_mu > 0`` is FedProx: each step also pulls towards the round's global
    model with the gradient of ``mu / 2 * ||w - w_global||^2``, which limits how far
    nodes with skewed data drift apart within a round.
    """

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.1
    learning_rate_decay: float = 1.0
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        check_int("local.epochs", self.epochs, 1, 1000)
        check_int("local.batch_size", self.batch_size, 1, 1 << 20)
        check_real("local.learning_rate", self.learning_rate, 0, 1e3, open_low=True)
        check_real(
            "local.learning_rate_decay", self.learning_rate_decay, 0, 1, open_low=True
        )
        check_real("local.proximal_mu", self.proximal_mu, 0, 1e6)

    def step_size(self, round_index: int) -> float:
        return self.learning_rate * self.learning_rate_decay ** (round_index - 1)


def round_generator(seed: bytes, round_index: int) -> np.random.Generator:
    """The node's shuffling generator for one round (see the module docstring)."""
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ConfigError(f"the shuffling seed must be {SEED_BYTES} bytes")
    entropy = int.from_bytes(seed, "little")
    sequence = np.random.SeedSequence(entropy, spawn_key=(round_index,))
    return np.random.Generator(np.random.PCG64(sequence))


def train_locally(
    model: Model,
    w_global: Vector,
    x: Matrix,
    y: Vector,
    config: LocalTraining,
    *,
    l2: float,
    rng: np.random.Generator,
    round_index: int,
) -> Vector:
    """The node's model after ``config.epochs`` of mini-batch SGD from ``w_global``.

    May return non-finite values when the step size is too large; the caller
    reports that as divergence rather than encoding it.
    """
    w = w_global.copy()
    n = len(y)
    if n == 0:
        return w
    step = config.step_size(round_index)
    mu = config.proximal_mu
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(config.epochs):
            order = rng.permutation(n)
            for start in range(0, n, config.batch_size):
                batch = order[start : start + config.batch_size]
                grad = model.gradient(w, x[batch], y[batch], l2)
                if mu:
                    grad = grad + mu * (w - w_global)
                w = w - step * grad
                if not np.all(np.isfinite(w)):
                    return w
    return w


def clip_l2(v: Vector, bound: float) -> Vector:
    """``v`` scaled down to L2 norm ``bound`` if longer (a projection: 1-Lipschitz)."""
    norm = float(np.linalg.norm(v))
    return v if norm <= bound else np.asarray(v * (bound / norm))


def clipped_gradient_units(
    model: Model, w: Vector, x: Matrix, y: Vector, *, clip: float, scale_bits: int
) -> npt.NDArray[np.int64]:
    """Sum over rows of round(2^scale_bits * g_j), g_j row j's loss gradient scaled to
    L2 norm at most ``clip``: exact integer arithmetic, so adding or removing one row
    changes the result by exactly that row's own encoded term, whose L2 norm is at
    most ``2^scale_bits * clip + sqrt(n_params) / 2`` whatever the other rows are.
    """
    total = np.zeros(model.n_params, dtype=np.int64)
    scale = float(2**scale_bits)
    chunk = max(1, _CHUNK_VALUES // model.n_params)
    for start in range(0, len(y), chunk):
        grads = model.example_gradients(
            w, x[start : start + chunk], y[start : start + chunk]
        )
        if not np.all(np.isfinite(grads)):
            raise ProtocolError("a per-example gradient is not finite")
        norms = np.linalg.norm(grads, axis=1)
        factors = np.minimum(1.0, clip / np.maximum(norms, np.finfo(float).tiny))
        total += np.rint(grads * (factors * scale)[:, None]).astype(np.int64).sum(0)
    return total


def row_units(values: Vector, scale_bits: int) -> int:
    """Sum over rows of round(2^scale_bits * value): exact, per-row encoded."""
    return int(np.rint(values * float(2**scale_bits)).astype(np.int64).sum())
