"""The operator cannot act as an analyst: every node checks the signed request
itself. Forged, altered, replayed and re-targeted requests, a bundle from another
CA or another analyst, a substituted bundle at the start, a filter on an
identifier column: each is refused by the nodes, none runs, none is billed."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from helpers.malicious import NODES, STATS, spec

from cleanroom import pki, wire
from cleanroom.errors import NotFound
from cleanroom.keys import NodeKeys, make_key_bundle
from cleanroom.pki import TlsIdentity
from cleanroom.requests import parse_request, sign_request
from cleanroom.testing import InProcessFederation, wait_until
from coordinator.runner import JobRunner

IDENTIFIER_GROUPS = {
    **STATS,
    "group_by": "pid",
    "groups": [f"h1-{k}" for k in range(40)],
}


def _forge(fed: InProcessFederation, request: wire.ApprovalRequest) -> None:
    """What the operator's modified code can do: queue work for every node."""
    fed.state.mailboxes.put_many([(n, request) for n in NODES])


def _refusals(fed: InProcessFederation, job_id: str) -> dict[str, str]:
    """Each node's recorded refusal of ``job_id`` (waits for all of them)."""

    def reasons() -> dict[str, str]:
        found = {}
        for name, agent in fed.agents.items():
            for entry in agent.audit.entries_for_job(job_id):
                if entry.kind == "job.refused":
                    found[name] = str(entry.data["reason"])
        return found

    wait_until(lambda: len(reasons()) == len(NODES))
    return reasons()


def _nothing_ran(fed: InProcessFederation, job_id: str) -> None:
    for agent in fed.agents.values():
        with pytest.raises(NotFound):
            agent.state.get(job_id)
        assert not any(r.reserved_total for r in agent.meters.usage())
        kinds = {e.kind for e in agent.audit.entries_for_job(job_id)}
        assert "job.started" not in kinds


def _signed(fed: InProcessFederation, spec_yaml: str) -> bytes:
    """A genuine request the analyst signed (the operator saw it in transit)."""
    client = fed.client
    return sign_request(
        spec_yaml, analyst="analyst", signing_key=client._keys.signing, now=time.time()
    )


def _approval(
    fed: InProcessFederation,
    spec_yaml: str,
    signed: bytes,
    *,
    bundle: bytes | None = None,
    job_id: str | None = None,
    analyst: str = "analyst",
) -> wire.ApprovalRequest:
    return wire.ApprovalRequest(
        job_id=job_id or parse_request(signed).job_id,
        analyst=analyst,
        organisation="lab",
        spec_yaml=spec_yaml,
        signed_request=signed,
        analyst_bundle=fed.client._bundle.to_bytes() if bundle is None else bundle,
    )


def test_the_operator_cannot_start_a_job_as_an_analyst(
    fed: InProcessFederation,
) -> None:
    forged_spec = spec("secure_stats", STATS)
    coordinator = fed.state.bundle
    own_keys = NodeKeys.generate()
    attempts: dict[str, wire.ApprovalRequest] = {
        "unsigned": wire.ApprovalRequest(
            "job-000000000000000000000001",
            "analyst",
            "lab",
            forged_spec,
            b"",
            fed.client._bundle.to_bytes(),
        ),
        "signed by the operator's key": _approval(
            fed,
            forged_spec,
            sign_request(
                forged_spec,
                analyst="analyst",
                signing_key=own_keys.signing,
                now=time.time(),
            ),
        ),
        "the coordinator's own bundle": _approval(
            fed,
            forged_spec,
            sign_request(
                forged_spec,
                analyst="coordinator",
                signing_key=own_keys.signing,
                now=time.time(),
            ),
            bundle=coordinator.to_bytes(),
            analyst="coordinator",
        ),
    }
    for what, request in attempts.items():
        _forge(fed, request)
        for node, reason in _refusals(fed, request.job_id).items():
            assert "not genuine" in reason, (what, node, reason)
        _nothing_ran(fed, request.job_id)


def test_a_genuine_request_cannot_carry_another_spec_or_job_id(
    fed: InProcessFederation,
) -> None:
    honest = spec("count")
    signed = _signed(fed, honest)
    other = spec("secure_stats", STATS)
    altered = _approval(fed, other, signed)  # the analyst asked for a count
    _forge(fed, altered)
    for reason in _refusals(fed, altered.job_id).values():
        assert "not genuine" in reason and "spec" in reason, reason
    _nothing_ran(fed, altered.job_id)
    # another job id for the same request (e.g. to grind a graph seed from it)
    ground = _approval(fed, honest, signed, job_id="job-0123456789abcdef01234567")
    _forge(fed, ground)
    for reason in _refusals(fed, ground.job_id).values():
        assert "job id does not match" in reason, reason
    _nothing_ran(fed, ground.job_id)


