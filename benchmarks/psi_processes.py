"""Runs each PSI party in its own OS process, relayed through pipes like a coordinator.

The parent only relays (and counts bytes), with one mailbox per party like the
coordinator's relay, so a message for one party never waits behind another's;
each child builds its party from a key range, so the two parties compute at once
on the machine's two cores, exactly as two nodes would. Used by ``bench_psi``.
"""

from __future__ import annotations

import queue
import resource
import threading
import time
from dataclasses import dataclass
from multiprocessing import get_context
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from protocols.party import Inbound
from protocols.psi import ProcessRunner, PsiConfig, psi_party
from protocols.psi.group import SERIAL


def psi_items(start: int, stop: int) -> list[str]:
    """The benchmark's keys, identical for cleanroom and the peers."""
    return [f"user-{i:010d}@example.org" for i in range(start, stop)]


@dataclass(frozen=True)
class PsiRun:
    """One protocol run: wall time, each party's CPU, traffic and the result size."""

    wall_s: float
    cpu_s: float
    bytes_sent: int
    messages: int
    largest_message: int
    cardinality: int


def _child(
    conn: Connection,
    config: dict[str, Any],
    name: str,
    span: tuple[int, int],
    workers: int,
) -> None:
    keys = psi_items(*span)
    pool = ProcessRunner(workers) if workers > 1 else None
    if pool is not None:
        pool.map(len, [b"warm", b"up"])
    conn.send("ready")
    conn.recv()
    cpu0 = time.process_time()
    busy0 = _children_cpu()
    party = psi_party(PsiConfig.create(**config), name, keys, runner=pool or SERIAL)
    for m in party.start():
        conn.send((m.recipient, m.stage, m.payload))
    while not party.finished:
        sender, stage, payload = conn.recv()
        for m in party.receive(Inbound(sender, stage, payload)):
            conn.send((m.recipient, m.stage, m.payload))
    card = party.output().cardinality if party.is_receiver else -1
    cpu = time.process_time() - cpu0
    if pool is not None:
        pool.close()  # the workers' CPU time is counted once they have exited
        cpu += _children_cpu() - busy0
    conn.send(("@done", cpu, card))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_psi_processes(
    n: int,
    overlap: int,
    *,
    output: str = "intersection",
    receivers: tuple[str, ...] = ("a",),
    workers: int = 1,
) -> PsiRun:
    """PSI of n x n keys sharing ``overlap``, parties "a" and "b" in two processes.

    ``workers`` > 1 gives each party a pool of that many processes for its group
    operations (the node setting ``jobtypes.psi.workers``); CPU then counts them.
    """
    config = {
        "session_id": f"bench-{n}",
        "parties": ("a", "b"),
        "output": output,
        "receivers": receivers,
        "max_items": max(n, 1),
    }
    spans = {"a": (0, n), "b": (n - overlap, 2 * n - overlap)}
    ctx = get_context("spawn")
    conns: dict[str, Connection] = {}
    procs: list[BaseProcess] = []
    for name, span in spans.items():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(child, config, name, span, workers))
        proc.start()
        conns[name], procs = parent, [*procs, proc]
    for conn in conns.values():
        if conn.recv() != "ready":
            raise RuntimeError("a PSI party process did not start")
    inbox: queue.Queue[tuple[str, Any]] = queue.Queue()

    def pump(name: str, conn: Connection) -> None:
        while True:
            item = conn.recv()
            inbox.put((name, item))
            if item[0] == "@done":
                return

    # One sender thread per recipient: a send blocks until that party reads it (a
    # pipe holds 64 KiB), so a single forwarding loop would hold every message
    # for the other party behind a busy one, leaving that other party idle.
    outboxes: dict[str, queue.Queue[tuple[str, str, bytes] | None]] = {
        name: queue.Queue() for name in conns
    }

    def deliver(name: str, conn: Connection) -> None:
        while (item := outboxes[name].get()) is not None:
            conn.send(item)

    threads = [
        threading.Thread(target=f, args=kv, daemon=True)
        for f in (pump, deliver)
        for kv in conns.items()
    ]
    start = time.perf_counter()
    for conn in conns.values():
        conn.send("go")
    for thread in threads:
        thread.start()
    done: dict[str, tuple[float, int]] = {}
    sent = messages = largest = 0
    while len(done) < len(conns):
        sender, item = inbox.get()
        if item[0] == "@done":
            done[sender] = (item[1], item[2])
            continue
        recipient, stage, payload = item
        sent, messages, largest = (
            sent + len(payload),
            messages + 1,
            max(largest, len(payload)),
        )
        outboxes[recipient].put((sender, stage, payload))
    wall = time.perf_counter() - start
    for outbox in outboxes.values():
        outbox.put(None)
    for child_proc in procs:
        child_proc.join()
    return PsiRun(
        wall_s=wall,
        cpu_s=sum(cpu for cpu, _ in done.values()),
        bytes_sent=sent,
        messages=messages,
        largest_message=largest,
        cardinality=max(card for _, card in done.values()),
    )
