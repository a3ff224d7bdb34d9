"""SecAgg+ under attack: replays, reordering, tampering and a malicious coordinator."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from helpers.secagg import Rewrite, TamperingCoordinator, TamperingNode

from cleanroom.errors import ProtocolAbort, ProtocolError
from protocols.party import COORDINATOR, Inbound, Outbound, Party
from protocols.secagg import (
    ADVERTISE_KEYS,
    MASKED_INPUT,
    SHARE_KEYS,
    UNMASK,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
)
from protocols.secagg.messages import (
    ForwardedShares,
    KeyAdvertisement,
    KeySet,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
)
from protocols.secagg.simulate import drive
from protocols.shamir import Share

MakeSession = Callable[..., tuple[SecAggConfig, dict[str, np.ndarray]]]
BuildParties = Callable[..., tuple[SecAggServer, dict[str, SecAggClient]]]


@pytest.fixture
def five(
    make_session: MakeSession, build_parties: BuildParties
) -> tuple[SecAggConfig, SecAggServer, dict[str, SecAggClient]]:
    cfg, inputs = make_session(5, threshold=3)
    server, clients = build_parties(cfg, inputs)
    return cfg, server, clients


Five = tuple[SecAggConfig, SecAggServer, dict[str, SecAggClient]]


def run_with_coordinator(five: Five, rewrite: Rewrite) -> None:
    _, server, clients = five
    drive(TamperingCoordinator(server, rewrite), clients)


def run_with_node(five: Five, name: str, rewrite: Rewrite) -> None:
    _, server, clients = five
    nodes: dict[str, Party] = dict(clients)
    nodes[name] = TamperingNode(clients[name], rewrite)
    drive(server, nodes)


def to(recipient: str, stage: str, edit: Callable[[bytes], list[bytes]]) -> Rewrite:
    """Rewrite only ``recipient``'s message of ``stage``; pass everything else."""

    def rewrite(o: Outbound) -> list[Outbound]:
        if o.recipient != recipient or o.stage != stage:
            return [o]
        return [dataclasses.replace(o, payload=p) for p in edit(o.payload)]

    return rewrite


def at(stage: str, edit: Callable[[Outbound], list[Outbound]]) -> Rewrite:
    return lambda o: edit(o) if o.stage == stage else [o]


# ---- malicious coordinator: each attack is refused by the honest clients ----------


def test_a_substituted_advertised_key_is_refused(five: Five) -> None:
    cfg = five[0]
    fresh = X25519PrivateKey.generate().public_key().public_bytes_raw()

    def edit(payload: bytes) -> list[bytes]:
        adverts = [
            dataclasses.replace(a, c_pk=fresh) if a.party == "p01" else a
            for a in KeySet.decode(payload, cfg.digest).adverts
        ]
        return [KeySet(tuple(adverts)).encode(cfg.digest)]

    with pytest.raises(ProtocolError, match="advertised for 'p01' are not signed"):
        run_with_coordinator(five, to("p00", SHARE_KEYS, edit))


def test_a_substituted_own_key_is_refused(five: Five) -> None:
    cfg = five[0]

    def edit(payload: bytes) -> list[bytes]:
        adverts = KeySet.decode(payload, cfg.digest).adverts
        swapped = [
            dataclasses.replace(a, s_pk=adverts[1].s_pk) if a.party == "p00" else a
            for a in adverts
        ]
        return [KeySet(tuple(swapped)).encode(cfg.digest)]

    with pytest.raises(ProtocolError, match="own keys"):
        run_with_coordinator(five, to("p00", SHARE_KEYS, edit))


def test_b_a_repeated_public_key_is_refused(five: Five) -> None:
    cfg = five[0]

    def edit(payload: bytes) -> list[bytes]:
        adverts = KeySet.decode(payload, cfg.digest).adverts
        copied = adverts[1].s_pk
        repeated = [
            dataclasses.replace(a, s_pk=copied) if a.party == "p02" else a
            for a in adverts
        ]
        return [KeySet(tuple(repeated)).encode(cfg.digest)]

    with pytest.raises(ProtocolError, match="public key appears more than once"):
        run_with_coordinator(five, to("p00", SHARE_KEYS, edit))