def test_a_replayed_request_runs_no_second_time(fed: InProcessFederation) -> None:
    view = fed.run(spec("count"))
    assert view.job.state.value == "succeeded", view.job.reason
    job_id = view.job.job_id
    original = fed.state.store.get_job(job_id)

    def jobs_billed() -> list[float]:
        return [
            sum(r.used_total for r in a.meters.usage() if r.meter == "jobs")
            for a in fed.agents.values()
        ]

    before = jobs_billed()
    _forge(
        fed,
        wire.ApprovalRequest(
            job_id,
            original.analyst,
            original.organisation,
            original.spec_yaml,
            original.signed_request,
            original.analyst_bundle,
        ),
    )
    time.sleep(0.5)  # the nodes answer with the decision they already made
    assert jobs_billed() == before
    for agent in fed.agents.values():
        kinds = [e.kind for e in agent.audit.entries_for_job(job_id)]
        assert kinds.count("job.started") == 1


def _foreign_analyst(
    directory: Path, name: str, *, ca: Path | None = None
) -> tuple[NodeKeys, bytes]:
    """Keys and a bundle for analyst ``name`` under ``ca`` (a fresh CA if None)."""
    if ca is None:
        ca = directory / "other-ca"
        pki.init_ca(ca, federation="elsewhere")
    pki.issue(ca, "analyst", name, organisation="lab")
    identity = TlsIdentity.load(ca / f"{name}.crt", ca / f"{name}.key", ca / "ca.crt")
    keys = NodeKeys.generate()
    return keys, make_key_bundle(name, keys, identity, role="analyst").to_bytes()


def test_an_analyst_certificate_from_another_ca_is_refused(
    fed: InProcessFederation, tmp_path: Path
) -> None:
    keys, bundle = _foreign_analyst(tmp_path, "analyst")
    forged_spec = spec("count")
    signed = sign_request(
        forged_spec, analyst="analyst", signing_key=keys.signing, now=time.time()
    )
    request = _approval(fed, forged_spec, signed, bundle=bundle)
    _forge(fed, request)
    for reason in _refusals(fed, request.job_id).values():
        assert "not genuine" in reason, reason
    _nothing_ran(fed, request.job_id)


def test_another_analysts_bundle_is_refused_at_request_and_at_start(
    fed: InProcessFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = fed.directory / "pki"  # type: ignore[operator]
    # the operator also holds an analyst account of this federation
    keys, mallory = _foreign_analyst(ca, "mallory", ca=ca)
    honest = spec("count")
    signed = sign_request(
        honest, analyst="mallory", signing_key=keys.signing, now=time.time()
    )
    request = _approval(fed, honest, signed, bundle=mallory)  # "analyst" claimed
    _forge(fed, request)
    for reason in _refusals(fed, request.job_id).values():
        assert "not genuine" in reason, reason
    _nothing_ran(fed, request.job_id)

    # a genuine job whose StartJob carries mallory's bundle for the analyst party
    commit = JobRunner._commit

    def substitute(runner: JobRunner, journal: Any, mail: Any, out: Any) -> None:
        swapped = [
            (box, replace(w, analyst_bundle=mallory))
            if isinstance(w, wire.StartJob)
            else (box, w)
            for box, w in mail
        ]
        commit(runner, journal, swapped, out)

    monkeypatch.setattr(JobRunner, "_commit", substitute)
    view = fed.run(spec("count"))
    assert view.job.state.value == "failed"
    assert "mallory" in view.job.reason or "analyst" in view.job.reason, view.job.reason
    for agent in fed.agents.values():
        kinds = {e.kind for e in agent.audit.entries_for_job(view.job.job_id)}
        assert "job.started" not in kinds


def test_nodes_refuse_filters_and_groups_on_the_identifier_column(
    fed: InProcessFederation,
) -> None:
    # the operator's code skips the coordinator's own check and asks the nodes
    forged_spec = spec("secure_stats", IDENTIFIER_GROUPS)
    request = _approval(fed, forged_spec, _signed(fed, forged_spec))
    _forge(fed, request)
    for reason in _refusals(fed, request.job_id).values():
        assert "identifier column" in reason, reason
    where = spec("count", {"where": [{"column": "pid", "op": "==", "value": "h1-3"}]})
    request = _approval(fed, where, _signed(fed, where))
    _forge(fed, request)
    for reason in _refusals(fed, request.job_id).values():
        assert "identifier column" in reason, reason


def test_nodes_and_coordinator_derive_one_graph_seed_from_the_signed_request(
    fed: InProcessFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SecAgg+ graph seed is a hash of the analyst's signature over a fresh
    nonce: the same on every party, different for every request, and not a
    function of anything the operator chooses."""
    from cleanroom import jobtypes
    from cleanroom.jobtypes.base import CoordinatorContext, NodeContext

    seen: dict[str, list[bytes]] = {"node": [], "coordinator": []}
    job = jobtypes.get("count")
    node_party, coordinator_party = job.node_party, job.coordinator_party

    def on_node(ctx: NodeContext) -> Any:
        seen["node"].append(ctx.graph_seed)
        return node_party(ctx)

    def on_coordinator(ctx: CoordinatorContext) -> Any:
        seen["coordinator"].append(ctx.graph_seed)
        return coordinator_party(ctx)

    monkeypatch.setattr(job, "node_party", on_node)
    monkeypatch.setattr(job, "coordinator_party", on_coordinator)
    for _ in range(2):
        assert fed.run(spec("count")).job.state.value == "succeeded"
    first, second = seen["coordinator"]
    assert len(first) == 32 and first != second
    assert sorted(seen["node"]) == sorted([first] * 3 + [second] * 3)
