"""Paillier keys: sizes, validation of hostile public keys, secrets never leaked."""

from __future__ import annotations

import pickle

import gmpy2
import pytest
from gmpy2 import mpz
from phe import paillier

from cleanroom.errors import ConfigError, ProtocolError
from protocols.paillier import (
    KeyPair,
    PublicKey,
    generate_keypair,
    private_key_from_bytes,
    private_key_to_bytes,
    public_key_from_bytes,
    public_key_to_bytes,
)
from protocols.paillier.keys import MAX_PUBLIC_KEY_BYTES, SMALL_PRIME_BOUND


def _odd_prime(bits: int, seed: int) -> mpz:
    return gmpy2.next_prime((mpz(1) << (bits - 1)) + mpz(seed) * 7919)


def test_default_key_is_3072_bits_and_well_formed(paillier_keys: KeyPair) -> None:
    public, crt = paillier_keys.public, paillier_keys.private.crt
    assert public.bits == 3072 and not paillier_keys.legacy
    assert crt.p % 4 == 3 and crt.q % 4 == 3
    assert gmpy2.gcd(crt.p - 1, crt.q - 1) == 2
    assert public.phe.g == public.n + 1
    # h_s is an n-th residue: raising it to phi(n) gives 1 mod n^2.
    phi = (crt.p - 1) * (crt.q - 1)
    assert gmpy2.powmod(public.hs, phi, public.nsquare) == 1


@pytest.mark.parametrize("bits", [512, 1024, 2047, 1536])
def test_keys_below_2048_bits_are_refused(bits: int) -> None:
    with pytest.raises(ConfigError, match="below the 3072-bit minimum"):
        generate_keypair(bits, allow_legacy_2048=True)


def test_2048_bits_needs_the_explicit_legacy_flag() -> None:
    with pytest.raises(ConfigError, match="allow_legacy_2048"):
        generate_keypair(2048)
    # Test-only use of the legacy size: the one place 2048 bits is generated.
    legacy = generate_keypair(2048, allow_legacy_2048=True)
    assert legacy.legacy and legacy.public.legacy and "legacy" in repr(legacy.public)
    data = public_key_to_bytes(legacy.public)
    with pytest.raises(ProtocolError, match="allow_legacy_2048"):
        public_key_from_bytes(data)
    assert public_key_from_bytes(data, allow_legacy_2048=True) == legacy.public


def test_public_key_round_trip_keeps_the_fingerprint(paillier_keys: KeyPair) -> None:
    data = public_key_to_bytes(paillier_keys.public)
    again = public_key_from_bytes(data)
    assert again == paillier_keys.public
    assert again.fingerprint == paillier_keys.public.fingerprint
    assert len(again.fingerprint) == 32


def test_fingerprints_differ_between_keys(
    paillier_keys: KeyPair, other_paillier_keys: KeyPair
) -> None:
    assert paillier_keys.public != other_paillier_keys.public
    assert paillier_keys.public.fingerprint != other_paillier_keys.public.fingerprint


_HOSTILE_MODULI = {
    "even": lambda good: good.n + 1,
    "perfect square": lambda good: gmpy2.next_prime(mpz(3) << 1534) ** 2,
    "prime factor below": lambda good: mpz(65521) * _odd_prime(3072 - 15, 2),
    "prime": lambda good: _odd_prime(3072, 3),
}


@pytest.mark.parametrize("kind", list(_HOSTILE_MODULI))
def test_malformed_moduli_are_refused(paillier_keys: KeyPair, kind: str) -> None:
    n = _HOSTILE_MODULI[kind](paillier_keys.public)
    assert n.bit_length() == 3072
    with pytest.raises(ProtocolError, match=kind):
        PublicKey(n, 4)
    assert SMALL_PRIME_BOUND > 65521


def test_a_modulus_below_the_minimum_is_refused_when_parsed() -> None:
    n = _odd_prime(1024, 4) * _odd_prime(1024, 5)
    width = (n.bit_length() + 7) // 8
    data = b"CRPK\x01" + width.to_bytes(2, "big") + n.to_bytes(width, "big")
    data += mpz(4).to_bytes(2 * width, "big")
    with pytest.raises(ProtocolError, match="below the 3072-bit minimum"):
        public_key_from_bytes(data)


