"""Controllable and countable, end to end: quotas, forbidden columns, purposes,
expired policies, verifiable results and audit ledgers across real processes."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers.federation import COUNT_SPEC, cli, expected_counts, make_csvs

from cleanroom import local
from cleanroom.client import Client
from cleanroom.errors import CryptoError, QuotaExceeded
from cleanroom.provenance import verify_result_bytes

pytestmark = pytest.mark.integration

RULES = {
    "analysts": ["analyst"],
    "organisations": "*",
    "job_types": ["count"],
    "columns": {"allow": "*", "forbid": ["patient_id"]},
    "purposes": ["research"],
    "min_group_size": 5,
    "approval": "auto",
    "quotas": {"jobs": {"per_day": 3}},
}


@pytest.fixture(scope="module")
def fed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, dict[str, Path]]]:
    tmp = tmp_path_factory.mktemp("gov")
    paths = make_csvs(tmp)
    policy = {
        "default": RULES,
        "h3": {**RULES, "valid": {"until": "2020-01-01T00:00:00Z"}},
    }
    (tmp / "policy.yaml").write_text(yaml.safe_dump(policy))
    workdir = tmp / "fed"
    local.up(workdir=workdir, nodes=list(paths.items()), policy=tmp / "policy.yaml")
    yield workdir, paths
    local.down(workdir)


SPEC_12 = COUNT_SPEC.replace("  - {node: h3, dataset: h3}\n", "")


def _submit(workdir: Path, spec: str):  # type: ignore[no-untyped-def]
    with Client.from_federation(workdir / "federation.json") as client:
        return client.wait(client.submit(spec).job.job_id, timeout=60)


def test_rules_refuse_with_the_nodes_reasons(fed: tuple[Path, dict[str, Path]]) -> None:
    workdir, _ = fed
    expired = _submit(workdir, COUNT_SPEC)
    assert expired.job.state.value == "refused"
    assert "h3" in expired.job.reason and "expired" in expired.job.reason
    forbidden = _submit(
        workdir,
        SPEC_12.replace("column: sex", "column: patient_id").replace(
            'value: "F"', 'value: "p1-1"'
        ),
    )
    assert forbidden.job.state.value == "refused"
    assert "patient_id" in forbidden.job.reason and "forbidden" in forbidden.job.reason
    purpose = _submit(
        workdir, SPEC_12.replace("purpose: research", "purpose: marketing")
    )
    assert purpose.job.state.value == "refused"
    assert "marketing" in purpose.job.reason


def test_results_verify_offline_and_quota_holds(
    fed: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    workdir, paths = fed
    fed_file = str(workdir / "federation.json")
    states = [_submit(workdir, SPEC_12) for _ in range(4)]
    assert [s.job.state.value for s in states] == ["succeeded"] * 3 + ["refused"]
    assert "quota 'jobs' per day" in states[3].job.reason
    job = states[0].job.job_id
    saved = tmp_path / "result.json"
    cli("job", "result", job, "--federation", fed_file, "--out", str(saved), check=True)
    document = json.loads(saved.read_text())
    assert set(document["result"]) == {"commitments"}  # the operator saw no count
    opened = tmp_path / "result.opened.json"
    counts = {
        c["node"]: c["count"]
        for c in json.loads(opened.read_text())["reading"]["counts"]
    }
    want = expected_counts(paths)
    assert counts == {"h1": want["h1"], "h2": want["h2"]}
    ok = cli("result", "verify", str(saved), "--federation", fed_file)
    assert ok.returncode == 0 and "VERIFIED" in ok.stdout, ok.stdout + ok.stderr
    assert "OPENED" in ok.stdout, ok.stdout
    raw = saved.read_bytes()
    ca = (workdir / "pki" / "ca.crt").read_bytes()
    for position in range(len(raw)):  # every single byte of the document
        flipped = bytearray(raw)
        flipped[position] ^= 0x01
        with pytest.raises(CryptoError):
            verify_result_bytes(bytes(flipped), ca)
    honest = opened.read_bytes()
    opened.write_bytes(honest.replace(b'"count": ', b'"count": 1', 1))
    proc = cli("result", "verify", str(saved), "--federation", fed_file)
    assert proc.returncode == 1 and "INVALID" in proc.stdout, proc.stdout
    opened.write_bytes(honest)

    exports = tmp_path / "audit"
    # Nodes and coordinator witness each other's heads in the background (after
    # each job, and every few seconds); until then the tails are unwitnessed.
    deadline = time.monotonic() + 60
    while True:
        cli("audit", "export", "--workdir", str(workdir), "--out", str(exports), check=True)
        logs = sorted(str(p) for p in exports.glob("*.jsonl"))
        verified = cli("audit", "verify", *logs, "--federation", fed_file)
        if verified.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.count("OK") == 4
    coordinator_line = next(
        line for line in verified.stdout.splitlines() if "coordinator.jsonl" in line
    )
    assert "cosigned by" in coordinator_line and "h1" in coordinator_line
    shown = cli("audit", "show", "--job", job, *logs, check=True).stdout
    for party in ("coordinator", "h1", "h2"):
        assert party in shown
    assert "job.release_signed" in shown and "job.output" in shown

    statement = cli(
        "usage", "export", "--csv", "--workdir", str(workdir), check=True
    ).stdout
    rows = list(csv.DictReader(io.StringIO(statement)))
    jobs_h1 = [
        r
        for r in rows
        if r["node"] == "h1" and r["meter"] == "jobs" and r["status"] == "settled"
    ]
    assert len(jobs_h1) == 3
    usage = cli(
        "node",
        "usage",
        "--config",
        str(workdir / "nodes" / "h1" / "node.toml"),
        check=True,
    ).stdout
    assert "jobs" in usage and "analyst" in usage


def test_tampered_audit_export_is_detected(
    fed: tuple[Path, dict[str, Path]], tmp_path: Path
) -> None:
    workdir, _ = fed
    exports = tmp_path / "audit"
    cli("audit", "export", "--workdir", str(workdir), "--out", str(exports), check=True)
    lines = (exports / "h2.jsonl").read_text().splitlines()
    entry = next(i for i, line in enumerate(lines) if '"job.approved"' in line)
    lines[entry] = lines[entry].replace("job.approved", "job.refused")
    (exports / "h2.jsonl").write_text("\n".join(lines) + "\n")
    proc = cli(
        "audit",
        "verify",
        str(exports / "h2.jsonl"),
        "--federation",
        str(workdir / "federation.json"),
        "--allow-unwitnessed",
    )
    assert proc.returncode != 0
    assert "entry" in proc.stderr


def test_fifty_concurrent_submissions_never_overspend(tmp_path: Path) -> None:
    """50 jobs at once against a quota of 5 jobs a day on each of two nodes."""
    from concurrent.futures import ThreadPoolExecutor

    from node.config import NodeConfig
    from node.meters import Meters

    paths = make_csvs(tmp_path)
    rules = {**RULES, "quotas": {"jobs": {"per_day": 5}}}
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"default": rules}))
    two = {k: v for k, v in paths.items() if k in ("h1", "h2")}
    workdir = tmp_path / "fed"
    local.up(workdir=workdir, nodes=list(two.items()), policy=policy)
    try:
        with Client.from_federation(workdir / "federation.json") as client:
            def submit(_: int) -> str | None:
                try:
                    return client.submit(SPEC_12).job.job_id
                except QuotaExceeded as exc:  # the coordinator's per-analyst cap
                    assert "unfinished jobs" in str(exc)
                    return None

            with ThreadPoolExecutor(max_workers=16) as pool:
                ids = [j for j in pool.map(submit, range(50)) if j is not None]
            assert ids
            finals = [client.wait(job, timeout=120).job for job in ids]
        states = [f.state.value for f in finals]
        assert set(states) <= {"succeeded", "refused"}
        assert 1 <= states.count("succeeded") <= 5
        for job in finals:
            if job.state.value == "refused":
                assert "quota 'jobs' per day" in job.reason
        for node in two:
            config = NodeConfig.load(workdir / "nodes" / node / "node.toml")
            meters = Meters(config.data_dir / "node.db")
            try:
                jobs = [r for r in meters.usage() if r.meter == "jobs"]
                assert sum(r.used_today for r in jobs) <= 5
                assert sum(r.reserved_today for r in jobs) == 0  # nothing left held
            finally:
                meters.close()
    finally:
        local.down(workdir)


def test_policy_by_organisation_reads_the_analysts_certificate(tmp_path: Path) -> None:

    paths = make_csvs(tmp_path)
    rules = {**RULES, "organisations": ["acme-research"]}
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"default": rules}))
    two = {k: v for k, v in paths.items() if k in ("h1", "h2")}
    workdir = tmp_path / "fed"
    local.up(workdir=workdir, nodes=list(two.items()), policy=policy)
    try:
        refused = _submit(workdir, SPEC_12)
        assert refused.job.state.value == "refused"
        assert "organisation '' is not allowed" in refused.job.reason
        cli(
            "pki",
            "issue",
            "--role",
            "analyst",
            "analyst",
            "--org",
            "acme-research",
            "--dir",
            str(workdir / "pki"),
            check=True,
        )
        assert _submit(workdir, SPEC_12).job.state.value == "succeeded"
    finally:
        local.down(workdir)
