"""Tests for sealed and signed envelopes and the replay guard."""

from __future__ import annotations

import random
import struct
import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.envelope import (
    EnvelopeHeader,
    ReplayGuard,
    open_envelope,
    seal,
    sign_message,
    verify_message,
)
from cleanroom.errors import EnvelopeError, ProtocolError
from cleanroom.keys import NodeKeys

# Generated once for the module: every test and hypothesis example shares them.
A, B, M = NodeKeys.generate(), NodeKeys.generate(), NodeKeys.generate()
DIRECTORY = {"node-a": A.signing_public, "node-b": B.signing_public}
DIRECTORY["node-m"] = M.signing_public
HEADER = EnvelopeHeader("job-1", "node-a", "node-b", "secagg/shares", 7)


def seal_ab(payload: bytes, header: EnvelopeHeader = HEADER) -> bytes:
    return seal(
        header,
        payload,
        sender_signing=A.signing,
        recipient_exchange_public=B.exchange_public,
    )


def open_b(data: bytes) -> tuple[EnvelopeHeader, bytes]:
    return open_envelope(
        data,
        recipient="node-b",
        recipient_exchange=B.exchange,
        sender_signing_public=DIRECTORY.__getitem__,
    )


def verify_coord(data: bytes) -> tuple[EnvelopeHeader, bytes]:
    return verify_message(data, signing_public=A.signing_public, recipient="@coord")


def _flip_positions(length: int, samples: int) -> list[int]:
    if length <= samples:
        return list(range(length))
    rng = random.Random(length)
    edges = [*range(64), *range(length - 96, length)]
    return sorted({*edges, *rng.sample(range(length), samples)})


def _assert_every_flip_rejected(
    data: bytes, opener: Callable[[bytes], object], samples: int
) -> None:
    for pos in _flip_positions(len(data), samples):
        for mask in (0x01, 0x80):
            tampered = bytearray(data)
            tampered[pos] ^= mask
            with pytest.raises(EnvelopeError):
                opener(bytes(tampered))


def test_round_trip() -> None:
    header, payload = open_b(seal_ab(b"masked vector"))
    assert header == HEADER
    assert payload == b"masked vector"


def test_round_trip_empty_and_5mb_payloads() -> None:
    assert open_b(seal_ab(b""))[1] == b""
    big = random.Random(1).randbytes(1024) * 5 * 1024
    assert len(big) == 5 * 1024 * 1024
    data = seal_ab(big)
    assert big[:4096] not in data  # the relay sees ciphertext only
    assert open_b(data)[1] == big


def test_sealed_payload_is_confidential_and_randomised() -> None:
    first, second = seal_ab(b"secret-share"), seal_ab(b"secret-share")
    assert b"secret-share" not in first
    assert first != second


def test_injected_randomness_makes_sealing_exact() -> None:
    def fixed(n: int) -> bytes:
        return b"\x42" * n

    def make() -> bytes:
        return seal(
            HEADER,
            b"x",
            sender_signing=A.signing,
            recipient_exchange_public=B.exchange_public,
            random=fixed,
        )

    assert make() == make()
    assert open_b(make())[1] == b"x"


def test_every_single_byte_flip_is_rejected_small() -> None:
    _assert_every_flip_rejected(seal_ab(b"payload"), open_b, samples=10_000)


def test_every_single_byte_flip_is_rejected_sampled() -> None:
    data = seal_ab(bytes(range(256)) * 64)
    _assert_every_flip_rejected(data, open_b, samples=400)


def test_truncation_and_extension_are_rejected() -> None:
    data = seal_ab(b"payload")
    for cut in range(len(data)):
        with pytest.raises(EnvelopeError):
            open_b(data[:cut])
    with pytest.raises(EnvelopeError):
        open_b(data + b"\x00")


def test_wrong_recipient_is_rejected() -> None:
    data = seal_ab(b"p")
    with pytest.raises(EnvelopeError):
        open_envelope(
            data,
            recipient="node-m",
            recipient_exchange=M.exchange,
            sender_signing_public=DIRECTORY.__getitem__,
        )
    # Right name, wrong private key (e.g. a stale or substituted exchange key).
    with pytest.raises(EnvelopeError):
        open_envelope(
            data,
            recipient="node-b",
            recipient_exchange=M.exchange,
            sender_signing_public=DIRECTORY.__getitem__,
        )


def test_wrong_or_unknown_sender_key_is_rejected() -> None:
    data = seal_ab(b"p")
    for lookup in (M.signing_public, {"node-b": A.signing_public}.__getitem__):
        with pytest.raises(EnvelopeError):
            open_envelope(
                data,
                recipient="node-b",
                recipient_exchange=B.exchange,
                sender_signing_public=lookup,
            )


def test_resigning_as_another_sender_is_rejected() -> None:
    # M takes A's envelope, claims to be its sender, and signs it itself: the
    # signature verifies under M's key, but the header is bound to the AEAD.
    data = seal_ab(b"p")
    body = data[:-64].replace(b"\x00\x06node-a", b"\x00\x06node-m", 1)
    assert body != data[:-64]
    label = b"cleanroom/envelope/v1/signature\x00"
    forged = body + M.signing.sign(label + body)
    with pytest.raises(EnvelopeError):
        open_b(forged)


def test_sealed_and_signed_kinds_are_not_interchangeable() -> None:
    sealed = seal_ab(b"p")
    signed = sign_message(HEADER, b"p", signing=A.signing)
    with pytest.raises(EnvelopeError):
        open_b(signed)
    with pytest.raises(EnvelopeError):
        verify_message(sealed, signing_public=A.signing_public, recipient="node-b")


