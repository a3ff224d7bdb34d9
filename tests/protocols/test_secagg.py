"""SecAgg+ end to end: exact sums, dropouts at every stage, aborts, config and graph."""

from __future__ import annotations

import json
import random as pyrandom
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.errors import ConfigError, ProtocolAbort, ProtocolError
from protocols.fixedpoint import FixedPoint
from protocols.party import COORDINATOR
from protocols.secagg import (
    ADVERTISE_KEYS,
    MASKED_INPUT,
    SHARE_KEYS,
    STAGES,
    UNMASK,
    SecAggConfig,
    run_in_process,
)
from protocols.secagg.bounds import sound_parameters
from protocols.secagg.graph import build_graph
from protocols.secagg.keys import agree, public_key
from protocols.secagg.simulate import build_session, drive, plaintext_sum

MakeSession = Callable[..., tuple[SecAggConfig, dict[str, np.ndarray]]]
BuildParties = Callable[..., tuple[Any, dict[str, Any]]]


def survivors_of(cfg: SecAggConfig, drop_at: dict[str, str]) -> list[str]:
    # Dropping at UNMASK happens after the masked input was sent: still summed.
    return [p for p in cfg.parties if drop_at.get(p, UNMASK) == UNMASK]


@pytest.mark.parametrize("bits", [32, 64])
def test_complete_graph_sum_is_exact(make_session: MakeSession, bits: int) -> None:
    cfg, inputs = make_session(5, d=300, bits=bits, threshold=3)
    total = run_in_process(inputs, cfg)
    assert total.dtype == cfg.dtype
    assert np.array_equal(total, plaintext_sum(inputs, cfg, list(cfg.parties)))


def test_k_regular_twenty_parties_sum_is_exact(make_session: MakeSession) -> None:
    cfg, inputs = make_session(20, d=1000, graph="k-regular")
    assert (cfg.degree, cfg.threshold) == sound_parameters(20) == (6, 5)
    total = run_in_process(inputs, cfg)
    assert np.array_equal(total, plaintext_sum(inputs, cfg, list(cfg.parties)))


def test_k_regular_with_dropouts_at_several_stages(make_session: MakeSession) -> None:
    # Closed neighbourhoods of 11 with threshold 8: any 3 dropouts are tolerated.
    cfg, inputs = make_session(20, d=200, bits=32, graph="k-regular", seed=3, degree=10)
    assert cfg.threshold == 8
    drop = {"p03": SHARE_KEYS, "p11": MASKED_INPUT, "p17": UNMASK}
    total = run_in_process(inputs, cfg, drop_at=drop)
    assert np.array_equal(total, plaintext_sum(inputs, cfg, survivors_of(cfg, drop)))


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("count", [0, 1, 2])
def test_up_to_n_minus_t_dropouts_at_each_stage(
    make_session: MakeSession, stage: str, count: int
) -> None:
    cfg, inputs = make_session(5, d=64, threshold=3, seed=count)
    gone = pyrandom.Random(f"{stage}{count}").sample(cfg.parties, count)
    drop = dict.fromkeys(gone, stage)
    total = run_in_process(inputs, cfg, drop_at=drop)
    assert np.array_equal(total, plaintext_sum(inputs, cfg, survivors_of(cfg, drop)))


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_mixed_dropouts_stay_exact(
    make_session: MakeSession, data: st.DataObject
) -> None:
    cfg, inputs = make_session(7, d=8, bits=32, threshold=4)
    gone = data.draw(st.lists(st.sampled_from(cfg.parties), max_size=3, unique=True))
    drop = {p: data.draw(st.sampled_from(STAGES)) for p in gone}
    total = run_in_process(inputs, cfg, drop_at=drop)
    assert np.array_equal(total, plaintext_sum(inputs, cfg, survivors_of(cfg, drop)))


@pytest.mark.parametrize("stage", STAGES)
def test_one_dropout_too_many_aborts(make_session: MakeSession, stage: str) -> None:
    cfg, inputs = make_session(5, threshold=3)
    drop = dict.fromkeys(cfg.parties[1:4], stage)
    with pytest.raises(
        ProtocolAbort, match="only 2 of 5 parties remain; threshold is 3"
    ):
        run_in_process(inputs, cfg, drop_at=drop)


