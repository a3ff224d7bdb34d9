"""Shamir sharing over 2^521 - 1: round trips, thresholds and malformed shares."""

from __future__ import annotations

import os
import random as pyrandom

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.errors import ProtocolAbort, ProtocolError
from protocols.shamir import (
    PRIME,
    SHARE_BYTES,
    Share,
    combine,
    combine_values,
    split,
    split_values,
)


@settings(max_examples=60, deadline=None)
@given(
    secret=st.binary(min_size=0, max_size=64),
    n=st.integers(min_value=2, max_value=20),
    data=st.data(),
)
def test_any_t_shares_recover_the_secret(
    secret: bytes, n: int, data: st.DataObject
) -> None:
    t = data.draw(st.integers(min_value=2, max_value=n))
    shares = split(secret, t, n)
    subset = data.draw(st.permutations(shares))[:t]
    assert combine(subset) == secret
    more = data.draw(st.integers(min_value=t, max_value=n))
    assert combine(shares[:more]) == secret


@settings(max_examples=30, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), n=st.integers(3, 12), data=st.data())
def test_below_threshold_aborts(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(min_value=3, max_value=n))
    shares = split(secret, t, n)
    with pytest.raises(ProtocolAbort, match="threshold"):
        combine(shares[: t - 1])


def test_leading_zero_bytes_survive() -> None:
    secret = bytes(31) + b"\x01"
    assert combine(split(secret, 3, 5)[2:]) == secret
    assert combine(split(b"", 2, 2)) == b""


def test_t_minus_one_shares_reveal_nothing_structural() -> None:
    # Same secret, fresh randomness: any t-1 shares differ between splittings.
    secret = os.urandom(32)
    first, second = split(secret, 3, 5), split(secret, 3, 5)
    assert [s.value for s in first[:2]] != [s.value for s in second[:2]]


def test_uses_the_injected_random_source() -> None:
    rng = pyrandom.Random(7)

    def source(n: int) -> bytes:
        return rng.randbytes(n)

    a = split(b"k" * 32, 3, 5, source)
    rng.seed(7)
    b = split(b"k" * 32, 3, 5, source)
    assert a == b


@pytest.mark.parametrize(
    ("t", "n"), [(1, 3), (0, 3), (4, 3), (2, 1), (2, 2**16), (True, 3)]
)
def test_bad_parameters_are_refused(t: int, n: int) -> None:
    with pytest.raises(ProtocolError):
        split(b"secret", t, n)


def test_oversized_secret_is_refused() -> None:
    with pytest.raises(ProtocolError):
        split(bytes(65), 2, 3)


def test_repeated_index_is_refused() -> None:
    shares = split(b"x" * 32, 3, 5)
    with pytest.raises(ProtocolError, match="index"):
        combine([shares[0], shares[1], shares[1]])


def test_mixed_thresholds_are_refused() -> None:
    a = split(b"x" * 32, 2, 3)
    b = split(b"x" * 32, 3, 3)
    with pytest.raises(ProtocolError, match="threshold"):
        combine([a[0], b[1], b[2]])


def test_no_shares_aborts() -> None:
    with pytest.raises(ProtocolAbort):
        combine([])


def test_wire_round_trip_and_validation() -> None:
    share = split(b"y" * 32, 3, 4)[3]
    raw = share.to_bytes()
    assert len(raw) == SHARE_BYTES
    assert Share.from_bytes(raw) == share
    with pytest.raises(ProtocolError):
        Share.from_bytes(raw[:-1])
    with pytest.raises(ProtocolError):
        Share(index=0, threshold=2, value=1)
    with pytest.raises(ProtocolError):
        Share(index=1, threshold=2, value=PRIME)


def test_corrupted_share_does_not_recover_the_secret() -> None:
    secret = b"z" * 32
    shares = split(secret, 3, 3)
    bad = Share(shares[0].index, 3, (shares[0].value + 1) % PRIME)
    try:
        assert combine([bad, *shares[1:]]) != secret
    except ProtocolError:
        pass  # usually caught by the encoding check


def test_split_values_shares_each_secret_on_its_own_polynomial() -> None:
    secrets = [os.urandom(32), b"\x00\x00ab", os.urandom(64)]
    values = split_values(secrets, 3, 5)
    assert len(values) == 5 and all(len(v) == 3 for v in values)
    for k, secret in enumerate(secrets):
        shares = [Share(x, 3, values[x - 1][k]) for x in range(1, 6)]
        for chosen in ([0, 1, 2], [1, 3, 4], [4, 0, 2]):
            assert combine([shares[i] for i in chosen]) == secret
        with pytest.raises(ProtocolAbort):
            combine(shares[:2])
    # Independent polynomials: the same secret twice gets different shares.
    twice = split_values([secrets[0], secrets[0]], 3, 5)
    assert [v[0] for v in twice] != [v[1] for v in twice]


def test_split_values_refuses_what_split_refuses() -> None:
    with pytest.raises(ProtocolError, match="at most 64"):
        split_values([bytes(65)], 3, 5)
    with pytest.raises(ProtocolError, match="need 2 <= t <= n"):
        split_values([b"a"], 1, 5)


def test_combine_values_recovers_many_secrets_at_the_same_points() -> None:
    secrets = [os.urandom(32) for _ in range(4)]
    values = split_values(secrets, 3, 5)
    points = [5, 2, 4]
    rows = [[values[x - 1][k] for x in points] for k in range(4)]
    assert combine_values(points, 3, rows) == secrets
    single = [Share(x, 3, values[x - 1][0]) for x in points]
    assert combine(single) == secrets[0]
    with pytest.raises(ProtocolAbort, match="threshold is 3"):
        combine_values(points[:2], 3, [r[:2] for r in rows])
    with pytest.raises(ProtocolError, match="repeat an index"):
        combine_values([5, 5, 4], 3, rows)
    with pytest.raises(ProtocolError, match="do not match their points"):
        combine_values(points, 3, [rows[0][:2]])
    with pytest.raises(ProtocolError, match="do not encode a secret"):
        combine_values(points, 3, [[(rows[0][0] + 1) % PRIME, *rows[0][1:]]])
