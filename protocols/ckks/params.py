"""CKKS parameter sets within the 128-bit HE-standard limits, and the chooser.

Every set is a small frozen record (degree, coefficient-modulus bit sizes, scales,
depth, security level) that a result can carry. A set's limits are checked when it
is built, so no set can exceed them:

* ``poly_modulus_degree`` N is 8192 or 16384 and the total coefficient modulus is at
  most 218 or 438 bits: the HomomorphicEncryption.org Security Standard's bounds
  for 128-bit classical security with a ternary secret and error sigma 3.19, the
  distributions SEAL (and so TenSEAL) uses;
* every prime has 20..60 bits (SEAL's range) and the special prime (the last one,
  used only for key switching) is at least as large as every data prime.

How the evaluation uses a set (see :mod:`protocols.ckks.evaluate`): the buyer
encodes features at ``2**scale_bits``; the owner multiplies by weights encoded at
``2**weight_scale_bits`` and adds, never rescaling before it floods, so everything
it computes before flooding is exact integer arithmetic modulo the data modulus.
A depth-1 set (linear and logistic models) ends at scale ``2**(s + w)``; a depth-2
set (one ciphertext square for a quadratic activation) at ``2**(2s + 3w)``. After
flooding, ``output_rescales`` rescales shrink the result.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

from cleanroom.errors import ConfigError

HE_STANDARD_MAX_BITS: Final = {8192: 218, 16384: 438}
"""128-bit classical security, ternary secret (HE standard, Table 1)."""
MIN_PRIME_BITS: Final = 20
MAX_PRIME_BITS: Final = 60
FRESH_ERROR_STD: Final = 3.2
"""SEAL's error standard deviation; the buyer encrypts with its secret key, so a
fresh ciphertext's error is one such Gaussian per coefficient."""
_ERROR_SIGMAS: Final = 8.0
_DIGEST_DOMAIN: Final = b"cleanroom/ckks/v1/params\x00"


