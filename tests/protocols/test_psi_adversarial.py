"""PSI under bad input: every stage refuses malformed, oversized or misplaced chunks,
and no transcript carries a raw key or a hash of one computable without a scalar."""

from __future__ import annotations

import hashlib

import pytest

from cleanroom.errors import ProtocolError
from protocols.oprf.core import hash_to_group as oprf_h1
from protocols.party import Inbound
from protocols.psi import PsiConfig, psi_party
from protocols.psi.base import HASH_DOMAIN, PsiPartyBase
from protocols.psi.group import hash_to_group
from protocols.psi.messages import BLIND, REBLIND, encode_chunks
from protocols.psi.simulate import drive

KEYS = [f"user{i}@example.org" for i in range(12)]


def pair(**kw: object) -> tuple[PsiConfig, PsiPartyBase, PsiPartyBase]:
    config = PsiConfig.create(
        session_id="adv",
        parties=["a", "b"],
        output="intersection",
        chunk_items=4,
        **kw,  # type: ignore[arg-type]
    )
    a, b = psi_party(config, "a", KEYS), psi_party(config, "b", KEYS[3:])
    return config, a, b


def test_chunks_out_of_order_or_repeated_are_refused() -> None:
    _, a, b = pair()
    a.start()
    first, second, *_ = b.start()
    with pytest.raises(ProtocolError, match="expected chunk 0, got 1"):
        a.receive(Inbound("b", BLIND, second.payload))
    a.receive(Inbound("b", BLIND, first.payload))
    with pytest.raises(ProtocolError, match="expected chunk 1, got 0"):
        a.receive(Inbound("b", BLIND, first.payload))


def test_wrong_session_stage_or_sender_refused() -> None:
    _, a, b = pair()
    a.start()
    payload = b.start()[0].payload
    _, other, _ = pair(max_items=99)
    other.start()
    with pytest.raises(ProtocolError, match="another session or config"):
        other.receive(Inbound("b", BLIND, payload))
    with pytest.raises(ProtocolError, match="another stage"):
        a.receive(Inbound("b", REBLIND, payload))
    with pytest.raises(ProtocolError, match="may not send"):
        a.receive(Inbound("mallory", BLIND, payload))
    _, a1, b1 = pair(receivers=["a"])
    b1.start()
    with pytest.raises(ProtocolError, match="does not expect psi/reblind"):
        b1.receive(Inbound("a", REBLIND, a1.start()[0].payload))


def test_oversized_set_refused_before_decoding() -> None:
    config, a, _ = pair(max_items=16)
    a.start()
    # 17 declared elements: refused on the header, before any point is parsed
    big = encode_chunks(
        BLIND, origin=1, hop=1, data=bytes(32 * 17), digest=config.digest, chunk_items=4
    )
    with pytest.raises(ProtocolError, match="exceed the cap of 16"):
        a.receive(Inbound("b", BLIND, big[0]))


def test_truncated_chunk_and_bad_points_refused() -> None:
    config, a, b = pair()
    a.start()
    good = b.start()[0].payload
    with pytest.raises(ProtocolError, match="wrong length"):
        a.receive(Inbound("b", BLIND, good[:-1]))
    _, a2, _ = pair()
    a2.start()
    bad = encode_chunks(
        BLIND,
        origin=1,
        hop=1,
        data=b"\xff" * 32 * 9,
        digest=config.digest,
        chunk_items=4,
    )
    with pytest.raises(ProtocolError, match="malformed or the identity"):
        a2.receive(Inbound("b", BLIND, bad[0]))
    _, a3, _ = pair()
    a3.start()
    identity = encode_chunks(
        BLIND, origin=1, hop=1, data=bytes(32 * 9), digest=config.digest, chunk_items=4
    )
    with pytest.raises(ProtocolError, match="malformed or the identity"):
        a3.receive(Inbound("b", BLIND, identity[0]))


def test_wrong_origin_refused() -> None:
    config, a, _ = pair()
    a.start()
    forged = encode_chunks(
        BLIND, origin=0, hop=1, data=b"", digest=config.digest, chunk_items=4
    )
    with pytest.raises(ProtocolError, match="wrong origin or hop"):
        a.receive(Inbound("b", BLIND, forged[0]))


def test_not_started_or_finished_refuses() -> None:
    _, a, b = pair()
    payload = b.start()[0].payload
    with pytest.raises(ProtocolError, match="not started"):
        a.receive(Inbound("b", BLIND, payload))
    with pytest.raises(ProtocolError, match="already started"):
        b.start()


@pytest.mark.parametrize(
    ("n", "mode"), [(2, "intersection"), (2, "aligned"), (3, "cardinality")]
)
def test_transcript_carries_no_key_and_no_recomputable_hash(n: int, mode: str) -> None:
    names = [f"p{i}" for i in range(n)]
    config = PsiConfig.create(
        session_id="tx", parties=names, output=mode, chunk_items=5
    )
    parties = {m: psi_party(config, m, KEYS[i:]) for i, m in enumerate(names)}
    blob = drive(parties).blob()
    assert len(blob) > 0
    for key in KEYS:
        raw = key.encode()
        encoded = len(raw).to_bytes(2, "big") + raw
        needles = [
            raw,
            encoded,
            hashlib.sha256(raw).digest(),
            hashlib.sha256(encoded).digest(),
        ]
        needles += [
            hashlib.sha512(raw).digest()[:16],
            oprf_h1([raw]),
            oprf_h1([encoded]),
        ]
        needles.append(hash_to_group(HASH_DOMAIN + config.digest, [encoded]))
        for needle in needles:
            assert needle not in blob