def test_b_a_repeated_party_is_refused(five: Five) -> None:
    cfg = five[0]

    def edit(payload: bytes) -> list[bytes]:
        adverts = KeySet.decode(payload, cfg.digest).adverts
        return [KeySet((*adverts, adverts[1])).encode(cfg.digest)]

    with pytest.raises(ProtocolError, match="more than once in the key set"):
        run_with_coordinator(five, to("p00", SHARE_KEYS, edit))


def test_too_small_key_set_is_refused(five: Five) -> None:
    cfg = five[0]

    def edit(payload: bytes) -> list[bytes]:
        adverts = KeySet.decode(payload, cfg.digest).adverts
        return [KeySet(tuple(a for a in adverts if a.party < "p02")).encode(cfg.digest)]

    with pytest.raises(ProtocolAbort, match="key set has 2 parties; threshold is 3"):
        run_with_coordinator(five, to("p00", SHARE_KEYS, edit))


def edit_unmask(cfg: SecAggConfig, change: Callable[[set[str], set[str]], None]):
    def edit(payload: bytes) -> list[bytes]:
        request = UnmaskRequest.decode(payload, cfg.digest)
        survivors, dropped = set(request.survivors), set(request.dropped)
        change(survivors, dropped)
        return [UnmaskRequest(tuple(survivors), tuple(dropped)).encode(cfg.digest)]

    return edit


def test_c_a_party_both_dropped_and_surviving_is_refused(five: Five) -> None:
    edit = edit_unmask(five[0], lambda s, d: d.add("p03"))
    with pytest.raises(ProtocolError, match=r"\['p03'\] as both dropped and surviving"):
        run_with_coordinator(five, to("p00", UNMASK, edit))


def test_d_too_few_survivors_is_refused(five: Five) -> None:
    def change(survivors: set[str], dropped: set[str]) -> None:
        dropped.update(survivors - {"p00", "p01"})
        survivors.intersection_update({"p00", "p01"})

    edit = edit_unmask(five[0], change)
    with pytest.raises(ProtocolAbort, match=r"only 2 survivors .* threshold is 3"):
        run_with_coordinator(five, to("p00", UNMASK, edit))


def test_e_asking_again_for_the_other_secret_is_refused(five: Five) -> None:
    cfg, _, clients = five
    answers: list[Outbound] = []

    def change(survivors: set[str], dropped: set[str]) -> None:
        survivors.discard("p03")
        dropped.add("p03")

    def ask_twice(payload: bytes) -> list[bytes]:
        return [payload, *edit_unmask(cfg, change)(payload)]

    original_receive = clients["p00"].receive

    def recording_receive(message: Inbound) -> list[Outbound]:
        out = original_receive(message)
        answers.extend(o for o in out if o.stage == UNMASK)
        return out

    clients["p00"].receive = recording_receive  # type: ignore[method-assign]
    with pytest.raises(ProtocolError, match="p00 is finished; refusing"):
        run_with_coordinator(five, to("p00", UNMASK, ask_twice))
    assert len(answers) == 1
    response = UnmaskResponse.decode(answers[0].payload, cfg.digest)
    assert "p03" in dict(response.self_mask_shares)
    assert "p03" not in dict(response.mask_key_shares)


def test_being_reported_dropped_after_sending_is_refused(five: Five) -> None:
    def change(survivors: set[str], dropped: set[str]) -> None:
        survivors.discard("p00")
        dropped.add("p00")

    with pytest.raises(
        ProtocolError, match="p00 sent its masked input but is reported"
    ):
        run_with_coordinator(five, to("p00", UNMASK, edit_unmask(five[0], change)))


