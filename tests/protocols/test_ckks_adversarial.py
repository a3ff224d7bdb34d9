"""CKKS inference under attack: bad contexts, foreign ciphertexts, tampered messages."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import tenseal as ts

from cleanroom.errors import ConfigError, ProtocolAbort, ProtocolError
from protocols.ckks import (
    CONTEXT,
    FEATURES,
    SCORES,
    TENSEAL,
    CkksBuyer,
    CkksOwner,
    InferenceConfig,
    sealwire,
)
from protocols.ckks import owner as owner_module
from protocols.ckks.messages import FeatureBatch, ScoreBlock, encode_context, header
from protocols.models import InputSchema, LinearParameters, ModelAsset, ModelCard
from protocols.party import Inbound, Outbound

Data = tuple[np.ndarray, np.ndarray, list[str]]


@pytest.fixture
def owner(logistic_config: InferenceConfig, logistic_model: ModelAsset) -> CkksOwner:
    party = CkksOwner("clinic", logistic_config, logistic_model)
    party.start()
    return party


@pytest.fixture
def no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any refusal these tests expect must come before a ciphertext is evaluated."""

    def fail(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("evaluated a batch that should have been refused")

    monkeypatch.setattr(owner_module, "evaluate_block", fail)


def deliver(
    party: CkksOwner | CkksBuyer, message: Outbound, sender: str = "bank"
) -> list[Outbound]:
    return party.receive(Inbound(sender, message.stage, message.payload))


def tenseal_context(bits: list[int], *, n: int = 8192) -> ts.Context:
    context = ts.context(ts.SCHEME_TYPE.CKKS, n, coeff_mod_bit_sizes=bits)
    context.global_scale = 2.0**28
    return context


def context_message(config: InferenceConfig, context: bytes) -> Outbound:
    return Outbound("clinic", CONTEXT, encode_context(context, config.digest))


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"save_public_key": False, "save_secret_key": True}, "carries a secret key"),
        ({"save_secret_key": True}, "larger than"),
        ({"save_relin_keys": True}, "larger than"),
        ({"save_public_key": False}, "lacks field 1"),
    ],
)
def test_contexts_with_the_wrong_keys_are_refused(
    owner: CkksOwner,
    logistic_config: InferenceConfig,
    options: dict[str, bool],
    problem: str,
) -> None:
    keys = {
        "save_public_key": True,
        "save_secret_key": False,
        "save_galois_keys": False,
        "save_relin_keys": False,
    }
    data = tenseal_context([60, 60]).serialize(**{**keys, **options})
    with pytest.raises(ProtocolError, match=problem):
        deliver(owner, context_message(logistic_config, data))
    with pytest.raises(ProtocolAbort, match="already refused"):
        deliver(owner, context_message(logistic_config, data))


def with_public_field(context: bytes, extra: bytes) -> bytes:
    """``context`` with ``extra`` appended to its public-keys message (field 2)."""
    parts = []
    for number, wire, value in sealwire.fields(context, "test"):
        if number == 2:
            value = bytes(value) + extra
        key = sealwire.encode_varint(number << 3 | wire)
        if wire == sealwire.BYTES:
            parts.append(key + sealwire.encode_varint(len(value)) + bytes(value))
        else:
            parts.append(key + sealwire.encode_varint(value))
    return b"".join(parts)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        (b"\x2a\x01g", "unexpected field 5"),  # Galois keys, however small
        (b"\x22\x01r", "keys this model does not use"),  # relinearisation keys
        (b"\x3a\x01z", "unexpected field 7"),
    ],
)
def test_contexts_with_extra_public_fields_are_refused(
    owner: CkksOwner, logistic_config: InferenceConfig, extra: bytes, problem: str
) -> None:
    data = tenseal_context([60, 60]).serialize(
        save_galois_keys=False, save_relin_keys=False
    )
    with pytest.raises(ProtocolError, match=problem):
        deliver(owner, context_message(logistic_config, with_public_field(data, extra)))


def test_galois_keys_from_tenseal_are_refused(
    owner: CkksOwner, logistic_config: InferenceConfig
) -> None:
    context = tenseal_context([60, 60])
    context.generate_galois_keys()
    data = context.serialize(save_galois_keys=True, save_relin_keys=False)
    with pytest.raises(ProtocolError, match="larger than"):
        deliver(owner, context_message(logistic_config, data))


