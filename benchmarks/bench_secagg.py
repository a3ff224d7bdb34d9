"""One simulated SecAgg+ round (logarithmic degree, 10% dropout): CPU and bytes."""

from __future__ import annotations

import importlib
import random
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from benchmarks.registry import BenchmarkGap, Context, Goal, Measurement, benchmark
from benchmarks.stats import Stats, Timing

CPU_GOAL: Final = Goal(
    "<=",
    100.0,
    "SecAgg+ issue: one round's total CPU time "
    "<= 100x a plaintext numpy sum of the same vectors",
    at="N=100, d=100,000",
)
BYTES_GOAL: Final = Goal(
    "<=",
    1.1,
    "SecAgg+ issue: bytes sent per client / raw payload bytes",
    at="d=100,000",
)
DROPOUT: Final = 0.10
_SEED: Final = 20_240_601


def _secagg() -> tuple[ModuleType, ModuleType, ModuleType, ModuleType]:
    """The SecAgg+ modules, or BenchmarkGap if they are not written yet."""
    try:
        return (
            importlib.import_module("protocols.secagg.config"),
            importlib.import_module("protocols.secagg.graph"),
            importlib.import_module("protocols.secagg.messages"),
            importlib.import_module("protocols.secagg.simulate"),
        )
    except ImportError as exc:
        raise BenchmarkGap(f"SecAgg+ is not importable yet: {exc}") from None


def _setup(
    n: int, d: int
) -> tuple[Any, dict[str, npt.NDArray[np.uint64]], dict[str, str]]:
    """Config (k-regular, logarithmic degree), inputs and a survivable 10% dropout."""
    config_mod, graph_mod, messages, _ = _secagg()
    parties = [f"party-{i:04d}" for i in range(n)]
    config = config_mod.SecAggConfig.create(
        session_id=f"bench-{n}-{d}",
        parties=parties,
        vector_length=d,
        graph="k-regular",
    )
    rng = np.random.default_rng(_SEED)
    inputs = {p: rng.integers(0, 2**20, d, dtype=np.uint64) for p in parties}
    dropped = _dropouts(config, graph_mod.build_graph(config), round(n * DROPOUT))
    # Dropping at MASKED_INPUT (after the shares went out, before the masked vector)
    # is the costly case: the coordinator must rebuild the dropped parties' mask keys
    # and strip every pairwise mask they shared with survivors.
    return config, inputs, dict.fromkeys(dropped, messages.MASKED_INPUT)


def _dropouts(config: Any, graph: Any, count: int) -> list[str]:
    """``count`` parties whose loss leaves every neighbourhood at or above threshold.

    Chosen greedily in a seeded order, so the set is the same in every run; a
    uniformly random set can, by bad luck, empty one neighbourhood and abort.
    """
    order = list(config.parties)
    random.Random(_SEED).shuffle(order)
    live = {p: len(graph.closed_of(p)) for p in config.parties}
    chosen: list[str] = []
    for party in order:
        if len(chosen) == count:
            break
        holders = [p for p in config.parties if party in graph.closed_of(p)]
        if all(live[h] - 1 >= config.threshold for h in holders):
            chosen.append(party)
            for h in holders:
                live[h] -= 1
    if len(chosen) < count:
        raise BenchmarkGap(f"no survivable {count}-party dropout for N={config.n}")
    return chosen


def _plain_sum(vectors: list[npt.NDArray[np.uint64]]) -> npt.NDArray[np.uint64]:
    total = vectors[0].copy()
    for vector in vectors[1:]:
        np.add(total, vector, out=total)
    return total


def _check(result: Any, inputs: Mapping[str, Any], drops: Mapping[str, str]) -> None:
    survivors = [v for p, v in inputs.items() if p not in drops]
    if not np.array_equal(np.asarray(result), _plain_sum(survivors)):
        raise AssertionError(
            "SecAgg+ returned a wrong sum; timings would be meaningless"
        )


def _time_round(
    ctx: Context, simulate: ModuleType, session: tuple[Any, Any, Any], repeat: int
) -> tuple[Timing, Timing]:
    """The secure round, then the plaintext sum of the survivors' same vectors."""
    config, inputs, drops = session
    vectors = [v for p, v in inputs.items() if p not in drops]
    secure, plain = ctx.time_interleaved(
        lambda: simulate.run_in_process(inputs, config, drop_at=drops),
        lambda: _plain_sum(vectors),
        repeat=repeat,
        warmup=0,
    )
    return secure, plain


@benchmark("secagg_round", "secagg")
def secagg_round(ctx: Context) -> Iterator[Measurement]:
    """One SecAgg+ round incl. server unmasking, 10% dropout: CPU vs plaintext sum."""
    *_, simulate = _secagg()
    goal_n, goal_d = 100, 100_000
    curves: Sequence[tuple[tuple[str, ...], int, int]] = ctx.pick(
        quick=[(("N",), n, 10_000) for n in (10, 20)],
        full=[(("N",), n, goal_d) for n in (10, 25, 50)]
        + [(("N", "d"), goal_n, goal_d)]
        + [(("d",), goal_n, d) for d in (1_000, 10_000, 1_000_000)],
    )
    repeat = ctx.pick(quick=ctx.repeat, full=min(ctx.repeat, 3))
    for x, n, d in curves:
        config, inputs, drops = _setup(n, d)
        _check(simulate.run_in_process(inputs, config, drop_at=drops), inputs, drops)
        secure, plain = _time_round(ctx, simulate, (config, inputs, drops), repeat)
        params = {"N": n, "d": d, "modulus_bits": config.modulus_bits}
        details = {
            "degree": config.degree,
            "threshold": config.threshold,
            "dropped": len(drops),
        }
        for metric, mine, base in (
            ("cpu", secure.cpu, plain.cpu),
            ("wall", secure.wall, plain.wall),
        ):
            yield ctx.measurement(
                case="secagg+ round vs plaintext sum",
                params=params,
                details=details,
                metric=metric,
                measured=mine,
                baseline=base,
                baseline_name="numpy sum of survivors",
                ratio_kind="overhead",
                goal=CPU_GOAL if metric == "cpu" else None,
                goal_applies=(n, d) == (goal_n, goal_d),
                x=x,
                note="all parties and the coordinator in one process",
            )


@benchmark("secagg_bytes", "secagg")
def secagg_bytes(ctx: Context) -> Iterator[Measurement]:
    """Bytes each surviving client sends in one round / its raw vector's bytes."""
    *_, simulate = _secagg()
    d = 100_000
    for n in ctx.pick(quick=(10,), full=(10, 25, 50, 100)):
        config, inputs, drops = _setup(n, d)
        server, clients = simulate.build_session(inputs, config)
        traffic = simulate.drive(server, clients, drop_at=drops)
        _check(server.sum_vector(), inputs, drops)
        sent = [traffic.bytes_sent[p] for p in config.parties if p not in drops]
        raw = d * config.element_bytes
        yield ctx.measurement(
            case="client upload vs raw vector",
            params={"N": n, "d": d, "modulus_bits": config.modulus_bits},
            details={"degree": config.degree, "dropped": len(drops)},
            metric="bytes_per_client",
            measured=Stats.of(sent, "bytes"),
            baseline=Stats.of([raw], "bytes"),
            baseline_name="raw payload (d x element bytes)",
            ratio_kind="overhead",
            goal=BYTES_GOAL,
            x=("N",),
            note="samples are the surviving clients; payload bytes of every "
            "protocol message, before envelopes and gRPC framing",
        )