@pytest.mark.parametrize(
    "hs_of",
    [
        lambda k: mpz(1),
        lambda k: k.nsquare - 1,
        lambda k: k.n + 1,
        lambda k: k.nsquare + 5,
        lambda k: mpz(0),
    ],
    ids=["one", "minus-one", "in-1+n-subgroup", "out-of-range", "zero"],
)
def test_degenerate_djn_bases_are_refused(paillier_keys: KeyPair, hs_of) -> None:
    key = paillier_keys.public
    with pytest.raises(ProtocolError, match="h_s"):
        PublicKey(key.n, hs_of(key))


def test_a_base_sharing_a_factor_with_n_is_refused(paillier_keys: KeyPair) -> None:
    crt = paillier_keys.private.crt
    with pytest.raises(ProtocolError, match="not a unit"):
        PublicKey(paillier_keys.public.n, crt.p * 12345)


def test_a_base_with_jacobi_symbol_minus_one_is_refused(
    paillier_keys: KeyPair,
) -> None:
    key = paillier_keys.public
    x = mpz(3)
    while gmpy2.jacobi(x, key.n) != -1:
        x += 1
    with pytest.raises(ProtocolError, match="valid DJN base"):
        PublicKey(key.n, gmpy2.powmod(x, key.n, key.nsquare))


def test_phe_keys_must_use_g_equal_n_plus_one(paillier_keys: KeyPair) -> None:
    key = paillier_keys.public
    assert PublicKey.from_phe(key.phe, key.hs) == key
    odd = paillier.PaillierPublicKey(int(key.n))
    odd.g = odd.n + 2
    with pytest.raises(ProtocolError, match="g must be n"):
        PublicKey.from_phe(odd, key.hs)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d[:-1],
        lambda d: d + b"\x00",
        lambda d: b"XXXX" + d[4:],
        lambda d: d[:4] + b"\x09" + d[5:],
        lambda d: b"\x00" * (MAX_PUBLIC_KEY_BYTES + 1),
    ],
    ids=["truncated", "extended", "magic", "version", "oversized"],
)
def test_malformed_public_key_bytes_are_refused(paillier_keys: KeyPair, mutate) -> None:
    with pytest.raises(ProtocolError):
        public_key_from_bytes(mutate(public_key_to_bytes(paillier_keys.public)))


def test_private_key_is_never_in_public_bytes_or_reprs(paillier_keys: KeyPair) -> None:
    crt = paillier_keys.private.crt
    public_bytes = public_key_to_bytes(paillier_keys.public)
    secrets = [crt.p, crt.q]
    for secret in secrets:
        raw = secret.to_bytes((secret.bit_length() + 7) // 8, "big")
        assert raw not in public_bytes
        for text in (
            repr(paillier_keys),
            repr(paillier_keys.private),
            str(paillier_keys.private),
            repr(crt),
            repr(paillier_keys.public),
        ):
            assert str(secret) not in text and format(int(secret), "x") not in text
    with pytest.raises(ConfigError, match="not pickled"):
        pickle.dumps(paillier_keys.private)
    with pytest.raises(ConfigError, match="not pickled"):
        pickle.dumps(paillier_keys)


def test_private_key_serialises_only_by_name(paillier_keys: KeyPair) -> None:
    data = private_key_to_bytes(paillier_keys.private)
    again = private_key_from_bytes(data)
    assert again.public == paillier_keys.public
    assert again.crt.p == paillier_keys.private.crt.p
    with pytest.raises(ProtocolError):
        private_key_from_bytes(data[:-1])
    with pytest.raises(ProtocolError):
        public_key_from_bytes(data)


def test_wrong_factors_are_refused(paillier_keys: KeyPair) -> None:
    from protocols.paillier import PrivateKey

    crt = paillier_keys.private.crt
    with pytest.raises(ProtocolError, match="do not factor"):
        PrivateKey(paillier_keys.public, crt.p, crt.q + 2)
    with pytest.raises(ProtocolError, match="not prime"):
        PrivateKey(paillier_keys.public, 1, paillier_keys.public.n)
