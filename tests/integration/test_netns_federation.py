"""Separate hosts, tested (root only): the coordinator and every node in its own
network namespace, joined by veths and a bridge (``cleanroom local up --netns``).
A node's link is cut mid-job: the job ends as the protocol promises — finished
without it or ended with a reason naming it — and nothing hangs; once the link
is restored the node reconnects and the next job includes it; ``down`` removes
every namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import warnings
from pathlib import Path

import pytest
from helpers.federation import COUNT_SPEC, expected_counts, make_csvs

from cleanroom import local
from cleanroom.client import Client
from cleanroom.netns import Network

pytestmark = pytest.mark.integration

STATS = json.dumps({
    "type": "secure_stats",
    "inputs": [{"node": n, "dataset": n} for n in ("h1", "h2", "h3")],
    "params": {"columns": ["age"], "stats": ["count", "mean"],
               "clip": {"age": [0, 120]}},
    "purpose": "research",
    "deadline_seconds": 8,
})  # fmt: skip


@pytest.fixture
def federation(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        message = "network-namespace tests NOT RUN: they need root and iproute2"
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    paths = make_csvs(tmp_path)
    workdir = tmp_path / "fed"
    local.up(workdir=workdir, nodes=sorted(paths.items()), node_timeout=3.0,
             netns=True)  # fmt: skip
    yield workdir, paths
    local.down(workdir)


def _connected(client: Client, node: str) -> bool:
    return any(e.node == node and e.connected for e in client.catalog())


def test_a_node_cut_mid_job_ends_it_as_promised_and_rejoins(
    federation: tuple[Path, dict[str, Path]],
) -> None:
    workdir, paths = federation
    network = Network.load(workdir)
    assert network is not None
    assert network.address("coordinator").startswith("10.231.")
    with Client.from_federation(workdir / "federation.json") as client:
        job = client.submit(STATS).job.job_id
        # Mid-job: once every node approved (a node cut before it decides leaves
        # the job awaiting its holder, as the approval protocol intends).
        deadline = time.monotonic() + 30
        while client.status(job).job.state.value != "running":
            assert time.monotonic() < deadline, client.status(job).job
            time.sleep(0.05)
        network.cut("h3")
        started = time.monotonic()
        final = client.wait(job, timeout=120, poll=0.2)
        assert final.job.state.terminal, "the job hung"
        print(f"\njob after the cut: {final.job.state.value} ({final.job.reason})")
        assert time.monotonic() - started < 90
        if final.job.state.value == "failed":
            assert "h3" in final.job.reason, final.job.reason
        else:
            assert final.job.state.value == "succeeded", final.job.reason
        network.restore("h3")
        deadline = time.monotonic() + 60
        while not _connected(client, "h3"):
            assert time.monotonic() < deadline, "h3 did not reconnect"
            time.sleep(0.5)
        view = client.wait(client.submit(COUNT_SPEC).job.job_id, timeout=60)
        assert view.job.state.value == "succeeded", view.job.reason
        counts = {c["node"]: c["count"] for c in client.result(view.job.job_id)
                  ["result"]["counts"]}  # fmt: skip
        assert counts == expected_counts(paths)
    tag = network.tag
    local.down(workdir)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    assert f"cr-{tag}-" not in listed.stdout
