"""The packet delayer's netlink messages: what it sends is what the kernel's
NFQUEUE expects, and it reads every packet id out of a read of several messages
(``cleanroom.netdelay``; the delay itself is exercised as root by
``tests/integration/test_netns_federation.py``)."""

from __future__ import annotations

import socket
import struct

from cleanroom import netdelay


def _packet(packet_id: int, seq: int) -> bytes:
    """An NFQUEUE packet message as the kernel sends it: the packet header
    attribute, then others (here a 6-byte one, to exercise the padding)."""
    attrs = netdelay._attr(
        netdelay.PACKET_HDR, struct.pack("!IHB", packet_id, 0x0800, 3)
    ) + netdelay._attr(9, b"abcdef")
    kind = netdelay.NFNL_SUBSYS_QUEUE << 8 | netdelay.MSG_PACKET
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, 0) + body


def test_packet_ids_reads_every_message_of_one_read() -> None:
    error = struct.pack("=IHHII", 36, 2, 0, 1, 0) + bytes(20)  # an ack: no packet
    data = _packet(7, 1) + error + _packet(8, 2) + _packet(2**32 - 1, 3)
    assert netdelay.packet_ids(data) == [7, 8, 2**32 - 1]


def test_packet_ids_stops_at_a_truncated_or_malformed_message() -> None:
    whole = _packet(5, 1)
    assert netdelay.packet_ids(whole[:10]) == []
    zero_length = struct.pack("=IHHII", 0, 0x0300, 0, 0, 0) + whole
    assert netdelay.packet_ids(zero_length) == []


def test_a_batch_verdict_names_the_queue_and_the_last_packet() -> None:
    verdict = netdelay._attr(
        netdelay.VERDICT_HDR, struct.pack("!II", netdelay.NF_ACCEPT, 42)
    )
    raw = netdelay._message(netdelay.MSG_VERDICT_BATCH, 3, verdict, 9)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", raw)
    assert (length, kind, flags, seq) == (len(raw), 0x0303, 1, 9)
    assert struct.unpack_from("!H", raw, 18)[0] == 3  # res_id: the queue
    assert struct.unpack_from("!II", raw, 24) == (netdelay.NF_ACCEPT, 42)
    assert len(raw) % 4 == 0
