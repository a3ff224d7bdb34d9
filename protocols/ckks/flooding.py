"""Noise flooding of the owner's result: the bound, the layer plan, the CSPRNG draws.

What the buyer decrypts, and why it reveals no more than noisy scores
--------------------------------------------------------------------
Before flooding, the owner computes only exact ring operations on the buyer's
ciphertexts: products with integer constants (weights encoded at 2**w), sums and,
for a quadratic activation, one tensor square. Decryption is a ring homomorphism
for any ciphertexts and any key, so the pre-flood result decrypts to exactly
``f(m_1, ..., m_F)``: the model applied slot-wise (over the complex slots) to the
polynomials ``m_j`` the buyer itself encrypted, whose encryption errors the buyer
chose and knows. That is the ideal output on the buyer's own inputs. Two things
would still leak the model: the ciphertext's randomness (its ``c1`` is a linear
function of the weights and of ciphertexts the buyer made) and the low-order
digits of the exact result. The owner therefore

1. re-randomises: adds a fresh encryption of zero under the buyer's public key, so
   ``c1`` is a fresh RLWE sample (assuming the key is well formed, below);
2. floods: adds a Gaussian polynomial F, so the buyer sees ``f(m) + F``.

A depth-2 result is relinearised first (size 3 -> 2, else ``c2`` would carry the
weights); key switching adds an error ``e`` that depends on the result. That is the
only owner-side error before flooding (linear models have none), and the flood must
hide it. Any rescaling happens after flooding: it is a public function of the
flooded ciphertext, so it reveals nothing more.

The bound
---------
Let p = 2**-precision_bits be the declared output precision. The flood's total
per-slot standard deviation (real and imaginary part each) is ``sigma_p = p / 8``
in value units; the draw is truncated at 8.65 sigma. In coefficient units at the
result's scale S that is ``sigma_c = sigma_p * S / sqrt(N / 2)``: iid complex slot
Gaussians are iid coefficient Gaussians. The flood is encoded from double-precision
slot values, and a double carries 53 bits, so a layer of coefficient std sigma has
integer resolution only up to about ``sigma * 2**-49``. If ``sigma_c <= 2**49`` the
flood is one layer; otherwise F is a sum of layers: the top one ``sigma_c``, each
lower one ``2**40`` times smaller while above ``2**89``, and the finest
``min(2**49, 2**-8 * the one above)``, whose coefficients are all exactly rounded.
Every layer's granularity is then below 2**-8 of the standard deviation of the
layer under it, which smooths it, and the lower layers add at most 2**-8 to the
spread, so no slot moves by more than ``max_shift`` <= 1.09 p.

With ``e`` the owner-side error (``||e||_2 <= 2 sqrt(N) * rms``) and sigma_0 the
finest layer, the real and the ideal (``e = 0``) output distributions differ in
statistical distance by at most ``||e||_2 / (sigma_0 * sqrt(2 pi))``. The margin
``kappa = -log2`` of that is infinite for linear models (e = 0) and 34.4 bits
(ckks-8192-d2) or 32.4 bits (ckks-16384-d2) for the quadratic ones (rms 2**8.5 or
2**9.9 coefficient units against sigma_0 = 2**49, at top scales 2**124, 2**170).
Relative to the ciphertext's own error: the buyer's fresh-encryption error is
``3.2 * sqrt(N/2) / 2**scale_bits`` per input slot (value units): 2**-20.3 for
ckks-8192-d1, 2**-24.3 for ckks-8192-d2; sigma_p exceeds it at least 64-fold at
every precision the sets allow.

Assumptions: the buyer's keys were generated honestly (a public key whose uniform
part is degenerate would void step 1, a crafted relinearisation key would enlarge
``e``); the owner cannot check key distributions, only their shape and parameters.
Each decrypted score therefore carries Gaussian noise of std sigma_p that the buyer
cannot remove: it learns about the weights what scores known to about p do.

Drawing the noise
-----------------
Every value comes from the injected ``RandomSource`` (``os.urandom`` by default):
16 bytes per pair of Gaussians, read as two little-endian u64 words whose top 53
bits give uniforms ``u = (k + 1/2) / 2**53`` in (0, 1); Box-Muller turns
``(u1, u2)`` into two independent standard normals. numpy's generators are never
used here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ConfigError
from protocols.ckks.params import FRESH_ERROR_STD, ParameterSet
from protocols.party import RandomSource

PRECISION_SIGMAS: Final = 8.0
FINEST_COEFF_STD: Final = 2.0**49
LAYER_RATIO: Final = 2.0**40
FINEST_SHARE: Final = 2.0**8
"""The finest layer is at most this much smaller than the one above it."""
TRUNCATION_SIGMAS: Final = math.sqrt(2 * 54 * math.log(2))
"""Box-Muller's radius is at most sqrt(-2 ln u1) with u1 >= 2**-54."""


