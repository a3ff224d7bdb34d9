"""The TenSEAL (Microsoft SEAL) implementation of the CKKS backend seam.

Buyer: TenSEAL makes the keys (SEAL's CSPRNG, seeded from the OS: not injectable
through TenSEAL) and encrypts each column block with the *secret* key (symmetric
encryption: about 1.5x faster than public-key encryption here, and its fresh error
is one 3.2-sigma Gaussian rather than ~100x that). TenSEAL offers symmetric
encryption only in a context without a public key, so the buyer loads its own
secret context a second time with TenSEAL's ``encryption_type`` field set to
symmetric; the public context it sends is the original, serialised with
``save_secret_key=False`` and without Galois keys.

Owner: the public context is checked field by field before TenSEAL parses it (size
cap; no private part, hence no secret key; no Galois keys; relinearisation keys
exactly when the set needs them), then its parameters are compared with the
allowed set, primes included, and its public key is checked for evident
degeneracy. Evaluation runs on SEAL objects through TenSEAL's
``sealapi``, because TenSEAL's vector API rescales after every product and encodes
weights only at the input scale; the result goes back to bytes with
:mod:`protocols.ckks.sealwire`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import tenseal as ts
import tenseal.sealapi as sa

from cleanroom.errors import ConfigError, ProtocolError
from protocols.ckks import sealwire
from protocols.ckks.backend import (
    BuyerKeys,
    CkksBackend,
    Handle,
    OwnerContext,
    Slots,
    Values,
)
from protocols.ckks.params import ParameterSet, check_allowed

_SYMMETRIC_FIELD: Final = b"\x20\x01"
"""TenSEALContextProto field 4 (encryption_type) = 1, symmetric."""
_TENSEAL_ERRORS: Final = (ValueError, RuntimeError, TypeError, IndexError)
_SLACK_BYTES: Final = 4096
_RELATIVE_SCALE_TOLERANCE: Final = 1e-9
_KEY_SAMPLE: Final = 256


class TenSealBackend(CkksBackend):
    """CKKS through TenSEAL; :data:`TENSEAL` is the instance to use."""

    name = "tenseal"

    def generate(self, params: ParameterSet) -> BuyerKeys:
        return _BuyerKeys(params)

    def open(self, params: ParameterSet, context: bytes) -> OwnerContext:
        return _OwnerContext(params, context, self.max_context_bytes(params))

    def max_ciphertext_bytes(self, params: ParameterSet, limbs: int) -> int:
        words = 2 * limbs * params.poly_modulus_degree
        return words * 8 * 101 // 100 + _SLACK_BYTES

    def max_context_bytes(self, params: ParameterSet) -> int:
        limbs = len(params.coeff_mod_bit_sizes)
        key = 2 * limbs * params.poly_modulus_degree
        keys = 1 + (len(params.data_primes) if params.depth == 2 else 0)
        return keys * key * 8 * 101 // 100 + 16 * _SLACK_BYTES


TENSEAL: Final = TenSealBackend()


class _Ciphertext(Handle):
    __slots__ = ("ct",)

    def __init__(self, ct: Any) -> None:
        self.ct = ct


def _ct(handle: Handle) -> Any:
    if not isinstance(handle, _Ciphertext):
        raise ConfigError("a ciphertext handle from another backend")
    return handle.ct


def _output_level(seal: Any, params: ParameterSet) -> tuple[list[int], float]:
    """parms_id and scale of a result after the set's output rescales."""
    data = seal.first_context_data()
    scale = 2.0**params.top_scale_bits
    for _ in range(params.output_rescales):
        scale /= float(data.parms().coeff_modulus()[-1].value())
        data = data.next_context_data()
    return list(data.parms_id()), scale


