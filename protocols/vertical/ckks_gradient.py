"""One encrypted gradient step of vertical logistic regression, with CKKS (RLWE).

Inner products in the *coefficients* of one ring element, no rotations, no
relinearisation, and exact ring arithmetic throughout. Ring R_q = Z_q[X]/(X^N + 1)
of the allowed parameter set ``ckks-16384-d1`` (N = 16384, primes 60 + 60 + 60
bits, 180 <= 438: the HE standard's 128-bit bound; the context is validated by
:meth:`protocols.ckks.tenseal_backend.TenSealBackend.open`). Data modulus
q = q0 q1 > 2^118 (two 60-bit primes, each > 2^59). Per batch of B rows, with
R = min(B, N) rows per ciphertext and P = N // R host features per result::

    guest: D_c = Enc_sk(sum_i round(2^A d_i) X^i) for each chunk c of R rows
           (symmetric encryption, fresh error e_c; A = RESIDUAL_SCALE_BITS)
    host:  for each group of P features, k = 0..P-1 at t_k = (k+1) R - 1:
           Xt = sum_k sum_i round(2^F x_ik) X^(t_k - i)   (F = FEATURE_SCALE_BITS)
           C  = sum_c D_c * Xt_c + (M, 0) + Enc_pk(0)
           M uniform on R_q (uniform NTT values, so uniform coefficients)
    guest: v_k = [Dec(C)]_{t_k} + eta_k mod q,  eta_k uniform in [-2^E, 2^E]
    host:  w_k = v_k - M_{t_k} mod q (centred) = 2^(A+F) g_k + h_k + eta_k

Why coefficient t_k is the inner product: X^i * X^(t_k - i') lands on t_k only when
i = i'; feature blocks are R apart, so no other block reaches t_k, and a product that
wraps past X^N lands below R - 1 <= t_0. Decryption is a ring homomorphism, so
[Dec(C)]_{t_k} = 2^(A+F) sum_i d_i x_ik + h_k + M_{t_k} exactly, where
h = (e_c * Xt) + f and f = e1 + e2 s - u e_pk is the decryption of Enc_pk(0).

Checked against the design this replaces (slot products, a slot-domain mask, block
sums decoded by the guest): (1) its host reply ``ct * x + m`` is not re-randomised,
and the guest, who made ``ct``, reads ``x = c1' / c1`` in the NTT domain; (2) a mask
of 2^61 per slot leaves nothing of x d after SEAL's double-precision decoding (53
bits); (3) the host's unmasked sums are *exact* ring values, i.e. linear equations
mod q in the guest's secret key s (the host knows the guest's ciphertext and, being
semi-honest, its own u, e1, e2): a few hundred batches would give s. Here (1) the
host adds Enc_pk(0), (2) the mask is uniform mod q and only exact integer
coefficients are read, and (3) the guest floods each value with eta.

What each side learns (semi-honest):

* guest: Dec(C) is uniform on R_q whatever d, x, e and f are (M is independent of
  everything else), and C's second component c1 Xt + (a u + e2) is an RLWE sample
  with fresh ternary secret u under the guest's own public key (decision-RLWE at
  the parameter set's 128-bit level) shifted by c1 Xt: nothing about the host's
  features. Its replies v_k are uniform mod q.
* host: ciphertexts (RLWE), and w_k. Bounds with |d| <= 2^RESIDUAL_CAP_BITS,
  |x| <= FEATURE_CLIP = 8, SEAL's errors clipped at 19 (6 sigma), s and u ternary:
  |Xt coefficients| < 2^(F+4) (encoding error included), so
  |h_k| <= 19 N (2^(F+4) + 2) + 19 < 2^(F + H_MARGIN_BITS), H_MARGIN_BITS = 23.
  eta hides h: with E = F + 23 + ceil(log2(features)) + 40 the distribution of
  (w_k)_k is within statistical distance sum_k |h_k| / 2^(E+1) <= 2^-41 per batch of
  the ideal 2^(A+F) g_k + eta_k (which depends on d and x only). The host's
  gradient sum therefore carries a uniform error of at most 2^(E - A - F).
* correctness: |2^(A+F) g| <= B 2^(A+F+8) <= 2^(16 + 78 + 12 + 8) = 2^114 for
  B <= 2^16, and |h| + 2^E < 2^114, so every w_k is below q/2 > 2^117: no wrap.

Non-standard assumptions, named: the guest's public key is honestly generated
(only its shape and non-degeneracy are checked); SEAL's samplers (ternary u,
clipped-Gaussian errors, its OS-seeded PRNG, not injectable) behave as documented.
The mask M and the flood eta are drawn from the injected ``RandomSource``.
Encodings go through SEAL's CKKS encoder at scales 2^A and 2^F; its double
rounding perturbs coefficients by far less than one unit of 2^(A+F) per product.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import tenseal as ts
import tenseal.sealapi as sa

from cleanroom.errors import ConfigError, ProtocolError
from protocols.ckks import sealwire
from protocols.ckks.params import parameter_set
from protocols.ckks.tenseal_backend import TENSEAL
from protocols.party import SYSTEM_RANDOM, RandomSource
from protocols.vertical.gradient import FEATURE_CLIP, MAX_BATCH, RESIDUAL_CAP_BITS

PARAMETERS: Final = parameter_set("ckks-16384-d1")
RESIDUAL_SCALE_BITS: Final = 78
FEATURE_SCALE_BITS: Final = 12
H_MARGIN_BITS: Final = 23
"""log2 bound on |h| above 2^F: 19 N (2^(F+4) + 2) + 19 < 2^(F+23) for N = 2^14."""
STAT_BITS: Final = 40
MAX_FEATURES: Final = 1000
_GENERATOR: Final = 3
"""SEAL's CKKS slot order: slot j is the evaluation at zeta^(3^j mod 2N)."""
_TAG_DOMAIN: Final = b"cleanroom/vertical/ckks-gradient/v1\x00"
_TAG_BYTES: Final = 32
_ERRORS: Final = (ValueError, RuntimeError, TypeError, IndexError)