def gaussians(random: RandomSource, count: int) -> npt.NDArray[np.float64]:
    """``count`` standard normals from ``random`` by Box-Muller (see module doc)."""
    if count < 0:
        raise ConfigError("count must be non-negative")
    pairs = (count + 1) // 2
    raw = random(16 * pairs)
    if len(raw) != 16 * pairs:
        raise ConfigError("the random source returned the wrong number of bytes")
    words = np.frombuffer(raw, dtype="<u8")
    uniform = ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    radius = np.sqrt(-2.0 * np.log(uniform[:pairs]))
    angle = 2.0 * np.pi * uniform[pairs:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]


def complex_gaussians(
    random: RandomSource, count: int, std: float
) -> npt.NDArray[np.complex128]:
    """``count`` complex values whose real and imaginary parts have std ``std``."""
    normals = gaussians(random, 2 * count)
    values = np.empty(count, dtype=np.complex128)
    values.real = normals[:count] * std
    values.imag = normals[count:] * std
    return values


def owner_error_rms(params: ParameterSet) -> float:
    """Estimated rms (coefficient units) of the owner's error before flooding.

    Zero for depth 1 (exact arithmetic). For depth 2, relinearisation with honest
    keys: digits below q_i times key errors of std 3.2, summed over N terms and the
    data primes, divided by the special prime P >= 2**(bits-1), plus the rounding
    of that division, which has rms sqrt((1 + 2N/3) / 12) for a ternary secret.
    """
    if params.depth == 1:
        return 0.0
    n = params.poly_modulus_degree
    digits = sum(4.0**b for b in params.data_primes)
    special = 2.0 ** (params.coeff_mod_bit_sizes[-1] - 1)
    switching = FRESH_ERROR_STD * math.sqrt(n * digits / 3) / special
    return switching + math.sqrt((1 + 2 * n / 3) / 12)


@dataclass(frozen=True)
class FloodPlan:
    """The layers of one flood, and the bound they give (see the module doc)."""

    slot_std: float
    """sigma_p = p/8, value units, per slot real and imaginary part."""
    layer_stds: tuple[float, ...]
    """Value-unit std of each layer, finest first; the last is sigma_p."""
    finest_coeff_std: float
    owner_error_rms: float
    margin_bits: float | None
    """-log2 of the statistical-distance bound; None when there is no owner error."""
    ciphertext_error_std: float
    """The buyer's fresh-encryption error per input slot, value units."""

    @classmethod
    def for_output(cls, params: ParameterSet, precision_bits: int) -> FloodPlan:
        """The flood for results at ``params``' top scale, precision 2**-bits."""
        if not 1 <= precision_bits <= params.max_precision_bits:
            raise ConfigError(
                f"precision 2^-{precision_bits} is outside 2^-1..2^-"
                f"{params.max_precision_bits} for {params.name}"
            )
        n = params.poly_modulus_degree
        to_value = math.sqrt(n / 2) / 2.0**params.top_scale_bits
        slot_std = 2.0**-precision_bits / PRECISION_SIGMAS
        coeff = [slot_std / to_value]
        if coeff[0] > FINEST_COEFF_STD:
            while coeff[-1] > FINEST_COEFF_STD * LAYER_RATIO:
                coeff.append(coeff[-1] / LAYER_RATIO)
            coeff.append(min(FINEST_COEFF_STD, coeff[-1] / FINEST_SHARE))
        coeff.reverse()
        rms = owner_error_rms(params)
        margin = None
        if rms > 0:
            distance = 2 * math.sqrt(n) * rms / (coeff[0] * math.sqrt(2 * math.pi))
            margin = -math.log2(distance)
        return cls(
            slot_std=slot_std,
            layer_stds=tuple(c * to_value for c in coeff),
            finest_coeff_std=coeff[0],
            owner_error_rms=rms,
            margin_bits=margin,
            ciphertext_error_std=FRESH_ERROR_STD
            * math.sqrt(n / 2)
            / 2.0**params.scale_bits,
        )

    @property
    def max_shift(self) -> float:
        """No slot of a score moves by more than this (value units)."""
        return TRUNCATION_SIGMAS * sum(self.layer_stds)

    def draw(
        self, random: RandomSource, slots: int
    ) -> list[npt.NDArray[np.complex128]]:
        """One flood: a complex Gaussian slot vector per layer, finest first."""
        return [complex_gaussians(random, slots, std) for std in self.layer_stds]

    def to_json(self) -> dict[str, Any]:
        return {
            "slot_std": self.slot_std,
            "layers": len(self.layer_stds),
            "finest_coeff_std_log2": math.log2(self.finest_coeff_std),
            "owner_error_rms": self.owner_error_rms,
            "margin_bits": "exact" if self.margin_bits is None else self.margin_bits,
            "ciphertext_error_std": self.ciphertext_error_std,
        }
