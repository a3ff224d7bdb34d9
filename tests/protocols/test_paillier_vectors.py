"""Encrypted vectors at 3072 bits: party sums, scalings, dot products, obfuscation."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.errors import ConfigError, ProtocolError, SpecError
from protocols.paillier import (
    CryptoPool,
    Encryptor,
    KeyPair,
    PackingLayout,
    decrypt_vector,
    dot,
    exponent_bits,
    linear_combination,
    scale,
    sum_vectors,
)
from protocols.paillier.fixedbase import (
    choose_window,
    exponent_windows,
    random_digits,
)


def digits_to_exponent(digits: list[int], window: int) -> int:
    """The integer whose base-2^w digits (least significant first) are ``digits``."""
    return sum(digit << (window * i) for i, digit in enumerate(digits))


class CountingRandom:
    """A deterministic RandomSource (SHA-256 in counter mode) that counts its calls."""

    def __init__(self, seed: bytes = b"seed") -> None:
        self.seed, self.counter, self.calls = seed, 0, 0

    def __call__(self, count: int) -> bytes:
        self.calls += 1
        out = bytearray()
        while len(out) < count:
            self.counter += 1
            out += hashlib.sha256(self.seed + self.counter.to_bytes(8, "big")).digest()
        return bytes(out[:count])


@pytest.fixture(scope="module")
def layout(paillier_keys: KeyPair) -> PackingLayout:
    return PackingLayout(paillier_keys.public.bits, value_bits=64, additions=16)


@pytest.fixture(scope="module")
def pool() -> Iterator[CryptoPool]:
    with CryptoPool(2) as crypto_pool:
        yield crypto_pool


@settings(max_examples=12, deadline=None)
@given(
    values=st.lists(st.integers(-(2**63) + 1, 2**63 - 1), min_size=1, max_size=100),
    packed=st.booleans(),
)
def test_encrypt_decrypt_round_trip(
    paillier_keys: KeyPair, layout: PackingLayout, values: list[int], packed: bool
) -> None:
    if not packed:
        values = values[:4]
    vector = Encryptor(paillier_keys.public).encrypt_integers(
        values, layout, packed=packed
    )
    assert vector.obfuscated and vector.length == len(values)
    assert decrypt_vector(paillier_keys.private, vector) == values


def test_sum_of_many_parties(paillier_keys: KeyPair, layout: PackingLayout) -> None:
    rng = np.random.default_rng(7)
    parties = [rng.integers(-(2**62), 2**62, 120) for _ in range(layout.additions)]
    encryptor = Encryptor(paillier_keys.public)
    total = sum_vectors([encryptor.encrypt_integers(v, layout) for v in parties])
    expected = [sum(int(p[i]) for p in parties) for i in range(120)]
    assert decrypt_vector(paillier_keys.private, total) == expected
    assert not total.obfuscated
    assert total.bound == layout.additions * layout.max_value


def test_sums_beyond_the_declared_additions_are_refused(
    paillier_keys: KeyPair, layout: PackingLayout
) -> None:
    one = Encryptor(paillier_keys.public).encrypt_integers([1, 2, 3], layout)
    full = sum_vectors([one] * layout.additions)
    with pytest.raises(ProtocolError, match="overflow"):
        full + one
    with pytest.raises(ProtocolError, match="overflow"):
        scale(one, layout.additions + 1)


def test_scalar_products_and_linear_combinations(
    paillier_keys: KeyPair, layout: PackingLayout
) -> None:
    encryptor = Encryptor(paillier_keys.public)
    a, b = [5, -7, 2**40, 0], [-1, 3, -(2**41), 9]
    ea, eb = (
        encryptor.encrypt_integers(a, layout),
        encryptor.encrypt_integers(b, layout),
    )
    private = paillier_keys.private
    assert decrypt_vector(private, scale(ea, -3)) == [-3 * x for x in a]
    assert decrypt_vector(private, scale(ea, 0)) == [0, 0, 0, 0]
    combined = linear_combination([ea, eb, ea], [4, -5, 1])
    assert decrypt_vector(private, combined) == [
        5 * x - 5 * y for x, y in zip(a, b, strict=True)
    ]


def test_dot_product_for_vertical_gradients(paillier_keys: KeyPair) -> None:
    # Residuals one per ciphertext times a feature matrix, as in vertical LR: the
    # layout's headroom covers rows x max|feature| additions of a residual.
    rows, bits = 12, 20
    layout = PackingLayout(
        paillier_keys.public.bits, value_bits=bits + 2, additions=rows << bits
    )
    rng = np.random.default_rng(3)
    residuals = rng.integers(-(2**bits), 2**bits, rows)
    features = rng.integers(-(2**bits), 2**bits, (rows, layout.slots + 30))
    column = Encryptor(paillier_keys.public).encrypt_integers(
        residuals, layout, packed=False
    )
    gradient = dot(column, features)
    assert gradient.packed and gradient.length == layout.slots + 30
    assert len(gradient.ciphertexts) == 2
    expected = [int(v) for v in residuals.astype(object) @ features.astype(object)]
    assert decrypt_vector(paillier_keys.private, gradient) == expected
    single = dot(column, features[:, 0], path="x")
    assert decrypt_vector(paillier_keys.private, single) == expected[:1]


def test_dot_product_overflow_is_refused(
    paillier_keys: KeyPair, layout: PackingLayout
) -> None:
    column = Encryptor(paillier_keys.public).encrypt_integers(
        [1, 2], layout, packed=False
    )
    with pytest.raises(ProtocolError, match="features"):
        dot(column, np.array([[2**10], [1]]), path="features")
    with pytest.raises(ProtocolError, match="one value per ciphertext"):
        dot(Encryptor(paillier_keys.public).encrypt_integers([1], layout), [[1]])
    with pytest.raises(ProtocolError, match="rows"):
        dot(column, [[1], [2], [3]])


def test_overflow_is_refused_before_any_encryption(
    paillier_keys: KeyPair, layout: PackingLayout
) -> None:
    random = CountingRandom()
    encryptor = Encryptor(paillier_keys.public, random=random)
    with pytest.raises(SpecError) as error:
        encryptor.encrypt_reals(
            [1.0, 2.0**64, 3.0], layout, path="inputs[1]", names=["a", "income", "c"]
        )
    assert error.value.path == "inputs[1].income"
    assert random.calls == 0


def test_rerandomisation_changes_ciphertexts_not_plaintexts(
    paillier_keys: KeyPair, layout: PackingLayout
) -> None:
    encryptor = Encryptor(paillier_keys.public)
    vector = encryptor.encrypt_integers([3, -1, 4, -1, 5], layout)
    again = encryptor.rerandomize(vector)
    assert again.obfuscated
    assert set(again.ciphertexts).isdisjoint(vector.ciphertexts)
    assert decrypt_vector(paillier_keys.private, again) == [3, -1, 4, -1, 5]


def test_sending_rerandomises_derived_vectors_by_default(
    paillier_keys: KeyPair, layout: PackingLayout
) -> None:
    encryptor = Encryptor(paillier_keys.public)
    fresh = encryptor.encrypt_integers([1, 2], layout)
    # A fresh encryption already carries new randomness: sent as it is.
    assert encryptor.to_bytes(fresh, context=b"c") == encryptor.to_bytes(
        fresh, context=b"c"
    )
    derived = fresh + fresh
    local = encryptor.to_bytes(derived, context=b"c", rerandomize=False)
    sent = encryptor.to_bytes(derived, context=b"c")
    assert local == encryptor.to_bytes(derived, context=b"c", rerandomize=False)
    assert sent != local and sent != encryptor.to_bytes(derived, context=b"c")


def test_obfuscator_is_the_short_exponent_power_of_hs(paillier_keys: KeyPair) -> None:
    key = paillier_keys.public
    bits = exponent_bits(key)
    assert bits == 1536
    public = Encryptor(key, random=CountingRandom(b"x")).obfuscators(3)
    holder = Encryptor(
        key, private=paillier_keys.private, random=CountingRandom(b"x")
    ).obfuscators(3)
    assert public == holder
    window = choose_window(bits, 3, key.nsquare.bit_length())
    width = (exponent_windows(bits, window) * window + 7) // 8
    digits = random_digits(CountingRandom(b"x")(3 * width), 3, bits, window)
    exponents = [digits_to_exponent(row, window) for row in digits.tolist()]
    assert all(e < 1 << (bits + window) for e in exponents)
    assert public == [gmpy2.powmod(key.hs, e, key.nsquare) for e in exponents]


def test_same_randomness_gives_the_same_ciphertexts(
    paillier_keys: KeyPair, layout: PackingLayout
) -> None:
    values = list(range(-50, 50))
    first = Encryptor(paillier_keys.public, random=CountingRandom()).encrypt_integers(
        values, layout
    )
    second = Encryptor(paillier_keys.public, random=CountingRandom()).encrypt_integers(
        values, layout
    )
    other = Encryptor(
        paillier_keys.public, random=CountingRandom(b"other")
    ).encrypt_integers(values, layout)
    assert first.ciphertexts == second.ciphertexts != other.ciphertexts


def test_phe_decrypts_our_ciphertexts(
    paillier_keys: KeyPair, layout: PackingLayout
) -> None:
    vector = Encryptor(paillier_keys.public).encrypt_integers(
        [42], layout, packed=False
    )
    assert paillier_keys.private.phe.raw_decrypt(int(vector.ciphertexts[0])) == 42


def test_pool_gives_the_serial_results(
    paillier_keys: KeyPair,
    layout: PackingLayout,
    pool: CryptoPool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whether a batch pays for the pool is a timing decision; here it is forced.
    monkeypatch.setattr(pool, "worth_it", lambda *_: True)
    values = list(range(-400, 400))
    serial = Encryptor(paillier_keys.public, random=CountingRandom()).encrypt_integers(
        values, layout
    )
    pooled = Encryptor(
        paillier_keys.public, pool=pool, random=CountingRandom()
    ).encrypt_integers(values, layout)
    holder = Encryptor(
        paillier_keys.public,
        private=paillier_keys.private,
        pool=pool,
        random=CountingRandom(),
    ).encrypt_integers(values, layout)
    assert serial.ciphertexts == pooled.ciphertexts == holder.ciphertexts
    before = pool.cpu_seconds
    assert before > 0
    assert decrypt_vector(paillier_keys.private, pooled, pool=pool) == values
    assert pool.cpu_seconds > before


def test_vectors_under_different_keys_do_not_mix(
    paillier_keys: KeyPair, other_paillier_keys: KeyPair, layout: PackingLayout
) -> None:
    ours = Encryptor(paillier_keys.public).encrypt_integers([1], layout)
    theirs = Encryptor(other_paillier_keys.public).encrypt_integers([1], layout)
    with pytest.raises(ProtocolError, match="different keys"):
        ours + theirs
    with pytest.raises(ProtocolError, match="another key"):
        decrypt_vector(other_paillier_keys.private, ours)
    with pytest.raises(ProtocolError, match="another key"):
        Encryptor(paillier_keys.public).rerandomize(theirs)
    with pytest.raises(ProtocolError, match="does not belong"):
        Encryptor(paillier_keys.public, private=other_paillier_keys.private)


def test_a_short_random_source_is_refused(paillier_keys: KeyPair) -> None:
    encryptor = Encryptor(paillier_keys.public, random=lambda count: b"\x00" * 8)
    with pytest.raises(ConfigError, match="random source"):
        encryptor.obfuscators(2)


def test_the_pool_runs_a_process_per_worker_before_it_measures(
    pool: CryptoPool,
) -> None:
    # The executor reuses an idle worker for quick tasks: without the start-up
    # step, the calibration and every batch ran on one process.
    assert len(pool.worker_pids) == pool.workers
    assert 1.0 <= pool.parallelism <= pool.workers