@dataclass(frozen=True)
class CkksLayout:
    """How a batch of ``max_batch`` rows and ``features`` host columns is packed."""

    max_batch: int
    features: int

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise ProtocolError(f"batch size must be in 1..{MAX_BATCH}")
        if not 1 <= self.features <= MAX_FEATURES:
            raise ProtocolError(f"a host may have 1..{MAX_FEATURES} features")

    @property
    def degree(self) -> int:
        return PARAMETERS.poly_modulus_degree

    @property
    def rows_per_ct(self) -> int:
        return min(self.max_batch, self.degree)

    def chunks(self, rows: int) -> int:
        return -(-rows // self.rows_per_ct)

    @property
    def per_ct(self) -> int:
        return self.degree // self.rows_per_ct

    @property
    def groups(self) -> int:
        return -(-self.features // self.per_ct)

    @property
    def flood_bits(self) -> int:
        spread = math.ceil(math.log2(self.features)) if self.features > 1 else 0
        return FEATURE_SCALE_BITS + H_MARGIN_BITS + spread + STAT_BITS

    @property
    def product_scale_bits(self) -> int:
        return RESIDUAL_SCALE_BITS + FEATURE_SCALE_BITS

    @property
    def honest_bound(self) -> int:
        """The largest |w_k| an honest run produces (gradient, h and flood)."""
        gradient = self.max_batch << (self.product_scale_bits + 8)
        return (
            gradient
            + (1 << (FEATURE_SCALE_BITS + H_MARGIN_BITS))
            + (1 << self.flood_bits)
        )

    def positions(self) -> list[int]:
        return [(k + 1) * self.rows_per_ct - 1 for k in range(self.per_ct)]

    def to_json(self) -> dict[str, Any]:
        return {
            **PARAMETERS.to_json(),
            "encoding": "coefficients (no rotations, no relinearisation)",
            "residual_scale": f"2^{RESIDUAL_SCALE_BITS}",
            "feature_scale": f"2^{FEATURE_SCALE_BITS}",
            "flood": f"uniform 2^{self.flood_bits}",
            "statistical_distance": f"2^-{STAT_BITS + 1} per batch",
        }


class _Ring:
    """SEAL objects over one context: the pieces both sides use."""

    def __init__(self, context: Any, version: tuple[int, int]) -> None:
        self.context = context
        self.seal = context.seal_context().data
        self.encoder = sa.CKKSEncoder(self.seal)
        self.evaluator = sa.Evaluator(self.seal)
        self.top = list(self.seal.first_parms_id())
        self.primes = [
            m.value() for m in self.seal.first_context_data().parms().coeff_modulus()
        ]
        self.q = math.prod(self.primes)
        self.version = version
        n = PARAMETERS.poly_modulus_degree
        self._twist = np.exp(1j * np.pi * np.arange(n) / n)
        steps = np.array([pow(_GENERATOR, j, 2 * n) for j in range(n // 2)])
        self._slot_index = (steps - 1) // 2

    @property
    def limbs(self) -> int:
        return len(self.primes)

    def encode(self, coefficients: npt.NDArray[np.float64], scale_bits: int) -> Any:
        """The NTT plaintext whose coefficients are round(2^scale_bits * c)."""
        n = PARAMETERS.poly_modulus_degree
        values = n * np.fft.ifft(coefficients * self._twist)
        plain = sa.Plaintext()
        self.encoder.encode(
            values[self._slot_index].tolist(), self.top, 2.0**scale_bits, plain
        )
        return plain

    def to_bytes(self, ct: Any) -> bytes:
        """SEAL's own serialisation, through an anonymous memory file: sealapi
        saves only to a path, and copying the words one Python call at a time
        costs about 100 ms per ciphertext."""
        fd = os.memfd_create("cleanroom-ckks", os.MFD_CLOEXEC)
        try:
            ct.save(f"/proc/self/fd/{fd}")
            blob = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
        return sealwire.ckks_vector_bytes(blob, 1, ct.scale)

    def _wrap(self, words: npt.NDArray[np.uint64], scale: float) -> bytes:
        n = PARAMETERS.poly_modulus_degree
        blob = sealwire.seal_ciphertext(
            self.version, self.top, 2, n, self.limbs, scale, words
        )
        return sealwire.ckks_vector_bytes(blob, 1, scale)

    def load(self, data: bytes, scale_bits: int, what: str) -> Any:
        """One fresh-shaped ciphertext at the top level and the expected scale."""
        limit = TENSEAL.max_ciphertext_bytes(PARAMETERS, self.limbs)
        if len(data) > limit:
            raise ProtocolError(f"{what} is larger than a ciphertext")
        if data[-9:] != b"\x19" + struct.pack("<d", 2.0**scale_bits):
            raise ProtocolError(f"{what} has the wrong parameters")
        try:
            vector = ts.ckks_vector_from(self.context, data)
            cts = vector.ciphertext()
        except _ERRORS:
            raise ProtocolError(f"{what} does not deserialise") from None
        if vector.size() != 1 or len(cts) != 1:
            raise ProtocolError(f"{what} must be one ciphertext")
        ct = cts[0]
        if (
            ct.size() != 2
            or list(ct.parms_id()) != self.top
            or not ct.is_ntt_form()
            or ct.is_transparent()
            or ct.scale != 2.0**scale_bits
        ):
            raise ProtocolError(f"{what} has the wrong parameters")
        return ct

    def from_words(self, words: npt.NDArray[np.uint64], scale: float) -> Any:
        """A ciphertext with these NTT words (both components), built locally."""
        data = self._wrap(words, scale)
        return ts.ckks_vector_from(self.context, data).ciphertext()[0]

    def read(self, ct: Any, at: Sequence[int]) -> list[int]:
        """Coefficients ``at`` (mod q) of the first component of an NTT ciphertext."""
        n = PARAMETERS.poly_modulus_degree
        plain = sa.Ciphertext()
        self.evaluator.transform_from_ntt(ct, plain)
        return [
            _crt([plain[limb * n + t] for limb in range(self.limbs)], self.primes)
            for t in at
        ]


def _crt(residues: Sequence[int], primes: Sequence[int]) -> int:
    q = math.prod(primes)
    total = 0
    for r, p in zip(residues, primes, strict=True):
        rest = q // p
        total += int(r) * rest * pow(rest, -1, p)
    return total % q


def _version(public_context: bytes) -> tuple[int, int]:
    for number, _, value in sealwire.fields(public_context, "the public context"):
        if number == 1:
            return sealwire.seal_version(value)
    raise ProtocolError("the public context has no parameters")


def _uniform_words(
    random: RandomSource, primes: Sequence[int], n: int
) -> npt.NDArray[np.uint64]:
    """n values uniform mod each prime (rejection sampling), limb after limb."""
    out = []
    for p in primes:
        bits = p.bit_length()
        kept = np.zeros(0, dtype=np.uint64)
        while len(kept) < n:
            raw = np.frombuffer(random(8 * n), dtype="<u8") >> np.uint64(64 - bits)
            kept = np.concatenate([kept, raw[raw < np.uint64(p)]])
        out.append(kept[:n])
    return np.concatenate(out).astype(np.uint64)


def _uniform_int(random: RandomSource, bits: int) -> int:
    """Uniform in [-2^bits, 2^bits] (64 extra bits: bias below 2^-64)."""
    span = (1 << (bits + 1)) + 1
    raw = int.from_bytes(random((bits + 1 + 64 + 7) // 8), "big")
    return raw % span - (1 << bits)


def _tag(context: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(_TAG_DOMAIN + digest + context).digest()


def _pack(tag: bytes, blobs: Sequence[bytes]) -> bytes:
    parts = [tag, len(blobs).to_bytes(4, "big")]
    for blob in blobs:
        parts += [len(blob).to_bytes(4, "big"), blob]
    return b"".join(parts)


def _unpack(data: bytes, tag: bytes, count: int, what: str) -> list[bytes]:
    if len(data) < _TAG_BYTES + 4 or data[:_TAG_BYTES] != tag:
        raise ProtocolError(f"{what} is not bound to this job, batch and key")
    if int.from_bytes(data[_TAG_BYTES : _TAG_BYTES + 4], "big") != count:
        raise ProtocolError(f"{what} has the wrong number of ciphertexts")
    blobs, offset = [], _TAG_BYTES + 4
    for _ in range(count):
        size = int.from_bytes(data[offset : offset + 4], "big")
        offset += 4
        if offset + size > len(data):
            raise ProtocolError(f"{what} is truncated")
        blobs.append(data[offset : offset + size])
        offset += size
    if offset != len(data):
        raise ProtocolError(f"{what} has trailing bytes")
    return blobs


class GuestKeys:
    """The guest's CKKS key pair: the secret key never leaves this object."""

    def __init__(self, *, random: RandomSource = SYSTEM_RANDOM) -> None:
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            PARAMETERS.poly_modulus_degree,
            coeff_mod_bit_sizes=list(PARAMETERS.coeff_mod_bit_sizes),
        )
        self._public: bytes = context.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        self._ring = _Ring(context, _version(self._public))
        secret = context.secret_key().data
        self._encryptor = sa.Encryptor(self._ring.seal, secret)
        self._decryptor = sa.Decryptor(self._ring.seal, secret)
        self._digest = hashlib.sha256(self._public).digest()
        self._random = random
        size = PARAMETERS.poly_modulus_degree * self._ring.limbs
        ones = np.concatenate([np.zeros(size), np.ones(size)]).astype(np.uint64)
        scale = 2.0 ** (RESIDUAL_SCALE_BITS + FEATURE_SCALE_BITS)
        self._carrier = self._ring.from_words(ones, scale)

    def public_context(self) -> bytes:
        """Parameters and public key only: no secret, Galois or relinearisation key."""
        return self._public

    def encrypt_residuals(
        self, layout: CkksLayout, residuals: npt.NDArray[np.float64], *, context: bytes
    ) -> bytes:
        """The guest's ciphertexts for one batch, bound to ``context``."""
        if not 1 <= len(residuals) <= layout.max_batch:
            raise ProtocolError("the batch is larger than the layout allows")
        cap = float(1 << RESIDUAL_CAP_BITS)
        clipped = np.clip(np.asarray(residuals, dtype=np.float64), -cap, cap)
        r, ring = layout.rows_per_ct, self._ring
        blobs = []
        for c in range(layout.chunks(len(clipped))):
            poly = np.zeros(layout.degree)
            part = clipped[c * r : (c + 1) * r]
            poly[: len(part)] = part
            ct = sa.Ciphertext()
            self._encryptor.encrypt_symmetric(
                ring.encode(poly, RESIDUAL_SCALE_BITS), ct
            )
            blobs.append(ring.to_bytes(ct))
        return _pack(_tag(context, self._digest), blobs)

    def decrypt_masked(
        self, layout: CkksLayout, data: bytes, *, context: bytes
    ) -> list[int]:
        """One flooded value mod q per host feature, from the host's ciphertexts."""
        ring = self._ring
        blobs = _unpack(
            data, _tag(context, self._digest), layout.groups, "the masked gradient"
        )
        out: list[int] = []
        for g, blob in enumerate(blobs):
            ct = ring.load(blob, layout.product_scale_bits, "a masked gradient")
            plain = sa.Plaintext()
            self._decryptor.decrypt(ct, plain)
            # (0, 1) + plain = (plain, 1): its first component read in coefficients.
            carrier = sa.Ciphertext()
            ring.evaluator.add_plain(self._carrier, plain, carrier)
            wanted = min(layout.per_ct, layout.features - g * layout.per_ct)
            values = ring.read(carrier, layout.positions()[:wanted])
            out += [
                (v + _uniform_int(self._random, layout.flood_bits)) % ring.q
                for v in values
            ]
        return out


class HostContext:
    """The host's view of the guest's validated public context."""

    def __init__(self, public_context: bytes) -> None:
        TENSEAL.open(PARAMETERS, public_context)  # every check, before our own parse
        try:
            context = ts.context_from(public_context)
        except _ERRORS:
            raise ProtocolError("the public context does not deserialise") from None
        self.ring = _Ring(context, _version(public_context))
        self.encryptor = sa.Encryptor(self.ring.seal, context.public_key().data)
        self.digest = hashlib.sha256(public_context).digest()


class HostGradient:
    """The host's side of one batch: products, mask, and later unmask."""

    def __init__(
        self,
        host: HostContext,
        layout: CkksLayout,
        features: npt.NDArray[np.float64],
        *,
        random: RandomSource = SYSTEM_RANDOM,
    ) -> None:
        if features.ndim != 2 or features.shape[1] != layout.features:
            raise ConfigError("the features do not match the layout")
        self._host, self._layout = host, layout
        self._x = np.clip(features, -FEATURE_CLIP, FEATURE_CLIP)
        self._random = random
        self._mask: list[int] | None = None

    @cached_property
    def _zero_c1(self) -> npt.NDArray[np.uint64]:
        return np.zeros(self._layout.degree * self._host.ring.limbs, dtype=np.uint64)

    def masked(self, residual_bytes: bytes, *, context: bytes, reply: bytes) -> bytes:
        """The host's masked, re-randomised products for the guest."""
        layout, ring = self._layout, self._host.ring
        rows, r, n = len(self._x), layout.rows_per_ct, layout.degree
        blobs = _unpack(
            residual_bytes,
            _tag(context, self._host.digest),
            layout.chunks(rows),
            "the residuals",
        )
        cts = [
            ring.load(b, RESIDUAL_SCALE_BITS, "a residual ciphertext") for b in blobs
        ]
        scale = 2.0**layout.product_scale_bits
        out, mask = [], []
        for g in range(layout.groups):
            columns = range(
                g * layout.per_ct, min(layout.features, (g + 1) * layout.per_ct)
            )
            # The fresh Enc_pk(0) first: it re-randomises, and it keeps a group
            # whose features are all zero (a product SEAL refuses) well formed.
            total = sa.Ciphertext()
            self._host.encryptor.encrypt_zero(ring.top, total)
            total.scale = scale
            for c, ct in enumerate(cts):
                block = self._x[c * r : (c + 1) * r]
                poly = np.zeros(n)
                for k, j in enumerate(columns):
                    poly[(k + 1) * r - len(block) : (k + 1) * r] = block[::-1, j]
                plain = ring.encode(poly, FEATURE_SCALE_BITS)
                if plain.is_zero():
                    continue
                product = sa.Ciphertext()
                ring.evaluator.multiply_plain(ct, plain, product)
                ring.evaluator.add_inplace(total, product)
            words = _uniform_words(self._random, ring.primes, n)
            shift = ring.from_words(np.concatenate([words, self._zero_c1]), scale)
            ring.evaluator.add_inplace(total, shift)
            out.append(ring.to_bytes(total))
            both = ring.from_words(np.concatenate([words, words]), scale)
            mask += ring.read(both, layout.positions()[: len(columns)])
        self._mask = mask
        return _pack(_tag(reply, self._host.digest), out)

    def unmask(
        self, masked_values: Sequence[int], batch_rows: int
    ) -> npt.NDArray[np.float64]:
        """The host's mean gradient over the batch, from the guest's values."""
        mask, ring = self._mask, self._host.ring
        if mask is None:
            raise ProtocolError("no masked gradient is outstanding")
        if len(masked_values) != len(mask):
            raise ProtocolError("the unmasked gradient has the wrong length")
        self._mask = None
        bound, q = self._layout.honest_bound, ring.q
        values = []
        for v, m in zip(masked_values, mask, strict=True):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < q:
                raise ProtocolError("the unmasked gradient must hold integers mod q")
            w = (v - m) % q
            if w > q // 2:
                w -= q
            if abs(w) > bound:
                raise ProtocolError("the unmasked gradient is out of range")
            values.append(w)
        scale = float(2**self._layout.product_scale_bits) * batch_rows
        return np.array([w / scale for w in values], dtype=np.float64)