def test_unknown_or_missing_parties_in_unmask_request_are_refused(five: Five) -> None:
    edit = edit_unmask(five[0], lambda s, d: d.discard("p04") or s.discard("p04"))
    with pytest.raises(ProtocolError, match=r"does not account for \['p04'\]"):
        run_with_coordinator(five, to("p00", UNMASK, edit))


def test_altered_ciphertext_is_refused(five: Five) -> None:
    cfg = five[0]

    def edit(payload: bytes) -> list[bytes]:
        entries = list(ForwardedShares.decode(payload, cfg.digest).by_sender)
        sender, ct = entries[0]
        entries[0] = (sender, ct[:10] + bytes([ct[10] ^ 1]) + ct[11:])
        return [ForwardedShares(tuple(entries)).encode(cfg.digest)]

    with pytest.raises(ProtocolError, match="from 'p01' failed authentication"):
        run_with_coordinator(five, to("p00", MASKED_INPUT, edit))


def test_misattributed_ciphertext_is_refused(five: Five) -> None:
    cfg = five[0]

    def edit(payload: bytes) -> list[bytes]:
        entries = ForwardedShares.decode(payload, cfg.digest).by_sender
        (a, ct_a), (b, ct_b) = entries[0], entries[1]
        swapped = ((a, ct_b), (b, ct_a), *entries[2:])
        return [ForwardedShares(swapped).encode(cfg.digest)]

    with pytest.raises(ProtocolError, match="failed authentication"):
        run_with_coordinator(five, to("p00", MASKED_INPUT, edit))


def test_client_fails_closed_after_a_refusal(five: Five) -> None:
    flip_last_byte = to("p00", MASKED_INPUT, lambda p: [p[:-1] + bytes([p[-1] ^ 1])])
    with pytest.raises(ProtocolError, match="failed authentication"):
        run_with_coordinator(five, flip_last_byte)
    with pytest.raises(ProtocolAbort, match="already refused"):
        five[2]["p00"].receive(Inbound(COORDINATOR, MASKED_INPUT, b""))


# ---- replayed, reordered and misdirected messages ---------------------------------


def test_replayed_node_message_is_refused_by_the_server(five: Five) -> None:
    with pytest.raises(
        ProtocolError, match="'p01' already sent its secagg/masked-input"
    ):
        run_with_node(five, "p01", at(MASKED_INPUT, lambda o: [o, o]))


def test_replayed_coordinator_message_is_refused_by_the_client(five: Five) -> None:
    with pytest.raises(ProtocolError, match="expected a secagg/masked-input message"):
        run_with_coordinator(five, to("p00", SHARE_KEYS, lambda p: [p, p]))


def test_out_of_order_message_is_refused_by_the_server(five: Five) -> None:
    adverts: list[Outbound] = []

    def resend_advert_later(o: Outbound) -> list[Outbound]:
        if o.stage == ADVERTISE_KEYS:
            adverts.append(o)
            return [o]
        return [o, *adverts] if o.stage == SHARE_KEYS else [o]

    with pytest.raises(ProtocolError, match="expected secagg/share-keys messages, got"):
        run_with_node(five, "p01", resend_advert_later)


def test_payload_of_another_stage_is_refused(five: Five) -> None:
    adverts: list[bytes] = []

    def relabel(o: Outbound) -> list[Outbound]:
        if o.stage == ADVERTISE_KEYS:
            adverts.append(o.payload)
        if o.stage == SHARE_KEYS:
            return [dataclasses.replace(o, payload=adverts[0])]
        return [o]

    with pytest.raises(ProtocolError, match="not a secagg/share-keys message"):
        run_with_node(five, "p01", relabel)


def test_reflected_payload_is_refused(five: Five) -> None:
    clients = five[2]
    out = clients["p00"].start()
    with pytest.raises(ProtocolError, match="in this direction"):
        clients["p00"].receive(Inbound(COORDINATOR, SHARE_KEYS, out[0].payload))


