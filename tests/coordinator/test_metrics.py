"""Prometheus metrics an operator can watch: a real coordinator (gRPC, mTLS) and a
real node agent in this process, each with its /metrics endpoint on port 0; a
count job runs and both endpoints are scraped over HTTP for the documented names.
JSON logs: one object per line with the message and level."""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cleanroom import logs, pki
from cleanroom.client import Client
from cleanroom.errors import ConfigError
from cleanroom.local import default_policy
from cleanroom.pki import TlsIdentity
from coordinator.config import CoordinatorConfig
from coordinator.server import RunningCoordinator, start_coordinator
from node.agent import NodeAgent
from node.config import DatasetConfig, NodeConfig

SPEC = """
type: count
inputs: [{node: h1, dataset: people}]
params: {where: [{column: age, op: ">=", value: 30}]}
purpose: research
"""


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str,
          **labels: str) -> float:  # fmt: skip
    return sum(v for got, v in found.get(name, []) if labels.items() <= got.items())


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[tuple[RunningCoordinator, NodeAgent]]:
    ca = tmp_path / "pki"
    pki.init_ca(ca, federation="metrics")
    pki.issue(ca, "coordinator", "coordinator")
    pki.issue(ca, "analyst", "analyst", organisation="lab")
    pki.issue(ca, "node", "h1")
    coordinator = start_coordinator(
        config=CoordinatorConfig.from_mapping(
            {"listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0",
             "store": "sqlite:///" + str(tmp_path / "c.db"),
             "tls": {"cert": "pki/coordinator.crt", "key": "pki/coordinator.key",
                     "ca": "pki/ca.crt"}},
            base=tmp_path,
        )
    )  # fmt: skip
    data = tmp_path / "people.csv"
    pd.DataFrame({"age": list(range(18, 78))}).to_csv(data, index=False)
    config = NodeConfig(
        name="h1", coordinator=f"127.0.0.1:{coordinator.port}",
        coordinator_name="coordinator", data_dir=tmp_path / "h1",
        cert=ca / "h1.crt", key=ca / "h1.key", ca=ca / "ca.crt",
        datasets=(DatasetConfig("people", data),), policy=default_policy("analyst"),
        metrics_listen="127.0.0.1:0",
    )  # fmt: skip
    agent = NodeAgent(config)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    assert agent.connected.wait(20)
    try:
        yield coordinator, agent
    finally:
        agent.stop()
        thread.join(10)
        agent.close()
        coordinator.stop()


def test_both_endpoints_serve_the_documented_metrics(
    federation: tuple[RunningCoordinator, NodeAgent], tmp_path: Path
) -> None:
    coordinator, agent = federation
    assert coordinator.metrics is not None
    ca = tmp_path / "pki"
    client = Client.connect(
        address=f"127.0.0.1:{coordinator.port}",
        identity=TlsIdentity.load(
            ca / "analyst.crt", ca / "analyst.key", ca / "ca.crt"
        ),
        key_path=ca / "analyst.key",
    )
    with client:
        job = client.submit(SPEC).job.job_id
        final = client.wait(job, timeout=30, poll=0.05)
        assert final.job.state.value == "succeeded", final.job.reason
    found = scrape(coordinator.metrics.port)
    assert value(found, "cleanroom_jobs", job_type="count", state="succeeded") == 1
    assert value(found, "cleanroom_registered_nodes") == 1
    assert value(found, "cleanroom_connected_nodes") == 1
    assert "cleanroom_mailbox_depth" in found
    assert value(found, "cleanroom_job_duration_seconds_count",
                 job_type="count", state="succeeded") == 1  # fmt: skip
    assert value(found, "cleanroom_stage_duration_seconds_count", job_type="count") >= 1
    assert (
        value(
            found,
            "cleanroom_rpc_duration_seconds_count",
            service="NodeService",
            method="Register",
        )
        >= 1
    )
    assert value(found, "cleanroom_rpc_duration_seconds_count", method="SubmitJob") == 1

    node = scrape(_node_port(agent))
    assert value(node, "cleanroom_node_connected") == 1
    assert (
        value(node, "cleanroom_node_jobs_total", job_type="count", outcome="done") == 1
    )
    assert (
        value(node, "cleanroom_node_job_duration_seconds_count", job_type="count") == 1
    )
    assert (
        value(node, "cleanroom_node_rpc_duration_seconds_count", method="register") >= 1
    )
    assert value(node, "cleanroom_node_meter_used", dataset="people", meter="rows",
                 period="total") == 60  # fmt: skip
    assert value(node, "cleanroom_node_running_jobs") == 0


def test_rpc_errors_are_counted_by_code(
    federation: tuple[RunningCoordinator, NodeAgent], tmp_path: Path
) -> None:
    coordinator, _ = federation
    assert coordinator.metrics is not None
    ca = tmp_path / "pki"
    client = Client.connect(
        address=f"127.0.0.1:{coordinator.port}",
        identity=TlsIdentity.load(
            ca / "analyst.crt", ca / "analyst.key", ca / "ca.crt"
        ),
        key_path=ca / "analyst.key",
    )
    with client, pytest.raises(Exception):
        client.status("no-such-job")
    found = scrape(coordinator.metrics.port)
    assert value(found, "cleanroom_rpc_errors_total", code="NOT_FOUND") == 1


def _node_port(agent: NodeAgent) -> int:
    assert agent.metrics_endpoint is not None
    return agent.metrics_endpoint.port


def test_metrics_listen_must_be_host_and_port(tmp_path: Path) -> None:
    tls = {"cert": "c", "key": "k", "ca": "ca"}
    with pytest.raises(ConfigError, match="metrics_listen"):
        CoordinatorConfig.from_mapping({"tls": tls, "metrics_listen": "9464"},
                                       base=tmp_path)  # fmt: skip
    config = CoordinatorConfig.from_mapping({"tls": tls}, base=tmp_path)
    assert config.metrics_listen == ""  # off unless asked for


def test_json_logs_are_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json")
    try:
        logging.getLogger("cleanroom.test").warning("node %s connected", "h1")
    finally:
        logs.configure("text")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    doc = json.loads(line)
    assert doc["message"] == "node h1 connected"
    assert doc["level"] == "WARNING" and doc["logger"] == "cleanroom.test"