def test_a_context_of_other_parameters_is_refused(
    owner: CkksOwner, logistic_config: InferenceConfig
) -> None:
    data = tenseal_context([60, 40]).serialize(
        save_galois_keys=False, save_relin_keys=False
    )
    with pytest.raises(ProtocolError, match="is not parameter set ckks-8192-d1"):
        deliver(owner, context_message(logistic_config, data))


def test_a_bigger_context_is_refused_by_size_before_parsing(
    owner: CkksOwner, logistic_config: InferenceConfig
) -> None:
    data = tenseal_context([60, 60, 60], n=16384).serialize(
        save_galois_keys=False, save_relin_keys=False
    )
    with pytest.raises(ProtocolError, match="larger than"):
        deliver(owner, context_message(logistic_config, data))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 64,
        b"\x0a\x05abc",
        b"\x0a\x02ab\x12\x01x",
        b"\x1a\x00\x0a\x01a\x12\x01b",
    ],
    ids=["empty", "zeros", "truncated", "junk-keys", "private-part"],
)
def test_garbage_contexts_are_protocol_errors(
    owner: CkksOwner, logistic_config: InferenceConfig, data: bytes
) -> None:
    with pytest.raises(ProtocolError):
        deliver(owner, context_message(logistic_config, data))


def test_feature_count_mismatch_is_refused_before_evaluation(
    owner: CkksOwner,
    logistic_config: InferenceConfig,
    logistic_messages: list[Outbound],
    no_evaluation: None,
) -> None:
    deliver(owner, logistic_messages[0])
    batch = FeatureBatch.decode(
        logistic_messages[1].payload,
        logistic_config.digest,
        features=30,
        ciphertext_cap=10**6,
    )
    short = dataclasses.replace(batch, ciphertexts=batch.ciphertexts[:-1])
    message = Outbound("clinic", FEATURES, short.encode(logistic_config.digest))
    with pytest.raises(ProtocolError, match="holds 29 ciphertexts, not 30"):
        deliver(owner, message)
    assert owner.rows_evaluated == 0


def test_a_model_with_another_feature_count_is_refused_by_the_owner(
    logistic_config: InferenceConfig,
) -> None:
    narrow = ModelAsset(
        kind="logistic_regression",
        model_id="bc-lr",
        version="1",
        schema=InputSchema(tuple(f"f{i}" for i in range(29))),
        card=ModelCard.of("narrow"),
        parameters=LinearParameters(np.ones(29), 0.0),
        link="logistic",
    )
    with pytest.raises(ConfigError, match="takes 29 features; the config says 30"):
        CkksOwner("clinic", logistic_config, narrow)


def test_ciphertexts_from_another_buyers_context_are_refused(
    owner: CkksOwner,
    logistic_config: InferenceConfig,
    logistic_messages: list[Outbound],
    breast_cancer: Data,
    no_evaluation: None,
) -> None:
    other = CkksBuyer("bank", logistic_config, breast_cancer[0]).start()
    deliver(owner, logistic_messages[0])
    with pytest.raises(ProtocolError, match="encrypted under another context"):
        deliver(owner, other[1])


def relabelled(
    config: InferenceConfig, context_digest: bytes, cts: tuple[bytes, ...]
) -> Outbound:
    batch = FeatureBatch(context_digest, 0, cts)
    return Outbound("clinic", FEATURES, batch.encode(config.digest))


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (
            lambda: ts.ckks_vector(tenseal_context([60, 40]), [0.5] * 569),
            "not fresh at the top level|does not deserialise",
        ),
        (
            lambda: ts.ckks_vector(
                tenseal_context([60, 60]), [0.5] * 569, scale=2.0**30
            ),
            "not at the global scale",
        ),
        (
            lambda: ts.ckks_vector(tenseal_context([60, 60]), [0.5] * 10),
            "must hold 569 values",
        ),
    ],
    ids=["other-parameters", "other-scale", "other-count"],
)
def test_foreign_ciphertexts_under_the_right_label_are_refused(
    owner: CkksOwner,
    logistic_config: InferenceConfig,
    logistic_messages: list[Outbound],
    no_evaluation: None,
    make: object,
    problem: str,
) -> None:
    deliver(owner, logistic_messages[0])
    digest = hashlib.sha256(logistic_messages[0].payload[36:]).digest()
    foreign = make().serialize()  # type: ignore[operator]
    with pytest.raises(ProtocolError, match=problem):
        deliver(owner, relabelled(logistic_config, digest, (foreign,) * 30))


