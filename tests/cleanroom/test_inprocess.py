"""The whole job lifecycle in one process (the transport seam): the real coordinator
state, handlers and runners, real node agents and a real analyst client, joined by
in-memory links. Fast enough to exercise approvals, quotas, deadlines and restarts."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cleanroom import errors, testing, wire
from cleanroom.local import default_policy
from cleanroom.testing import InProcessFederation, MemoryCoordinatorLink, wait_until
from node.state import JobStatus
from protocols.party import COORDINATOR

NODES = ("h1", "h2", "h3")


def _frames(
    sizes: tuple[int, ...] = (40, 55, 70), seed: int = 5
) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    return {
        f"h{i}": pd.DataFrame(
            {
                "pid": [f"h{i}-{k}" for k in range(n)],
                "age": rng.integers(18, 90, n),
                "bmi": rng.normal(26, 4, n).round(2),
                "income": rng.uniform(12_345, 98_765, n).round(3),
            }
        )
        for i, n in enumerate(sizes, start=1)
    }


def _spec(job_type: str, nodes: tuple[str, ...] = NODES, **extra: object) -> str:
    doc = {
        "type": job_type,
        "inputs": [{"node": n, "dataset": n} for n in nodes],
        "purpose": "research",
        **extra,
    }
    return json.dumps(doc)


STATS = {
    "columns": ["age", "bmi"],
    "stats": ["count", "sum", "mean"],
    "clip": {"age": [0, 120], "bmi": [10, 70]},
}


def test_count_and_secure_stats_lifecycle_in_process() -> None:
    frames = _frames()
    with InProcessFederation(frames) as fed:
        started = time.perf_counter()
        view = fed.run(_spec("count"))
        count_s = time.perf_counter() - started
        assert view.job.state.value == "succeeded", view.job.reason
        result = fed.client.result(view.job.job_id)["result"]
        assert result["total"] == sum(len(f) for f in frames.values())
        started = time.perf_counter()
        view = fed.run(_spec("secure_stats", params=STATS))
        stats_s = time.perf_counter() - started
        assert view.job.state.value == "succeeded", view.job.reason
        result = fed.client.result(view.job.job_id)["result"]
        pooled = pd.concat(frames.values())
        (cell,) = result["groups"].values()
        assert cell["count"] == len(pooled)
        assert cell["mean"]["age"] == pytest.approx(pooled.age.mean(), rel=1e-9)
        assert result["survivors"] == list(NODES)
        progress = fed.client.status(view.job.job_id)
        assert progress.job.state.terminal
    print(f"\nin process: count {count_s:.3f}s, secure_stats {stats_s:.3f}s")


def test_a_held_job_runs_once_the_holder_approves() -> None:
    policy = default_policy("analyst")
    policy["default"]["approval"] = "manual"
    with InProcessFederation(_frames(), policy=policy) as fed:
        job = fed.client.submit(_spec("count")).job.job_id
        agents = fed.agents.values()
        wait_until(
            lambda: (
                all(a.state.get(job).status == JobStatus.PENDING for a in agents)
                if all(_has(a, job) for a in agents)
                else False
            )
        )
        assert fed.client.status(job).job.state.value == "awaiting_approval"
        for agent in agents:
            agent.state.holder_decide(job, True, "looks fine")
        final = fed.client.wait(job, timeout=20, poll=0.01)
        assert final.job.state.value == "succeeded", final.job.reason
        events = [e.kind for e in fed.client.events(job)]
        assert events.count("node.approved") == len(NODES)


def test_a_holder_deciding_the_moment_a_held_job_is_recorded_is_not_overwritten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The holder may approve as soon as a held job is visible in the node's
    state; the node's own handling of the request must not then put it back to
    pending (it did: the held status was written again after the job was
    recorded, and the job waited for an approval already given)."""
    from node.state import NodeState

    policy = default_policy("analyst")
    policy["default"]["approval"] = "manual"
    original = NodeState.record
    decided: list[object] = []

    def record_then_decide(self: NodeState, job: Any) -> None:
        original(self, job)
        if job.status == JobStatus.PENDING:
            decided.append(self)
            self.holder_decide(job.job_id, True, "at once")

    monkeypatch.setattr(NodeState, "record", record_then_decide)
    with InProcessFederation(_frames(), policy=policy) as fed:
        job = fed.client.submit(_spec("count")).job.job_id
        wait_until(lambda: fed.client.status(job).job.state.terminal, timeout=20)
        assert fed.client.status(job).job.state.value == "succeeded"
    assert len(decided) == len(NODES)