def test_payload_from_another_session_is_refused(
    five: Five, make_session: MakeSession, build_parties: BuildParties
) -> None:
    other_cfg, other_inputs = make_session(5, threshold=3, seed=99)
    _, other_clients = build_parties(other_cfg, other_inputs)
    foreign = other_clients["p01"].start()[0].payload
    with pytest.raises(ProtocolError, match="another session"):
        run_with_node(
            five,
            "p01",
            at(ADVERTISE_KEYS, lambda o: [dataclasses.replace(o, payload=foreign)]),
        )


def test_message_from_a_declared_dropout_is_refused(five: Five) -> None:
    _, server, clients = five
    server.start()
    advert = clients["p01"].start()[0]
    server.dropped(frozenset({"p01"}))
    with pytest.raises(ProtocolError, match="declared dropped"):
        server.receive(Inbound("p01", advert.stage, advert.payload))


def test_messages_from_strangers_are_refused(five: Five) -> None:
    _, server, clients = five
    server.start()
    with pytest.raises(ProtocolError, match="not a party"):
        server.receive(Inbound("mallory", ADVERTISE_KEYS, b""))
    clients["p00"].start()
    with pytest.raises(
        ProtocolError, match="only accepts messages from the coordinator"
    ):
        clients["p00"].receive(Inbound("p01", SHARE_KEYS, b""))


# ---- malformed or dishonest node messages, refused by the coordinator -------------


def test_wrong_length_masked_vector_is_refused(five: Five) -> None:
    cfg = five[0]

    def truncate(o: Outbound) -> list[Outbound]:
        vector = MaskedInput.decode(o.payload, cfg.digest, length=16, dtype=cfg.dtype)
        short = MaskedInput(vector.vector[:-1]).encode(cfg.digest)
        return [dataclasses.replace(o, payload=short)]

    with pytest.raises(ProtocolError, match="15 x 8-byte elements; expected 16 x 8"):
        run_with_node(five, "p02", at(MASKED_INPUT, truncate))


def test_wrong_width_masked_vector_is_refused(five: Five) -> None:
    cfg = five[0]
    narrow = MaskedInput(np.zeros(16, dtype=np.uint32)).encode(cfg.digest)
    with pytest.raises(ProtocolError, match="16 x 4-byte elements"):
        run_with_node(
            five,
            "p02",
            at(MASKED_INPUT, lambda o: [dataclasses.replace(o, payload=narrow)]),
        )


def test_advert_signed_by_the_wrong_key_is_refused(five: Five) -> None:
    cfg = five[0]
    forger = Ed25519PrivateKey.generate()

    def resign(o: Outbound) -> list[Outbound]:
        a = KeyAdvertisement.decode(o.payload, cfg.digest)
        signed = KeyAdvertisement.signed_bytes(cfg.digest, a.party, a.c_pk, a.s_pk)
        forged = dataclasses.replace(a, signature=forger.sign(signed))
        return [dataclasses.replace(o, payload=forged.encode(cfg.digest))]

    with pytest.raises(ProtocolError, match="not signed by it"):
        run_with_node(five, "p03", at(ADVERTISE_KEYS, resign))


def test_advert_in_another_name_is_refused(five: Five) -> None:
    cfg = five[0]

    def rename(o: Outbound) -> list[Outbound]:
        a = dataclasses.replace(
            KeyAdvertisement.decode(o.payload, cfg.digest), party="p04"
        )
        return [dataclasses.replace(o, payload=a.encode(cfg.digest))]

    with pytest.raises(ProtocolError, match="in the name of 'p04'"):
        run_with_node(five, "p03", at(ADVERTISE_KEYS, rename))


