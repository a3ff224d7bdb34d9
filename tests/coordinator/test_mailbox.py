"""Mailboxes: durable in the store, acknowledged by seq, and a waiting long poll
sees work queued after another job ends."""

import threading
import time

from cleanroom import wire
from coordinator.mailbox import Mailboxes
from coordinator.presence import Presence
from coordinator.store import MemoryStore


def _message(job_id: str) -> wire.ProtocolMessage:
    return wire.ProtocolMessage(job_id, "a", "n1", "s", b"x")


def test_waiting_pull_sees_work_after_a_job_is_discarded() -> None:
    boxes = Mailboxes(MemoryStore())
    boxes.put("n1", _message("old"))
    (first,) = boxes.take("n1", ack=0, wait=0.1)
    got: list[wire.WorkItem] = []
    waiter = threading.Thread(
        target=lambda: got.extend(boxes.take("n1", ack=first.seq, wait=5.0))
    )
    waiter.start()
    time.sleep(0.1)
    boxes.discard_job("old")
    started = time.monotonic()
    boxes.put("n1", wire.StopJob("new", "failed", ""))
    waiter.join(6)
    assert [i.work.job_id for i in got] == ["new"]
    assert time.monotonic() - started < 2.0


def test_items_stay_until_acknowledged() -> None:
    store = MemoryStore()
    boxes = Mailboxes(store)
    boxes.put_many([("n1", _message("a")), ("n1", _message("b"))])
    once = boxes.take("n1", ack=0, wait=0.0)
    again = boxes.take("n1", ack=0, wait=0.0)  # the first batch was lost
    assert [i.work for i in once] == [i.work for i in again]
    assert once[0].seq < once[1].seq
    rest = boxes.take("n1", ack=once[0].seq, wait=0.0)
    assert [i.work.job_id for i in rest] == ["b"]
    assert store.mail_count("n1") == 1


def test_discard_keeps_other_jobs_and_stop_notices() -> None:
    boxes = Mailboxes(MemoryStore())
    boxes.put("n1", _message("a"))
    boxes.put("n1", _message("b"))
    boxes.put("n1", wire.StopJob("a", "failed", "why"))
    boxes.discard_job("a")
    items = boxes.take("n1", ack=0, wait=0.1)
    assert [type(i.work).__name__ for i in items] == ["ProtocolMessage", "StopJob"]
    assert items[0].work.job_id == "b"


def test_presence_times_out_without_contact() -> None:
    now = [100.0]
    presence = Presence(5.0, clock=lambda: now[0])
    assert not presence.connected("n1")
    presence.pull_started("n1")
    now[0] += 60
    assert presence.connected("n1")  # a pending long poll means connected
    presence.pull_ended("n1")
    now[0] += 4
    assert presence.connected("n1")
    now[0] += 2
    assert not presence.connected("n1")
