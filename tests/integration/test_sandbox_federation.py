"""Sandbox jobs in a real local federation (coordinator and node as processes) with
real Docker: review, digest pinning, vetting, held output, and hostile code."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.federation import cli, wait_for

from cleanroom import local
from cleanroom.client import Client
from cleanroom.jobtypes.sandbox import make_spec
from sandbox import bundle_digest

pytestmark = [pytest.mark.integration, pytest.mark.docker]

REQUIRE_DOCKER_ENV = "CLEANROOM_TEST_REQUIRE_DOCKER"
NODE = "h1"
TRAIN = """
import json
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

data = pd.read_csv("/data/data.csv")
features = data[["age", "income"]].assign(female=(data["sex"] == "F").astype(float))
x_train, x_test, y_train, y_test = train_test_split(
    features, data["label"], test_size=0.25, random_state=0
)
model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
model.fit(x_train, y_train)
with open("/output/metrics.json", "w") as sink:
    json.dump({"accuracy": round(float(model.score(x_test, y_test)), 4),
               "n_train": int(round(len(x_train), -1))}, sink)
"""


def _dataset(rows: int = 300, seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, rows)
    income = np.round(rng.normal(52_000, 9_000, rows), 2)
    sex = rng.choice(["F", "M"], rows)
    logit = 0.05 * (age - 50) + 0.0001 * (income - 52_000) + (sex == "F") * 0.6
    return pd.DataFrame(
        {
            "patient_id": [f"P{100000 + i}" for i in range(rows)],
            "age": age,
            "sex": sex,
            "income": income,
            "diagnosis": [f"D{c:03d}" for c in rng.integers(0, 400, rows)],
            "label": (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int),
        }
    )


def _skip_loudly(reason: str) -> None:
    if os.environ.get(REQUIRE_DOCKER_ENV) == "1":
        pytest.fail(f"{REQUIRE_DOCKER_ENV}=1 but {reason}")
    banner = "#" * 72
    print(f"\n{banner}\n## SANDBOX FEDERATION TESTS SKIPPED: {reason}\n{banner}")
    pytest.skip(f"SANDBOX FEDERATION TESTS SKIPPED: {reason}")


@dataclass
class Fed:
    workdir: Path
    fed_file: Path
    config: str
    data_dir: Path
    frame: pd.DataFrame
    tmp: Path
    docker: Any
    image: str

    def client(self) -> Client:
        return Client.from_federation(self.fed_file)

    def code(self, name: str, source: str) -> Path:
        directory = self.tmp / "code" / name
        directory.mkdir(parents=True)
        (directory / "main.py").write_text(textwrap.dedent(source))
        return directory

    def spec(self, code: Path, timeout: float = 60) -> str:
        return make_spec(code, inputs=[(NODE, NODE)], purpose="research",
                         timeout_seconds=timeout)  # fmt: skip

    def node(self, *args: str, check: bool = True) -> Any:
        return cli("node", *args, "--config", self.config, check=check)

    def audit(self, job_id: str) -> list[tuple[str, dict[str, Any]]]:
        with sqlite3.connect(self.data_dir / "node.db") as db:
            rows = db.execute("SELECT kind, data FROM entries WHERE job_id=? "
                              "ORDER BY idx", (job_id,)).fetchall()  # fmt: skip
        return [(kind, json.loads(data)) for kind, data in rows]

    def local_status(self, job_id: str) -> str:
        with sqlite3.connect(self.data_dir / "node.db") as db:
            row = db.execute("SELECT status FROM jobs WHERE job_id=?", (job_id,))
            found = row.fetchone()
        return "" if found is None else str(found[0])

    def held_for_review(self, job_id: str) -> bool:
        return self.local_status(job_id) == "pending"

    def containers(self) -> list[Any]:
        return list(self.docker.containers.list(
            all=True, filters={"label": "cleanroom.sandbox"}))  # fmt: skip


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    from sandbox import docker_client, ensure_image

    try:
        docker = docker_client()
    except Exception as exc:
        _skip_loudly(f"no Docker engine can run here ({exc})")
    try:
        image = ensure_image(client=docker, progress=print)
    except Exception as exc:
        _skip_loudly(f"the sandbox image could not be built ({exc})")
    tmp = tmp_path_factory.mktemp("sandbox-fed")
    frame = _dataset()
    csv = tmp / f"{NODE}.csv"
    frame.to_csv(csv, index=False)
    policy = tmp / "policy.yaml"
    policy.write_text(yaml.safe_dump({"default": {
        "analysts": ["analyst"], "organisations": "*", "job_types": "*",
        "columns": {"allow": "*"}, "purposes": "*", "min_group_size": 10,
        "approval": "auto"}}))  # fmt: skip
    workdir = tmp / "fed"
    federation = local.up(workdir=workdir, nodes=[(NODE, csv)], policy=policy,
                          node_timeout=5.0)  # fmt: skip
    try:
        # Restart the node with its identifier column and a [jobtypes.sandbox] table.
        pid = federation.processes[f"node:{NODE}"]
        os.killpg(pid, signal.SIGTERM)
        wait_for(lambda: not local._alive(pid), what="the node to stop")
        config = workdir / "nodes" / NODE / "node.toml"
        config.write_text(config.read_text() + 'id_column = "patient_id"\n\n'
                          "[jobtypes.sandbox]\nmemory_mb = 512\npids = 64\ntmp_mb = 32\n"
                          "output_mb = 8\nmax_timeout_seconds = 120\n"
                          'sensitive_columns = ["diagnosis"]\n')  # fmt: skip
        federation.processes[f"node:{NODE}"] = local._spawn(
            ["node", "serve", "--config", str(config)], workdir / "logs" / "h1-2.log"
        )
        federation.save(workdir / "federation.json")
        local.wait_connected(federation, [NODE], deadline=time.monotonic() + 30)
        yield Fed(workdir, workdir / "federation.json", str(config),
                  config.parent / "data", frame, tmp, docker, image)  # fmt: skip
    finally:
        local.down(workdir)


def _finished(client: Client, job_id: str, timeout: float = 90) -> Any:
    return client.wait(job_id, timeout=timeout).job


def _reference_accuracy(frame: pd.DataFrame) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = frame[["age", "income"]].assign(
        female=(frame["sex"] == "F").astype(float)
    )
    x_train, x_test, y_train, y_test = train_test_split(
        features, frame["label"], test_size=0.25, random_state=0
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return float(model.fit(x_train, y_train).score(x_test, y_test))


def test_reviewed_training_code_runs_and_its_metrics_reach_the_analyst(
    fed: Fed,
) -> None:
    code = fed.code("train", TRAIN)
    digest = bundle_digest(code)
    spec = fed.spec(code)
    with fed.client() as client:
        job = client.submit(spec).job.job_id
        wait_for(lambda: fed.held_for_review(job), what="the job to be held")
        # The holder reviews: files, digest and static findings.
        shown = fed.node("jobs", "--show", job).stdout
        assert "main.py" in shown and digest in shown and "static findings" in shown
        doc = json.loads(fed.node("jobs", "--show", job, "--json").stdout)
        assert doc["review"]["digest"] == digest
        assert doc["review"]["approved_for_dataset"] is False
        # Unapproved code never starts: no container, no run in the audit log.
        time.sleep(1.5)
        assert fed.containers() == []
        kinds = [k for k, _ in fed.audit(job)]
        assert "sandbox.bundle" in kinds and "sandbox.started" not in kinds
        assert client.status(job).job.state.value == "awaiting_approval"
        # Approving a digest the holder did not see is refused.
        wrong = fed.node("approve", job, "--digest", "0" * 16, check=False)
        assert wrong.returncode == 2 and digest in " ".join(wrong.stderr.split())
        fed.node("approve", job, "--digest", digest[:16])
        final = _finished(client, job)
        assert final.state.value == "succeeded", final.reason
        result = client.result(job)["result"]
        metrics = result["outputs"]["metrics.json"]
        assert abs(metrics["accuracy"] - _reference_accuracy(fed.frame)) <= 0.02
        assert metrics["n_train"] % 10 == 0
        assert result["bundle_digest"] == digest and result["image"] == fed.image
        assert result["released_by"] == "vetting"
        (ran,) = [d for k, d in fed.audit(job) if k == "sandbox.ran"]
        assert ran["digest"] == digest and ran["image"] == fed.image
        assert ran["image_id"].startswith("sha256:") and ran["exit_code"] == 0
        assert ran["cpu_seconds"] > 0
        with sqlite3.connect(fed.data_dir / "node.db") as db:
            used = dict(db.execute("SELECT meter, used FROM amounts WHERE job_id=?",
                                   (job,)).fetchall())  # fmt: skip
        assert used["sandbox_cpu_seconds"] > 0 and used["rows"] == len(fed.frame)
        # The same code again: approved before, so it runs without the holder.
        again = client.submit(spec).job.job_id
        assert _finished(client, again).state.value == "succeeded"
        assert not any(k == "job.approved" and d.get("decided_by") == "holder"
                       for k, d in fed.audit(again))  # fmt: skip


def test_changed_code_needs_a_new_approval(fed: Fed) -> None:
    code = fed.code("v1", """
        import json
        json.dump({"mean_age": 50.0}, open("/output/stats.json", "w"))
    """)  # fmt: skip
    with fed.client() as client:
        first = client.submit(fed.spec(code)).job.job_id
        wait_for(lambda: fed.held_for_review(first), what="v1 to be held")
        fed.node("approve", first)
        assert _finished(client, first).state.value == "succeeded"
        # One changed byte is a different digest: the old approval does not cover it.
        main = code / "main.py"
        main.write_text(main.read_text().replace("50.0", "51.0"))
        second = client.submit(fed.spec(code)).job.job_id
        wait_for(lambda: fed.held_for_review(second), what="v2 to be held")
        time.sleep(1.5)
        assert client.status(second).job.state.value == "awaiting_approval"
        audit = fed.audit(second)
        (bundle,) = [d for k, d in audit if k == "sandbox.bundle"]
        assert bundle["digest"] == bundle_digest(code)
        assert bundle["approved_before"] is False
        assert not any(k.startswith("sandbox.") and k != "sandbox.bundle"
                       for k, _ in audit)  # fmt: skip
        fed.node("deny", second, "--reason", "not reviewed yet")
        assert _finished(client, second).state.value == "refused"


ATTACKS = {
    "network": ("""
        import socket
        socket.create_connection(("1.1.1.1", 80), timeout=3)
        open("/output/leak.json", "w").write("[]")
    """, "exited with code 1"),
    "write-outside": ("""
        import sys
        written = []
        for path in ["/code/evil.py", "/data/data.csv", "/etc/evil", "/evil"]:
            try:
                with open(path, "a") as sink:
                    sink.write("x")
                written.append(path)
            except OSError:
                pass
        if written:
            open("/output/escaped.json", "w").write(str(written))
        else:
            sys.exit("every write outside /output was refused")
    """, "exited with code 1"),
    "infinite-loop": ("""
        while True:
            pass
    """, "timed out after 5s"),
    "exit-3": ("""
        import sys
        import pandas as pd
        print(pd.read_csv("/data/data.csv").head(5).to_csv(), file=sys.stderr)
        sys.exit(3)
    """, "exited with code 3"),
}  # fmt: skip


def test_hostile_code_fails_clearly_and_is_audited(fed: Fed) -> None:
    with fed.client() as client:
        jobs = {
            name: client.submit(fed.spec(fed.code(name, source), timeout=5)).job.job_id
            for name, (source, _) in ATTACKS.items()
        }
        for job in jobs.values():
            wait_for(lambda job=job: fed.held_for_review(job), what="held for review")
            fed.node("approve", job)
        for name, job in jobs.items():
            final = _finished(client, job)
            expected = ATTACKS[name][1]
            assert final.state.value == "failed", (name, final.reason)
            # Only "failed" reaches the analyst: no exit code, signal or timeout.
            assert "the sandboxed code failed" in final.reason, (name, final.reason)
            assert expected not in final.reason, (name, final.reason)
            # What the code printed to stderr (here: raw rows) stays on the node.
            assert "P100000" not in final.reason
            audit = fed.audit(job)
            (failed,) = [d for k, d in audit if k == "sandbox.failed"]
            assert expected in failed["reason"] and failed["image"] == fed.image
            assert any(k == "job.failed" for k, _ in audit)
            # A failed run is billed the CPU it burned, as a successful one is.
            with sqlite3.connect(fed.data_dir / "node.db") as db:
                used = dict(db.execute("SELECT meter, used FROM amounts WHERE job_id=?",
                                       (job,)).fetchall())  # fmt: skip
            billed = used.get("sandbox_cpu_seconds", 0.0)
            assert abs(billed - failed["cpu_seconds"]) < 0.001, (name, used)
            if name == "infinite-loop":  # spun for the whole 5 s timeout
                assert failed["cpu_seconds"] > 1.0 and used["jobs"] == 1
    assert fed.containers() == []
    assert not (Path(fed.config).parent / "evil.py").exists()


def test_suspicious_output_is_held_until_the_holder_decides(fed: Fed) -> None:
    copy_rows = fed.code("copy-rows", """
        import pandas as pd
        pd.read_csv("/data/data.csv").head(25).to_csv("/output/rows.csv", index=False)
    """)  # fmt: skip
    print_ids = fed.code("print-ids", """
        import json
        import pandas as pd
        ids = pd.read_csv("/data/data.csv")["patient_id"].head(12).tolist()
        json.dump({"cohort": ids}, open("/output/cohort.json", "w"))
    """)  # fmt: skip
    with fed.client() as client:
        rows_job = client.submit(fed.spec(copy_rows)).job.job_id
        ids_job = client.submit(fed.spec(print_ids)).job.job_id
        for job in (rows_job, ids_job):
            wait_for(lambda job=job: fed.held_for_review(job), what="code review")
            fed.node("approve", job)
        for job in (rows_job, ids_job):
            wait_for(lambda job=job: "held" in client.status(job).job.progress,
                     timeout=90, what="the output to be held")  # fmt: skip
            assert client.status(job).job.state.value == "running"
        listed = {j["job_id"]: j for j in json.loads(fed.node("jobs", "--json").stdout)}
        assert listed[rows_job]["waiting"] == "output held"
        assert "reproduces a dataset row" in listed[rows_job]["why"]
        review = json.loads(fed.node("jobs", "--show", rows_job, "--json").stdout)
        reasons = " ".join(review["review"]["held_output"]["reasons"])
        assert "reproduces a dataset row" in reasons
        ids_review = json.loads(fed.node("jobs", "--show", ids_job, "--json").stdout)
        assert "identifier column 'patient_id'" in " ".join(
            ids_review["review"]["held_output"]["reasons"]
        )
        time.sleep(1)
        assert client.status(rows_job).job.state.value == "running"
        fed.node("reject", rows_job, "--reason", "raw rows are not a result")
        rejected = _finished(client, rows_job)
        assert rejected.state.value == "failed"
        assert "raw rows are not a result" in rejected.reason
        with pytest.raises(Exception, match="no result"):
            client.result(rows_job)
        fed.node("release", ids_job)
        released = _finished(client, ids_job)
        assert released.state.value == "succeeded", released.reason
        result = client.result(ids_job)["result"]
        assert result["released_by"] == "holder"
        assert len(result["outputs"]["cohort.json"]["cohort"]) == 12
    kinds = [k for k, _ in fed.audit(rows_job)]
    assert "sandbox.output_held" in kinds and "sandbox.output_rejected" in kinds
    assert "sandbox.output_released" in [k for k, _ in fed.audit(ids_job)]