class _BuyerKeys(BuyerKeys):
    def __init__(self, params: ParameterSet) -> None:
        check_allowed(params)
        keys = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        )
        self._params = params
        self._public: bytes = keys.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=params.depth == 2,
        )
        secret = keys.serialize(
            save_public_key=False,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        self._secret = ts.context_from(secret + _SYMMETRIC_FIELD)
        self._secret.global_scale = params.global_scale
        self._scale = params.global_scale
        self._output = _output_level(self._secret.seal_context().data, params)

    def public_context(self) -> bytes:
        return self._public

    def encrypt(self, values: Values) -> bytes:
        data = np.asarray(values, dtype=np.float64)
        if data.ndim != 1 or not 1 <= data.size <= self._params.slots:
            raise ConfigError(f"encrypt takes 1..{self._params.slots} values")
        if not np.isfinite(data).all():
            raise ConfigError("features must be finite")
        # TenSEAL's C++ vector directly: its Python wrapper first builds a PlainTensor
        # from the list, which costs about a third of the encryption itself.
        vector = ts._ts_cpp.CKKSVector(self._secret.data, data.tolist(), self._scale)
        serialized: bytes = vector.serialize()
        return serialized

    def decrypt(self, ciphertext: bytes, count: int) -> Values:
        limit = TENSEAL.max_ciphertext_bytes(self._params, self._params.output_limbs)
        if not isinstance(ciphertext, bytes) or len(ciphertext) > limit:
            raise ProtocolError(f"a result ciphertext is bytes of at most {limit}")
        try:
            vector = ts.ckks_vector_from(self._secret, ciphertext)
            cts = vector.ciphertext()
        except _TENSEAL_ERRORS:
            raise ProtocolError(
                "a result is not a valid ciphertext for our context"
            ) from None
        parms_id, scale = self._output
        if vector.size() != count or len(cts) != 1:
            raise ProtocolError(f"a result must be one ciphertext of {count} values")
        ct = cts[0]
        if ct.size() != 2 or list(ct.parms_id()) != parms_id or not ct.is_ntt_form():
            raise ProtocolError("a result is not at the parameter set's output level")
        if not math.isclose(ct.scale, scale, rel_tol=_RELATIVE_SCALE_TOLERANCE):
            raise ProtocolError("a result is not at the parameter set's output scale")
        return np.asarray(vector.decrypt(), dtype=np.float64)


class _OwnerContext(OwnerContext):
    def __init__(self, params: ParameterSet, data: bytes, limit: int) -> None:
        check_allowed(params)
        if not isinstance(data, bytes) or len(data) > limit:
            raise ProtocolError(f"a public context is bytes of at most {limit}")
        self._version = _inspect_context(params, data)
        try:
            context = ts.context_from(data)
        except _TENSEAL_ERRORS:
            raise ProtocolError("the public context does not deserialise") from None
        if context.has_secret_key() or not context.is_public():
            raise ProtocolError("the public context carries a secret key")
        if context.has_galois_keys() or context.has_relin_keys() != (params.depth == 2):
            raise ProtocolError("the public context carries the wrong evaluation keys")
        seal = context.seal_context().data
        key_parms = seal.key_context_data().parms()
        primes = [m.value() for m in key_parms.coeff_modulus()]
        expected = sa.CoeffModulus.Create(
            params.poly_modulus_degree, list(params.coeff_mod_bit_sizes)
        )
        if (
            str(key_parms.scheme()) != "SCHEME_TYPE.CKKS"
            or key_parms.poly_modulus_degree() != params.poly_modulus_degree
            or primes != [m.value() for m in expected]
        ):
            raise ProtocolError(
                f"the public context is not parameter set {params.name}"
            )
        _check_public_key(context.public_key().data.data(), params)
        self._params = params
        self._context = context
        self._seal = seal
        self._evaluator = sa.Evaluator(seal)
        self._encoder = sa.CKKSEncoder(seal)
        self._encryptor = sa.Encryptor(seal, context.public_key().data)
        self._relin = context.relin_keys().data if params.depth == 2 else None
        self._top = list(seal.first_parms_id())
        self._digest = hashlib.sha256(data).digest()

    @property
    def digest(self) -> bytes:
        return self._digest

    def load(self, ciphertext: bytes, count: int) -> Handle:
        params = self._params
        limit = TENSEAL.max_ciphertext_bytes(params, len(params.data_primes))
        if not isinstance(ciphertext, bytes) or len(ciphertext) > limit:
            raise ProtocolError(f"a feature ciphertext is bytes of at most {limit}")
        try:
            vector = ts.ckks_vector_from(self._context, ciphertext)
            cts = vector.ciphertext()
        except _TENSEAL_ERRORS:
            raise ProtocolError("a feature ciphertext does not deserialise") from None
        if vector.size() != count or len(cts) != 1:
            raise ProtocolError(f"a feature ciphertext must hold {count} values")
        ct = cts[0]
        if ct.size() != 2 or list(ct.parms_id()) != self._top or not ct.is_ntt_form():
            raise ProtocolError("a feature ciphertext is not fresh at the top level")
        if ct.scale != params.global_scale or ct.is_transparent():
            raise ProtocolError("a feature ciphertext is not at the global scale")
        return _Ciphertext(ct)

    def _constant(self, value: float, parms_id: list[int], scale: float) -> Any:
        plain = sa.Plaintext()
        self._encoder.encode(float(value), parms_id, scale, plain)
        return plain

    def zero(self, scale_bits: int) -> Handle:
        ct = sa.Ciphertext()
        self._encryptor.encrypt_zero(self._top, ct)
        ct.scale = 2.0**scale_bits
        return _Ciphertext(ct)

    def dot(self, handles: Sequence[Handle], weights: Values, bias: float) -> Handle:
        bits = self._params.weight_scale_bits
        if len(handles) != len(weights):
            raise ConfigError("one weight per ciphertext")
        terms: list[Handle] = []
        for handle, weight in zip(handles, weights, strict=True):
            if abs(weight) * 2.0**bits < 0.5:
                continue  # rounds to 0: SEAL refuses a product that is transparent
            ct = _ct(handle)
            product = sa.Ciphertext()
            plain = self._constant(weight, ct.parms_id(), 2.0**bits)
            self._evaluator.multiply_plain(ct, plain, product)
            terms.append(_Ciphertext(product))
        if not terms:
            terms.append(self.zero(self._params.scale_bits + bits))
        return self.add(terms, bias)

    def square(self, handle: Handle) -> Handle:
        out = sa.Ciphertext()
        self._evaluator.square(_ct(handle), out)
        return _Ciphertext(out)

    def times(self, handle: Handle, value: float, scale_bits: int) -> Handle:
        ct = _ct(handle)
        out = sa.Ciphertext()
        plain = self._constant(value, ct.parms_id(), 2.0**scale_bits)
        self._evaluator.multiply_plain(ct, plain, out)
        return _Ciphertext(out)

    def add(self, handles: Sequence[Handle], constant: float) -> Handle:
        cts = [_ct(h) for h in handles]
        if not cts or any(ct.scale != cts[0].scale for ct in cts):
            raise ConfigError("add needs ciphertexts of one scale")
        out = sa.Ciphertext()
        plain = self._constant(constant, cts[0].parms_id(), cts[0].scale)
        self._evaluator.add_plain(cts[0], plain, out)
        for ct in cts[1:]:
            self._evaluator.add_inplace(out, ct)
        return _Ciphertext(out)

    def relinearize(self, handle: Handle) -> Handle:
        if self._relin is None:
            raise ConfigError("this parameter set has no relinearisation key")
        out = sa.Ciphertext()
        self._evaluator.relinearize(_ct(handle), self._relin, out)
        return _Ciphertext(out)

    def rerandomize(self, handle: Handle) -> Handle:
        ct = _ct(handle)
        zero = sa.Ciphertext()
        self._encryptor.encrypt_zero(ct.parms_id(), zero)
        zero.scale = ct.scale
        out = sa.Ciphertext()
        self._evaluator.add(ct, zero, out)
        return _Ciphertext(out)

    def add_slots(self, handle: Handle, slots: Slots) -> Handle:
        ct = _ct(handle)
        if slots.shape != (self._params.slots,):
            raise ConfigError(f"add_slots takes {self._params.slots} values")
        plain = sa.Plaintext()
        self._encoder.encode(slots.tolist(), ct.parms_id(), ct.scale, plain)
        out = sa.Ciphertext()
        self._evaluator.add_plain(ct, plain, out)
        return _Ciphertext(out)

    def rescale(self, handle: Handle) -> Handle:
        out = sa.Ciphertext()
        self._evaluator.rescale_to_next(_ct(handle), out)
        return _Ciphertext(out)

    def serialize(self, handle: Handle, count: int) -> bytes:
        ct = _ct(handle)
        if ct.size() != 2:
            raise ConfigError("only a relinearised (size-2) result is serialised")
        size, degree, limbs = (
            ct.size(),
            ct.poly_modulus_degree(),
            ct.coeff_modulus_size(),
        )
        words = np.array(
            list(map(ct.__getitem__, range(size * degree * limbs))), dtype=np.uint64
        )
        blob = sealwire.seal_ciphertext(
            self._version, list(ct.parms_id()), size, degree, limbs, ct.scale, words
        )
        return sealwire.ckks_vector_bytes(blob, count, ct.scale)


def _inspect_context(params: ParameterSet, data: bytes) -> tuple[int, int]:
    """Check a TenSEALContextProto's fields before TenSEAL parses it.

    Returns the SEAL version of its encryption parameters, which the owner's own
    serialised results then carry.
    """
    top = _unique(sealwire.fields(data, "the public context"), "the public context")
    if 3 in top:
        raise ProtocolError("the public context carries a secret key")
    allowed = {1: sealwire.BYTES, 2: sealwire.BYTES, 4: sealwire.VARINT}
    _only(top, allowed, required=(1, 2), what="the public context")
    if top.get(4, (0, 0))[1] != 0:
        raise ProtocolError("the public context is not a public-key context")
    public = _unique(
        sealwire.fields(bytes(top[2][1]), "the public keys"), "the public keys"
    )
    allowed = {
        1: sealwire.BYTES,
        2: sealwire.VARINT,
        3: sealwire.FIXED64,
        4: sealwire.BYTES,
    }
    needs_relin = (4,) if params.depth == 2 else ()
    _only(public, allowed, required=(1, *needs_relin), what="the public keys")
    if params.depth == 1 and 4 in public:
        raise ProtocolError("the public context carries keys this model does not use")
    return sealwire.seal_version(top[1][1])


def _check_public_key(key: Any, params: ParameterSet) -> None:
    """Refuse a public key with an evidently non-random polynomial.

    Both halves of an honest key are uniform modulo each prime (in SEAL's NTT form),
    so any 256 coefficients of one limb are distinct except with probability below
    2**-30 (primes of 46 bits or more). A zero, constant or low-entropy half,
    which would make re-randomising with this key ineffective, fails. A key crafted
    to look uniform would pass: the flooding argument assumes honest keys.
    """
    n = params.poly_modulus_degree
    limbs = key.coeff_modulus_size()
    if key.size() != 2 or key.poly_modulus_degree() != n:
        raise ProtocolError("the public key has the wrong shape")
    for start in range(0, 2 * limbs * n, n):
        if len({key[start + i] for i in range(_KEY_SAMPLE)}) != _KEY_SAMPLE:
            raise ProtocolError("the public key is degenerate")


def _unique(entries: Any, what: str) -> dict[int, tuple[int, Any]]:
    found: dict[int, tuple[int, Any]] = {}
    for number, wire, value in entries:
        if number in found:
            raise ProtocolError(f"{what} repeats field {number}")
        found[number] = (wire, value)
    return found


def _only(
    found: dict[int, tuple[int, Any]],
    allowed: dict[int, int],
    *,
    required: tuple[int, ...],
    what: str,
) -> None:
    for number, (wire, value) in found.items():
        if allowed.get(number) != wire:
            raise ProtocolError(f"{what} has an unexpected field {number}")
        if wire == sealwire.BYTES and not len(value):
            raise ProtocolError(f"{what} has an empty field {number}")
    for number in required:
        if number not in found:
            raise ProtocolError(f"{what} lacks field {number}")