def test_a_node_reconnecting_before_it_has_seen_a_start_is_not_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node whose connection broke after the coordinator queued a job's start
    for it, but before the node pulled it, reconnects naming no running job: it
    has not lost the job (the start is still queued) and must not be dropped as
    if it had restarted (it was: secure_stats then failed below its threshold)."""
    control = {"mode": "pass"}
    real_pull = MemoryCoordinatorLink.pull

    def pull(self: MemoryCoordinatorLink, req: wire.PullRequest) -> wire.WorkBatch:
        if self._node.name == "h1" and control["mode"] == "break":
            control["mode"] = "pass"
            raise errors.TransportError("the connection broke")
        batch = real_pull(self, req)
        held = self._node.name == "h1" and control["mode"] != "pass"
        if held and any(isinstance(i.work, wire.StartJob) for i in batch.items):
            time.sleep(0.02)
            return wire.WorkBatch()  # not delivered: pulled again, unacknowledged
        return batch

    monkeypatch.setattr(MemoryCoordinatorLink, "pull", pull)
    frames = _frames()
    with InProcessFederation(frames) as fed:
        control["mode"] = "hold"
        job = fed.client.submit(_spec("secure_stats", params=STATS)).job.job_id
        wait_until(lambda: fed.client.status(job).job.state.value == "running")
        control["mode"] = "break"
        wait_until(lambda: control["mode"] == "pass")
        view = fed.client.wait(job, timeout=30, poll=0.01)
        assert view.job.state.value == "succeeded", view.job.reason
        (cell,) = fed.client.result(job)["result"]["groups"].values()
        assert cell["count"] == sum(len(f) for f in frames.values())


def _has(agent: object, job: str) -> bool:
    try:
        agent.state.get(job)  # type: ignore[attr-defined]
        return True
    except Exception:
        return False


def test_a_quota_refuses_the_job_and_holds_nothing() -> None:
    policy = default_policy("analyst")
    policy["default"]["quotas"] = {"jobs": {"per_day": 1}}
    with InProcessFederation(_frames(), policy=policy) as fed:
        assert fed.run(_spec("count")).job.state.value == "succeeded"
        second = fed.run(_spec("count"))
        assert second.job.state.value == "refused"
        assert "quota 'jobs' per day" in second.job.reason
        for agent in fed.agents.values():
            assert sum(r.reserved_total for r in agent.meters.usage()) == 0


def test_a_replayed_signed_request_is_refused(tmp_path: Path) -> None:
    from cleanroom import wire
    from cleanroom.errors import AuthError
    from cleanroom.requests import sign_request

    with InProcessFederation(_frames()) as fed:
        spec = _spec("count")
        client = fed.client
        signed = sign_request(
            spec, analyst="analyst", signing_key=client._keys.signing, now=time.time()
        )
        submission = wire.Submission(spec, signed, client._bundle.to_bytes())
        first = client._link.submit(submission)
        with pytest.raises(AuthError, match="submitted before"):
            client._link.submit(submission)
        assert client.wait(first.job.job_id, timeout=20, poll=0.01).job.state.value == (
            "succeeded"
        )


def test_sealed_values_reach_only_the_analyst(test_job_types: tuple[str, ...]) -> None:
    frames = _frames()
    with InProcessFederation(frames, plugins=test_job_types) as fed:
        view = fed.run(_spec("sealed_value", params={"column": "income"}))
        assert view.job.state.value == "succeeded", view.job.reason
        assert view.analyst_party
        document = fed.client.result(view.job.job_id)
        values = document["result"]["values"]
        for node, frame in frames.items():
            assert values[node] == pytest.approx(float(frame.income.sum()))
        assert document["result"]["delivered_to_analyst"] == list(NODES)
        raw = fed.client.result_bytes(view.job.job_id)
        for value in values.values():
            assert repr(value).encode() not in raw  # the stored result has none


def test_a_stalled_node_is_dropped_at_the_deadline_and_rounds_go_on(
    test_job_types: tuple[str, ...],
) -> None:
    frames = _frames((30, 30, 30, 30, 30))
    nodes = tuple(frames)
    params = {
        "rounds": 4,
        "column": "age",
        "length": 6,
        "stall": {"node": "h4", "round": 1},
    }
    with InProcessFederation(frames, plugins=test_job_types) as fed:
        view = fed.run(
            _spec("rounds_sum", nodes, params=params, deadline_seconds=0.5),
            timeout=30,
        )
        assert view.job.state.value == "succeeded", view.job.reason
        result = fed.client.result(view.job.job_id)["result"]["rounds"]
        assert [r["round"] for r in result] == [0, 1, 2, 3]
        assert result[0]["survivors"] == list(nodes)
        for r in result[1:]:
            assert "h4" not in r["survivors"]
            expected = _round_sum(frames, r["survivors"], r["round"], 6)
            assert r["sum"] == expected
        kinds = {e.kind: e.detail for e in fed.client.events(view.job.job_id)}
        assert "missed the 0.5s deadline" in kinds["node.dropped"]
        assert "round 2 of 4" in kinds["node.dropped"]


def _round_sum(
    frames: dict[str, pd.DataFrame], nodes: list[str], round_: int, length: int
) -> list[int]:
    total = [0] * length
    for node in nodes:
        base = int(frames[node].age.astype(float).sum()) + 1000 * round_
        total = [t + base + i for i, t in enumerate(total)]
    return [t % 2**64 for t in total]


def _round_of(progress: str) -> int:
    """The round a "round N of M, ..." progress line names (-1 before any); a
    fast round can slip between two polls, so tests wait for "at least"."""
    words = progress.split()
    if len(words) >= 2 and words[0] == "round" and words[1].isdigit():
        return int(words[1])
    return -1


def test_a_coordinator_restart_resumes_a_multi_round_job(
    test_job_types: tuple[str, ...], tmp_path: Path
) -> None:
    frames = _frames((30, 30, 30, 30))
    nodes = tuple(frames)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with InProcessFederation(frames, plugins=test_job_types, store_url=url) as fed:
        job = fed.client.submit(
            _spec(
                "rounds_sum", nodes, params={"rounds": 30, "column": "age", "length": 4}
            )
        ).job.job_id
        wait_until(lambda: _round_of(fed.client.status(job).job.progress) >= 3)
        fed.kill_coordinator()
        time.sleep(0.3)
        fed.start_coordinator()
        final = fed.client.wait(job, timeout=60, poll=0.01)
        assert final.job.state.value == "succeeded", final.job.reason
        rounds = fed.client.result(job)["result"]["rounds"]
        assert len(rounds) == 30
        for r in rounds:
            assert r["survivors"] == list(nodes)
            assert r["sum"] == _round_sum(frames, list(nodes), r["round"], 4)
        assert "job.resumed" in [e.kind for e in fed.client.events(job)]


def test_a_job_type_that_cannot_resume_ends_with_a_clear_reason(
    test_job_types: tuple[str, ...], tmp_path: Path
) -> None:
    frames = _frames((30, 30, 30))
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with InProcessFederation(frames, plugins=test_job_types, store_url=url) as fed:
        params = {"rounds": 200, "column": "age", "length": 4}
        job = fed.client.submit(_spec("rounds_sum_fragile", params=params)).job.job_id
        wait_until(lambda: _round_of(fed.client.status(job).job.progress) >= 2)
        fed.kill_coordinator()
        fed.start_coordinator()
        final = fed.client.wait(job, timeout=20, poll=0.01)
        assert final.job.state.value == "failed"
        assert "cannot resume" in final.job.reason


def test_pushes_stored_before_a_restart_but_not_yet_processed_are_not_lost(
    test_job_types: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push is acknowledged once it is in the job's inbox; if the coordinator
    dies before its runner journals it, the resumed runner must still hear it."""
    from coordinator.mailbox import inbox
    from coordinator.runner import JobRunner

    frames = _frames((30, 30, 30))
    nodes = tuple(frames)
    url = f"sqlite:///{tmp_path / 'c.db'}"
    with InProcessFederation(frames, plugins=test_job_types, store_url=url) as fed:
        params = {"rounds": 8, "column": "age", "length": 4}
        job = fed.client.submit(_spec("rounds_sum", nodes, params=params)).job.job_id
        wait_until(lambda: _round_of(fed.client.status(job).job.progress) >= 2)
        monkeypatch.setattr(JobRunner, "deliver", lambda self, *a: None)
        wait_until(lambda: fed.state.mailboxes.pending(inbox(job)) >= 1)
        fed.kill_coordinator()
        monkeypatch.undo()
        fed.start_coordinator()
        final = fed.client.wait(job, timeout=60, poll=0.01)
        assert final.job.state.value == "succeeded", final.job.reason
        rounds = fed.client.result(job)["result"]["rounds"]
        assert [r["round"] for r in rounds] == list(range(8))
        for r in rounds:
            assert r["sum"] == _round_sum(frames, list(nodes), r["round"], 4)