@dataclass(frozen=True)
class ParameterSet:
    """One allowed CKKS configuration; build only the sets in :data:`ALLOWED_SETS`."""

    name: str
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    """Data primes q0..q(L-1), then the special prime."""
    scale_bits: int
    """The buyer encodes features at 2**scale_bits (TenSEAL's global scale)."""
    weight_scale_bits: int
    """The owner encodes weights at 2**weight_scale_bits."""
    depth: int
    """1: a linear map; 2: also one ciphertext-ciphertext product."""
    output_rescales: int
    """Rescales applied after flooding, to shrink the returned ciphertext."""
    security_level: int = 128

    def __post_init__(self) -> None:
        n, bits = self.poly_modulus_degree, self.coeff_mod_bit_sizes
        if n not in HE_STANDARD_MAX_BITS:
            raise ConfigError(
                f"poly_modulus_degree must be one of {list(HE_STANDARD_MAX_BITS)}"
            )
        if self.security_level != 128:
            raise ConfigError("only 128-bit security parameter sets are allowed")
        if not isinstance(bits, tuple) or len(bits) < 2:
            raise ConfigError(
                "coeff_mod_bit_sizes needs a data prime and a special prime"
            )
        if any(not MIN_PRIME_BITS <= b <= MAX_PRIME_BITS for b in bits):
            raise ConfigError(
                f"every prime must have {MIN_PRIME_BITS}..{MAX_PRIME_BITS} bits"
            )
        if sum(bits) > HE_STANDARD_MAX_BITS[n]:
            raise ConfigError(
                f"{sum(bits)} coefficient-modulus bits exceed the 128-bit limit "
                f"{HE_STANDARD_MAX_BITS[n]} for N={n}"
            )
        if bits[-1] < max(bits[:-1]):
            raise ConfigError(
                "the special prime must be at least as large as every data prime"
            )
        if self.depth not in (1, 2):
            raise ConfigError("depth must be 1 or 2")
        if not 0 <= self.output_rescales < len(bits) - 1:
            raise ConfigError("output_rescales must leave at least one data prime")
        if self.value_bits < 1 or self.max_precision_bits < 1:
            raise ConfigError(f"parameter set {self.name} leaves no room for values")

    @property
    def slots(self) -> int:
        """Values per ciphertext: rows per block."""
        return self.poly_modulus_degree // 2

    @property
    def data_primes(self) -> tuple[int, ...]:
        return self.coeff_mod_bit_sizes[:-1]

    @property
    def total_bits(self) -> int:
        return sum(self.coeff_mod_bit_sizes)

    @property
    def global_scale(self) -> float:
        return float(2**self.scale_bits)

    @property
    def top_scale_bits(self) -> int:
        """log2 of the scale at which the owner's result is flooded."""
        s, w = self.scale_bits, self.weight_scale_bits
        return s + w if self.depth == 1 else 2 * s + 3 * w

    @property
    def output_limbs(self) -> int:
        """Data primes left in the returned ciphertext."""
        return len(self.data_primes) - self.output_rescales

    @property
    def output_scale_bits_max(self) -> int:
        """Upper bound on log2 of the returned scale (a b-bit prime is >= 2**(b-1))."""
        dropped = self.data_primes[self.output_limbs :]
        return self.top_scale_bits - sum(b - 1 for b in dropped)

    @property
    def output_scale_bits_min(self) -> int:
        dropped = self.data_primes[self.output_limbs :]
        return self.top_scale_bits - sum(dropped)

    @cached_property
    def value_bits(self) -> int:
        """|result| < 2**value_bits decrypts correctly, before and after rescaling.

        Conservative: a b-bit prime counts as b - 1 bits, one bit is the sign.
        """
        top = sum(b - 1 for b in self.data_primes) - self.top_scale_bits - 1
        kept = self.data_primes[: self.output_limbs]
        out = sum(b - 1 for b in kept) - self.output_scale_bits_max - 1
        return min(top, out)

    @cached_property
    def max_precision_bits(self) -> int:
        """The finest declared output precision p = 2**-bits this set supports.

        Two errors must stay below p/4 (at 8 sigma): the buyer's fresh-encryption
        error through a model of nominal gain (16 for depth 1, 256 for depth 2), and
        the rounding error of the rescales after flooding (zero without rescales).
        Weight quantisation depends on the model and is checked when planning.
        """
        spread = math.sqrt(self.poly_modulus_degree / 2)
        gain = 16.0 if self.depth == 1 else 256.0
        fresh = _ERROR_SIGMAS * FRESH_ERROR_STD * spread * gain / 2.0**self.scale_bits
        worst = fresh
        if self.output_rescales:
            rounding = math.sqrt((1 + 2 * self.poly_modulus_degree / 3) / 12)
            worst = max(
                worst,
                _ERROR_SIGMAS * rounding * spread / 2.0**self.output_scale_bits_min,
            )
        return math.floor(-math.log2(4 * worst))

    def to_json(self) -> dict[str, Any]:
        """What a result records about the encryption it was computed under."""
        return {
            "name": self.name,
            "poly_modulus_degree": self.poly_modulus_degree,
            "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes),
            "global_scale": f"2^{self.scale_bits}",
            "weight_scale": f"2^{self.weight_scale_bits}",
            "depth": self.depth,
            "security_level": self.security_level,
        }

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of every field, bound into the inference configuration digest."""
        h = hashlib.sha256(_DIGEST_DOMAIN + self.name.encode() + b"\x00")
        numbers = (
            self.poly_modulus_degree,
            self.scale_bits,
            self.weight_scale_bits,
            self.depth,
            self.output_rescales,
            self.security_level,
            len(self.coeff_mod_bit_sizes),
            *self.coeff_mod_bit_sizes,
        )
        for number in numbers:
            h.update(number.to_bytes(4, "big"))
        return h.digest()


ALLOWED_SETS: Final = (
    ParameterSet("ckks-8192-d1", 8192, (60, 60), 28, 20, depth=1, output_rescales=0),
    ParameterSet(
        "ckks-16384-d1", 16384, (60, 60, 60), 40, 30, depth=1, output_rescales=0
    ),
    ParameterSet(
        "ckks-8192-d2", 8192, (60, 46, 46, 60), 32, 20, depth=2, output_rescales=2
    ),
    ParameterSet(
        "ckks-16384-d2", 16384, (60, 60, 60, 60, 60), 40, 30, depth=2, output_rescales=2
    ),
)
"""Cheapest first within each depth. A buyer's context must be one of these."""


def parameter_set(name: str) -> ParameterSet:
    """The allowed set called ``name``."""
    for params in ALLOWED_SETS:
        if params.name == name:
            return params
    raise ConfigError(f"unknown CKKS parameter set {name!r}")


def check_allowed(params: ParameterSet) -> None:
    """Refuse any set that is not exactly one of :data:`ALLOWED_SETS`."""
    if params not in ALLOWED_SETS:
        raise ConfigError(f"{params.name!r} is not an allowed CKKS parameter set")


def choose_parameters(
    *, depth: int, precision_bits: int, value_bits: int
) -> ParameterSet:
    """The cheapest allowed set of exactly ``depth`` that holds results below
    ``2**value_bits`` at precision ``2**-precision_bits``.

    Depth must match exactly: a set's scales are laid out for its own depth.
    """
    for params in ALLOWED_SETS:
        if (
            params.depth == depth
            and params.value_bits >= value_bits
            and params.max_precision_bits >= precision_bits
        ):
            return params
    raise ConfigError(
        f"no allowed CKKS parameter set evaluates depth {depth} with results up to "
        f"2^{value_bits} at precision 2^-{precision_bits}"
    )
