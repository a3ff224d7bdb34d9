"""A malicious operator forging what it releases: changed values, a changed survivor
set, dropped signatures, altered sealed attachments, and the dropout-differencing
attack (claiming a node dropped after it sent its masked input). Real node agents
and analyst; the coordinator's party runs inside ``helpers.malicious.Tampering``."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import pytest
from helpers.malicious import STATS, Tampering, frames, policy, spec

from cleanroom.errors import CleanroomError, CryptoError
from cleanroom.provenance import serialize_result, verify_result_bytes
from cleanroom.testing import InProcessFederation
from coordinator.handlers import analysts
from protocols.party import Inbound

Tamper = Callable[..., None]


def _failed(fed: InProcessFederation, spec_yaml: str) -> str:
    view = fed.run(spec_yaml, timeout=60)
    assert view.job.state.value == "failed", view.job.reason
    with pytest.raises(CleanroomError):
        fed.client.result_bytes(view.job.job_id)
    return view.job.reason


def test_nodes_refuse_to_sign_a_changed_count(
    fed: InProcessFederation, tamper: Tamper
) -> None:
    def release(result: Mapping[str, Any]) -> Mapping[str, Any]:
        commitments = dict(result["commitments"])
        commitments["h1"] = "00" * 32  # another count's commitment
        return {**result, "commitments": commitments}

    tamper("count", release=release)
    reason = _failed(fed, spec("count"))
    assert "refused to sign" in reason, reason


@pytest.mark.parametrize(
    "field,value",
    [
        ("survivors", ["h1", "h2"]),  # claim h3 was not in the sum
        ("passing", []),  # claim every cell was suppressed
        ("min_group_size", 1),
    ],
)
def test_nodes_refuse_to_sign_a_changed_statistics_release(
    fed: InProcessFederation, tamper: Tamper, field: str, value: Any
) -> None:
    tamper("secure_stats", release=lambda r: {**r, field: value})
    reason = _failed(fed, spec("secure_stats", STATS))
    assert "refused to sign" in reason, reason


def test_a_result_missing_a_signature_does_not_verify(
    fed: InProcessFederation,
) -> None:
    view = fed.run(spec("count"))
    raw = fed.client.result_bytes(view.job.job_id)
    document = json.loads(raw)
    document["provenance"]["attestations"] = [
        a for a in document["provenance"]["attestations"] if a["node"] != "h3"
    ]
    stripped = serialize_result(document)
    with pytest.raises(CryptoError, match="h3"):
        verify_result_bytes(stripped, fed.ca_pem)
    partial = verify_result_bytes(stripped, fed.ca_pem, allow_partial=True)
    assert "h3" in str(partial)
    assert verify_result_bytes(raw, fed.ca_pem)  # the honest one verifies


def test_an_altered_sealed_sum_is_detected_by_the_analyst(
    fed: InProcessFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    view = fed.run(spec("secure_stats", STATS))
    job = view.job.job_id
    honest = fed.client.result(job)["result"]["groups"]["all"]
    assert honest["count"] == sum(len(f) for f in frames().values())
    genuine = analysts.result

    def altered(*args: Any) -> tuple[bytes, dict[str, bytes]]:
        document, files = genuine(*args)
        changed = {}
        for name, data in files.items():
            flipped = bytearray(data)
            flipped[len(flipped) // 2] ^= 0x01
            changed[name] = bytes(flipped)
        return document, changed

    monkeypatch.setattr(analysts, "result", altered)
    with pytest.raises(CleanroomError):
        fed.client.result(job)


FIVE = ("h1", "h2", "h3", "h4", "h5")


def _five() -> dict[str, Any]:
    more = frames(seed=9)
    return {**frames(), "h4": more["h1"], "h5": more["h2"]}


def _spec5(**extra: Any) -> str:
    doc = json.loads(spec("secure_stats", STATS, **extra))
    doc["inputs"] = [{"node": n, "dataset": n} for n in FIVE]
    return json.dumps(doc)


def _swallow_h3_values(party: Tampering, message: Inbound) -> Inbound | None:
    """Hear h3's masked inputs, then pretend they never came (in the values round
    alone, nodes refuse at once: the inputs changed between the rounds)."""
    if message.sender == "h3" and "/secagg/masked" in message.stage:
        return None
    return message


def _tampered(fed: InProcessFederation) -> str:
    from cleanroom import jobtypes

    job = jobtypes.get("secure_stats")
    honest = job.coordinator_party
    try:
        job.coordinator_party = lambda ctx: Tampering(  # type: ignore[method-assign]
            honest(ctx), hear=_swallow_h3_values
        )
        return _failed(fed, _spec5(deadline_seconds=1))
    finally:
        del job.coordinator_party  # type: ignore[method-assign]


def test_a_dropout_claimed_only_in_the_values_round_is_refused() -> None:
    def values_only(party: Tampering, message: Inbound) -> Inbound | None:
        if message.sender == "h3" and message.stage.startswith("values/secagg/mask"):
            return None
        return message

    from cleanroom import jobtypes

    with InProcessFederation(_five(), id_column="pid", policy=policy(min_inputs=4)) as fed:
        job = jobtypes.get("secure_stats")
        honest = job.coordinator_party
        try:
            job.coordinator_party = lambda ctx: Tampering(  # type: ignore[method-assign]
                honest(ctx), hear=values_only
            )
            reason = _failed(fed, _spec5(deadline_seconds=1))
        finally:
            del job.coordinator_party  # type: ignore[method-assign]
    assert "inputs changed between the counts and the values round" in reason


def test_a_claimed_dropout_after_the_masked_input_is_refused() -> None:
    """Five inputs, SecAgg+ threshold below five: the cryptography would let the
    operator unmask the other four, but every holder aggregates with no fewer
    than all inputs by default, so no node reveals what unmasking needs."""
    with InProcessFederation(_five(), id_column="pid") as fed:
        reason = _tampered(fed)
    assert "no fewer than 5" in reason, reason


def test_dropout_differencing_against_a_full_run_is_refused() -> None:
    """Holders that accept four inputs still refuse to release the same query over
    a different survivor set: the difference of the two would be h3's values."""
    with InProcessFederation(
        _five(), id_column="pid", policy=policy(min_inputs=4)
    ) as fed:
        full = fed.run(_spec5())
        assert full.job.state.value == "succeeded", full.job.reason
        reason = _tampered(fed)
        assert "released before over other inputs" in reason, reason
        for name in ("h1", "h2", "h4", "h5"):
            kinds = [e.kind for e in fed.agents[name].audit.entries()]
            assert kinds.count("job.release_signed") == 1, name


