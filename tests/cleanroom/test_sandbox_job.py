"""The sandbox job type: spec building and checks, digest pinning, and its parties
in one process (the sandbox itself is faked here; the integration test runs it)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cleanroom import jobtypes
from cleanroom.audit.log import AuditLog
from cleanroom.catalog import ColumnInfo, DatasetInfo
from cleanroom.errors import ConfigError, ProtocolError, SandboxError, SpecError
from cleanroom.jobspec import JobInput, parse_spec
from cleanroom.jobtypes.hooks import (
    AdmissionContext,
    NodeEnvironment,
    Verdict,
)
from cleanroom.jobtypes.sandbox import make_spec
from cleanroom.jobtypes.sandbox import params as sandbox_params
from cleanroom.jobtypes.sandbox import service as sandbox_service
from cleanroom.jobtypes.sandbox.book import SandboxBook
from cleanroom.jobtypes.sandbox.parties import (
    HOLDER_DECIDED,
    STAGE_HELD,
    STAGE_OUTPUT,
    SandboxOutcome,
)
from cleanroom.jobtypes.sandbox.service import (
    SandboxService,
    SandboxSettings,
    public_reason,
)
from cleanroom.keys import verify_statement
from cleanroom.localdb import LocalDatabase
from node.config import DatasetConfig
from node.datasets import DatasetRegistry
from node.policy import PolicySet
from node.services import Datasets, Policies
from protocols.party import ANALYST, COORDINATOR, Inbound, LocalEvent
from sandbox import NO_ENGINE, bundle_digest

TRAIN = "import pandas as pd\nprint(len(pd.read_csv('/data/data.csv')))\n"


@pytest.fixture
def code(tmp_path: Path) -> Path:
    directory = tmp_path / "code"
    (directory / "lib").mkdir(parents=True)
    (directory / "main.py").write_text(TRAIN)
    (directory / "lib" / "util.py").write_text("X = 1\n")
    return directory


def _spec(code: Path, **kwargs: Any) -> str:
    return make_spec(code, inputs=[("n1", "d")], purpose="research", **kwargs)


def _with_params(text: str, **params: Any) -> str:
    doc = yaml.safe_load(text)
    doc["params"].update(params)
    return yaml.safe_dump(doc, sort_keys=False, width=1 << 30)


def _validate(text: str, catalog: Mapping[JobInput, DatasetInfo] | None = None) -> None:
    spec = parse_spec(text)
    jobtypes.get("sandbox").validate(spec, catalog or {})


def spec_bundle_digest(spec: Any) -> str:
    digest: str = jobtypes.get("sandbox").params(spec).digest
    return digest


def _review(spec: Any) -> sandbox_params.BundleReview:
    return sandbox_params.review(jobtypes.get("sandbox").params(spec))


# ------------------------------------------------------------ spec building --
def test_make_spec_round_trips_and_pins_the_code(code: Path) -> None:
    text = _spec(code, timeout_seconds=30, outputs={"metrics.json": "accuracy"})
    spec = parse_spec(text)
    assert spec.type == "sandbox" and spec.inputs == (JobInput("n1", "d"),)
    assert spec.params["entrypoint"] == "main.py"
    assert spec.params["timeout_seconds"] == 30
    assert spec_bundle_digest(spec) == bundle_digest(code)
    assert _spec(code, timeout_seconds=30, outputs={"metrics.json": "accuracy"}) == text
    review = _review(spec)
    assert [name for name, _ in review.files] == ["lib/util.py", "main.py"]
    assert review.findings == ()


def test_one_changed_byte_is_a_different_digest(code: Path) -> None:
    before = spec_bundle_digest(parse_spec(_spec(code)))
    (code / "lib" / "util.py").write_text("X = 2\n")
    assert spec_bundle_digest(parse_spec(_spec(code))) != before


def test_static_findings_are_shown_for_review(code: Path) -> None:
    (code / "main.py").write_text("import socket\nopen('/etc/passwd')\n")
    rules = {f.rule for f in _review(parse_spec(_spec(code))).findings}
    assert rules == {"network", "host-path"}


def test_exactly_one_input(code: Path) -> None:
    doc = yaml.safe_load(_spec(code))
    doc["inputs"].append({"node": "n2", "dataset": "d"})
    with pytest.raises(SpecError) as caught:
        _validate(yaml.safe_dump(doc, width=1 << 30))
    assert caught.value.path == "inputs" and "exactly one dataset" in str(caught.value)
    with pytest.raises(SpecError, match="exactly one dataset"):
        make_spec(code, inputs=[("a", "d"), ("b", "d")], purpose="x")


@pytest.mark.parametrize(
    ("params", "path", "fragment"),
    [
        ({"bundle": "not base64!"}, "params.bundle", "base64"),
        ({"bundle": base64.b64encode(b"plain").decode()}, "params.bundle", "tar.gz"),
        ({"entrypoint": "/etc/main.py"}, "params.entrypoint", "relative .py"),
        ({"entrypoint": "../main.py"}, "params.entrypoint", "relative .py"),
        ({"entrypoint": "other.py"}, "params.entrypoint", "not in the bundle"),
        ({"timeout_seconds": 0}, "params.timeout_seconds", "seconds"),
        ({"timeout_seconds": True}, "params.timeout_seconds", "seconds"),
        ({"timeout_seconds": "10"}, "params.timeout_seconds", "seconds"),
        ({"outputs": 3}, "params.outputs", "text"),
        ({"columns": []}, "params.columns", "non-empty"),
        ({"network": True}, "params.network", "unknown parameter"),
    ],
)
def test_bad_params_name_the_field(
    code: Path, params: dict[str, Any], path: str, fragment: str
) -> None:
    with pytest.raises(SpecError) as caught:
        _validate(_with_params(_spec(code), **params))
    assert caught.value.path == path
    assert fragment in caught.value.problem


def test_columns_are_checked_against_the_catalog(code: Path) -> None:
    info = DatasetInfo("d", (ColumnInfo("age", "int"),), "<100", "", "")
    text = _with_params(_spec(code), columns=["age", "salary"])
    with pytest.raises(SpecError, match="has no column 'salary'"):
        _validate(text, {JobInput("n1", "d"): info})
    _validate(_with_params(_spec(code), columns=["age"]), {JobInput("n1", "d"): info})
    assert jobtypes.get("sandbox").columns_used(parse_spec(text)) == {"age", "salary"}


def test_a_compressed_bomb_is_refused_without_inflating_it(code: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("main.py")
        info.size = 64 * 1024 * 1024
        tar.addfile(info, io.BytesIO(b"\0" * info.size))
    bomb = base64.b64encode(gzip.compress(raw.getvalue())).decode()
    assert len(bomb) < 1 << 20
    with pytest.raises(SpecError, match="exceeds"):
        _validate(_with_params(_spec(code), bundle=bomb))


def test_specs_over_one_mib_are_refused(code: Path) -> None:
    (code / "blob.py").write_bytes(base64.b64encode(bytes(range(256)) * 4096 * 2))
    (code / "noise.py").write_text(repr(__import__("os").urandom(900_000)))
    with pytest.raises(SpecError, match="limited to 1 MiB"):
        _spec(code)


def test_the_sandbox_cpu_is_reserved_up_to_the_timeout(code: Path) -> None:
    spec = parse_spec(_spec(code, timeout_seconds=42))
    assert jobtypes.get("sandbox").estimate_units(spec, 10) == {
        "sandbox_cpu_seconds": 42.0
    }


# --------------------------------------------------------------- parties --
class FakeHost:
    def __init__(self, outcome: SandboxOutcome) -> None:
        self.outcome = outcome
        self.decision: tuple[str, str] | None = None

    def execute(self, ctx: jobtypes.NodeContext) -> SandboxOutcome:
        return self.outcome

    def output_decision(self, job_id: str) -> tuple[str, str] | None:
        return self.decision


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _parties(code: Path, host: FakeHost) -> tuple[Any, Any, Any, bytes]:
    spec = parse_spec(_spec(code))
    key = Ed25519PrivateKey.generate()
    publics = {"n1": _raw(key)}
    job = jobtypes.get("sandbox")
    frame = pd.DataFrame({"a": range(20)})
    node = job.node_party(
        jobtypes.NodeContext(
            "j1", spec, "n1", "d", frame, "dhash", 5, key, spec.nodes, publics,
            service=host,
        )
    )  # fmt: skip
    coord = job.coordinator_party(
        jobtypes.CoordinatorContext("j1", spec, spec.nodes, publics)
    )
    analyst = job.analyst_party(
        jobtypes.AnalystContext(
            "j1", spec, "alice", spec.nodes, Ed25519PrivateKey.generate(), publics
        )
    )
    return node, coord, analyst, publics["n1"]


def _outcome(status: str, reasons: tuple[str, ...] = ()) -> SandboxOutcome:
    files = {
        "metrics.json": b'{"accuracy": 0.9412, "n_train": 120}',
        "table.csv": b"group,count\na,12\nb,30\n",
    }
    return SandboxOutcome(status, files, reasons, "d" * 64, "img:1", "docker", 1.5)  # type: ignore[arg-type]


def _deliver(out: list[Any], coord: Any, analyst: Any) -> None:
    for message in out:
        target = analyst if message.recipient == ANALYST else coord
        target.receive(Inbound("n1", message.stage, message.payload))


def test_vetted_output_is_sealed_to_the_analyst_and_signed(code: Path) -> None:
    node, coord, analyst, public = _parties(code, FakeHost(_outcome("pass")))
    out = node.start()
    assert {o.recipient for o in out} == {COORDINATOR, ANALYST}
    assert all(o.stage.startswith(STAGE_OUTPUT) for o in out)
    to_coordinator = next(o for o in out if o.recipient == COORDINATOR).payload
    assert b"0.9412" not in to_coordinator and b"accuracy" not in to_coordinator
    assert node.finished and node.usage().rows_touched == 20
    assert node.usage().units == {"sandbox_cpu_seconds": 1.5}
    _deliver(out, coord, analyst)
    assert coord.finished and analyst.finished
    released = dict(coord.result())
    assert node.attest(released) == {"/commitments/n1": released["commitments"]["n1"]}
    result = dict(analyst.finalize(released))
    assert result["outputs"] == {
        "metrics.json": {"accuracy": 0.9412, "n_train": 120},
        "table.csv": [{"group": "a", "count": 12}, {"group": "b", "count": 30}],
    }
    assert result["bundle_digest"] == "d" * 64 and result["released_by"] == "vetting"
    (report,) = result["reports"]
    verify_statement(public, report["statement"], report["signature"])


def test_held_output_waits_for_the_holder_then_is_released(code: Path) -> None:
    host = FakeHost(_outcome("held", ("table.csv: row 1 reproduces a dataset row",)))
    node, coord, analyst, _ = _parties(code, host)
    (notice,) = node.start()
    assert notice.stage == STAGE_HELD and not node.finished
    assert coord.receive(Inbound("n1", notice.stage, notice.payload)) == []
    assert not coord.finished and coord.waiting_for() == frozenset()
    assert node.local_event(LocalEvent(HOLDER_DECIDED)) == []
    host.decision = ("released", "fine")
    _deliver(node.local_event(LocalEvent(HOLDER_DECIDED)), coord, analyst)
    result = dict(analyst.finalize(coord.result()))
    assert result["released_by"] == "holder" and result["held_for_review"] is True
    assert result["vetting"] == ["table.csv: row 1 reproduces a dataset row"]


def test_rejected_output_fails_the_job_with_the_reason(code: Path) -> None:
    host = FakeHost(_outcome("held", ("copies rows",)))
    node, _, _, _ = _parties(code, host)
    node.start()
    host.decision = ("rejected", "raw rows, not a model")
    with pytest.raises(
        SandboxError, match="rejected the output: raw rows, not a model"
    ):
        node.local_event(LocalEvent(HOLDER_DECIDED))
    with pytest.raises(ProtocolError):
        node.receive(Inbound(COORDINATOR, "sandbox.other", b""))


def test_the_analyst_refuses_altered_output(code: Path) -> None:
    node, _, analyst, _ = _parties(code, FakeHost(_outcome("pass")))
    sealed = next(o for o in node.start() if o.recipient == ANALYST)
    payload = json.loads(sealed.payload)
    payload["statement"]["files"]["metrics.json"] = base64.b64encode(
        b'{"accuracy": 1}'
    ).decode()
    with pytest.raises(ProtocolError, match="not signed by it"):
        analyst.receive(Inbound("n1", sealed.stage, json.dumps(payload).encode()))


# -------------------------------------------------- the node's sandbox service --
POLICY = {
    "d": {"analysts": ["alice"], "organisations": "*", "job_types": "*",
          "purposes": "*", "columns": {"allow": "*", "forbid": ["ssn"]},
          "approval": "auto", "min_group_size": 5},
}  # fmt: skip


@pytest.fixture
def service(tmp_path: Path) -> Any:
    data = tmp_path / "d.csv"
    pd.DataFrame({"pid": [f"p{i}" for i in range(30)], "age": range(30),
                  "ssn": range(30)}).to_csv(data, index=False)  # fmt: skip
    registry = DatasetRegistry((DatasetConfig("d", data, id_column="pid"),))
    db = LocalDatabase(tmp_path / "node.db")
    audit = AuditLog(db, owner="n1", signing_key=Ed25519PrivateKey.generate())
    policy = PolicySet.from_mapping(POLICY)
    env = NodeEnvironment(
        node="n1", data_dir=tmp_path, settings={"max_timeout_seconds": 600},
        audit=audit, datasets=Datasets(registry), policy=Policies(policy, registry),
        db=db,
    )  # fmt: skip
    svc = SandboxService(env)
    svc.test_audit, svc.test_registry = audit, registry  # type: ignore[attr-defined]
    yield svc
    db.close()


def _admit(service: Any, job_id: str, spec: Any) -> Any:
    ctx = AdmissionContext(job_id, "n1", "d", "alice", "", service, service.test_audit,
                           "approve")  # fmt: skip
    return service.admit(jobtypes.get("sandbox").params(spec), ctx)


def test_unapproved_code_is_held_and_approving_pins_its_digest(
    service: Any, code: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox_service, "engine_available", lambda: True)
    text = _spec(code)
    spec = parse_spec(text)
    held = _admit(service, "j1", spec)
    assert held.verdict == Verdict.HOLD
    assert "has not been approved for dataset 'd'" in held.reasons[0]
    service.book.approve_digest("d", spec_bundle_digest(spec), "j1")
    assert _admit(service, "j2", spec) is None
    # The same approval never covers changed code, even by one byte.
    (code / "main.py").write_text(TRAIN + "# one more line\n")
    again = _admit(service, "j3", parse_spec(_spec(code)))
    assert again.verdict == Verdict.HOLD


def test_without_an_engine_sandbox_jobs_are_refused(
    service: Any, code: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox_service, "engine_available", lambda: False)
    decision = _admit(service, "j1", parse_spec(_spec(code)))
    assert decision.verdict == Verdict.DENY
    assert decision.reasons == (NO_ENGINE,)


def test_timeouts_beyond_the_nodes_limit_are_refused(
    service: Any, code: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox_service, "engine_available", lambda: True)
    decision = _admit(service, "j1", parse_spec(_spec(code, timeout_seconds=601)))
    assert decision.verdict == Verdict.DENY
    assert "exceeds this node's limit 600" in decision.reasons[0]


def test_unapproved_code_never_reaches_a_runner(service: Any, code: Path) -> None:
    def no_runner() -> Any:
        raise AssertionError("a runner was asked for")

    service._runner = no_runner
    spec = parse_spec(_spec(code))
    frame = pd.read_csv(service.test_registry.fresh("d").config.path)
    ctx = jobtypes.NodeContext("j1", spec, "n1", "d", frame, "h", 5,
                               Ed25519PrivateKey.generate(), ("n1",), {})  # fmt: skip
    with pytest.raises(SandboxError, match="is not approved for dataset 'd'"):
        service.execute(ctx)
    kinds = [e.kind for e in service.test_audit.entries_for_job("j1")]
    assert kinds == ["sandbox.refused"]


def test_forbidden_columns_never_reach_the_sandbox(service: Any, code: Path) -> None:
    params = sandbox_params.parse_params(parse_spec(_spec(code)))
    frame = pd.read_csv(service.test_registry.fresh("d").config.path)
    spec = parse_spec(_spec(code))
    key = Ed25519PrivateKey.generate()
    ctx = jobtypes.NodeContext("j1", spec, "n1", "d", frame, "h", 5, key, ("n1",), {})
    assert list(service._frame(ctx, params).columns) == ["pid", "age"]


def test_held_output_decisions_are_recorded_once(service: Any) -> None:
    state: SandboxBook = service.book
    assert service.output_decision("j1") is None
    state.hold_output("j1", ["a reason"])
    assert service.output_decision("j1") is None
    with pytest.raises(ConfigError, match="no output waiting"):
        state.decide_output("j2", True, "")
    state.decide_output("j1", False, "no")
    with pytest.raises(ConfigError, match="output rejected"):
        state.decide_output("j1", True, "")
    assert service.output_decision("j1") == ("rejected", "no")
    kinds = [e.kind for e in service.test_audit.entries_for_job("j1")]
    assert kinds == ["sandbox.output_rejected"]


def test_stderr_never_reaches_the_analyst() -> None:
    exc = SandboxError("exited with code 1; last lines of stderr:\nP00001,53,F")
    assert public_reason(exc) == "exited with code 1"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"network": True}, "unknown key 'network'"),
        ({"allow_unshare_fallback": "yes"}, "expected true or false"),
        ({"memory_mb": 10, "output_mb": 50}, "memory_mb must exceed"),
        ({"rounding": 99}, "rounding"),
        ({"sensitive_columns": "ssn"}, "list of column names"),
    ],
)
def test_bad_sandbox_settings_are_refused(raw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        SandboxSettings.from_mapping(raw)


def test_vetting_rules_follow_policy_and_config() -> None:
    settings = SandboxSettings.from_mapping(
        {"sensitive_columns": ["ssn", "absent"], "rounding": 2}
    )
    rules = settings.rules(min_cell_count=7, columns=["pid", "ssn"], id_column="pid",
                           dataset="d")  # fmt: skip
    assert (rules.min_cell_count, rules.rounding) == (7, 2)
    assert rules.sensitive_columns == ["ssn"] and rules.identifier_columns == ["pid"]
