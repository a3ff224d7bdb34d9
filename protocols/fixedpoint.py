"""Fixed-point encoding of real vectors into Z_(2^bits) for secure summation."""

from __future__ import annotations

from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ConfigError, ProtocolError
from protocols.prg import MaskVector, mask_dtype

ClipMode = Literal["raise", "clip"]

# float64 represents every integer up to 2^53 exactly; keeping every encoded value and
# every possible sum inside that range makes encode and decode exact, not approximate.
_EXACT_FLOAT_LIMIT: Final = 2**53
_MAX_SCALE_BITS: Final = 52


class FixedPoint:
    """Encode reals as round(x * 2^scale_bits), two's complement mod 2^modulus_bits.

    ``clip`` bounds the magnitude of every input. By default a value beyond
    ``±clip`` is refused (ProtocolError), because silently changing a contribution
    changes the released statistic; pass ``clip_mode="clip"`` to saturate such
    values to ``±clip`` instead, which is the usual choice for bounded-sensitivity
    (differentially private) sums. NaN and infinities are always refused.

    Sums are exact: ``check_capacity(n)`` refuses any ``n`` for which the sum of
    ``n`` encoded values could leave the ring's signed range (and so wrap), and
    integers come back exactly because every encoded value and every admissible
    sum is an integer below 2^53.
    """

    def __init__(
        self,
        scale_bits: int,
        clip: float,
        modulus_bits: int = 64,
        *,
        clip_mode: ClipMode = "raise",
    ) -> None:
        if isinstance(scale_bits, bool) or not isinstance(scale_bits, int):
            raise ConfigError(f"scale_bits must be an int, got {scale_bits!r}")
        if not 0 <= scale_bits <= _MAX_SCALE_BITS:
            raise ConfigError(f"scale_bits must be in 0..{_MAX_SCALE_BITS}")
        if clip_mode not in ("raise", "clip"):
            raise ConfigError(f"clip_mode must be 'raise' or 'clip', got {clip_mode!r}")
        if not (isinstance(clip, int | float) and np.isfinite(clip) and clip > 0):
            raise ConfigError(f"clip must be a positive finite number, got {clip!r}")
        try:
            self._dtype = mask_dtype(modulus_bits)
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from None
        self.scale_bits = scale_bits
        self.clip = float(clip)
        self.modulus_bits = modulus_bits
        self.clip_mode: ClipMode = clip_mode
        self._scale = float(2**scale_bits)
        self.max_encoded = round(self.clip * self._scale)
        """Largest magnitude ``encode`` can produce."""
        if self.max_encoded >= self._signed_limit():
            raise ConfigError(
                f"clip {clip} at scale 2^{scale_bits} does not fit a "
                f"{modulus_bits}-bit ring"
            )

    def max_parties(self) -> int:
        """The largest number of encoded vectors whose sum cannot wrap."""
        return max(0, (self._signed_limit() - 1) // max(self.max_encoded, 1))

    def check_capacity(self, n_parties: int) -> None:
        """Refuse (ProtocolError) if a sum of ``n_parties`` vectors could wrap."""
        if isinstance(n_parties, bool) or not isinstance(n_parties, int):
            raise ProtocolError(f"n_parties must be an int, got {n_parties!r}")
        if n_parties < 1:
            raise ProtocolError("n_parties must be at least 1")
        if n_parties > self.max_parties():
            raise ProtocolError(
                f"{n_parties} parties x max encoded magnitude {self.max_encoded} "
                f"could overflow a {self.modulus_bits}-bit ring (exact up to "
                f"{self.max_parties()} parties); lower clip or scale_bits"
            )

    def encode(self, x: npt.ArrayLike) -> MaskVector:
        """Encode a 1-D real vector; refuses NaN/inf and |x| > clip."""
        try:
            values = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ProtocolError("fixed-point input must be a real vector") from exc
        if values.ndim != 1:
            raise ProtocolError(f"fixed-point input must be 1-D, got {values.ndim}-D")
        if not np.all(np.isfinite(values)):
            raise ProtocolError("fixed-point input contains NaN or infinity")
        if self.clip_mode == "clip":
            values = np.clip(values, -self.clip, self.clip)
        elif np.any(np.abs(values) > self.clip):
            worst = float(np.max(np.abs(values)))
            raise ProtocolError(
                f"value of magnitude {worst} exceeds clip {self.clip}; "
                "pass clip_mode='clip' to saturate instead"
            )
        scaled = np.rint(values * self._scale).astype(np.int64)
        return self._to_ring(scaled)

    def decode(self, total: MaskVector, n_parties: int) -> npt.NDArray[np.float64]:
        """Decode the ring sum of ``n_parties`` encoded vectors back to reals."""
        self.check_capacity(n_parties)
        ring = np.asarray(total)
        if ring.dtype != self._dtype or ring.ndim != 1:
            raise ProtocolError(f"expected a 1-D {self._dtype.name} vector to decode")
        signed = ring.view(np.int64 if self.modulus_bits == 64 else np.int32)
        return signed.astype(np.float64) / self._scale

    def _signed_limit(self) -> int:
        return min(1 << (self.modulus_bits - 1), _EXACT_FLOAT_LIMIT)

    def _to_ring(self, scaled: npt.NDArray[np.int64]) -> MaskVector:
        if self.modulus_bits == 64:
            return scaled.view(np.uint64)
        narrowed: npt.NDArray[Any] = scaled.astype(np.int32)
        return narrowed.view(np.uint32)
