"""A real local federation for end-to-end benchmarks: generated CSVs, timed jobs."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import pandas as pd
import yaml

from cleanroom import local
from cleanroom.client import Client
from cleanroom.errors import CleanroomError
from cleanroom.federation import Federation
from cleanroom.model import JobState

PLUGINS: Final = (
    "bench_plain_sum",
    "bench_plain_vector",
    "bench_secure_vector",
    "bench_delivered_vector",
    "bench_sealed_vector",
)
DATASET: Final = "records"
COLUMNS: Final = ("age", "income", "visits", "score")
_CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def write_datasets(directory: Path, nodes: int, rows: int) -> list[tuple[str, Path]]:
    """One CSV of ``rows`` synthetic records per node (seeded: same data every run)."""
    made = []
    for i in range(nodes):
        rng = np.random.default_rng(1000 + i)
        frame = pd.DataFrame(
            {
                "age": rng.integers(18, 90, rows),
                "income": np.round(rng.normal(50_000, 15_000, rows), 2),
                "visits": rng.poisson(3, rows),
                "score": np.round(rng.random(rows), 6),
            }
        )
        path = directory / f"node-{i}" / f"{DATASET}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        made.append((f"node-{i}", path))
    return made


def write_policy(path: Path, job_types: Sequence[str]) -> Path:
    """The local analyst may run exactly ``job_types``, automatically approved."""
    doc = local.default_policy()
    rules = dict(cast(Mapping[str, Any], doc["default"]))
    rules["job_types"] = list(job_types)
    path.write_text(yaml.safe_dump({"default": rules}, sort_keys=False))
    return path


def job_spec(job_type: str, nodes: Sequence[str], params: Mapping[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "type": job_type,
            "inputs": [{"node": n, "dataset": DATASET} for n in nodes],
            "params": dict(params),
            "purpose": "benchmark",
        },
        sort_keys=False,
    )


def process_cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU of ``pids`` (all their threads) from /proc, in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _CLOCK_TICKS


@dataclass(frozen=True)
class JobRun:
    """One job: wall time seen by the analyst, CPU of every federation process."""

    wall: float
    cpu: float
    result: Mapping[str, Any]


class LocalFederation:
    """A running ``cleanroom.local`` federation and an analyst client on it."""

    def __init__(self, fed: Federation, client: Client, nodes: list[str]) -> None:
        self.fed = fed
        self.client = client
        self.nodes = nodes

    def run(
        self,
        spec: str,
        *,
        timeout: float = 600.0,
        local_inputs: Mapping[str, Any] | None = None,
    ) -> JobRun:
        """Submit, wait (10 ms polls), fetch the result; raise unless it succeeded.

        ``local_inputs`` go to the analyst's party (e.g. rows to score)."""
        pids = list(self.fed.processes.values())
        cpu0 = process_cpu_seconds(pids)
        start = time.perf_counter()
        job_id = self.client.submit(spec, local_inputs=local_inputs).job.job_id
        view = self.client.wait(job_id, timeout=timeout, poll=0.01)
        wall = time.perf_counter() - start
        cpu = process_cpu_seconds(pids) - cpu0
        if view.job.state != JobState.SUCCEEDED:
            raise CleanroomError(
                f"benchmark job {job_id} ended {view.job.state}: {view.job.reason}"
            )
        return JobRun(wall, cpu, self.client.result(job_id)["result"])


@contextmanager
def local_federation(
    workdir: Path,
    *,
    nodes: int,
    rows: int,
    job_types: Sequence[str],
    node_settings: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> Iterator[LocalFederation]:
    """Start a coordinator and ``nodes`` nodes over mTLS on loopback; stop after.

    ``node_settings``: node -> its ``[jobtypes.<name>]`` tables."""
    datasets = write_datasets(workdir / "data", nodes, rows)
    policy = write_policy(workdir / "policy-in.yaml", job_types)
    fed_dir = workdir / "federation"
    fed = local.up(
        workdir=fed_dir,
        nodes=datasets,
        policy=policy,
        plugins=PLUGINS,
        node_settings=node_settings,
    )
    try:
        with Client.from_federation(fed_dir / "federation.json") as client:
            yield LocalFederation(fed, client, [name for name, _ in datasets])
    finally:
        local.down(fed_dir)
