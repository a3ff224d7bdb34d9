"""The vertical job types' node parties in one process: training converges like
the plaintext trainer, and bad keys, bad gradients and small overlaps are refused.
Keys are 2048-bit where a test says so (``allow_legacy_2048``); defaults are 3072."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cleanroom import jobtypes
from cleanroom.demo.vertical import BANK, LABEL, TELECOM, split, train_spec
from cleanroom.errors import ProtocolAbort, ProtocolError, SpecError
from cleanroom.jobspec import parse_spec
from cleanroom.jobtypes.vertical.alignment import BELOW_MINIMUM
from cleanroom.jobtypes.vertical.training import KEY, MASKED, GuestTrainer
from protocols.party import Outbound
from tests.cleanroom.vertical_driver import node_parties, run

LEGACY = {"allow_legacy_2048": True}


def _small(gradient: str = "ckks") -> tuple[pd.DataFrame, pd.DataFrame, str]:
    data = split()
    spec = train_spec(data, key_bits=2048, epochs=1).replace(
        "batch_size: 64", "batch_size: 128"
    )
    return data.bank, data.telecom, spec + f"\n  gradient: {gradient}"


@pytest.mark.parametrize("gradient", ["ckks", "paillier"])
def test_both_gradient_schemes_train_alike(tmp_path: Path, gradient: str) -> None:
    bank, telecom, spec = _small(gradient)
    parties = node_parties(
        spec, {BANK: bank, TELECOM: telecom}, {BANK: LEGACY, TELECOM: LEGACY}, tmp_path
    )
    run(parties)
    guest = parties[BANK]
    assert isinstance(guest, GuestTrainer)
    assert guest._encryption()["scheme"].startswith(
        "CKKS" if gradient == "ckks" else "packed Paillier"
    )
    assert guest._curve[0]["train_auc"] > 0.95


def test_training_runs_to_the_end_and_keeps_the_weights_split(tmp_path: Path) -> None:
    bank, telecom, spec = _small()
    parties = node_parties(
        spec, {BANK: bank, TELECOM: telecom}, {BANK: LEGACY, TELECOM: LEGACY}, tmp_path
    )
    run(parties)
    assert all(p.finished for p in parties.values())
    guest = parties[BANK]
    assert isinstance(guest, GuestTrainer)
    assert len(guest._curve) == 1 and guest._curve[0]["train_auc"] > 0.95


def test_a_host_refuses_a_key_below_its_minimum(tmp_path: Path) -> None:
    bank, telecom, spec = _small("paillier")
    parties = node_parties(
        spec, {BANK: bank, TELECOM: telecom}, {BANK: LEGACY, TELECOM: {}}, tmp_path
    )
    with pytest.raises(ProtocolAbort, match="below this node's minimum size"):
        run(parties)


def test_a_guest_refuses_to_make_a_small_key_without_the_setting(
    tmp_path: Path,
) -> None:
    bank, telecom, spec = _small("paillier")
    parties = node_parties(spec, {BANK: bank, TELECOM: telecom}, {}, tmp_path)
    with pytest.raises(ProtocolAbort, match="2048-bit keys are refused"):
        run(parties)


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p[:-7],  # truncated
        lambda p: p[:-1] + bytes([p[-1] ^ 1]),  # a ciphertext changed
        lambda p: p[:4] + b"x" * (len(p) - 4),  # garbage
    ],
)
@pytest.mark.parametrize("gradient", ["ckks", "paillier"])
def test_a_malformed_encrypted_gradient_is_refused(
    tmp_path: Path, damage, gradient: str
) -> None:
    bank, telecom, spec = _small(gradient)
    parties = node_parties(
        spec, {BANK: bank, TELECOM: telecom}, {BANK: LEGACY, TELECOM: LEGACY}, tmp_path
    )

    def tamper(out: Outbound) -> Outbound:
        if out.stage == MASKED:
            return Outbound(out.recipient, out.stage, damage(out.payload))
        return out

    with pytest.raises(ProtocolError):
        run(parties, tamper)


@pytest.mark.parametrize("gradient", ["ckks", "paillier"])
def test_a_gradient_under_another_context_is_refused(
    tmp_path: Path, gradient: str
) -> None:
    """A masked gradient replayed from another batch fails its context check."""
    bank, telecom, spec = _small(gradient)
    parties = node_parties(
        spec, {BANK: bank, TELECOM: telecom}, {BANK: LEGACY, TELECOM: LEGACY}, tmp_path
    )
    first: list[bytes] = []

    def replay(out: Outbound) -> Outbound:
        if out.stage != MASKED:
            return out
        if not first:
            first.append(out.payload)
            return out
        header_len = int.from_bytes(out.payload[:4], "big") + 4
        return Outbound(
            out.recipient, out.stage, out.payload[:header_len] + first[0][header_len:]
        )

    with pytest.raises(ProtocolError, match="another context|not bound"):
        run(parties, replay)


def test_overlap_below_the_minimum_is_refused_without_its_size(tmp_path: Path) -> None:
    bank, telecom, spec = _small()
    settings = {BANK: {**LEGACY, "min_overlap": 400}, TELECOM: LEGACY}
    parties = node_parties(spec, {BANK: bank, TELECOM: telecom}, settings, tmp_path)
    with pytest.raises(ProtocolAbort) as err:
        run(parties)
    assert str(err.value) == BELOW_MINIMUM
    assert not any(ch.isdigit() for ch in str(err.value))


def test_no_overlap_is_refused(tmp_path: Path) -> None:
    bank, telecom, spec = _small()
    telecom = telecom.assign(customer_id=["T" + i for i in telecom["customer_id"]])
    parties = node_parties(
        spec, {BANK: bank, TELECOM: telecom}, {BANK: LEGACY, TELECOM: LEGACY}, tmp_path
    )
    with pytest.raises(ProtocolAbort, match="below this node's minimum"):
        run(parties)


def test_the_key_is_sent_to_hosts_only(tmp_path: Path) -> None:
    bank, telecom, spec = _small()
    parties = node_parties(
        spec, {BANK: bank, TELECOM: telecom}, {BANK: LEGACY, TELECOM: LEGACY}, tmp_path
    )
    sent = parties[BANK].start()
    assert [o.recipient for o in sent if o.stage == KEY] == [TELECOM]


def test_the_label_cannot_be_a_host_feature() -> None:
    data = split()
    spec = train_spec(data).replace(f"    {TELECOM}: [", f"    {TELECOM}: [{LABEL}, ")
    with pytest.raises(SpecError, match="cannot be a feature"):
        jobtypes.get("vertical_logreg").params(parse_spec(spec))


def test_the_label_must_be_on_the_guest() -> None:
    from cleanroom.catalog import ColumnInfo, DatasetInfo

    data = split()
    spec = parse_spec(train_spec(data))
    job = jobtypes.get("vertical_logreg")
    infos = {
        BANK: DatasetInfo(
            BANK,
            tuple(ColumnInfo(c, "float") for c in data.bank.columns if c != LABEL),
            "<100",
            id_column="customer_id",
        ),
        TELECOM: DatasetInfo(
            TELECOM,
            tuple(ColumnInfo(c, "float") for c in data.telecom.columns),
            "<100",
            id_column="customer_id",
        ),
    }
    with pytest.raises(SpecError) as err:
        job.validate(spec, {i: infos[i.node] for i in spec.inputs})
    assert err.value.path == "params.label"


def test_key_sizes_outside_the_list_are_refused() -> None:
    spec = parse_spec(train_spec(split(), key_bits=1024))
    with pytest.raises(SpecError, match="key_bits"):
        jobtypes.get("vertical_logreg").params(spec)


def test_encrypted_gradient_matches_the_plaintext_one() -> None:
    from protocols.paillier import Encryptor, generate_keypair
    from protocols.vertical import (
        GradientLayout,
        HostGradient,
        decrypt_masked,
        encrypt_residuals,
    )
    from protocols.vertical.gradient import encode_features

    keys = generate_keypair(2048, allow_legacy_2048=True)
    layout = GradientLayout(2048, 64)
    rng = np.random.default_rng(1)
    d, x = rng.uniform(-1, 1, 40), rng.normal(size=(40, 7))
    enc = Encryptor(keys.public, private=keys.private)
    data = encrypt_residuals(enc, layout, d, context=b"r")
    host = HostGradient(keys.public, layout, encode_features(x))
    masked = host.masked(data, context=b"r", reply=b"g")
    values = decrypt_masked(keys.private, layout, masked, features=7, context=b"g")
    assert np.allclose(host.unmask(values, 40), x.T @ d / 40, atol=1e-5)
    # What the guest decrypts is not the gradient: the mask hides it.
    plain = x.T @ d * 2.0**40
    assert all(abs(v - p) > 2**40 for v, p in zip(values, plain, strict=True))


def _admission(
    tmp_path: Path, spec_yaml: str, settings: dict, min_group: int = 5
) -> Any:
    from cleanroom.jobtypes.hooks import AdmissionContext
    from tests.cleanroom.vertical_driver import environment

    bank, _, _ = _small()
    spec = parse_spec(spec_yaml)
    job = jobtypes.get(spec.type)
    env = environment(BANK, bank, settings, tmp_path, min_group=min_group)
    service = job.node_service(env)
    return job.admit(
        spec,
        AdmissionContext(
            job_id="job-" + "cd" * 12,
            node=BANK,
            dataset=BANK,
            analyst="alice",
            organisation="lab",
            service=service,
            audit=None,  # type: ignore[arg-type]
            policy_outcome="allow",
        ),
    )


def test_admission_refuses_small_keys_and_small_batches(tmp_path: Path) -> None:
    _, _, spec = _small("paillier")
    assert _admission(tmp_path, spec, LEGACY) is None
    refused = _admission(tmp_path, spec, {})
    assert refused is not None and "2048-bit" in refused.reasons[0]
    tiny = spec.replace("batch_size: 128", "batch_size: 8")
    assert _admission(tmp_path, tiny, LEGACY, min_group=5) is None
    small = _admission(tmp_path, tiny, LEGACY, min_group=10)
    assert small is not None and "batch_size" in small.reasons[0]
