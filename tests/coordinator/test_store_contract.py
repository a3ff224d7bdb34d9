"""The Store contract, run against every backend: memory, SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest
import sqlalchemy

from cleanroom.errors import ConfigError, NotFound, StoreError
from cleanroom.model import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    Decision,
    JobRecord,
    JobState,
    ModelEntry,
    NodeRecord,
)
from coordinator.store import MemoryStore, SqlStore, Store, open_store
from coordinator.store.sql import METADATA, schema_version_table

T = TypeVar("T")

POSTGRES = pytest.param("postgresql", marks=pytest.mark.postgres)
ALL_BACKENDS = ["memory", "sqlite", POSTGRES]
PERSISTENT_BACKENDS = ["sqlite", POSTGRES]
THREADS = 8
T0 = 1_700_000_000.123456  # needs a double to survive the round trip


def _drop_tables(url: str) -> None:
    engine = sqlalchemy.create_engine(
        url.replace("postgresql://", "postgresql+psycopg://", 1)
    )
    try:
        METADATA.drop_all(engine)
    finally:
        engine.dispose()


@pytest.fixture(params=ALL_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def store_url(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A URL naming an empty store; opening it twice gives the same data."""
    if backend == "memory":
        yield "memory://"
    elif backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'coordinator.db'}"
    else:
        url: str = request.getfixturevalue("postgres_url")
        _drop_tables(url)  # the server lives for the session; tests must not leak
        yield url
        _drop_tables(url)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    yield opened
    opened.close()


def job(
    job_id: str,
    *,
    analyst: str = "alice",
    created_at: float = T0,
    state: JobState = JobState.SUBMITTED,
) -> JobRecord:
    return JobRecord(
        job_id=job_id,
        analyst=analyst,
        job_type="secure_sum",
        spec_yaml=f"job: {job_id}\ninputs: [ünïcode]\n",
        spec_hash="sha256:" + "ab" * 32,
        state=state,
        reason="",
        progress="",
        created_at=created_at,
        updated_at=created_at,
    )


def node(name: str, *, seen: float = T0) -> NodeRecord:
    return NodeRecord(
        name=name,
        key_bundle=b"\x00key\xff" + name.encode(),
        catalog_json='{"datasets": []}',
        registered_at=T0,
        last_seen=seen,
    )


