"""Sandbox side channels closed (issue 13): a failed run tells the analyst only
"failed", the holder's policy sets how approvals apply (per run, runs per day) and
whether every output waits for review, and vetting holds outputs that spend more
numbers than the information budget or pack fields into whole numbers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom import jobtypes
from cleanroom.audit.log import AuditLog
from cleanroom.errors import SandboxError
from cleanroom.jobspec import parse_spec
from cleanroom.jobtypes.hooks import AdmissionContext, NodeEnvironment, Verdict
from cleanroom.jobtypes.sandbox import make_spec
from cleanroom.jobtypes.sandbox import service as sandbox_service
from cleanroom.jobtypes.sandbox.service import FAILED, REVIEW_ALWAYS, SandboxService
from cleanroom.localdb import LocalDatabase
from node.config import DatasetConfig
from node.datasets import DatasetRegistry
from node.policy import PolicySet
from node.services import Datasets, Policies
from sandbox import VettingRules, vet_outputs

ROWS = 40
RULES: dict[str, Any] = {
    "analysts": ["alice"], "organisations": "*", "job_types": "*", "purposes": "*",
    "columns": {"allow": "*"}, "approval": "auto", "min_group_size": 5,
}  # fmt: skip


def patients() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "pid": [f"p{i}" for i in range(ROWS)],
            "age": rng.integers(18, 90, ROWS),
            "diagnosis": rng.integers(0, 9, ROWS),
            "income": rng.integers(20_000, 200_000, ROWS),
        }
    )


def make_service(tmp: Path, sandbox: dict[str, Any]) -> Iterator[SandboxService]:
    data = tmp / "d.csv"
    patients().to_csv(data, index=False)
    registry = DatasetRegistry((DatasetConfig("d", data, id_column="pid"),))
    db = LocalDatabase(tmp / "node.db")
    audit = AuditLog(db, owner="n1", signing_key=Ed25519PrivateKey.generate())
    policy = PolicySet.from_mapping({"d": {**RULES, "sandbox": sandbox}})
    env = NodeEnvironment(
        node="n1", data_dir=tmp,
        settings={"max_timeout_seconds": 600, "allow_unshare_fallback": True},
        audit=audit, datasets=Datasets(registry), policy=Policies(policy, registry),
        db=db,
    )  # fmt: skip
    yield SandboxService(env)
    db.close()


def code_dir(tmp: Path, source: str) -> Path:
    directory = tmp / "code"
    directory.mkdir(exist_ok=True)
    (directory / "main.py").write_text(source)
    return directory


def admit(service: SandboxService, job_id: str, text: str) -> Any:
    ctx = AdmissionContext(job_id, "n1", "d", "alice", "", service, service._audit,
                           "approve")  # fmt: skip
    return service.admit(jobtypes.get("sandbox").params(parse_spec(text)), ctx)


def node_context(text: str) -> jobtypes.NodeContext:
    return jobtypes.NodeContext(
        "j1", parse_spec(text), "n1", "d", patients(), "h", 5,
        Ed25519PrivateKey.generate(), ("n1",), {}, analyst="alice",
    )  # fmt: skip


@pytest.fixture(autouse=True)
def engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_service, "engine_available", lambda: True)


def test_per_run_approval_holds_every_run_of_approved_code(tmp_path: Path) -> None:
    for service in make_service(tmp_path, {"approval": "per_run"}):
        text = make_spec(code_dir(tmp_path, "print(1)\n"), inputs=[("n1", "d")],
                         purpose="research")  # fmt: skip
        digest = jobtypes.get("sandbox").params(parse_spec(text)).digest
        service.book.approve_digest("d", digest, "j0")
        held = admit(service, "j1", text)
        assert held.verdict == Verdict.HOLD
        assert "sandbox.approval: per_run" in held.reasons[0]


def test_runs_per_digest_are_capped_per_day(tmp_path: Path) -> None:
    for service in make_service(tmp_path, {"max_runs_per_digest": 2}):
        text = make_spec(code_dir(tmp_path, "print(1)\n"), inputs=[("n1", "d")],
                         purpose="research")  # fmt: skip
        digest = jobtypes.get("sandbox").params(parse_spec(text)).digest
        service.book.approve_digest("d", digest, "j0")
        for job in ("j1", "j2"):
            assert admit(service, job, text) is None
            service.book.record_run(job, "d", digest, "alice", 2)
        denied = admit(service, "j3", text)
        assert denied.verdict == Verdict.DENY
        assert "already ran 2 times today" in denied.reasons[0]


def test_a_failed_run_tells_the_analyst_only_that_it_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox_service, "engine_available", lambda: False)
    source = (
        "import sys, pandas as pd\n"
        "sys.exit(int(pd.read_csv('/data/data.csv').age[7]))\n"  # pid 7's age
    )
    for service in make_service(tmp_path, {}):
        text = make_spec(code_dir(tmp_path, source), inputs=[("n1", "d")],
                         purpose="research", timeout_seconds=30)  # fmt: skip
        digest = jobtypes.get("sandbox").params(parse_spec(text)).digest
        service.book.approve_digest("d", digest, "j0")
        if service.unavailable():
            pytest.skip("no sandbox runner on this machine")
        with pytest.raises(SandboxError) as failed:
            service.execute(node_context(text))
        assert str(failed.value) == FAILED
        assert str(patients().age[7]) not in str(failed.value)
        (entry,) = [
            e
            for e in service._audit.entries_for_job("j1")
            if e.kind == "sandbox.failed"
        ]
        assert "exited with code" in str(entry.data["reason"])  # the holder sees it


def test_review_outputs_always_holds_even_clean_output(tmp_path: Path) -> None:
    for service in make_service(tmp_path, {"review_outputs": "always"}):
        out = tmp_path / "out"
        out.mkdir()
        (out / "summary.json").write_text(json.dumps({"mean_age": 51.2}))
        text = make_spec(code_dir(tmp_path, "print(1)\n"), inputs=[("n1", "d")],
                         purpose="research")  # fmt: skip
        outcome = service._vet(node_context(text), "d" * 64, "img", "x", 0.1, out)
        assert outcome.status == "held" and outcome.reasons == (REVIEW_ALWAYS,)


def test_packed_weights_are_held_by_the_information_rules() -> None:
    """The issue's attack: integer-valued "weights" age*1e7 + diag*1e6 + income."""
    data = patients()
    weights = (data.age * 1e7 + data.diagnosis * 1e6 + data.income).tolist()
    rules = VettingRules(min_cell_count=5, max_numeric_values=ROWS // 5)
    found = vet_outputs({"model.json": json.dumps({"w": weights}).encode()},
                        data, rules)  # fmt: skip
    assert found.status == "held"
    assert any("information budget is 8" in r for r in found.reasons)
    assert any("2^24 or more" in r for r in found.reasons)
    # a few packed values within the budget are still flagged
    few = vet_outputs({"model.json": json.dumps({"w": weights[:3]}).encode()},
                      data, rules)  # fmt: skip
    assert any("2^24 or more" in r for r in few.reasons)
    precise = vet_outputs(
        {"m.json": json.dumps({"w": [0.1234567890123456]}).encode()},
        data,
        VettingRules(min_cell_count=5, rounding=None),
    )
    assert any("significant digits" in r for r in precise.reasons)
    fine = vet_outputs({"m.json": json.dumps({"mean_age": 51.25}).encode()},
                       data, rules)  # fmt: skip
    assert fine.status == "pass"
