"""Packing: slots, signed round trips at the headroom edge, refusals naming columns."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.errors import ConfigError, ProtocolError, SpecError
from protocols.paillier import KeyPair, PackingLayout


def test_reference_point_43_slots_of_71_bits() -> None:
    layout = PackingLayout(3072, value_bits=64, additions=100)
    assert (layout.slots, layout.slot_bits) == (43, 71)
    assert layout.ciphertexts_for(10_000) == 233


def test_fewer_additions_give_more_slots() -> None:
    assert PackingLayout(3072, value_bits=64, additions=10).slots == 45
    assert PackingLayout(3072, value_bits=32, additions=10).slots > 80


@pytest.mark.parametrize(
    "kwargs",
    [
        {"value_bits": 1},
        {"value_bits": 64, "additions": 0},
        {"value_bits": 64, "scale_bits": 64},
        {"value_bits": 3000, "additions": 1 << 20},
        {"value_bits": True},
    ],
)
def test_impossible_layouts_are_config_errors(kwargs: dict[str, object]) -> None:
    arguments = {"modulus_bits": 3072, "value_bits": 64, "additions": 1} | kwargs
    with pytest.raises(ConfigError):
        PackingLayout(**arguments)  # type: ignore[arg-type]


layouts = st.builds(
    PackingLayout,
    modulus_bits=st.just(3072),
    value_bits=st.integers(2, 128),
    additions=st.integers(1, 1000),
)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), layout=layouts, packed=st.booleans())
def test_sums_at_the_edge_of_the_headroom_round_trip(
    paillier_keys: KeyPair, data: st.DataObject, layout: PackingLayout, packed: bool
) -> None:
    n = int(paillier_keys.public.n)
    top = layout.max_value
    length = data.draw(st.integers(1, 3 * layout.slots))
    value = st.one_of(st.sampled_from([top, -top, 0, 1, -1]), st.integers(-top, top))
    terms = data.draw(st.integers(1, min(layout.additions, 6)))
    vectors = [data.draw(st.lists(value, min_size=length, max_size=length))]
    for _ in range(terms - 1):
        vectors.append(data.draw(st.lists(value, min_size=length, max_size=length)))
    # The full headroom: the first vector counts as many times as additions allow.
    weight = layout.additions - terms + 1
    expected = [
        weight * column[0] + sum(column[1:]) for column in zip(*vectors, strict=True)
    ]
    plaintexts = [0] * layout.ciphertexts_for(length, packed=packed)
    for k, vector in enumerate(vectors):
        packed_vector = layout.pack(layout.integers(vector, path="v"), n, packed=packed)
        times = weight if k == 0 else 1
        plaintexts = [
            (a + times * b) % n for a, b in zip(plaintexts, packed_vector, strict=True)
        ]
    bound = layout.additions * top
    assert (
        layout.unpack(plaintexts, n, length=length, bound=bound, packed=packed)
        == expected
    )


def test_overflow_is_refused_naming_the_column() -> None:
    layout = PackingLayout(3072, value_bits=16, additions=10)
    values = [1, -2, 2**15, 4]
    with pytest.raises(SpecError) as error:
        layout.integers(values, path="inputs[2]", names=["a", "b", "income", "d"])
    assert error.value.path == "inputs[2].income"
    assert str(2**15) not in str(error.value)
    with pytest.raises(SpecError) as error:
        layout.integers(np.array([0, -(2**15) + 1, -(2**15)]), path="col")
    assert error.value.path == "col[2]"
    assert layout.integers([2**15 - 1, -(2**15) + 1], path="x") == [32767, -32767]


def test_reals_are_scaled_and_checked() -> None:
    layout = PackingLayout(3072, value_bits=24, additions=4, scale_bits=8)
    assert layout.reals([1.5, -0.25, 0.0], path="x") == [384, -64, 0]
    assert list(layout.to_reals([384, -64])) == [1.5, -0.25]
    with pytest.raises(SpecError) as error:
        layout.reals([1.0, float("nan")], path="inputs[0]", names=["age", "bmi"])
    assert error.value.path == "inputs[0].bmi"
    with pytest.raises(SpecError) as error:
        layout.reals([2.0**15], path="x")
    assert error.value.path == "x[0]"
    with pytest.raises(SpecError):
        layout.reals([[1.0]], path="x")


def test_64_bit_values_use_the_whole_signed_range() -> None:
    layout = PackingLayout(3072, value_bits=64, additions=2)
    big = np.array([2**63 - 1, -(2**63) + 1], dtype=np.int64)
    assert layout.integers(big, path="x") == [2**63 - 1, -(2**63) + 1]
    with pytest.raises(SpecError):
        layout.integers(np.array([-(2**63)], dtype=np.int64), path="x")
    with pytest.raises(SpecError):
        layout.integers(np.array([2**63], dtype=np.uint64), path="x")
    with pytest.raises(SpecError):
        layout.reals([2.0**63], path="x")


def test_decoding_refuses_slots_beyond_their_bound(paillier_keys: KeyPair) -> None:
    n = int(paillier_keys.public.n)
    layout = PackingLayout(3072, value_bits=8, additions=4)
    plaintext = layout.pack([100, -100, 7], n)
    with pytest.raises(ProtocolError, match="slot 0 overflowed"):
        layout.unpack(plaintext, n, length=3, bound=99)
    beyond = [(plaintext[0] + (1 << (layout.slot_bits * layout.slots))) % n]
    with pytest.raises(ProtocolError, match="more than its slots hold"):
        layout.unpack(beyond, n, length=3, bound=400)
    with pytest.raises(ProtocolError, match="count"):
        layout.unpack(plaintext, n, length=layout.slots + 1, bound=400)
