"""Packing signed fixed-point values into Paillier plaintexts, with checked headroom.

A plaintext holds ``slots`` values of ``slot_bits`` bits each as the integer
G = sum_j v_j * 2^(slot_bits * j), signed values being balanced digits (each slot
in [-2^(s-1), 2^(s-1)), the slot above absorbing the borrow), and G is stored
mod n. Adding plaintexts adds slot-wise; multiplying by an integer k multiplies
every slot by k, so sums, scalar products and dot products need no re-encoding.
Nothing carries between slots as long as every slot stays below 2^(s-1) in
magnitude, which ``slot_bits`` guarantees for ``additions`` values of
``value_bits`` bits, and G stays below n/2, which ``slots`` guarantees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ConfigError, ProtocolError, SpecError

MAX_VALUE_BITS: Final = 1024
MAX_ADDITIONS: Final = 1 << 40


@dataclass(frozen=True)
class PackingLayout:
    """How values are packed into plaintexts of a ``modulus_bits``-bit key.

    Every encoded value v must satisfy |v| <= 2^(value_bits - 1) - 1, and a slot
    holds the sum of up to ``additions`` such values (or any combination whose
    magnitude stays within ``capacity``). Reals are encoded as round(x *
    2^scale_bits). With 64-bit values, 100 additions and a 3072-bit key this is
    43 slots of 71 bits.
    """

    modulus_bits: int
    value_bits: int
    additions: int
    scale_bits: int = 0
    slot_bits: int = field(init=False)
    slots: int = field(init=False)

    def __post_init__(self) -> None:
        for name in ("modulus_bits", "value_bits", "additions", "scale_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"packing {name} must be an int, got {value!r}")
        if not 2 <= self.value_bits <= MAX_VALUE_BITS:
            raise ConfigError(f"value_bits must be in 2..{MAX_VALUE_BITS}")
        if not 1 <= self.additions <= MAX_ADDITIONS:
            raise ConfigError(f"additions must be in 1..{MAX_ADDITIONS}")
        if not 0 <= self.scale_bits < self.value_bits:
            raise ConfigError("scale_bits must be in 0..value_bits-1")
        worst = self.additions * self.max_value
        slot_bits = worst.bit_length() + 1
        slots = (self.modulus_bits - 1) // slot_bits
        if slots < 1:
            raise ConfigError(
                f"{self.value_bits}-bit values with room for {self.additions} "
                f"additions do not fit a {self.modulus_bits}-bit plaintext"
            )
        object.__setattr__(self, "slot_bits", slot_bits)
        object.__setattr__(self, "slots", slots)

    @property
    def max_value(self) -> int:
        """The largest magnitude one encoded value may have."""
        return (1 << (self.value_bits - 1)) - 1

    @property
    def capacity(self) -> int:
        """The largest magnitude a slot can hold without carrying into the next."""
        return (1 << (self.slot_bits - 1)) - 1

    def ciphertexts_for(self, length: int, *, packed: bool = True) -> int:
        """How many plaintexts a vector of ``length`` values takes."""
        return -(-length // self.slots) if packed else length

    def integers(
        self, values: npt.ArrayLike, *, path: str, names: Sequence[str] = ()
    ) -> list[int]:
        """Check already scaled integers against the headroom; return them as ints.

        A value out of range is refused with SpecError naming ``path`` and the
        column (``names[i]``, else the index), never the value itself.
        """
        array = np.asarray(values)
        if array.ndim != 1:
            raise SpecError(path, "values must be a 1-D vector")
        if array.dtype.kind in "iu":
            if self.value_bits <= 64:
                over = array > self.max_value
                if array.dtype.kind == "i":
                    over |= array < -self.max_value
                if over.any():
                    self._refuse(path, names, int(np.argmax(over)))
            return [int(v) for v in array.tolist()]
        ints = []
        for index, value in enumerate(array.tolist()):
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpecError(_column(path, names, index), "value is not an integer")
            if abs(value) > self.max_value:
                self._refuse(path, names, index)
            ints.append(value)
        return ints

    def reals(
        self, values: npt.ArrayLike, *, path: str, names: Sequence[str] = ()
    ) -> list[int]:
        """Encode reals as round(x * 2^scale_bits), refusing NaN, inf and overflow."""
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise SpecError(path, "values must be real numbers") from None
        if array.ndim != 1:
            raise SpecError(path, "values must be a 1-D vector")
        finite = np.isfinite(array)
        if not finite.all():
            index = int(np.argmin(finite))
            raise SpecError(_column(path, names, index), "value is NaN or infinite")
        scaled = np.rint(array * float(1 << self.scale_bits))
        # 2^(value_bits-1) is exact in float64; any float below it is an integer
        # at most max_value, so this comparison is exact.
        over = np.flatnonzero(np.abs(scaled) >= float(1 << (self.value_bits - 1)))
        if over.size:
            self._refuse(path, names, int(over[0]))
        if self.value_bits <= 64:
            return [int(v) for v in scaled.astype(np.int64).tolist()]
        return [int(v) for v in scaled.tolist()]

    def pack(
        self, values: Sequence[int], modulus: int, *, packed: bool = True
    ) -> list[int]:
        """Plaintexts (mod n) holding ``values``, ``slots`` per plaintext if packed."""
        if not packed:
            return [v % modulus for v in values]
        shift, plaintexts = self.slot_bits, []
        for start in range(0, len(values), self.slots):
            total = 0
            for value in reversed(values[start : start + self.slots]):
                total = (total << shift) + value
            plaintexts.append(total % modulus)
        return plaintexts

    def unpack(
        self,
        plaintexts: Sequence[int],
        modulus: int,
        *,
        length: int,
        bound: int,
        packed: bool = True,
    ) -> list[int]:
        """The signed slot values of ``plaintexts``; refuses any that overflowed.

        Every slot must lie within ``bound`` (the magnitude the operations that
        produced it can reach) and nothing may remain above the last slot.
        """
        per = self.slots if packed else 1
        if len(plaintexts) != self.ciphertexts_for(length, packed=packed):
            raise ProtocolError("plaintext count does not match the vector length")
        half, shift = modulus // 2, self.slot_bits
        mask, top = (1 << shift) - 1, 1 << (shift - 1)
        values: list[int] = []
        for index, plaintext in enumerate(plaintexts):
            total = int(plaintext) - modulus if plaintext > half else int(plaintext)
            for _ in range(min(per, length - index * per)):
                digit = total & mask
                if digit >= top:
                    digit -= 1 << shift
                if abs(digit) > bound:
                    raise ProtocolError(
                        f"slot {len(values)} overflowed its headroom when decoded"
                    )
                values.append(digit)
                total = (total - digit) >> shift
            if total:
                raise ProtocolError(
                    f"ciphertext {index} decodes to more than its slots hold"
                )
        return values

    def to_reals(
        self, values: Sequence[int], *, scale_bits: int | None = None
    ) -> npt.NDArray[np.float64]:
        """Integers back to reals at ``scale_bits`` (default the layout's scale)."""
        scale = self.scale_bits if scale_bits is None else scale_bits
        return np.array([v / (1 << scale) for v in values], dtype=np.float64)

    def _refuse(self, path: str, names: Sequence[str], index: int) -> None:
        raise SpecError(
            _column(path, names, index),
            f"value exceeds the packing headroom (|v| * 2^{self.scale_bits} must "
            f"stay below 2^{self.value_bits - 1}); refused before encryption",
        )


def _column(path: str, names: Sequence[str], index: int) -> str:
    if index < len(names):
        return f"{path}.{names[index]}"
    return f"{path}[{index}]"
