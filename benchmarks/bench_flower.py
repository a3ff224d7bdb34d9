"""One SecAgg+ round: cleanroom against Flower's own SecAgg+, same sizes, same run.

Flower's side is its unmodified ``SecAggPlusWorkflow`` with ``secaggplus_mod`` on
every node, in flwr's own venv (benchmarks/peers/flower), over an in-process grid;
cleanroom's side is ``protocols.secagg.simulate``. Both run N parties and the
server in one process and report that process's CPU for the round, at the same
N, vector length, neighbourhood (Flower's ``num_shares`` = cleanroom's degree + 1),
reconstruction threshold, ring (2^32) and dropout stage (10% of the parties gone
before their masked input, chosen so every neighbourhood keeps its threshold).

The comparison is uneven, in Flower's favour on security and against it on
speed, and the figures must be read that way: Flower signs nothing (a relaying
server can substitute keys), seeds a Mersenne Twister with 32 bits folded from
each shared secret for its masks (cleanroom: AES-256-CTR keyed with the whole
secret), uses SECP384R1 ECDH and pure-Python Shamir sharing in threads; cleanroom
verifies an Ed25519 signature per neighbour and X25519. Flower also quantizes
floats inside its mod (cleanroom's inputs arrive fixed-point encoded) and its
graph is shuffled with Python's ``random``. Identity keys, imports and building
the apps are outside both timings.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import numpy as np

from benchmarks import bench_secagg
from benchmarks.peers import flower
from benchmarks.registry import Context, Goal, Measurement, benchmark
from benchmarks.stats import Stats

N: Final = 100
NUM_SHARES: Final = 15
THRESHOLD: Final = 11
GOALS: Final = {
    100_000: Goal(
        "<=",
        0.1,
        "horizontal-training issue: cleanroom's CPU per SecAgg+ round / Flower's",
        at="N=100, d=100,000, 15 shares, threshold 11, 10% dropout",
    ),
    1_000_000: Goal(
        "<=",
        0.2,
        "horizontal-training issue: cleanroom's CPU per SecAgg+ round / Flower's",
        at="N=100, d=1,000,000, 15 shares, threshold 11, 10% dropout",
    ),
}
_MAX_FLOWER_ERROR: Final = 0.01
"""Flower's released average of inputs in [-1, 1], quantized at its defaults."""


@benchmark("secagg_vs_flower", "secagg", presets=("full",))
def secagg_vs_flower(ctx: Context) -> Iterator[Measurement]:
    """One SecAgg+ round (N=100, 15 shares, t=11, 10% drop): cleanroom vs Flower."""
    repeat = min(ctx.repeat, 3)
    for d, goal in GOALS.items():
        config, inputs, drops = bench_secagg._setup(
            N, d, 32, degree=NUM_SHARES - 1, threshold=THRESHOLD
        )
        ctx.log(f"  N={N} d={d:,}: Flower's round x{repeat} in its venv")
        peer = flower.run_round(
            {
                "n": N,
                "d": d,
                "num_shares": NUM_SHARES,
                "threshold": THRESHOLD,
                "drop_fraction": bench_secagg.DROPOUT,
                "repeat": repeat,
                "seed": 1,
            },
            ctx.log,
        )
        _check_peer(peer, N - len(drops))
        ours = ctx.time(_round(config, inputs, drops), repeat=repeat)
        params = {"N": N, "d": d, "modulus_bits": config.modulus_bits}
        details = {
            "num_shares": NUM_SHARES,
            "degree": config.degree,
            "threshold": config.threshold,
            "dropped": len(drops),
            "flwr": peer["flwr"],
            "flower_max_abs_error": round(peer["max_abs_error"], 6),
        }
        for metric, mine, theirs in (
            ("cpu", ours.cpu, peer["cpu"]),
            ("wall", ours.wall, peer["wall"]),
        ):
            yield ctx.measurement(
                case="cleanroom secagg+ round vs Flower SecAggPlusWorkflow",
                params=params,
                details=details,
                metric=metric,
                measured=mine,
                baseline=Stats.of(theirs, "s"),
                baseline_name=f"Flower {peer['flwr']} SecAggPlusWorkflow + "
                "secaggplus_mod, one process",
                ratio_kind="overhead",
                goal=goal if metric == "cpu" else None,
                x=("d",),
                note="same N, d, neighbourhood, threshold, ring and dropout stage; "
                "Flower signs nothing, seeds MT19937 with 32 bits, pure-Python "
                "Shamir",
            )


def _round(config: Any, inputs: dict[str, Any], drops: dict[str, str]) -> Any:
    _, _, _, simulate = bench_secagg._secagg()
    identities = simulate.make_identities(config.parties)
    survivors = [v for p, v in inputs.items() if p not in drops]
    expected = bench_secagg._plain_sum(survivors)

    def secure_round(_: object) -> None:
        server, clients = simulate.build_session(inputs, config, identities=identities)
        simulate.drive(server, clients, drop_at=drops)
        if not np.array_equal(server.sum_vector(), expected):
            raise AssertionError("SecAgg+ returned a wrong sum")

    return secure_round


def _check_peer(peer: Any, survivors: int) -> None:
    if peer["survivors"] != survivors:
        raise AssertionError(
            f"Flower kept {peer['survivors']} parties, cleanroom {survivors}"
        )
    if not peer["max_abs_error"] < _MAX_FLOWER_ERROR:
        raise AssertionError(
            f"Flower's average is off by {peer['max_abs_error']}; timings would "
            "be meaningless"
        )