class _AckLosingLink(MemoryCoordinatorLink):
    """Delivers every envelope meant for another party, then reports the call
    broken once, as a cut link that lost the acknowledgement would: the node
    pushes the same bytes again and the coordinator relays both copies."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.duplicated = 0

    def push(self, msg: wire.ProtocolMessage) -> None:
        super().push(msg)
        if msg.recipient != COORDINATOR and not getattr(self, "_again", False):
            self.duplicated += 1
            self._again = True
            raise errors.TransportError("acknowledgement lost")
        self._again = False


def test_envelopes_resent_after_lost_acknowledgements_leave_the_exact_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    links: list[_AckLosingLink] = []

    def factory(*args: Any, **kwargs: Any) -> _AckLosingLink:
        links.append(_AckLosingLink(*args, **kwargs))
        return links[-1]

    monkeypatch.setattr(testing, "MemoryCoordinatorLink", factory)
    frames = _frames()
    with InProcessFederation(frames) as fed:
        view = fed.run(_spec("secure_stats", params=STATS))
        assert view.job.state.value == "succeeded", view.job.reason
        result = fed.client.result(view.job.job_id)["result"]
    assert sum(link.duplicated for link in links) > 0
    pooled = pd.concat(frames.values())
    (cell,) = result["groups"].values()
    assert cell["count"] == len(pooled)
    assert cell["mean"]["age"] == pytest.approx(pooled.age.mean(), rel=1e-9)


def test_only_row_order_free_job_types_see_the_rows_in_bucket_order(
    monkeypatch: pytest.MonkeyPatch, test_job_types: tuple[str, ...]
) -> None:
    """A node keeps a differencing dataset in its record's bucket order; count and
    secure_stats (row-order free) read that order, a job type that is not
    (``rounds_sum``) the file's, row for row, and all give the exact answers."""
    from cleanroom import jobtypes

    seen: dict[str, list[list[str]]] = {
        "count": [],
        "secure_stats": [],
        "rounds_sum": [],
    }
    for name in seen:
        job = type(jobtypes.get(name))
        original = job.node_party

        def spy(
            self: Any, ctx: Any, _original: Any = original, _name: str = name
        ) -> Any:
            seen[_name].append(list(ctx.data["pid"]))
            return _original(self, ctx)

        monkeypatch.setattr(job, "node_party", spy)
    frames = _frames()
    pooled = pd.concat(frames.values())
    with InProcessFederation(frames, id_column="pid", plugins=test_job_types) as fed:
        for agent in fed.agents.values():
            dataset = agent.datasets.fresh(agent.config.name)
            assert dataset.arranged
            assert list(dataset.frame["pid"]) == list(frames[agent.config.name]["pid"])
        view = fed.run(_spec("count"))
        assert view.job.state.value == "succeeded", view.job.reason
        result = fed.client.result(view.job.job_id)["result"]
        assert result["total"] == len(pooled)
        view = fed.run(_spec("secure_stats", params=STATS))
        assert view.job.state.value == "succeeded", view.job.reason
        (cell,) = fed.client.result(view.job.job_id)["result"]["groups"].values()
        assert cell["count"] == len(pooled)
        assert cell["mean"]["age"] == pytest.approx(pooled.age.mean(), rel=1e-9)
        params = {"rounds": 1, "column": "age", "length": 4}
        view = fed.run(_spec("rounds_sum", params=params))
        assert view.job.state.value == "succeeded", view.job.reason
    files = sorted(list(f["pid"]) for f in frames.values())
    assert sorted(seen["rounds_sum"]) == files  # file order, row for row
    for name in ("count", "secure_stats"):
        assert len(seen[name]) == 3
        for kept in seen[name]:
            original = next(f for f in files if set(f) == set(kept))
            assert kept != original  # the same rows, in the record's order


def test_witnessing_covers_a_stop_notice_a_node_records_late(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A node records a finished job's end ("job.ended") when the stop notice
    # reaches it, after the coordinator already reports the job succeeded. The
    # federation's witnessing must wait for that, or the entry is covered by no
    # co-signed head and the ledgers fail offline verification (a CI flake).
    from cleanroom.audit.ledgers import verify_ledgers
    from node.agent import NodeAgent

    handle = NodeAgent._on_stop

    def slow_stop(self: NodeAgent, stop: wire.StopJob) -> None:
        time.sleep(0.3)
        handle(self, stop)

    monkeypatch.setattr(NodeAgent, "_on_stop", slow_stop)
    with InProcessFederation(_frames()) as fed:
        view = fed.run(_spec("count"))
        assert view.job.state.value == "succeeded", view.job.reason
        fed.witness()
        for agent in fed.agents.values():
            assert [e.kind for e in agent.audit.entries()][-1] == "job.ended"
        reports = verify_ledgers(fed.export_logs(tmp_path), ca_pem=fed.ca_pem)
        assert all(r.unwitnessed is None for r in reports)
