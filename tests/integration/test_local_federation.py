"""A real local federation: coordinator and nodes as separate processes on loopback,
driven through the CLI exactly as an analyst and data holders would."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers.federation import COUNT_SPEC, cli, expected_counts, make_csvs, wait_for

from cleanroom import local
from cleanroom.client import Client
from cleanroom.federation import Federation

pytestmark = pytest.mark.integration


@pytest.fixture()
def federation(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Path]]]:
    paths = make_csvs(tmp_path)
    policy = {
        "default": {
            "analysts": ["analyst"],
            "organisations": "*",
            "job_types": "*",
            "columns": {"allow": "*"},
            "purposes": "*",
            "min_group_size": 5,
            "approval": "auto",
        },
        # the holder of h1 decides every job on it by hand
        "h1": {
            "analysts": ["analyst"],
            "organisations": "*",
            "job_types": "*",
            "columns": {"allow": "*"},
            "purposes": "*",
            "min_group_size": 5,
            "approval": "manual",
        },
    }
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    workdir = tmp_path / "fed"
    local.up(
        workdir=workdir, nodes=list(paths.items()), policy=policy_file, node_timeout=2.0
    )
    yield workdir, paths
    local.down(workdir)


def spec_file(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_count_job_end_to_end(tmp_path: Path) -> None:
    paths = make_csvs(tmp_path)
    workdir = tmp_path / "fed"
    up = cli(
        "local",
        "up",
        "--workdir",
        str(workdir),
        *[arg for n, p in paths.items() for arg in ("--node", f"{n}={p}")],
        check=True,
    )
    assert "federation up" in up.stdout
    try:
        fed = str(workdir / "federation.json")
        proc = cli(
            "job",
            "submit",
            str(spec_file(tmp_path, COUNT_SPEC)),
            "--federation",
            fed,
            "--wait",
            "--json",
            check=True,
        )
        doc = json.loads(proc.stdout)
        assert doc["state"] == "succeeded"
        counts = {c["node"]: c["count"] for c in doc["result"]["result"]["counts"]}
        assert counts == expected_counts(paths)
        status = json.loads(
            cli("local", "status", "--workdir", str(workdir), check=True).stdout
        )
        assert all(n["connected"] for n in status["nodes"].values())
        listed = json.loads(
            cli("job", "list", "--federation", fed, "--json", check=True).stdout
        )
        assert [j["job_id"] for j in listed] == [doc["job_id"]]
    finally:
        cli("local", "down", "--workdir", str(workdir))


def test_policy_excluding_the_analyst_refuses(tmp_path: Path) -> None:
    paths = make_csvs(tmp_path)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        yaml.safe_dump(
            {
                "default": {
                    "analysts": ["someone-else"],
                    "organisations": "*",
                    "job_types": "*",
                    "columns": {"allow": "*"},
                    "purposes": "*",
                    "approval": "auto",
                }
            }
        )
    )
    workdir = tmp_path / "fed"
    local.up(workdir=workdir, nodes=list(paths.items()), policy=policy)
    try:
        proc = cli(
            "job",
            "submit",
            str(spec_file(tmp_path, COUNT_SPEC)),
            "--federation",
            str(workdir / "federation.json"),
            "--wait",
            "--json",
        )
        assert proc.returncode == 1
        doc = json.loads(proc.stdout)
        assert doc["state"] == "refused"
        assert "analyst 'analyst' is not allowed" in doc["reason"]
    finally:
        local.down(workdir)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("type: count\ninputs: [{node: h1, dataset: h1}\npurpose: x", "malformed YAML"),
        (
            COUNT_SPEC.replace("type: count", "type: teleport"),
            "unknown job type 'teleport'",
        ),
        (
            COUNT_SPEC.replace("node: h3", "node: h9"),
            "inputs[2].node: unknown node 'h9'",
        ),
        (
            COUNT_SPEC.replace("dataset: h2", "dataset: nope"),
            "inputs[1].dataset: node 'h2' has no dataset 'nope'",
        ),
        (
            COUNT_SPEC.replace("column: age", "column: agee"),
            "params.where[0].column: dataset",
        ),
        (
            COUNT_SPEC.replace('value: "F"', "value: 3"),
            "params.where[1].value: column is str",
        ),
    ],
)
def test_bad_specs_fail_precisely_and_create_no_job(
    federation: tuple[Path, dict[str, Path]], tmp_path: Path, spec: str, fragment: str
) -> None:
    workdir, _ = federation
    fed = str(workdir / "federation.json")
    proc = cli(
        "job", "submit", str(spec_file(tmp_path, spec)), "--federation", fed, "--json"
    )
    assert proc.returncode == 2, proc.stderr
    assert fragment in " ".join(proc.stderr.split()), proc.stderr
    assert (
        json.loads(cli("job", "list", "--federation", fed, "--json", check=True).stdout)
        == []
    )


def _node_config(workdir: Path, node: str) -> str:
    return str(workdir / "nodes" / node / "node.toml")


def test_manual_approval_and_denial(
    federation: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    workdir, paths = federation
    fed = str(workdir / "federation.json")
    spec = spec_file(tmp_path, COUNT_SPEC)
    with Client.from_federation(fed) as client:
        job = client.submit(spec.read_text()).job.job_id
        wait_for(
            lambda: any(
                j["job_id"] == job
                for j in json.loads(
                    cli(
                        "node",
                        "jobs",
                        "--config",
                        _node_config(workdir, "h1"),
                        "--json",
                    ).stdout
                )
            ),
            what="the held job to appear on h1",
        )
        cli("node", "approve", job, "--config", _node_config(workdir, "h1"), check=True)
        done = client.wait(job, timeout=30)
        assert done.job.state.value == "succeeded"
        counts = {c["node"]: c["count"] for c in client.result(job)["result"]["counts"]}
        assert counts == expected_counts(paths)

        job2 = client.submit(spec.read_text()).job.job_id
        wait_for(
            lambda: (
                cli(
                    "node",
                    "deny",
                    job2,
                    "--config",
                    _node_config(workdir, "h1"),
                    "--reason",
                    "not this quarter",
                ).returncode
                == 0
            ),
            what="h1 to hold the second job",
        )
        final = client.wait(job2, timeout=30)
        assert final.job.state.value == "refused"
        assert "not this quarter" in final.job.reason


def test_node_killed_mid_job_fails_it_and_the_node_reconnects(
    federation: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    workdir, _ = federation
    fed_file = workdir / "federation.json"
    fed = Federation.load(fed_file)
    with Client.from_federation(fed_file) as client:
        job = client.submit(COUNT_SPEC).job.job_id
        wait_for(
            lambda: (
                {d.node: d.decision for d in client.status(job).decisions}.get("h2")
                == "approved"
            ),
            what="h2 to approve",
        )
        os.killpg(fed.processes["node:h2"], signal.SIGKILL)
        cli("node", "approve", job, "--config", _node_config(workdir, "h1"), check=True)
        final = client.wait(job, timeout=30)
        assert final.job.state.value == "failed"
        assert "h2" in final.job.reason and "lost contact" in final.job.reason
        # the holder restarts the node; it reconnects by itself
        local.restart(workdir, "h2")
        wait_for(
            lambda: {e.node: e.connected for e in client.catalog()}.get("h2") is True,
            what="h2 to reconnect",
        )
    # Nothing was lost on h2: the stop notice queued while it was dead releases its
    # reservation, and its audit ledger still verifies with the whole history.
    from node.config import NodeConfig
    from node.meters import Meters

    config = NodeConfig.load(Path(_node_config(workdir, "h2")))

    def released() -> bool:
        meters = Meters(config.data_dir / "node.db")
        try:
            return sum(r.reserved_total for r in meters.usage()) == 0
        finally:
            meters.close()

    wait_for(released, what="h2 to release the failed job's reservation")
    export = tmp_path / "h2.jsonl"
    cli(
        "audit",
        "export",
        "--config",
        _node_config(workdir, "h2"),
        "--out",
        str(export),
        check=True,
    )
    verified = cli(
        "audit",
        "verify",
        str(export),
        "--federation",
        str(fed_file),
        "--allow-unwitnessed",  # its newest entries may await the next witnessing
        check=True,
    ).stdout
    assert "OK" in verified
    history = cli("audit", "show", "--job", job, str(export), check=True).stdout
    assert "job.approved" in history and "job.ended" in history


def test_coordinator_restart_keeps_jobs_and_results(
    federation: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    workdir, paths = federation
    fed_file = workdir / "federation.json"
    fed = Federation.load(fed_file)
    with Client.from_federation(fed_file) as client:
        finished = client.submit(COUNT_SPEC).job.job_id
        wait_for(
            lambda: (
                cli(
                    "node", "approve", finished, "--config", _node_config(workdir, "h1")
                ).returncode
                == 0
            ),
            what="held job",
        )
        assert client.wait(finished, timeout=30).job.state.value == "succeeded"
        before = client.result(finished)
        waiting = client.submit(COUNT_SPEC).job.job_id  # held by h1's holder
    os.killpg(fed.processes["coordinator"], signal.SIGKILL)
    local.restart(workdir, "coordinator")
    with Client.from_federation(fed_file) as client:
        wait_for(client.healthy, what="the coordinator to come back")
        assert client.result(finished) == before
        assert client.status(waiting).job.state.value == "awaiting_approval"
        wait_for(
            lambda: all(e.connected for e in client.catalog()),
            what="nodes to reconnect",
        )
        cli(
            "node",
            "approve",
            waiting,
            "--config",
            _node_config(workdir, "h1"),
            check=True,
        )
        final = client.wait(waiting, timeout=30)
        assert final.job.state.value == "succeeded", final.job.reason
        counts = {
            c["node"]: c["count"] for c in client.result(waiting)["result"]["counts"]
        }
        assert counts == expected_counts(paths)


def test_dataset_file_changing_or_vanishing_is_refused(
    federation: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    workdir, paths = federation
    spec = COUNT_SPEC.replace("  - {node: h1, dataset: h1}\n", "")
    with Client.from_federation(workdir / "federation.json") as client:
        with paths["h3"].open("a") as fh:
            fh.write("p3-new,50,F,22.0\n")
        final = client.wait(client.submit(spec).job.job_id, timeout=30)
        assert final.job.state.value == "refused"
        assert "h3" in final.job.reason and "changed on disk" in final.job.reason
        paths["h3"].unlink()
        final = client.wait(client.submit(spec).job.job_id, timeout=30)
        assert final.job.state.value == "refused"
        assert "disappeared" in final.job.reason
        assert {e.node: e.connected for e in client.catalog()}["h3"] is True


def test_more_nodes_than_long_poll_slots_still_run_jobs(tmp_path: Path) -> None:
    """4 RPC workers leave 2 long-poll slots for 3 nodes: the node left without one
    is told to pull again shortly, stays connected, and the jobs still complete."""
    paths = make_csvs(tmp_path)
    workdir = tmp_path / "fed"
    local.up(workdir=workdir, nodes=list(paths.items()), rpc_workers=4)
    try:
        with Client.from_federation(workdir / "federation.json") as client:
            for _ in range(2):
                job = client.submit(COUNT_SPEC).job
                view = client.wait(job.job_id, timeout=60)
                assert view.job.state.value == "succeeded", view.job.reason
                result = client.result(job.job_id)["result"]
                counts = {c["node"]: c["count"] for c in result["counts"]}
                assert counts == expected_counts(paths)
        nodes = local.status(workdir)["nodes"]
        assert isinstance(nodes, dict)
        assert sorted(nodes) == sorted(paths)
        assert all(n["connected"] for n in nodes.values())
    finally:
        local.down(workdir)