def test_dropouts_spread_over_stages_count_together(make_session: MakeSession) -> None:
    cfg, inputs = make_session(5, threshold=3)
    drop = {"p00": ADVERTISE_KEYS, "p01": SHARE_KEYS, "p02": MASKED_INPUT}
    with pytest.raises(ProtocolAbort, match="only 2 of 5"):
        run_in_process(inputs, cfg, drop_at=drop)


def test_k_regular_neighbourhood_below_threshold_aborts(
    make_session: MakeSession,
) -> None:
    cfg, inputs = make_session(20, graph="k-regular", degree=10)
    victim_neighbours = build_graph(cfg).neighbours("p00")[:4]
    drop = dict.fromkeys(victim_neighbours, MASKED_INPUT)
    with pytest.raises(ProtocolAbort, match="neighbourhood remain; threshold is 8"):
        run_in_process(inputs, cfg, drop_at=drop)


def test_result_is_json_and_names_survivors(
    make_session: MakeSession, build_parties: BuildParties
) -> None:
    cfg, inputs = make_session(5, d=4, threshold=3)
    server, clients = build_parties(cfg, inputs)
    drive(server, clients, drop_at={"p01": MASKED_INPUT, "p04": UNMASK})
    result = json.loads(json.dumps(server.result()))
    assert result["survivors"] == ["p00", "p02", "p03", "p04"]
    assert result["dropped"] == ["p01"]
    expected = plaintext_sum(inputs, cfg, result["survivors"])
    assert result["sum"] == [int(v) for v in expected]
    assert all(c.finished for name, c in clients.items() if name not in {"p01", "p04"})


def test_sum_is_unavailable_before_the_end(
    make_session: MakeSession, build_parties: BuildParties
) -> None:
    cfg, inputs = make_session(5, threshold=3)
    server, _ = build_parties(cfg, inputs)
    with pytest.raises(ProtocolError):
        server.sum_vector()
    assert not server.finished


def test_injected_randomness_makes_runs_reproducible(
    make_session: MakeSession, build_parties: BuildParties
) -> None:
    cfg, inputs = make_session(5, threshold=3)

    def first_messages(seed: int) -> list[bytes]:
        rng = pyrandom.Random(seed)
        _, clients = build_session(inputs, cfg, random=rng.randbytes)
        return [out.payload for c in clients.values() for out in c.start()]

    assert first_messages(1) == first_messages(1)
    assert first_messages(1) != first_messages(2)


def test_client_ignores_peer_dropouts_but_not_the_coordinator(
    make_session: MakeSession, build_parties: BuildParties
) -> None:
    cfg, inputs = make_session(5, threshold=3)
    _, clients = build_parties(cfg, inputs)
    assert clients["p00"].dropped(frozenset({"p01"})) == []
    with pytest.raises(ProtocolAbort):
        clients["p00"].dropped(frozenset({COORDINATOR}))


# ---- configuration and graph -------------------------------------------------------


def test_config_defaults() -> None:
    names = [f"n{i}" for i in range(100)]
    cfg = SecAggConfig.create(
        session_id="s",
        parties=reversed(names),
        vector_length=10,
        graph="k-regular",
        graph_seed=bytes(32),
    )
    assert cfg.parties == tuple(sorted(names))
    # Bell et al.'s bounds at 5% corrupt, 5% dropped (tests/protocols/test_bounds.py).
    assert (cfg.degree, cfg.neighbourhood_size, cfg.threshold) == (18, 19, 13)
    complete = SecAggConfig.create(session_id="s", parties=names[:5], vector_length=1)
    assert (complete.degree, complete.threshold) == (4, 4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 2},  # not more than half of 5
        {"threshold": 6},
        {"parties": ["a", "b"]},
        {"parties": ["a", "a", "b"]},
        {"parties": ["a", "b", COORDINATOR]},
        {"parties": ["a", "b", ""]},
        {"vector_length": 0},
        {"modulus_bits": 16},
        {"graph": "star"},
        {"degree": 3},  # complete graph of 5 has degree 4
        {"session_id": ""},
        {"graph": "k-regular", "degree": 3},  # 5 * 3 is odd
        {"max_input": 0},
        {"max_input": "1000"},
        {"max_input": True},
        {"max_input": 2**31, "modulus_bits": 32},  # 5 * 2^31 wraps 2^32
    ],
)
def test_config_refuses_bad_parameters(kwargs: dict[str, object]) -> None:
    params: dict[str, object] = {
        "session_id": "s",
        "parties": ["a", "b", "c", "d", "e"],
        "vector_length": 8,
    }
    params.update(kwargs)
    with pytest.raises(ConfigError):
        SecAggConfig.create(**params)  # type: ignore[arg-type]