def test_oversized_and_trailing_batches_are_refused(
    owner: CkksOwner,
    logistic_config: InferenceConfig,
    logistic_messages: list[Outbound],
    no_evaluation: None,
) -> None:
    deliver(owner, logistic_messages[0])
    payload = logistic_messages[1].payload
    for bad, problem in [
        (payload + b"\x00", "trailing bytes"),
        (payload[:-5], "truncated"),
        (payload + b"\x00" * 5_000_000, "larger than"),
    ]:
        fresh = CkksOwner("clinic", logistic_config, owner._model)
        fresh.start()
        deliver(fresh, logistic_messages[0])
        with pytest.raises(ProtocolError, match=problem):
            deliver(fresh, Outbound("clinic", FEATURES, bad))


def test_stage_order_sender_and_header_are_checked(
    owner: CkksOwner,
    logistic_config: InferenceConfig,
    logistic_messages: list[Outbound],
    logistic_model: ModelAsset,
) -> None:
    context, features = logistic_messages
    cases = [
        (features, "bank", "expected ckks/context, got ckks/features"),
        (context, "mallory", "only accepts messages from bank"),
        (
            Outbound("clinic", CONTEXT, b"CK\x01\x81" + logistic_config.digest),
            "bank",
            "not a ckks/context message in this direction",
        ),
        (
            Outbound("clinic", CONTEXT, b"CK\x01\x01" + bytes(32) + b"x"),
            "bank",
            "another run or configuration",
        ),
        (
            Outbound("clinic", CONTEXT, b"XX" + context.payload[2:]),
            "bank",
            "not a CKKS inference message",
        ),
        (
            Outbound("clinic", CONTEXT, b"CK\x02" + context.payload[3:]),
            "bank",
            "wire version 2",
        ),
    ]
    for message, sender, problem in cases:
        fresh = CkksOwner("clinic", logistic_config, logistic_model)
        fresh.start()
        with pytest.raises(ProtocolError, match=problem):
            deliver(fresh, message, sender)
    unstarted = CkksOwner("clinic", logistic_config, logistic_model)
    with pytest.raises(ProtocolError, match="not started"):
        deliver(unstarted, context)


def test_a_finished_owner_refuses_a_replay(
    owner: CkksOwner, logistic_messages: list[Outbound]
) -> None:
    for message in logistic_messages:
        deliver(owner, message)
    assert owner.finished
    with pytest.raises(ProtocolError, match="finished"):
        deliver(owner, logistic_messages[1])


def test_a_buyer_of_another_configuration_is_refused(
    owner: CkksOwner, logistic_config: InferenceConfig, breast_cancer: Data
) -> None:
    other = dataclasses.replace(logistic_config, session_id="another-run")
    message = CkksBuyer("bank", other, breast_cancer[0]).start()[0]
    with pytest.raises(ProtocolError, match="another run or configuration"):
        deliver(owner, message)


def test_buyer_refuses_bad_rows(
    logistic_config: InferenceConfig, breast_cancer: Data
) -> None:
    x = breast_cancer[0].copy()
    with pytest.raises(ConfigError, match="expects 569 rows"):
        CkksBuyer("bank", logistic_config, x[:-1])
    x[3, 5] = np.nan
    with pytest.raises(ConfigError, match="row 3, feature 'mean compactness'"):
        CkksBuyer("bank", logistic_config, x)
    x = breast_cancer[0].copy()
    x[7, 0] = 1e6
    with pytest.raises(ConfigError, match=r"exceed \+-16\.0"):
        CkksBuyer("bank", logistic_config, x)
    with pytest.raises(ConfigError, match="not the buyer"):
        CkksBuyer("clinic", logistic_config, breast_cancer[0])