def run_together(count: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(i)`` for i in range(count) on as many threads, released at once."""
    barrier = threading.Barrier(count)

    def start(i: int) -> T:
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(start, range(count)))


# --- jobs ---------------------------------------------------------------------
def test_created_job_reads_back_identical(store: Store) -> None:
    record = job("j1")
    store.create_job(record)
    assert store.get_job("j1") == record
    assert isinstance(store.get_job("j1").state, JobState)


def test_duplicate_job_id_is_refused_and_original_kept(store: Store) -> None:
    store.create_job(job("j1", analyst="alice"))
    with pytest.raises(StoreError) as raised:
        store.create_job(job("j1", analyst="mallory"))
    assert not isinstance(raised.value, NotFound)
    assert store.get_job("j1").analyst == "alice"


def test_missing_job_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.get_job("nope")


def test_list_jobs_newest_first_filtered_and_limited(store: Store) -> None:
    for i, analyst in enumerate(["alice", "bob", "alice", "carol", "alice"]):
        store.create_job(job(f"j{i}", analyst=analyst, created_at=T0 + i))
    assert [j.job_id for j in store.list_jobs()] == ["j4", "j3", "j2", "j1", "j0"]
    assert [j.job_id for j in store.list_jobs(analyst="alice")] == ["j4", "j2", "j0"]
    assert [j.job_id for j in store.list_jobs(analyst="alice", limit=2)] == [
        "j4",
        "j2",
    ]
    assert [j.job_id for j in store.list_jobs(limit=1)] == ["j4"]
    assert store.list_jobs(limit=0) == []
    assert store.list_jobs(analyst="nobody") == []


def test_list_jobs_breaks_time_ties_by_id(store: Store) -> None:
    for job_id in ["b", "c", "a"]:
        store.create_job(job(job_id))
    assert [j.job_id for j in store.list_jobs()] == ["c", "b", "a"]
    assert [j.job_id for j in store.jobs_in_states(ACTIVE_STATES)] == ["a", "b", "c"]


def test_jobs_in_states_oldest_first(store: Store) -> None:
    store.create_job(job("new", created_at=T0 + 2))
    store.create_job(job("old", created_at=T0))
    store.create_job(job("done", created_at=T0 + 1))
    store.create_job(job("running", created_at=T0 + 3))
    store.transition("done", expected={JobState.SUBMITTED}, new=JobState.FAILED, at=T0)
    store.transition(
        "running", expected={JobState.SUBMITTED}, new=JobState.RUNNING, at=T0
    )
    assert [j.job_id for j in store.jobs_in_states({JobState.SUBMITTED})] == [
        "old",
        "new",
    ]
    active = store.jobs_in_states(ACTIVE_STATES)
    assert [j.job_id for j in active] == ["old", "new", "running"]
    assert [j.job_id for j in store.jobs_in_states(TERMINAL_STATES)] == ["done"]
    assert store.jobs_in_states([]) == []


def test_transition_moves_state_when_expected(store: Store) -> None:
    store.create_job(job("j1"))
    moved = store.transition(
        "j1",
        expected={JobState.SUBMITTED, JobState.AWAITING_APPROVAL},
        new=JobState.REFUSED,
        reason="node-a: dataset not allowed",
        at=T0 + 5,
    )
    assert moved is not None
    assert moved.state is JobState.REFUSED
    assert moved.reason == "node-a: dataset not allowed"
    assert moved.updated_at == T0 + 5
    assert moved.created_at == T0
    assert store.get_job("j1") == moved


def test_transition_returns_none_and_changes_nothing_on_mismatch(
    store: Store,
) -> None:
    store.create_job(job("j1"))
    before = store.get_job("j1")
    assert (
        store.transition(
            "j1", expected={JobState.RUNNING}, new=JobState.SUCCEEDED, at=T0 + 1
        )
        is None
    )
    assert store.transition("j1", expected=[], new=JobState.RUNNING, at=T0 + 1) is None
    assert store.get_job("j1") == before


def test_transition_of_missing_job_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.transition(
            "nope", expected={JobState.SUBMITTED}, new=JobState.RUNNING, at=T0
        )


@pytest.mark.parametrize("final", sorted(TERMINAL_STATES))
def test_terminal_state_cannot_be_left(store: Store, final: JobState) -> None:
    store.create_job(job("j1"))
    assert store.transition(
        "j1", expected=ACTIVE_STATES, new=final, reason="done", at=T0 + 1
    )
    for target in JobState:
        again = store.transition("j1", expected=ACTIVE_STATES, new=target, at=T0 + 2)
        assert again is None
    assert store.get_job("j1").state is final
    assert store.get_job("j1").reason == "done"


def test_concurrent_transitions_exactly_one_wins(store: Store) -> None:
    store.create_job(job("j1"))
    targets = [JobState.RUNNING, JobState.CANCELLED, JobState.FAILED]

    def attempt(i: int) -> JobRecord | None:
        return store.transition(
            "j1",
            expected={JobState.SUBMITTED},
            new=targets[i % len(targets)],
            reason=f"thread {i}",
            at=T0 + i,
        )

    outcomes = run_together(THREADS, attempt)
    winners = [o for o in outcomes if o is not None]
    assert len(winners) == 1
    assert store.get_job("j1") == winners[0]


def test_set_progress(store: Store) -> None:
    store.create_job(job("j1"))
    store.set_progress("j1", "round 2 of 3: collecting masked inputs", at=T0 + 7)
    stored = store.get_job("j1")
    assert stored.progress == "round 2 of 3: collecting masked inputs"
    assert stored.updated_at == T0 + 7
    assert stored.state is JobState.SUBMITTED
    with pytest.raises(NotFound):
        store.set_progress("nope", "x", at=T0)


# --- decisions, results, events -----------------------------------------------
def test_decisions_ordered_by_node_and_replaced(store: Store) -> None:
    store.create_job(job("j1"))
    store.create_job(job("j2"))
    store.record_decision(Decision("j1", "node-b", True, "ok", T0 + 1))
    store.record_decision(Decision("j1", "node-a", True, "ok", T0 + 2))
    store.record_decision(Decision("j2", "node-a", False, "other job", T0 + 3))
    later = Decision("j1", "node-b", False, "budget spent", T0 + 4)
    store.record_decision(later)
    assert store.decisions("j1") == [
        Decision("j1", "node-a", True, "ok", T0 + 2),
        later,
    ]
    assert store.decisions("j2") == [
        Decision("j2", "node-a", False, "other job", T0 + 3)
    ]


def test_decisions_of_missing_job_are_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.record_decision(Decision("nope", "node-a", True, "", T0))
    with pytest.raises(NotFound):
        store.decisions("nope")


def test_result_round_trip_and_replace(store: Store) -> None:
    store.create_job(job("j1"))
    store.create_job(job("j2"))
    with pytest.raises(NotFound):
        store.get_result("j1")
    store.put_result("j1", b"\x00\x01 first \xff")
    store.put_result("j2", b"")
    assert store.get_result("j1") == b"\x00\x01 first \xff"
    store.put_result("j1", b"second")
    assert store.get_result("j1") == b"second"
    assert store.get_result("j2") == b""


def test_result_of_missing_job_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.put_result("nope", b"x")
    with pytest.raises(NotFound):
        store.get_result("nope")


@pytest.mark.parametrize("backend", PERSISTENT_BACKENDS, indirect=True)
@pytest.mark.timeout(120)
def test_100_mb_result_round_trip(store: Store) -> None:
    size = 100 * 1024 * 1024
    blob = bytes(range(256)) * (size // 256)
    store.create_job(job("big"))
    store.put_result("big", blob)
    back = store.get_result("big")
    assert len(back) == size
    assert back == blob


def _model(job_id: str, analyst: str = "alice", at: float = T0) -> ModelEntry:
    card = '{"algorithm": "logistic", "metrics": [{"round": 1, "loss": 0.25}], "ü": 1}'
    return ModelEntry(job_id, analyst, "trainer", at, card)


def test_model_registry_round_trip_replace_and_order(store: Store) -> None:
    for i, (analyst, at) in enumerate(
        [("alice", T0), ("bob", T0 + 1), ("alice", T0 + 2), ("alice", T0 + 2)]
    ):
        store.create_job(job(f"j{i}", analyst=analyst, created_at=at))
        store.put_model(_model(f"j{i}", analyst, at))
    with pytest.raises(NotFound):
        store.get_model("nope")
    assert store.get_model("j1") == _model("j1", "bob", T0 + 1)
    assert [m.job_id for m in store.list_models()] == ["j3", "j2", "j1", "j0"]
    assert [m.job_id for m in store.list_models(analyst="alice")] == ["j3", "j2", "j0"]
    assert [m.job_id for m in store.list_models(limit=2)] == ["j3", "j2"]
    assert store.list_models(limit=0) == []
    replaced = ModelEntry("j0", "alice", "trainer", T0, '{"v": 2}')
    store.put_model(replaced)
    assert store.get_model("j0") == replaced
    assert len(store.list_models()) == 4


def test_model_of_missing_job_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.put_model(_model("nope"))
    assert store.list_models() == []


@pytest.mark.parametrize("backend", PERSISTENT_BACKENDS, indirect=True)
def test_models_survive_reopening(store_url: str) -> None:
    first = open_store(store_url)
    first.create_job(job("j1"))
    first.put_model(_model("j1"))
    first.close()
    second = open_store(store_url)
    try:
        assert second.get_model("j1") == _model("j1")
    finally:
        second.close()


def test_events_numbered_from_one_per_job(store: Store) -> None:
    store.create_job(job("j1"))
    store.create_job(job("j2"))
    first = store.append_event("j1", "submitted", "by alice", at=T0)
    store.append_event("j2", "submitted", "by bob", at=T0 + 1)
    second = store.append_event("j1", "approved", "node-a", at=T0 + 2)
    assert (first.seq, second.seq) == (1, 2)
    assert first.job_id == "j1" and first.kind == "submitted" and first.at == T0
    assert store.events("j1") == [first, second]
    assert [e.seq for e in store.events("j2")] == [1]


def test_events_of_missing_job_are_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.append_event("nope", "x", "", at=T0)
    with pytest.raises(NotFound):
        store.events("nope")


def test_concurrent_appends_get_distinct_consecutive_seqs(store: Store) -> None:
    per_thread = 25
    store.create_job(job("j1"))

    def append_many(i: int) -> list[int]:
        return [
            store.append_event("j1", "tick", f"{i}/{n}", at=T0).seq
            for n in range(per_thread)
        ]

    returned = [seq for seqs in run_together(THREADS, append_many) for seq in seqs]
    expected = list(range(1, THREADS * per_thread + 1))
    assert sorted(returned) == expected
    history = store.events("j1")
    assert [e.seq for e in history] == expected
    for i in range(THREADS):  # each thread's own events stay in its order
        mine = [e.detail for e in history if e.detail.startswith(f"{i}/")]
        assert mine == [f"{i}/{n}" for n in range(per_thread)]


# --- nodes ----------------------------------------------------------------------
def test_nodes_upsert_get_list_touch(store: Store) -> None:
    assert store.list_nodes() == []
    store.upsert_node(node("node-b"))
    store.upsert_node(node("node-a"))
    assert store.get_node("node-a") == node("node-a")
    assert [n.name for n in store.list_nodes()] == ["node-a", "node-b"]

    replaced = NodeRecord("node-b", b"new keys", '{"datasets": [1]}', T0 + 1, T0 + 1)
    store.upsert_node(replaced)
    assert store.get_node("node-b") == replaced
    assert len(store.list_nodes()) == 2

    store.touch_node("node-a", at=T0 + 60)
    assert store.get_node("node-a") == node("node-a", seen=T0 + 60)


def test_missing_node_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.get_node("nope")
    with pytest.raises(NotFound):
        store.touch_node("nope", at=T0)


# --- persistence ------------------------------------------------------------------
@pytest.mark.parametrize("backend", PERSISTENT_BACKENDS, indirect=True)
def test_everything_survives_reopen(store_url: str) -> None:
    first = open_store(store_url)
    first.create_job(job("j1"))
    first.transition(
        "j1", expected={JobState.SUBMITTED}, new=JobState.SUCCEEDED, at=T0 + 1
    )
    first.set_progress("j1", "released", at=T0 + 2)
    first.record_decision(Decision("j1", "node-a", True, "ok", T0))
    first.put_result("j1", b"result")
    first.append_event("j1", "submitted", "", at=T0)
    first.upsert_node(node("node-a"))
    snapshot = (
        first.get_job("j1"),
        first.decisions("j1"),
        first.events("j1"),
        first.list_nodes(),
    )
    first.close()

    second = open_store(store_url)
    try:
        again = (
            second.get_job("j1"),
            second.decisions("j1"),
            second.events("j1"),
            second.list_nodes(),
        )
        assert again == snapshot
        assert second.get_result("j1") == b"result"
        assert second.append_event("j1", "audited", "", at=T0).seq == 2
    finally:
        second.close()


# --- opening --------------------------------------------------------------------
def test_open_store_picks_backend_by_scheme(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    opened = open_store(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        assert isinstance(opened, SqlStore)
    finally:
        opened.close()


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "mysql://u@h/db",
        "nonsense",
        "sqlite://",
        "sqlite:///:memory:",
    ],
)
def test_unsupported_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        open_store(url)


def test_unusable_sqlite_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "a-directory.db").mkdir()
    with pytest.raises(StoreError):
        SqlStore(f"sqlite:///{tmp_path / 'a-directory.db'}")


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    SqlStore(url).close()
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.update(schema_version_table).values(version=999))
    engine.dispose()
    with pytest.raises(StoreError, match="schema version"):
        SqlStore(url)