def test_declared_bound_picks_the_smallest_ring_that_cannot_wrap() -> None:
    base = {"session_id": "s", "parties": ["a", "b", "c", "d"], "vector_length": 8}
    assert SecAggConfig.create(**base).modulus_bits == 64  # type: ignore[arg-type]
    small = SecAggConfig.create(**base, max_input=2**30 - 1)  # type: ignore[arg-type]
    assert small.modulus_bits == 32  # 4 * (2^30 - 1) < 2^32
    big = SecAggConfig.create(**base, max_input=2**30)  # type: ignore[arg-type]
    assert big.modulus_bits == 64  # 4 * 2^30 would wrap 2^32
    assert small.digest != SecAggConfig.create(**base).digest  # type: ignore[arg-type]


def test_inputs_above_the_declared_bound_are_refused() -> None:
    cfg = SecAggConfig.create(
        session_id="s", parties=["a", "b", "c"], vector_length=4, max_input=1000
    )
    assert cfg.modulus_bits == 32
    ok = {p: np.full(4, 1000, dtype=np.uint64) for p in cfg.parties}
    assert run_in_process(ok, cfg).tolist() == [3000] * 4
    bad = {**ok, "b": np.array([0, 1001, 0, 0], dtype=np.uint64)}
    with pytest.raises(ProtocolError, match="declared bound 1000"):
        run_in_process(bad, cfg)


def test_config_digest_binds_every_parameter() -> None:
    base = {"session_id": "s", "parties": ["a", "b", "c", "d", "e"], "vector_length": 8}
    digests = {
        SecAggConfig.create(**{**base, **extra}).digest  # type: ignore[arg-type]
        for extra in [{}, {"session_id": "t"}, {"vector_length": 9}, {"threshold": 3}]
    }
    assert len(digests) == 4


@pytest.mark.parametrize(("n", "k"), [(20, 10), (21, 6), (30, 9), (100, 14)])
def test_k_regular_graph_is_regular_symmetric_and_deterministic(n: int, k: int) -> None:
    names = [f"n{i:03d}" for i in range(n)]

    def make(seed: bytes) -> SecAggConfig:
        return SecAggConfig.create(
            session_id="g",
            parties=names,
            vector_length=1,
            graph="k-regular",
            degree=k,
            graph_seed=seed,
        )

    cfg = make(b"a" * 32)
    graph = build_graph(cfg)
    for name in names:
        peers = graph.neighbours(name)
        assert len(peers) == k and name not in peers
        assert all(name in graph.neighbours(p) for p in peers)
    assert build_graph(cfg) == graph
    assert build_graph(make(b"b" * 32)) != graph


def test_fixed_point_floats_sum_exactly_through_secagg(
    make_session: MakeSession,
) -> None:
    cfg, _ = make_session(6, d=5, threshold=4)
    fp = FixedPoint(scale_bits=16, clip=100.0)
    fp.check_capacity(cfg.n)
    rng = np.random.default_rng(5)
    reals = {p: rng.uniform(-100, 100, 5).round(3) for p in cfg.parties}
    encoded = {p: fp.encode(v) for p, v in reals.items()}
    total = run_in_process(encoded, cfg, drop_at={"p02": MASKED_INPUT})
    expected = sum(np.rint(reals[p] * 2**16) for p in cfg.parties if p != "p02")
    assert np.array_equal(fp.decode(total, cfg.n), expected / 2**16)


@pytest.mark.parametrize("point", [bytes(32), (1).to_bytes(32, "little")])
def test_low_order_public_keys_are_refused(point: bytes) -> None:
    # Both points have small order: any clamped scalar maps them to the all-zero
    # output, which would make the "shared" secret public.
    secret = bytes(range(32))
    assert len(agree(secret, public_key(bytes(range(1, 33))), "peer")) == 32
    with pytest.raises(ProtocolError, match="not usable"):
        agree(secret, point, "peer")
