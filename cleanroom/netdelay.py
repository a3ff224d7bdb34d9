"""A fixed packet delay for one network namespace (root only), for kernels built
without ``tc netem`` (``CONFIG_NET_SCH_NETEM`` unset, as on this project's
machines): iptables sends the packets arriving in the namespace to an NFQUEUE,
and this process, bound to that queue over raw netlink, accepts each one
``delay`` after it arrived, in arrival order. Run inside the namespace::

    ip netns exec NS python -m cleanroom.netdelay --delay-ms 10 [--queue 0]

It prints ``ready`` once bound. Used by ``cleanroom.netns.Network.impair``.
Only arriving packets are held: a packet held on its way out still belongs to
the sending socket, and TCP's small-queue limit would then throttle the flow to
a trickle (netem avoids that by orphaning the packet; a queue cannot). The queue
rule is in the ``mangle`` table, so an accepted packet still meets the
namespace's own firewall (``filter``). Only metadata is copied to userspace
(never a payload); the queue fails open when full, and the rule bypasses the
queue when this process is gone.
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import struct
import threading
import time
from typing import Final

NETLINK_NETFILTER: Final = 12
SOL_NETLINK: Final = 270
NETLINK_NO_ENOBUFS: Final = 5
NLM_F_REQUEST: Final = 1
NFNL_SUBSYS_QUEUE: Final = 3
MSG_PACKET: Final = 0
MSG_CONFIG: Final = 2
MSG_VERDICT_BATCH: Final = 3
CFG_CMD: Final = 1
CFG_PARAMS: Final = 2
CFG_QUEUE_MAXLEN: Final = 3
CFG_MASK: Final = 4
CFG_FLAGS: Final = 5
CMD_BIND: Final = 1
COPY_META: Final = 1
F_FAIL_OPEN: Final = 1
F_GSO: Final = 4
PACKET_HDR: Final = 1
VERDICT_HDR: Final = 2
NF_ACCEPT: Final = 1
QUEUE_MAXLEN: Final = 16384
_NLMSG: Final = struct.Struct("=IHHII")
_NFGEN: Final = struct.Struct("=BBH")
_ATTR: Final = struct.Struct("=HH")


def _attr(kind: int, payload: bytes) -> bytes:
    raw = _ATTR.pack(_ATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _message(msg: int, queue: int, attrs: bytes, seq: int) -> bytes:
    body = _NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg
    return _NLMSG.pack(_NLMSG.size + len(body), kind, NLM_F_REQUEST, seq, 0) + body


def bind_queue(queue: int) -> socket.socket:
    """A netlink socket bound to NFQUEUE ``queue`` of this namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    sock.bind((0, 0))
    flags = struct.pack("!I", F_FAIL_OPEN | F_GSO)
    config = (
        _attr(CFG_CMD, struct.pack("!BBH", CMD_BIND, 0, 0))
        + _attr(CFG_PARAMS, struct.pack("!IB", 0, COPY_META))
        + _attr(CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN))
        + _attr(CFG_FLAGS, flags)
        + _attr(CFG_MASK, flags)
    )
    sock.send(_message(MSG_CONFIG, queue, config, 1))
    return sock


def packet_ids(data: bytes) -> list[int]:
    """The packet ids of the NFQUEUE packet messages in one netlink read."""
    ids, offset = [], 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _, _, _ = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | MSG_PACKET:
            at, end = offset + _NLMSG.size + _NFGEN.size, offset + length
            while at + _ATTR.size <= end:
                size, attr = _ATTR.unpack_from(data, at)
                if size < _ATTR.size:
                    break
                if attr & 0x7FFF == PACKET_HDR:
                    ids.append(struct.unpack_from("!I", data, at + _ATTR.size)[0])
                at += size + (-size % 4)
        offset += length + (-length % 4)
    return ids


def run(queue: int, delay: float) -> None:
    """Accept every packet of ``queue`` ``delay`` seconds after it arrived."""
    sock = bind_queue(queue)
    pending: collections.deque[tuple[float, int]] = collections.deque()
    ready = threading.Condition()

    def release() -> None:
        seq = 2
        while True:
            with ready:
                while not pending:
                    ready.wait()
                due, last = pending[0]
                wait = due - time.monotonic()
                if wait > 0:
                    ready.wait(wait)
                    continue
                now = time.monotonic()
                while pending and pending[0][0] <= now:
                    _, last = pending.popleft()
            # One batch verdict accepts every packet up to ``last``, in order.
            verdict = _attr(VERDICT_HDR, struct.pack("!II", NF_ACCEPT, last))
            sock.send(_message(MSG_VERDICT_BATCH, queue, verdict, seq))
            seq += 1

    threading.Thread(target=release, daemon=True, name="netdelay").start()
    print("ready", flush=True)
    while True:
        ids = packet_ids(sock.recv(1 << 20))
        if ids:
            due = time.monotonic() + delay
            with ready:
                pending.extend((due, i) for i in ids)
                ready.notify()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--queue", type=int, default=0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("netdelay needs root")
    if not 0 <= args.delay_ms <= 10_000:
        raise SystemExit("--delay-ms must be within 0..10000")
    run(args.queue, args.delay_ms / 1000)


if __name__ == "__main__":
    main()