def test_buyer_refuses_scores_it_did_not_ask_for(
    logistic_config: InferenceConfig, logistic_model: ModelAsset, breast_cancer: Data
) -> None:
    buyer = CkksBuyer("bank", logistic_config, breast_cancer[0])
    messages = buyer.start()
    owner = CkksOwner("clinic", logistic_config, logistic_model)
    owner.start()
    deliver(owner, messages[0])
    (reply,) = deliver(owner, messages[1])
    block = ScoreBlock.decode(
        reply.payload, logistic_config.digest, ciphertext_cap=10**6
    )
    features = FeatureBatch.decode(
        messages[1].payload, logistic_config.digest, features=30, ciphertext_cap=10**6
    )
    cases = [
        (
            Outbound(
                "bank",
                SCORES,
                ScoreBlock(bytes(32), 0, block.ciphertext).encode(
                    logistic_config.digest
                ),
            ),
            "another context",
        ),
        (
            Outbound(
                "bank",
                SCORES,
                ScoreBlock(block.context_digest, 1, block.ciphertext).encode(
                    logistic_config.digest
                ),
            ),
            "block 0, got 1",
        ),
        (
            Outbound(
                "bank",
                SCORES,
                ScoreBlock(block.context_digest, 0, b"junk").encode(
                    logistic_config.digest
                ),
            ),
            "not a valid ciphertext",
        ),
        (
            Outbound(
                "bank",
                SCORES,
                ScoreBlock(block.context_digest, 0, features.ciphertexts[0]).encode(
                    logistic_config.digest
                ),
            ),
            "output scale",
        ),
        (Outbound("bank", FEATURES, reply.payload), "expected ckks/scores"),
        (
            Outbound(
                "bank",
                SCORES,
                header(SCORES, from_owner=False, digest=logistic_config.digest),
            ),
            "not a ckks/scores message in this direction",
        ),
    ]
    for message, problem in cases:
        fresh = CkksBuyer(
            "bank", logistic_config, breast_cancer[0], backend=_Reuse(buyer)
        )
        fresh.start()
        with pytest.raises(ProtocolError, match=problem):
            deliver(fresh, message, "clinic")
    with pytest.raises(ProtocolError, match="only accepts messages from clinic"):
        deliver(buyer, reply, "mallory")
    with pytest.raises(ProtocolAbort, match="already refused"):
        deliver(buyer, reply, "clinic")


class _Reuse(type(TENSEAL)):  # type: ignore[misc]
    """Test double: hands out an existing buyer's keys, so its scores decrypt."""

    def __init__(self, buyer: CkksBuyer) -> None:
        self._keys = buyer._keys

    def generate(self, params: object) -> object:  # type: ignore[override]
        return self._keys


def test_owner_dropping_out_aborts_the_buyer(
    logistic_config: InferenceConfig, breast_cancer: Data
) -> None:
    buyer = CkksBuyer("bank", logistic_config, breast_cancer[0])
    buyer.start()
    assert buyer.dropped(frozenset({"someone-else"})) == []
    with pytest.raises(ProtocolAbort, match="owner went away"):
        buyer.dropped(frozenset({"clinic"}))
    with pytest.raises(ProtocolError, match="not received every score"):
        buyer.scores


def encode_fields(entries: list[tuple[int, int, object]]) -> bytes:
    out = []
    for number, wire, value in entries:
        key = sealwire.encode_varint(number << 3 | wire)
        if wire == sealwire.BYTES:
            raw = bytes(value)  # type: ignore[call-overload]
            out.append(key + sealwire.encode_varint(len(raw)) + raw)
        elif wire == sealwire.FIXED64:
            out.append(key + bytes(value))  # type: ignore[call-overload]
        else:
            out.append(key + sealwire.encode_varint(value))  # type: ignore[arg-type]
    return b"".join(out)


def test_a_degenerate_public_key_is_refused(
    owner: CkksOwner, logistic_config: InferenceConfig
) -> None:
    """A public key whose halves are zero would make re-randomising a no-op."""
    context = tenseal_context([60, 60])
    data = context.serialize(save_galois_keys=False, save_relin_keys=False)
    top = list(sealwire.fields(data, "context"))
    version = sealwire.seal_version(top[0][2])
    key_level = list(context.seal_context().data.key_parms_id())
    zeros = np.zeros(2 * 2 * 8192, dtype=np.uint64)
    key = sealwire.seal_ciphertext(version, key_level, 2, 8192, 2, 1.0, zeros)
    public = [
        (n, w, key if n == 1 else v)
        for n, w, v in sealwire.fields(bytes(top[1][2]), "pk")
    ]
    forged = encode_fields([top[0], (2, sealwire.BYTES, encode_fields(public))])
    with pytest.raises(ProtocolError, match="public key is degenerate"):
        deliver(owner, context_message(logistic_config, forged))
