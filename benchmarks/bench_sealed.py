"""What sealing a sum to the analyst costs: the secure-vector round of
``secure_stats`` (5 nodes, SecAgg+ on the 2^64 ring, complete graph) with the
second mask layer and its 10 tensor checksums (``protocols.sealed_sum``), against
the same round unsealed, in the same run. Sealing is each node's ``seal`` (its own
``SealedSum``: checksum coefficients, checksums and one mask), a vector 10
entries longer through SecAgg+, and the analyst's ``open`` (its own
``SealedSum``; every survivor's mask removed, the decode bound and every
checksum checked). Nothing is shared or cached between the parties."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Final

import numpy as np

from benchmarks.registry import Context, Goal, Measurement, benchmark
from cleanroom.jobtypes.stats.parties import secagg_config
from protocols.sealed_sum import DEFAULT_CHECKS, SealedSum, soundness_bits
from protocols.secagg import simulate

GOAL: Final = Goal(
    "<=",
    1.10,
    "issue 12: sealing and the extra mask layer cost at most 10% on the "
    "end-to-end secure-vector benchmark (5 nodes, d = 10^6)",
    at="N=5, d=1000000",
)
NODES: Final = 5
_SEED: Final = hashlib.sha256(b"bench_sealed values seed").digest()


@benchmark("sealed_vector", "secagg")
def sealed_vector(ctx: Context) -> Iterator[Measurement]:
    """One sealed secure-vector round vs the same round unsealed, 5 nodes."""
    d = ctx.pick(quick=100_000, full=1_000_000)
    repeat = ctx.pick(quick=min(ctx.repeat, 3), full=min(ctx.repeat, 5))
    parties = tuple(f"h{i}" for i in range(1, NODES + 1))
    rng = np.random.default_rng(7)
    inputs = {p: rng.integers(0, 2**40, d, dtype=np.uint64) for p in parties}
    identities = simulate.make_identities(parties)
    plain_config = secagg_config("bench", "values", parties, d, None)
    sealed_config = secagg_config("bench", "values", parties, d + DEFAULT_CHECKS, None)
    expected = sum(inputs.values())  # wraps mod 2^64 like the ring

    def unsealed() -> None:
        server, clients = simulate.build_session(
            inputs, plain_config, identities=identities
        )
        simulate.drive(server, clients)
        if not np.array_equal(server.sum_vector(), expected):
            raise AssertionError("unsealed round returned a wrong sum")

    def sealed() -> None:
        masked = {
            p: SealedSum(_SEED, "bench/values", d).seal(p, v) for p, v in inputs.items()
        }
        server, clients = simulate.build_session(
            masked, sealed_config, identities=identities
        )
        simulate.drive(server, clients)
        opened = SealedSum(_SEED, "bench/values", d).open(server.sum_vector(), parties)
        if not np.array_equal(opened, expected):
            raise AssertionError("sealed round returned a wrong sum")

    mine, base = ctx.time_interleaved(sealed, unsealed, repeat=repeat, warmup=1)
    for metric, measured, baseline in (
        ("cpu", mine.cpu, base.cpu),
        ("wall", mine.wall, base.wall),
    ):
        yield ctx.measurement(
            case="sealed secure-vector round vs unsealed",
            params={"N": NODES, "d": d},
            details={
                "checks": DEFAULT_CHECKS,
                "soundness_bits": round(soundness_bits(), 1),
                "modulus_bits": 64,
            },
            metric=metric,
            measured=measured,
            baseline=baseline,
            baseline_name="the same SecAgg+ round without the sealing layer",
            ratio_kind="overhead",
            goal=GOAL if metric == "cpu" else None,
            goal_applies=d == 1_000_000,
            note="all parties in one process (the transport is the same for both "
            "and is not what sealing changes)",
        )
