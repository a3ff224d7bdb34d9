"""The seam on real processes over mTLS gRPC: the analyst as a party (a value sealed
to the analyst's key), a 20-round SecAgg+ job in a 5-node federation with a node
stalled in round 7 and dropped by the deadline, and a coordinator killed mid-way
through a multi-round job and restarted."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.federation import wait_for

from cleanroom import local
from cleanroom.client import Client
from cleanroom.federation import Federation

pytestmark = pytest.mark.integration

NODES = ("h1", "h2", "h3", "h4", "h5")


@pytest.fixture()
def fed(tmp_path: Path, test_job_types: tuple[str, ...]) -> Iterator[Path]:
    rng = np.random.default_rng(3)
    paths = []
    for node in NODES:
        frame = pd.DataFrame(
            {
                "pid": [f"{node}-{i}" for i in range(40)],
                "age": rng.integers(18, 90, 40),
                "income": rng.uniform(10_000, 99_999, 40).round(4) + 0.1234,
            }
        )
        path = tmp_path / f"{node}.csv"
        frame.to_csv(path, index=False)
        paths.append((node, path))
    workdir = tmp_path / "fed"
    local.up(
        workdir=workdir, nodes=paths, node_timeout=3.0, plugins=list(test_job_types)
    )
    yield workdir
    local.down(workdir)


def _spec(job_type: str, **extra: object) -> str:
    return json.dumps(
        {
            "type": job_type,
            "inputs": [{"node": n, "dataset": n} for n in NODES],
            "purpose": "research",
            **extra,
        }
    )


def _frames(workdir: Path) -> dict[str, pd.DataFrame]:
    fed = Federation.load(workdir / "federation.json")
    return {n: pd.read_csv(info["path"]) for n, info in fed.nodes.items()}


def _round_sum(frames: dict[str, pd.DataFrame], nodes: list[str], r: int) -> list[int]:
    return [
        sum(int(frames[n].age.astype(float).sum()) + 1000 * r + i for n in nodes)
        % 2**64
        for i in range(4)
    ]


def test_a_value_sealed_to_the_analyst_reaches_only_the_analyst(fed: Path) -> None:
    with Client.from_federation(fed / "federation.json") as client:
        view = client.submit(_spec("sealed_value", params={"column": "income"}))
        final = client.wait(view.job.job_id, timeout=60)
        assert final.job.state.value == "succeeded", final.job.reason
        values = client.result(view.job.job_id)["result"]["values"]
    frames = _frames(fed)
    for node, frame in frames.items():
        assert values[node] == pytest.approx(float(frame.income.sum()), rel=1e-12)
    haystack = b"".join(
        p.read_bytes()
        for p in [*(fed / "coordinator").rglob("*"), *(fed / "logs").glob("*")]
        if p.is_file()
    )
    assert view.job.job_id.encode() in haystack  # the coordinator did keep the job
    for value in values.values():
        for text in (repr(value), f"{value:.4f}", f"{value:.2f}"):
            assert text.encode() not in haystack, f"{text} is in the coordinator"


def test_twenty_rounds_go_on_after_a_node_stalls_in_round_seven(fed: Path) -> None:
    params = {
        "rounds": 20,
        "column": "age",
        "length": 4,
        "stall": {"node": "h3", "round": 6},
    }
    seen_rounds: set[str] = set()
    with Client.from_federation(fed / "federation.json") as client:
        view = client.submit(_spec("rounds_sum", params=params, deadline_seconds=3))
        final = client.wait(
            view.job.job_id,
            timeout=180,
            on_update=lambda v: seen_rounds.add(v.job.progress.split(",")[0]),
        )
        assert final.job.state.value == "succeeded", final.job.reason
        rounds = client.result(view.job.job_id)["result"]["rounds"]
        events = client.events(view.job.job_id)
    frames = _frames(fed)
    assert len(rounds) == 20
    for r in rounds:
        expected_nodes = list(NODES) if r["round"] < 6 else ["h1", "h2", "h4", "h5"]
        assert r["survivors"] == expected_nodes, r["round"]
        assert r["sum"] == _round_sum(frames, expected_nodes, r["round"])
    (dropped,) = [e.detail for e in events if e.kind == "node.dropped"]
    assert dropped.startswith("h3: missed the 3s deadline (round 7 of 20")
    assert any(s.startswith("round ") for s in seen_rounds), seen_rounds
    assert len({s for s in seen_rounds if s.startswith("round ")}) > 3


def _round_of(progress: str) -> int:
    """The round a "round N of M, ..." progress line names (-1 before any)."""
    words = progress.split()
    if len(words) >= 2 and words[0] == "round" and words[1].isdigit():
        return int(words[1])
    return -1


def test_the_coordinator_restarts_and_the_job_resumes_exactly(fed: Path) -> None:
    federation = Federation.load(fed / "federation.json")
    params = {"rounds": 40, "column": "age", "length": 4}
    with Client.from_federation(fed / "federation.json") as client:
        job = client.submit(_spec("rounds_sum", params=params)).job.job_id
        fragile = client.submit(_spec("rounds_sum_fragile", params=params)).job.job_id
        wait_for(
            # any round from the fifth on: a fast round can slip between two polls
            lambda: _round_of(client.status(job).job.progress) >= 5,
            timeout=60,
            what="round 5",
        )
        os.killpg(federation.processes["coordinator"], signal.SIGKILL)
    time.sleep(1.0)
    local.restart(fed, "coordinator")
    with Client.from_federation(fed / "federation.json") as client:
        final = client.wait(job, timeout=240)
        assert final.job.state.value == "succeeded", final.job.reason
        rounds = client.result(job)["result"]["rounds"]
        events = client.events(job)
        kinds = [e.kind for e in events]
        ended = client.wait(fragile, timeout=30).job
    dropped = [e.detail for e in events if e.kind == "node.dropped"]
    assert not dropped, dropped
    frames = _frames(fed)
    assert [r["round"] for r in rounds] == list(range(40))
    for r in rounds:
        assert r["survivors"] == list(NODES)
        assert r["sum"] == _round_sum(frames, list(NODES), r["round"])
    assert "job.resumed" in kinds
    assert ended.state.value == "failed" and "cannot resume" in ended.reason
