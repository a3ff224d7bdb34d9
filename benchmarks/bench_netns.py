"""A secure vector sum end to end across network namespaces with 10 ms added per
link, against the same federation on loopback, in the same run (root only).

Three federations run side by side, their jobs interleaved (A B C A B C...):
every party on loopback (the baseline); every party in its own namespace
(``cleanroom local up --netns``); and namespaces with every party's link
delaying each arriving packet by 10 ms (``Network.impair``), so a node's round
trip to the coordinator takes 20 ms more, the analyst's 10 ms more. The job is
``bench_secure_vector`` (SecAgg+ over one column repeated to ``length``); all
three must release the same vector (its SHA-256).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Final

from benchmarks.federation import (
    COLUMNS,
    PLUGINS,
    JobRun,
    LocalFederation,
    job_spec,
    write_datasets,
    write_policy,
)
from benchmarks.registry import Context, Measurement, benchmark
from benchmarks.stats import Stats
from cleanroom import local
from cleanroom.client import Client
from cleanroom.netns import Network

DELAY_MS: Final = 10.0
SECURE_VECTOR: Final = "bench_secure_vector"
LOOPBACK: Final = "loopback"
NETNS: Final = "netns"
DELAYED: Final = "netns + 10 ms per link"


@contextmanager
def _federation(
    workdir: Path, *, nodes: int, netns: bool, delay_ms: float = 0.0
) -> Iterator[LocalFederation]:
    datasets = write_datasets(workdir / "data", nodes, 1_000)
    policy = write_policy(workdir / "policy-in.yaml", [SECURE_VECTOR])
    fed_dir = workdir / "federation"
    fed = local.up(
        workdir=fed_dir, nodes=datasets, policy=policy, plugins=PLUGINS, netns=netns
    )
    network = Network.load(fed_dir)
    try:
        if network is not None and delay_ms > 0:
            for party in network.parties:
                network.impair(party, delay_ms=delay_ms)
        with Client.from_federation(fed_dir / "federation.json") as client:
            yield LocalFederation(fed, client, [name for name, _ in datasets])
    finally:
        local.down(fed_dir)
        if network is not None:
            network.destroy()


@benchmark("netns_delay", "e2e", presets=("full",))
def netns_delay(ctx: Context) -> Iterator[Measurement]:
    """SecAgg+ vector sum: namespaces with 10 ms per link vs loopback, same run."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        ctx.gap(
            "secure vector sum across network namespaces",
            "needs root and iproute2 (it creates network namespaces)",
        )
        return
    nodes, repeat = 3, min(ctx.repeat, 5)
    for length in (100_000, 1_000_000):
        runs = _interleaved(ctx, nodes, length, repeat)
        params = {"nodes": nodes, "length": length}
        for case in (NETNS, DELAYED):
            yield ctx.measurement(
                case=f"{SECURE_VECTOR}: {case} vs {LOOPBACK}",
                params=params,
                metric="wall",
                x=("length",),
                ratio_kind="overhead",
                measured=Stats.of([r.wall for r in runs[case]], "s"),
                baseline=Stats.of([r.wall for r in runs[LOOPBACK]], "s"),
                baseline_name=LOOPBACK,
                details={"delay_ms_per_link": DELAY_MS if case == DELAYED else 0},
                note="submit to final state, seen by the analyst (10 ms polls)",
            )


def _interleaved(
    ctx: Context, nodes: int, length: int, repeat: int
) -> Mapping[str, list[JobRun]]:
    with ExitStack() as stack:
        feds = {
            name: stack.enter_context(
                _federation(
                    ctx.workdir / f"{length}-{k}",
                    nodes=nodes,
                    netns=name != LOOPBACK,
                    delay_ms=DELAY_MS if name == DELAYED else 0.0,
                )
            )
            for k, name in enumerate((LOOPBACK, NETNS, DELAYED))
        }
        spec = job_spec(
            SECURE_VECTOR,
            feds[LOOPBACK].nodes,
            {"column": COLUMNS[0], "length": length},
        )
        ctx.log(f"  {nodes} nodes, length {length:,}: {repeat} rounds of 3 jobs")
        runs: dict[str, list[JobRun]] = {name: [] for name in feds}
        digests = {name: fed.run(spec).result["sha256"] for name, fed in feds.items()}
        if len(set(digests.values())) != 1:
            raise AssertionError(f"the federations released different sums: {digests}")
        for _ in range(repeat):
            for name, fed in feds.items():
                runs[name].append(fed.run(spec))
        return runs
