"""One encrypted gradient step of vertical logistic regression, with packed Paillier.

The guest (label holder) owns the key. Per mini-batch of B aligned rows:

    guest: [[d]] = Enc(round(d_i * 2^RESIDUAL_BITS)), one value per ciphertext,
           d_i = w_i (sigmoid(z_i) - y_i) the weighted residual
    host:  [[g]] = sum_i [[d_i]] * round(x_ij * 2^FEATURE_BITS)   (``dot``: packed,
           one exponentiation per row for up to ``slots`` features)
           [[g + r]], r_j uniform in [0, 2^(b + MASK_BITS)) where b bounds |g_j|;
           re-randomised before it leaves
    guest: decrypts g + r (it learns nothing of g: r hides it statistically, with
           distance at most 2^-MASK_BITS) and returns it
    host:  g = (g + r) - r, scaled back: the host's own gradient, in the clear only
           on the host

Security rests on the Paillier assumptions in :mod:`protocols.paillier` (DCR, DJN
short exponents) and on the statistical mask. Every received vector is parsed
against the expected key, layout and context (job, epoch, batch, direction) and
its declared bound is checked against what an honest host can produce, before
any decryption; a decrypted slot outside that bound is refused.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ProtocolError
from protocols.paillier import (
    EncryptedVector,
    Encryptor,
    PackingLayout,
    PrivateKey,
    PublicKey,
    decrypt_vector,
    dot,
    vector_from_bytes,
)
from protocols.party import SYSTEM_RANDOM, RandomSource

RESIDUAL_BITS: Final = 24
"""Fixed-point scale of the residuals (|d_i| <= max class weight <= 2^RESIDUAL_CAP)."""
RESIDUAL_CAP_BITS: Final = 4
"""Residuals (class weight times (p - y)) are clipped to |d| < 2^4."""
FEATURE_BITS: Final = 16
"""Fixed-point scale of the standardised features."""
FEATURE_CLIP: Final = 8.0
"""Standardised features are clipped to [-8, 8] before encoding (8 standard
deviations: rows beyond it are rare and would otherwise widen every slot)."""
MASK_BITS: Final = 40
"""Statistical distance of the masked gradient from uniform: 2^-40."""
MAX_BATCH: Final = 1 << 16


@dataclass(frozen=True)
class GradientLayout:
    """The packing both sides use for a batch of up to ``max_batch`` rows."""

    key_bits: int
    max_batch: int

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise ProtocolError(f"batch size must be in 1..{MAX_BATCH}")

    @property
    def residual_bits(self) -> int:
        return RESIDUAL_BITS + RESIDUAL_CAP_BITS + 2

    @property
    def feature_max(self) -> int:
        return int(FEATURE_CLIP * (1 << FEATURE_BITS))

    @property
    def gradient_bound(self) -> int:
        """The largest |g_j| an honest host's dot product can reach."""
        return self.residual_max * self.max_batch * self.feature_max

    @property
    def mask_range(self) -> int:
        return 1 << (self.gradient_bound.bit_length() + MASK_BITS)

    @property
    def residual_max(self) -> int:
        """The largest |encoded residual| (the residuals' true bound)."""
        return (1 << (self.residual_bits - 1)) - 1

    @property
    def packing(self) -> PackingLayout:
        # A slot must hold the gradient bound plus the mask. The layout's
        # ``additions`` is capped (2^40), so its value width grows instead; the
        # host then tightens the residuals' declared bound to ``residual_max``.
        needed = self.gradient_bound + self.mask_range
        value_bits = max(self.residual_bits, needed.bit_length() - 38)
        value_max = (1 << (value_bits - 1)) - 1
        return PackingLayout(self.key_bits, value_bits, -(-needed // value_max))


def encode_features(x: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Standardised features as fixed-point integers (clipped, see FEATURE_CLIP)."""
    clipped = np.clip(x, -FEATURE_CLIP, FEATURE_CLIP)
    return np.rint(clipped * (1 << FEATURE_BITS)).astype(np.int64)


def encrypt_residuals(
    encryptor: Encryptor,
    layout: GradientLayout,
    residuals: npt.NDArray[np.float64],
    *,
    context: bytes,
) -> bytes:
    """The guest's [[d]] for one batch, serialised and bound to ``context``."""
    if len(residuals) > layout.max_batch:
        raise ProtocolError("the batch is larger than the layout allows")
    cap = float(1 << RESIDUAL_CAP_BITS) - 2.0**-RESIDUAL_BITS
    scaled = np.rint(np.clip(residuals, -cap, cap) * (1 << RESIDUAL_BITS))
    vector = encryptor.encrypt_integers(
        scaled.astype(np.int64), layout.packing, path="residuals", packed=False
    )
    return encryptor.to_bytes(vector, context=context)


class HostGradient:
    """The host's side of one batch: dot, mask, and later unmask.

    Build it with the host's encoded feature rows of the batch; ``masked`` gives
    the bytes for the guest, ``unmask`` turns the guest's answer into the host's
    gradient (the mean over the batch, as reals).
    """

    def __init__(
        self,
        key: PublicKey,
        layout: GradientLayout,
        features: npt.NDArray[np.int64],
        *,
        random: RandomSource = SYSTEM_RANDOM,
    ) -> None:
        self._key, self._layout = key, layout
        self._features = features
        self._encryptor = Encryptor(key, random=random)
        self._random = random
        self._mask: list[int] | None = None

    def masked(self, residual_bytes: bytes, *, context: bytes, reply: bytes) -> bytes:
        """[[X^T d + r]] for the guest, from the guest's residual bytes."""
        rows = self._features.shape[0]
        residuals = vector_from_bytes(
            residual_bytes,
            self._key,
            self._layout.packing,
            context=context,
            max_length=rows,
        )
        if residuals.length != rows or residuals.packed:
            raise ProtocolError("the residuals do not match the batch")
        # Semi-honest guest: its residuals are within RESIDUAL_CAP (see module).
        residuals = replace(residuals, bound=self._layout.residual_max)
        gradient = dot(residuals, self._features, path="features")
        span = self._layout.mask_range
        self._mask = [
            int.from_bytes(self._random((span.bit_length() + 7) // 8), "big") % span
            for _ in range(gradient.length)
        ]
        masked = _add_plain(gradient, self._mask, self._layout)
        return self._encryptor.to_bytes(masked, context=reply)

    def unmask(self, masked_values: Sequence[int], batch_rows: int) -> np.ndarray:
        """The host's mean gradient over the batch, from the guest's decryption."""
        mask = self._mask
        if mask is None:
            raise ProtocolError("no masked gradient is outstanding")
        if len(masked_values) != len(mask):
            raise ProtocolError("the unmasked gradient has the wrong length")
        self._mask = None
        bound = self._layout.gradient_bound
        values = []
        for v, r in zip(masked_values, mask, strict=True):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ProtocolError("the unmasked gradient must hold integers")
            g = v - r
            if abs(g) > bound:
                raise ProtocolError("the unmasked gradient is out of range")
            values.append(g)
        scale = float(1 << (RESIDUAL_BITS + FEATURE_BITS)) * batch_rows
        return np.array(values, dtype=np.float64) / scale


def decrypt_masked(
    private: PrivateKey,
    layout: GradientLayout,
    data: bytes,
    *,
    features: int,
    context: bytes,
) -> list[int]:
    """The guest decrypts a host's masked gradient: ``features`` masked integers.

    Refused before decryption unless it is under the guest's key, for this
    context and layout, holds exactly ``features`` packed values and declares no
    larger bound than an honest host's.
    """
    vector = vector_from_bytes(
        data, private.public, layout.packing, context=context, max_length=features
    )
    if vector.length != features or not vector.packed:
        raise ProtocolError("the masked gradient has the wrong shape")
    if vector.bound > layout.gradient_bound + layout.mask_range:
        raise ProtocolError("the masked gradient declares a bound beyond the layout")
    return decrypt_vector(private, vector)


def _add_plain(
    vector: EncryptedVector, values: Sequence[int], layout: GradientLayout
) -> EncryptedVector:
    """[[v + m]] slot-wise for plaintext ``m`` (0 <= m < mask_range): multiplying by
    (1 + M n) adds the packed M; the result is re-randomised before sending."""
    packing = vector.layout
    bound = vector.bound + layout.mask_range
    if bound > packing.capacity:
        raise ProtocolError("the masked gradient would overflow its slots")
    n, nsquare = vector.key.n, vector.key.nsquare
    plains = packing.pack(list(values), int(n), packed=True)
    ciphertexts = [
        c * (1 + int(m) * n) % nsquare
        for c, m in zip(vector.ciphertexts, plains, strict=True)
    ]
    return vector.derived(ciphertexts, bound)


def random_seed() -> bytes:
    """A fresh 32-byte seed (batch order); from the OS CSPRNG."""
    return secrets.token_bytes(32)