def test_split_survivor_views_reveal_no_single_input() -> None:
    """The operator tells h1 and h2 that h3 dropped (so they reveal shares of
    h3's mask key) and h4, h5 that h3 survived (shares of its self mask). With the
    threshold above half the parties, neither quorum forms: nothing is unmasked,
    nothing released."""
    from protocols.secagg.messages import UnmaskRequest, UnmaskResponse

    shares = {"key": 0, "self": 0}
    threshold: list[int] = []

    def count(party: Tampering, message: Inbound) -> Inbound | None:
        """Collect every answer (the honest server would stop at the first one
        that does not fit), keep none: the job then ends at the deadline."""
        if message.stage == "counts/secagg/unmask":
            config = party.inner._server._config  # type: ignore[attr-defined]
            threshold[:] = [config.threshold]
            answer = UnmaskResponse.decode(message.payload, config.digest)
            shares["key"] += sum(o == "h3" for o, _ in answer.mask_key_shares)
            shares["self"] += sum(o == "h3" for o, _ in answer.self_mask_shares)
            return None
        return message

    def split(party: Tampering, out: Any) -> Any:
        if not out.stage.endswith("secagg/unmask") or out.recipient not in ("h1", "h2"):
            return out
        digest = out.payload[4:36]
        request = UnmaskRequest.decode(out.payload, digest)
        lied = UnmaskRequest(
            tuple(p for p in request.survivors if p != "h3"),
            tuple(sorted({*request.dropped, "h3"})),
        )
        return replace(out, payload=lied.encode(digest))

    from cleanroom import jobtypes

    with InProcessFederation(_five(), id_column="pid", policy=policy(min_inputs=4)) as fed:
        job = jobtypes.get("secure_stats")
        honest = job.coordinator_party
        try:
            job.coordinator_party = lambda ctx: Tampering(  # type: ignore[method-assign]
                honest(ctx), say=split, hear=count
            )
            _failed(fed, _spec5(deadline_seconds=2))
        finally:
            del job.coordinator_party  # type: ignore[method-assign]
        for agent in fed.agents.values():
            kinds = [e.kind for e in agent.audit.entries()]
            assert "job.release_signed" not in kinds
    (t,) = threshold
    assert shares["key"] == 2 and shares["self"] == 3, shares
    assert shares["key"] < t and shares["self"] < t  # h3's input stays masked
