"""The losses the guest seals to the analyst after every epoch: the analyst's real
party shows them as progress, takes them from the guest only and in order, and
refuses a release whose signed curve is not what it was shown. The real node
parties run in one process (2048-bit keys, ``allow_legacy_2048``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cleanroom import jobtypes
from cleanroom.demo.vertical import BANK, TELECOM, split, train_spec
from cleanroom.errors import ProtocolError
from cleanroom.jobspec import parse_spec
from cleanroom.jobtypes.base import AnalystContext
from cleanroom.jobtypes.vertical import codec
from cleanroom.jobtypes.vertical.training import PROGRESS, REPORT
from protocols.party import ANALYST, COORDINATOR, AnalystParty, Inbound, Outbound
from tests.cleanroom.vertical_driver import node_parties, run

LEGACY = {"allow_legacy_2048": True}
EPOCHS = 3


@pytest.fixture(scope="module")
def transcript(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, list[Inbound], dict[str, Any], dict[str, bytes]]:
    """A whole 3-epoch run: the spec, what reached the analyst, the release (the
    nodes' commitments) and the nodes' public signing keys."""
    data = split()
    spec = train_spec(data, key_bits=2048, epochs=EPOCHS).replace(
        "patience: 3", f"patience: {EPOCHS}"
    )
    frames = {BANK: data.bank, TELECOM: data.telecom}
    parties = node_parties(
        spec, frames, {BANK: LEGACY, TELECOM: LEGACY}, tmp_path_factory.mktemp("p")
    )
    to_analyst: list[Inbound] = []
    commitments: dict[str, str] = {}

    def watch(sender: str, out: Outbound) -> None:
        if out.recipient == ANALYST:
            to_analyst.append(Inbound(sender, out.stage, out.payload))
        elif out.recipient == COORDINATOR and out.stage == REPORT + "/commitment":
            commitments[sender] = out.payload.decode()

    run(parties, observe=watch)
    keys = {
        node: p._ctx.signing_key.public_key().public_bytes(  # type: ignore[attr-defined]
            Encoding.Raw, PublicFormat.Raw
        )
        for node, p in parties.items()
    }
    return spec, to_analyst, {"commitments": commitments}, keys


def _analyst(spec_yaml: str, keys: dict[str, bytes]) -> AnalystParty:
    spec = parse_spec(spec_yaml)
    ctx = AnalystContext(
        job_id="job-" + "ab" * 12,
        spec=spec,
        analyst="analyst",
        parties=spec.nodes,
        signing_key=Ed25519PrivateKey.generate(),
        peer_signing_keys=keys,
    )
    return jobtypes.get(spec.type).analyst_party(ctx)


def test_the_analyst_is_shown_every_epochs_losses_then_the_same_curve(
    transcript,
) -> None:
    spec, messages, release, keys = transcript
    notes = [m for m in messages if m.stage == PROGRESS]
    assert len(notes) == EPOCHS and {m.sender for m in notes} == {BANK}
    analyst = _analyst(spec, keys)
    shown = []
    for message in messages:
        analyst.receive(message)
        if message.stage == PROGRESS:
            shown.append(analyst.progress().describe())
    assert shown[0].startswith(f"stage {PROGRESS}, epoch 1 of at most {EPOCHS}: ")
    assert "training loss" in shown[-1] and "validation loss" in shown[-1]
    reading = analyst.finalize(release)
    curve = reading["training_curve"]
    assert len(curve) == EPOCHS
    assert f"validation loss {curve[-1]['validation_loss']:.4f}" in shown[-1]


def _repacked(message: Inbound, epoch: int, losses: list[float]) -> Inbound:
    body = codec.pack({"e": epoch}, codec.floats(np.array(losses)))
    return Inbound(message.sender, message.stage, body)


def test_losses_from_a_host_or_out_of_order_or_not_finite_are_refused(
    transcript,
) -> None:
    spec, messages, _, keys = transcript
    note = next(m for m in messages if m.stage == PROGRESS)
    with pytest.raises(ProtocolError, match="may not report losses"):
        _analyst(spec, keys).receive(Inbound(TELECOM, note.stage, note.payload))
    with pytest.raises(ProtocolError, match="expected 0"):
        _analyst(spec, keys).receive(_repacked(note, 1, [0.5, 0.5]))
    with pytest.raises(ProtocolError, match="finite"):
        _analyst(spec, keys).receive(_repacked(note, 0, [float("nan"), 0.5]))
    analyst = _analyst(spec, keys)
    for epoch in range(EPOCHS):
        analyst.receive(_repacked(note, epoch, [0.5, 0.5]))
    with pytest.raises(ProtocolError, match="more epochs"):
        analyst.receive(_repacked(note, EPOCHS, [0.5, 0.5]))


def test_a_release_whose_curve_differs_from_the_losses_shown_is_refused(
    transcript,
) -> None:
    spec, messages, release, keys = transcript
    analyst = _analyst(spec, keys)
    first = True
    for message in messages:
        if message.stage == PROGRESS and first:
            first = False
            message = _repacked(message, 0, [0.1, 0.1])
        analyst.receive(message)
    with pytest.raises(ProtocolError, match="not the losses the guest sent"):
        analyst.finalize(release)
