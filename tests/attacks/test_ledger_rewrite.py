"""A malicious operator rewriting its ledger: it rebuilds the coordinator's audit
log without its jobs and re-signs it with its own (genuine) key. The nodes kept
the heads they witnessed, so the rewrite is caught offline with their exports,
offline on its own (nothing another party co-signed covers it), and online by the
next witnessing exchange, which the nodes refuse and record."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.malicious import spec

from cleanroom.audit.ledgers import verify_ledgers
from cleanroom.audit.log import AuditLog
from cleanroom.errors import AuditError
from cleanroom.keys import NodeKeys
from cleanroom.testing import InProcessFederation


def _rewrite(fed: InProcessFederation, path: Path) -> AuditLog:
    """The coordinator's log minus every job entry, signed with the real key."""
    assert fed.directory is not None
    keys = NodeKeys.load_or_create(fed.directory / "coordinator" / "coordinator.keys")
    forged = AuditLog(path, owner="coordinator", signing_key=keys.signing)
    for entry in fed.state.audit.entries():
        if entry.job_id is None:
            forged.append(entry.kind, data=entry.data)
    return forged


def test_a_rewritten_coordinator_log_is_caught(
    fed: InProcessFederation, tmp_path: Path
) -> None:
    for _ in range(2):
        view = fed.run(spec("count"))
        assert view.job.state.value == "succeeded", view.job.reason
    fed.witness()
    honest = fed.export_logs(tmp_path / "honest")
    reports = verify_ledgers(honest, ca_pem=fed.ca_pem)
    assert [r.report.owner for r in reports] == ["coordinator", "h1", "h2", "h3"]
    assert all(r.unwitnessed is None for r in reports)

    forged = _rewrite(fed, tmp_path / "forged.db")
    assert forged.size < fed.state.audit.size
    forged_export = tmp_path / "forged" / "coordinator.jsonl"
    forged_export.parent.mkdir()
    forged.export(forged_export, bundle=fed.state.bundle.to_bytes())
    with pytest.raises(AuditError):  # held to the heads the nodes witnessed
        verify_ledgers([forged_export, *honest[1:]], ca_pem=fed.ca_pem)
    with pytest.raises(AuditError, match="co-signed"):  # alone: nobody vouches
        verify_ledgers([forged_export], ca_pem=fed.ca_pem)
    report = verify_ledgers(
        [forged_export], ca_pem=fed.ca_pem, allow_unwitnessed=True
    )[0]
    assert report.unwitnessed is not None  # and the report says so

    # online: the operator swaps the forged log in; every node refuses it
    fed.state.audit = forged
    for name, agent in fed.agents.items():
        with pytest.raises(AuditError):
            agent.witness.run()
        kinds = [e.kind for e in agent.audit.entries()]
        assert "coordinator.fork" in kinds, name