def test_envelope_errors_say_nothing_specific() -> None:
    data = bytearray(seal_ab(b"p"))
    data[-1] ^= 1
    with pytest.raises(EnvelopeError) as info:
        open_b(bytes(data))
    assert str(info.value) == "envelope rejected"
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    "header",
    [
        EnvelopeHeader("", "node-a", "node-b", "s", 0),
        EnvelopeHeader("j", "node-a", "", "s", 0),
        EnvelopeHeader("j", "node-a", "node-b", "s", -1),
        EnvelopeHeader("j", "node-a", "node-b", "s", True),
        EnvelopeHeader("j", "node-a", "node-b", "s", 2**63),
        EnvelopeHeader("j", "node-a", "node-b", "x" * 256, 0),
        EnvelopeHeader("j\n", "node-a", "node-b", "s", 0),
        EnvelopeHeader("j", "node-a", "node-b", 5, 0),  # type: ignore[arg-type]
    ],
)
def test_invalid_headers_are_refused_before_any_crypto(header: EnvelopeHeader) -> None:
    def no_random(n: int) -> bytes:
        raise AssertionError("randomness drawn before validation")

    with pytest.raises(ProtocolError):
        seal(
            header,
            b"p",
            sender_signing=A.signing,
            recipient_exchange_public=B.exchange_public,
            random=no_random,
        )
    with pytest.raises(ProtocolError):
        sign_message(header, b"p", signing=A.signing)


@pytest.mark.parametrize("public", [b"", b"\x01" * 31, b"\x01" * 33, "k" * 32])
def test_bad_recipient_keys_and_payloads_are_refused(public: bytes) -> None:
    with pytest.raises(ProtocolError):
        seal(HEADER, b"p", sender_signing=A.signing, recipient_exchange_public=public)
    with pytest.raises(ProtocolError):
        seal(
            HEADER,
            "text",  # type: ignore[arg-type]
            sender_signing=A.signing,
            recipient_exchange_public=B.exchange_public,
        )


def test_low_order_recipient_key_is_refused() -> None:
    with pytest.raises(ProtocolError):
        seal(
            HEADER,
            b"p",
            sender_signing=A.signing,
            recipient_exchange_public=b"\x00" * 32,
        )


# --- signed-only messages ---------------------------------------------------

COORD_HEADER = EnvelopeHeader("job-1", "node-a", "@coord", "result", 1)


def test_signed_message_round_trip_and_tamper_detection() -> None:
    data = sign_message(COORD_HEADER, b'{"ok":true}', signing=A.signing)
    assert verify_coord(data) == (COORD_HEADER, b'{"ok":true}')
    _assert_every_flip_rejected(data, verify_coord, samples=10_000)
    with pytest.raises(EnvelopeError):
        verify_message(data, signing_public=A.signing_public, recipient="node-b")
    with pytest.raises(EnvelopeError):
        verify_message(data, signing_public=M.signing_public, recipient="@coord")
    via_lookup = verify_message(
        data, signing_public=DIRECTORY.__getitem__, recipient="@coord"
    )
    assert via_lookup[1] == b'{"ok":true}'


def test_validly_signed_but_malformed_frames_are_rejected() -> None:
    # The sender's own key signs each frame, so only the parser can refuse them.
    label = b"cleanroom/envelope/v1/signature\x00"
    good = sign_message(COORD_HEADER, b"abc", signing=A.signing)[:-64]
    prefix_len = 8 + struct.unpack_from(">H", good, 6)[0]
    head = good[:prefix_len]
    bodies = [
        head + struct.pack(">I", 4) + b"abc",  # length says more than is there
        head + struct.pack(">I", 2) + b"abc",  # trailing bytes
        head + b"\x00\x00",  # truncated length
        good[:6] + struct.pack(">H", prefix_len - 9) + good[8:],  # header length
        good[:4] + b"\x02" + good[5:],  # unknown version
        b"CREW" + good[4:],  # wrong magic
    ]
    for body in bodies:
        with pytest.raises(EnvelopeError):
            verify_coord(body + A.signing.sign(label + body))


# --- replay guard -----------------------------------------------------------


def _h(seq: int, job: str = "job-1", sender: str = "node-a") -> EnvelopeHeader:
    return EnvelopeHeader(job, sender, "node-b", "stage", seq)


def test_replay_guard_refuses_replays_and_reordering() -> None:
    guard = ReplayGuard()
    guard.check(_h(1))
    with pytest.raises(EnvelopeError):
        guard.check(_h(1))  # replay
    guard.check(_h(3))
    with pytest.raises(EnvelopeError):
        guard.check(_h(2))  # reordered
    guard.check(_h(1, sender="node-m"))  # another channel
    guard.check(_h(1, job="job-2"))  # another job
    guard.forget("job-1")
    guard.check(_h(1))


def test_replay_guard_is_thread_safe() -> None:
    guard = ReplayGuard()
    accepted: list[int] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        for seq in range(200):
            try:
                guard.check(_h(seq))
                accepted.append(seq)
            except EnvelopeError:
                pass

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == len(set(accepted))


def test_replay_guard_with_open_envelope() -> None:
    guard = ReplayGuard()
    data = seal_ab(b"p")
    guard.check(open_b(data)[0])
    with pytest.raises(EnvelopeError):
        guard.check(open_b(data)[0])


# --- property ---------------------------------------------------------------

_field = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Z")),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(
    job=_field,
    stage=_field,
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    payload=st.binary(max_size=2048),
)
def test_seal_open_round_trip_property(
    job: str, stage: str, seq: int, payload: bytes
) -> None:
    header = EnvelopeHeader(job, "node-a", "node-b", stage, seq)
    assert open_b(seal_ab(payload, header)) == (header, payload)
    signed = sign_message(header, payload, signing=A.signing)
    assert verify_message(
        signed, signing_public=A.signing_public, recipient="node-b"
    ) == (header, payload)