def _advert_reusing(five: Five, party: str, pick: Callable[[Any], bytes]) -> bytes:
    """``party``'s own signed advertisement whose s_pk is ``pick(own advert)``."""
    cfg, _, clients = five
    client = clients[party]
    key = client._signing_key  # the node's own identity key: a valid signature
    own = KeyAdvertisement.decode(client.start()[0].payload, cfg.digest)
    s_pk = pick(own)
    signed = KeyAdvertisement.signed_bytes(cfg.digest, party, own.c_pk, s_pk)
    advert = KeyAdvertisement(party, own.c_pk, s_pk, key.sign(signed))
    return advert.encode(cfg.digest)


@pytest.mark.parametrize("reuse", ["another party's key", "its own key twice"])
def test_the_coordinator_refuses_a_reused_public_key(five: Five, reuse: str) -> None:
    cfg, server, clients = five
    server.start()
    first = clients["p00"].start()[0]
    server.receive(Inbound("p00", ADVERTISE_KEYS, first.payload))
    taken = KeyAdvertisement.decode(first.payload, cfg.digest).s_pk
    payload = _advert_reusing(
        five,
        "p01",
        (lambda own: taken) if reuse == "another party's key" else lambda own: own.c_pk,
    )
    with pytest.raises(ProtocolError, match="public key already in use"):
        server.receive(Inbound("p01", ADVERTISE_KEYS, payload))


def test_unmask_share_at_the_wrong_point_is_refused(five: Five) -> None:
    cfg = five[0]

    def shift(o: Outbound) -> list[Outbound]:
        r = UnmaskResponse.decode(o.payload, cfg.digest)
        (owner, s), *rest = r.self_mask_shares
        moved = Share(s.index % 5 + 1, s.threshold, s.value)
        bad = UnmaskResponse(((owner, moved), *rest), r.mask_key_shares)
        return [dataclasses.replace(o, payload=bad.encode(cfg.digest))]

    with pytest.raises(ProtocolError, match="at a wrong point"):
        run_with_node(five, "p01", at(UNMASK, shift))


def test_corrupted_mask_key_share_is_detected(
    make_session: MakeSession, build_parties: BuildParties
) -> None:
    cfg, inputs = make_session(5, threshold=3)
    server, clients = build_parties(cfg, inputs)

    def corrupt(o: Outbound) -> list[Outbound]:
        r = UnmaskResponse.decode(o.payload, cfg.digest)
        (owner, s), *rest = r.mask_key_shares
        bad_share = Share(s.index, s.threshold, s.value ^ 1)
        bad = UnmaskResponse(r.self_mask_shares, ((owner, bad_share), *rest))
        return [dataclasses.replace(o, payload=bad.encode(cfg.digest))]

    nodes: dict[str, Party] = dict(clients)
    nodes["p00"] = TamperingNode(clients["p00"], at(UNMASK, corrupt))
    with pytest.raises(ProtocolError, match="'p04'"):
        drive(server, nodes, drop_at={"p04": MASKED_INPUT})


# ---- local input validation --------------------------------------------------------


@pytest.mark.parametrize(
    "vector",
    [
        np.zeros(15, dtype=np.uint64),
        np.zeros(17, dtype=np.uint64),
        np.zeros((4, 4), dtype=np.uint64),
        np.zeros(16, dtype=np.int64),
        np.zeros(16, dtype=np.float64),
    ],
)
def test_client_refuses_a_bad_input_vector(
    make_session: MakeSession, build_parties: BuildParties, vector: np.ndarray
) -> None:
    cfg, inputs = make_session(5, threshold=3)
    inputs["p00"] = vector
    with pytest.raises(ProtocolError):
        build_parties(cfg, inputs)


def test_client_refuses_values_beyond_the_ring(
    make_session: MakeSession, build_parties: BuildParties
) -> None:
    cfg, inputs = make_session(5, bits=32, threshold=3)
    inputs["p00"] = np.full(16, 2**32, dtype=np.uint64)
    with pytest.raises(ProtocolError, match="exceed the 32-bit ring"):
        build_parties(cfg, inputs)
    inputs["p00"] = np.full(16, 7, dtype=np.uint8)  # narrower unsigned is fine
    build_parties(cfg, inputs)
