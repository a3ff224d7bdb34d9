"""CKKS parameter sets, the chooser, the flood plan and the CSPRNG Gaussians."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable

import numpy as np
import pytest
import tenseal.sealapi as sa

from cleanroom.errors import ConfigError
from protocols.ckks import (
    ALLOWED_SETS,
    FloodPlan,
    ParameterSet,
    choose_parameters,
    parameter_set,
)
from protocols.ckks.flooding import FINEST_COEFF_STD, LAYER_RATIO, gaussians
from protocols.ckks.params import HE_STANDARD_MAX_BITS, check_allowed


@pytest.mark.parametrize("params", ALLOWED_SETS, ids=lambda p: p.name)
def test_every_allowed_set_is_within_the_he_standard(params: ParameterSet) -> None:
    n = params.poly_modulus_degree
    assert params.total_bits <= HE_STANDARD_MAX_BITS[n]
    assert params.total_bits <= sa.CoeffModulus.MaxBitCount(n, sa.SEC_LEVEL_TYPE.TC128)
    assert params.security_level == 128
    assert max(params.coeff_mod_bit_sizes) <= 60


@pytest.mark.parametrize("params", ALLOWED_SETS, ids=lambda p: p.name)
def test_value_range_fits_the_actual_primes(params: ParameterSet) -> None:
    primes = [
        m.value()
        for m in sa.CoeffModulus.Create(
            params.poly_modulus_degree, list(params.coeff_mod_bit_sizes)
        )
    ]
    data = primes[:-1]
    # At the flood: |value| * scale < Q / 2 for every |value| < 2**value_bits.
    assert 2 ** (params.value_bits + params.top_scale_bits + 1) <= math.prod(data)
    kept, dropped = data[: params.output_limbs], data[params.output_limbs :]
    out_scale = 2**params.top_scale_bits / math.prod(dropped)
    assert (
        2**params.output_scale_bits_min <= out_scale <= 2**params.output_scale_bits_max
    )
    assert 2**params.value_bits * out_scale * 2 <= math.prod(kept)


def test_sets_outside_the_limits_cannot_be_built() -> None:
    base = ALLOWED_SETS[0]
    for change, problem in [
        ({"coeff_mod_bit_sizes": (60, 60, 60, 60)}, "exceed the 128-bit limit"),
        ({"poly_modulus_degree": 4096}, "poly_modulus_degree"),
        ({"coeff_mod_bit_sizes": (61, 61)}, "20..60 bits"),
        ({"coeff_mod_bit_sizes": (60, 40)}, "special prime"),
        ({"coeff_mod_bit_sizes": (60,)}, "special prime"),
        ({"security_level": 192}, "128-bit"),
        ({"depth": 3}, "depth"),
        ({"output_rescales": 1}, "output_rescales"),
        ({"scale_bits": 40, "weight_scale_bits": 30}, "no room"),
    ]:
        with pytest.raises(ConfigError, match=problem):
            dataclasses.replace(base, **change)


def test_only_allowed_sets_pass_and_are_found_by_name() -> None:
    for params in ALLOWED_SETS:
        check_allowed(params)
        assert parameter_set(params.name) is params
    lookalike = dataclasses.replace(ALLOWED_SETS[0], scale_bits=27)
    with pytest.raises(ConfigError, match="not an allowed"):
        check_allowed(lookalike)
    with pytest.raises(ConfigError, match="unknown"):
        parameter_set("ckks-4096")


def test_chooser_picks_the_cheapest_set_of_the_exact_depth() -> None:
    assert (
        choose_parameters(depth=1, precision_bits=10, value_bits=9).name
        == "ckks-8192-d1"
    )
    assert (
        choose_parameters(depth=1, precision_bits=16, value_bits=9).name
        == "ckks-16384-d1"
    )
    assert (
        choose_parameters(depth=1, precision_bits=10, value_bits=20).name
        == "ckks-16384-d1"
    )
    assert (
        choose_parameters(depth=2, precision_bits=10, value_bits=17).name
        == "ckks-8192-d2"
    )
    assert (
        choose_parameters(depth=2, precision_bits=14, value_bits=17).name
        == "ckks-16384-d2"
    )
    for depth in (1, 2):
        for precision in range(1, 25):
            for value in (1, 10, 24, 47, 65):
                try:
                    params = choose_parameters(
                        depth=depth, precision_bits=precision, value_bits=value
                    )
                except ConfigError:
                    continue
                assert params.depth == depth
                assert (
                    params.max_precision_bits >= precision
                    and params.value_bits >= value
                )


def test_chooser_refuses_what_no_set_can_do() -> None:
    with pytest.raises(ConfigError, match="depth 3"):
        choose_parameters(depth=3, precision_bits=8, value_bits=8)
    with pytest.raises(ConfigError, match="precision 2\\^-40"):
        choose_parameters(depth=1, precision_bits=40, value_bits=8)
    with pytest.raises(ConfigError, match="2\\^80"):
        choose_parameters(depth=2, precision_bits=8, value_bits=80)


@pytest.mark.parametrize("params", ALLOWED_SETS, ids=lambda p: p.name)
def test_flood_plan_layers_keep_integer_resolution(params: ParameterSet) -> None:
    for bits in range(1, params.max_precision_bits + 1):
        plan = FloodPlan.for_output(params, bits)
        assert plan.slot_std == 2.0**-bits / 8
        assert plan.layer_stds[-1] == pytest.approx(plan.slot_std)
        assert plan.finest_coeff_std <= FINEST_COEFF_STD
        ratios = np.diff(np.log2(plan.layer_stds))
        assert (ratios >= 8 - 1e-9).all() and (
            ratios <= math.log2(LAYER_RATIO) + 1e-9
        ).all()
        assert (np.array(plan.layer_stds[:-1]) <= plan.layer_stds[-1] * 2.0**-8).all()
        assert plan.max_shift <= 1.09 * 2.0**-bits
        if params.depth == 1:
            assert plan.margin_bits is None and plan.owner_error_rms == 0
        else:
            assert plan.margin_bits is not None and plan.margin_bits > 32
        assert plan.slot_std > 64 * plan.ciphertext_error_std


def test_flood_plan_refuses_precision_the_set_cannot_give() -> None:
    params = ALLOWED_SETS[0]
    with pytest.raises(ConfigError, match="outside"):
        FloodPlan.for_output(params, params.max_precision_bits + 1)
    with pytest.raises(ConfigError, match="outside"):
        FloodPlan.for_output(params, 0)


def counter_random(seed: bytes) -> Callable[[int], bytes]:
    counter = 0

    def random(n: int) -> bytes:
        nonlocal counter
        blocks = -(-n // 32)
        out = b"".join(
            hashlib.sha256(seed + (counter + i).to_bytes(8, "big")).digest()
            for i in range(blocks)
        )
        counter += blocks
        return out[:n]

    return random


def test_gaussians_known_answer_from_the_random_bytes() -> None:
    raw = bytes(range(32))
    values = gaussians(lambda n: raw[:n], 4)
    words = [int.from_bytes(raw[i : i + 8], "little") for i in range(0, 32, 8)]
    u = [((w >> 11) + 0.5) / 2**53 for w in words]
    r = [math.sqrt(-2 * math.log(u[0])), math.sqrt(-2 * math.log(u[1]))]
    expected = [
        r[0] * math.cos(2 * math.pi * u[2]),
        r[1] * math.cos(2 * math.pi * u[3]),
    ]
    expected += [
        r[0] * math.sin(2 * math.pi * u[2]),
        r[1] * math.sin(2 * math.pi * u[3]),
    ]
    assert values.tolist() == pytest.approx(expected, rel=1e-12)
    assert len(gaussians(lambda n: raw[:n], 3)) == 3


def test_gaussians_are_standard_normal_and_bounded() -> None:
    values = gaussians(counter_random(b"stats"), 200_000)
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1) < 0.01
    assert abs(np.mean(np.abs(values) > 1.96) - 0.05) < 0.003
    assert np.abs(values).max() <= math.sqrt(2 * 54 * math.log(2))


def test_gaussians_refuse_a_short_random_source() -> None:
    with pytest.raises(ConfigError, match="wrong number of bytes"):
        gaussians(lambda n: b"\x00" * (n - 1), 4)


def test_flood_draws_have_the_planned_spread() -> None:
    plan = FloodPlan.for_output(parameter_set("ckks-8192-d2"), 10)
    layers = plan.draw(counter_random(b"flood"), 4096)
    assert len(layers) == len(plan.layer_stds) == 3
    for layer, std in zip(layers, plan.layer_stds, strict=True):
        assert layer.dtype == np.complex128 and layer.shape == (4096,)
        assert 0.95 * std < layer.real.std() < 1.05 * std
        assert 0.95 * std < layer.imag.std() < 1.05 * std
