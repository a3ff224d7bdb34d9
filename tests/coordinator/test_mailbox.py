"""Mailboxes: a waiting long poll must see work queued after another job ends."""

import threading
import time

from coordinator.mailbox import Mailboxes, Presence
from proto import cleanroom_pb2 as pb


def test_waiting_pull_sees_work_after_a_job_is_discarded() -> None:
    boxes = Mailboxes()
    boxes.put("n1", pb.WorkItem(message=pb.ProtocolMessage(job_id="old")))
    assert len(boxes.take("n1", 0.1)) == 1
    got: list[pb.WorkItem] = []
    waiter = threading.Thread(target=lambda: got.extend(boxes.take("n1", 5.0)))
    waiter.start()
    time.sleep(0.1)
    boxes.discard_job("old")
    started = time.monotonic()
    boxes.put("n1", pb.WorkItem(stop=pb.StopJob(job_id="new")))
    waiter.join(6)
    assert [i.stop.job_id for i in got] == ["new"]
    assert time.monotonic() - started < 2.0


def test_discard_keeps_other_jobs_and_stop_notices() -> None:
    boxes = Mailboxes()
    boxes.put("n1", pb.WorkItem(message=pb.ProtocolMessage(job_id="a")))
    boxes.put("n1", pb.WorkItem(message=pb.ProtocolMessage(job_id="b")))
    boxes.put("n1", pb.WorkItem(stop=pb.StopJob(job_id="a")))
    boxes.discard_job("a")
    items = boxes.take("n1", 0.1)
    assert [i.WhichOneof("kind") for i in items] == ["message", "stop"]
    assert items[0].message.job_id == "b"


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
