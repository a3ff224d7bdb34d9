"""Separate hosts, tested (root only): the coordinator and every node in its own
network namespace, joined by veths and a bridge (``cleanroom local up --netns``).
One federation serves every test, in order: the network lets nodes reach only
the coordinator; a node's link cut and restored before the deadline, the
coordinator's link cut and restored, and 5% loss with 50 ms delay on a node's
link each leave the exact result; a node cut for good ends the job with a reason
naming it, and it rejoins once restored. After every fault the exported audit
logs still verify, and ``down`` removes every namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers.federation import COUNT_SPEC, cli, expected_counts, make_csvs

from cleanroom import local
from cleanroom.client import Client
from cleanroom.netns import Network

pytestmark = pytest.mark.integration

NODES = ("h1", "h2", "h3")
NODE_TIMEOUT = 6.0
"""The coordinator drops a node it has not heard from for this long."""
OUTAGE = 3.0
"""A link cut shorter than NODE_TIMEOUT, and than the job's deadline."""
CONNECTED = "connected to coordinator"
"""What a node logs each time it dialled out and registered."""


def _stats_spec(deadline: float) -> str:
    return json.dumps({
        "type": "secure_stats",
        "inputs": [{"node": n, "dataset": n} for n in NODES],
        "params": {"columns": ["age"], "stats": ["count", "mean"],
                   "clip": {"age": [0, 120]}},
        "purpose": "research",
        "deadline_seconds": deadline,
    })  # fmt: skip


@dataclass
class Fed:
    workdir: Path
    paths: dict[str, Path]
    network: Network
    client: Client
    port: int
    """The coordinator's."""


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    tools = ("ip", "bridge", "ss", "iptables")
    if os.geteuid() != 0 or any(shutil.which(t) is None for t in tools):
        message = "network-namespace tests NOT RUN: they need root, iproute2, iptables"
        warnings.warn(message, stacklevel=1)
        pytest.skip(message)
    tmp_path = tmp_path_factory.mktemp("netns")
    paths = make_csvs(tmp_path)
    workdir = tmp_path / "fed"
    started = local.up(workdir=workdir, nodes=sorted(paths.items()),
                       node_timeout=NODE_TIMEOUT, netns=True)  # fmt: skip
    port = int(started.coordinator_address.rsplit(":", 1)[1])
    network = Network.load(workdir)
    try:
        assert network is not None
        with Client.from_federation(workdir / "federation.json") as client:
            yield Fed(workdir, paths, network, client, port)
    finally:
        local.down(workdir)
        if network is not None:
            network.destroy()  # also ends a packet delayer a failed test left
            listed = subprocess.run(
                ["ip", "netns", "list"], capture_output=True, text=True
            ).stdout
            assert f"cr-{network.tag}-" not in listed, listed


def _in(fed: Fed, party: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*fed.network.exec_prefix(party), *cmd],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _connects(fed: Fed, party: str, address: str, port: int) -> bool:
    """Whether ``party`` can open a TCP connection to ``address:port``."""
    probe = (
        "import socket, sys\n"
        "try:\n"
        f"    socket.create_connection(({address!r}, {port}), timeout=0.7).close()\n"
        "except OSError as exc:\n"
        "    sys.exit(f'{type(exc).__name__}: {exc}')\n"
    )
    return _in(fed, party, sys.executable, "-c", probe).returncode == 0


def _running(fed: Fed, job: str) -> None:
    deadline = time.monotonic() + 60
    while fed.client.status(job).job.state.value != "running":
        assert time.monotonic() < deadline, fed.client.status(job).job
        time.sleep(0.05)


def _check_stats(fed: Fed, job: str) -> None:
    """The job succeeded over every node, with the exact count and mean."""
    view = fed.client.wait(job, timeout=120, poll=0.2)
    assert view.job.state.value == "succeeded", view.job.reason
    result: dict[str, Any] = fed.client.result(job)["result"]
    assert result["survivors"] == list(NODES) and result["dropped"] == []
    ages = pd.concat([pd.read_csv(fed.paths[n]).age for n in NODES])
    (cell,) = result["groups"].values()
    assert cell["count"] == len(ages)
    assert cell["mean"]["age"] == pytest.approx(ages.mean(), rel=1e-9)


def _connected(fed: Fed, node: str) -> bool:
    return any(e.node == node and e.connected for e in fed.client.catalog())


def _audit_verifies(fed: Fed, out: Path) -> None:
    """The README's export and verify pass (the logs witness each other in the
    background, after each job and every few seconds, so the tails may take a
    moment to be covered)."""
    fed_file = str(fed.workdir / "federation.json")
    deadline = time.monotonic() + 60
    while True:
        cli("audit", "export", "--workdir", str(fed.workdir), "--out", str(out),
            check=True)  # fmt: skip
        logs = sorted(str(p) for p in out.glob("*.jsonl"))
        verified = cli("audit", "verify", *logs, "--federation", fed_file)
        if verified.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.count("OK") == 1 + len(NODES), verified.stdout


def test_nodes_reach_only_the_coordinator_and_nothing_reaches_a_node(
    fed: Fed,
) -> None:
    coordinator = fed.network.address("coordinator")
    port = fed.port
    for node in NODES:
        listening = _in(fed, node, "ss", "-ltnH")
        assert listening.returncode == 0 and listening.stdout.strip() == "", (
            f"{node} listens: {listening.stdout}"
        )
        assert _connects(fed, node, coordinator, port)  # the one way that works
        address = fed.network.address(node)
        for probe in (port, 7700):
            assert not _connects(fed, "coordinator", address, probe), (node, probe)
        for other in NODES:
            if other != node:
                assert not _connects(fed, node, fed.network.address(other), port)
        assert not _connects(fed, node, fed.network.address_of_host(), port)
    for party in ("coordinator", *NODES):  # the bridge keeps nodes apart
        shown = subprocess.run(
            ["bridge", "-d", "link", "show", "dev", fed.network.veth(party)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert ("isolated on" in shown) == (party != "coordinator"), shown
    # A node that listened anyway would still be unreachable: its firewall and
    # the bridge stand between it and the coordinator or another node.
    server = subprocess.Popen(
        [*fed.network.exec_prefix("h1"), sys.executable, "-c",
         "import socket, time\n"
         "s = socket.create_server(('0.0.0.0', 7701)); time.sleep(20)"],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while "7701" not in _in(fed, "h1", "ss", "-ltnH").stdout:
            assert time.monotonic() < deadline, "the probe server did not start"
            time.sleep(0.1)
        assert not _connects(fed, "coordinator", fed.network.address("h1"), 7701)
        assert not _connects(fed, "h2", fed.network.address("h1"), 7701)
        assert _connects(fed, "h1", "127.0.0.1", 7701)  # it does listen
    finally:
        server.kill()
        server.wait()


def test_a_node_cut_and_restored_before_the_deadline_leaves_the_exact_result(
    fed: Fed, tmp_path: Path
) -> None:
    log = fed.workdir / "logs" / "h2.log"
    dialled = log.read_text().count(CONNECTED)
    job = fed.client.submit(_stats_spec(deadline=30)).job.job_id
    _running(fed, job)
    fed.network.cut("h2")
    try:
        # The node's end of its connection dies too (the coordinator's end
        # cannot hear of it): h2 must dial out again and name its running job.
        killed = _in(fed, "h2", "ss", "-K", "dst", fed.network.address("coordinator"))
        assert killed.returncode == 0, killed.stderr
        time.sleep(OUTAGE)
    finally:
        fed.network.restore("h2")
    _check_stats(fed, job)
    assert log.read_text().count(CONNECTED) > dialled, "h2 did not reconnect"
    _audit_verifies(fed, tmp_path / "audit")


def test_the_coordinators_link_cut_and_restored_leaves_the_exact_result(
    fed: Fed, tmp_path: Path
) -> None:
    logs = {n: fed.workdir / "logs" / f"{n}.log" for n in NODES}
    dialled = {n: log.read_text().count(CONNECTED) for n, log in logs.items()}
    job = fed.client.submit(_stats_spec(deadline=30)).job.job_id
    _running(fed, job)
    fed.network.cut("coordinator")
    try:
        # The coordinator's ends of every connection die too: once the link is
        # back, each node learns it (a reset) and must dial out again.
        killed = _in(fed, "coordinator", "ss", "-K", "state", "established")
        assert killed.returncode == 0, killed.stderr
        time.sleep(OUTAGE)
    finally:
        fed.network.restore("coordinator")
    _check_stats(fed, job)
    for node, log in logs.items():
        assert log.read_text().count(CONNECTED) > dialled[node], node
    _check_stats(fed, fed.client.submit(_stats_spec(deadline=30)).job.job_id)
    _audit_verifies(fed, tmp_path / "audit")


def test_loss_and_delay_on_a_nodes_link_leave_the_exact_result(
    fed: Fed, tmp_path: Path
) -> None:
    fed.network.impair("h1", delay_ms=50, loss=0.05)
    try:
        _check_stats(fed, fed.client.submit(_stats_spec(deadline=60)).job.job_id)
    finally:
        fed.network.unimpair("h1")
    _audit_verifies(fed, tmp_path / "audit")


def test_a_node_cut_for_good_ends_the_job_naming_it_and_rejoins(
    fed: Fed, tmp_path: Path
) -> None:
    job = fed.client.submit(_stats_spec(deadline=8)).job.job_id
    # Mid-job: once every node approved (a node cut before it decides leaves the
    # job awaiting its holder, as the approval protocol intends).
    _running(fed, job)
    fed.network.cut("h3")
    try:
        started = time.monotonic()
        final = fed.client.wait(job, timeout=120, poll=0.2)
        assert final.job.state.terminal, "the job hung"
        assert time.monotonic() - started < 90
        # Every input is needed by default (min_inputs), so the job cannot
        # finish without h3: it fails, naming it.
        assert final.job.state.value == "failed", final.job
        assert "h3" in final.job.reason, final.job.reason
    finally:
        fed.network.restore("h3")
    deadline = time.monotonic() + 60
    while not _connected(fed, "h3"):
        assert time.monotonic() < deadline, "h3 did not reconnect"
        time.sleep(0.5)
    view = fed.client.wait(fed.client.submit(COUNT_SPEC).job.job_id, timeout=60)
    assert view.job.state.value == "succeeded", view.job.reason
    counts = {c["node"]: c["count"] for c in fed.client.result(view.job.job_id)
              ["result"]["counts"]}  # fmt: skip
    assert counts == expected_counts(fed.paths)
    _audit_verifies(fed, tmp_path / "audit")
