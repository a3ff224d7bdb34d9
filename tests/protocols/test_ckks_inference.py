"""CKKS private inference end to end: buyer and owner parties in one process."""

from __future__ import annotations

import json

import numpy as np
from sklearn.linear_model import LinearRegression

from protocols.ckks import (
    CONTEXT,
    FEATURES,
    SCORES,
    TENSEAL,
    CkksBuyer,
    CkksOwner,
    InferenceConfig,
    ParameterSet,
    plan_inference,
    run_in_process,
)
from protocols.ckks.backend import BuyerKeys, CkksBackend, OwnerContext
from protocols.ckks.messages import ScoreBlock
from protocols.models import (
    ModelAsset,
    ModelCard,
    decision_function,
    from_sklearn,
    predict,
)
from protocols.party import Inbound, Outbound

Data = tuple[np.ndarray, np.ndarray, list[str]]


def test_logistic_on_breast_cancer_matches_plaintext(
    logistic_model: ModelAsset, logistic_config: InferenceConfig, breast_cancer: Data
) -> None:
    x = breast_cancer[0]
    buyer = CkksBuyer("bank", logistic_config, x)
    owner = CkksOwner("clinic", logistic_config, logistic_model)
    assert (buyer.rows_encrypted, owner.rows_evaluated, buyer.rows_scored) == (0, 0, 0)
    traffic = run_in_process(buyer, owner, names=("bank", "clinic"))
    assert logistic_config.params.name == "ckks-8192-d1"
    assert np.abs(buyer.scores - predict(logistic_model, x)).max() <= 1e-3
    assert np.abs(buyer.raw_scores - decision_function(logistic_model, x)).max() <= 4e-3
    assert buyer.rows_encrypted == buyer.rows_scored == owner.rows_evaluated == len(x)
    usage = owner.usage()
    assert usage.units == {"scored_rows": len(x), "evaluations_exposed": 8192}
    assert usage.rows_touched == 0 and logistic_config.evaluations_exposed == 8192
    assert set(traffic.bytes_by_stage) == {CONTEXT, FEATURES, SCORES}
    assert traffic.messages_sent == {"bank": 2, "clinic": 1}


def test_mlp_with_square_activation_matches_plaintext(
    mlp_model: ModelAsset, breast_cancer: Data
) -> None:
    x = breast_cancer[0]
    config = plan_inference(
        mlp_model, session_id="run-mlp", buyer="bank", owner="clinic", row_count=len(x)
    )
    assert config.params.name == "ckks-8192-d2" and mlp_model.depth == 2
    assert config.flood.margin_bits is not None and config.flood.margin_bits > 32
    buyer = CkksBuyer("bank", config, x)
    run_in_process(
        buyer, CkksOwner("clinic", config, mlp_model), names=("bank", "clinic")
    )
    assert np.abs(buyer.scores - predict(mlp_model, x)).max() <= 1e-2
    assert np.abs(buyer.raw_scores - decision_function(mlp_model, x)).max() <= 1e-2


def test_linear_regression_over_two_blocks_with_a_partial_one() -> None:
    rng = np.random.default_rng(7)  # public test data
    rows = 4096 + 123
    x = rng.normal(size=(rows, 3))
    y = x @ [1.5, -2.0, 0.25] + 3.0 + rng.normal(scale=0.1, size=rows)
    model = from_sklearn(
        LinearRegression().fit(x, y),
        feature_names=["a", "b", "c"],
        model_id="lin",
        version="1",
        card=ModelCard.of("lin"),
    )
    config = plan_inference(
        model, session_id="run-lin", buyer="bank", owner="clinic", row_count=rows
    )
    assert config.blocks == 2 and config.block_rows(1) == 123
    buyer, owner = CkksBuyer("bank", config, x), CkksOwner("clinic", config, model)
    traffic = run_in_process(buyer, owner, names=("bank", "clinic"))
    assert traffic.messages_sent == {"bank": 3, "clinic": 2}
    assert np.abs(buyer.scores - predict(model, x)).max() <= 1e-3


class SharedKeys(CkksBackend):
    """Test double: TenSEAL, but every buyer gets the same keys (to compare owners)."""

    name = "shared-keys"

    def __init__(self) -> None:
        self.keys: BuyerKeys | None = None

    def generate(self, params: ParameterSet) -> BuyerKeys:
        if self.keys is None:
            self.keys = TENSEAL.generate(params)
        return self.keys

    def open(self, params: ParameterSet, context: bytes) -> OwnerContext:
        return TENSEAL.open(params, context)

    def max_ciphertext_bytes(self, params: ParameterSet, limbs: int) -> int:
        return TENSEAL.max_ciphertext_bytes(params, limbs)

    def max_context_bytes(self, params: ParameterSet) -> int:
        return TENSEAL.max_context_bytes(params)


def score_once(
    config: InferenceConfig, model: ModelAsset, messages: list[Outbound]
) -> Outbound:
    owner = CkksOwner("clinic", config, model)
    owner.start()
    replies = [
        r for m in messages for r in owner.receive(Inbound("bank", m.stage, m.payload))
    ]
    assert len(replies) == 1
    return replies[0]


def test_flooding_changes_the_result_bits_and_stays_within_tolerance(
    logistic_model: ModelAsset, logistic_config: InferenceConfig, breast_cancer: Data
) -> None:
    x = breast_cancer[0]
    backend = SharedKeys()
    first, second = (
        CkksBuyer("bank", logistic_config, x, backend=backend) for _ in range(2)
    )
    messages = first.start()
    second.start()  # same keys, same context: it can decrypt what first's owner sent
    replies = [score_once(logistic_config, logistic_model, messages) for _ in range(2)]
    one, two = (
        ScoreBlock.decode(r.payload, logistic_config.digest, ciphertext_cap=10**6)
        for r in replies
    )
    assert one.ciphertext != two.ciphertext
    for buyer, reply in zip((first, second), replies, strict=True):
        buyer.receive(Inbound("clinic", reply.stage, reply.payload))
        assert np.abs(buyer.scores - predict(logistic_model, x)).max() <= 1e-3
    difference = first.raw_scores - second.raw_scores
    assert np.count_nonzero(difference) == len(x)
    # Two independent floods of per-slot std sigma_p differ with std sqrt(2) sigma_p.
    expected = np.sqrt(2) * logistic_config.flood.slot_std
    assert 0.8 * expected < difference.std() < 1.2 * expected
    assert np.abs(difference).max() <= 2 * logistic_config.flood.max_shift


def test_the_flood_hides_the_imaginary_parts_too(
    logistic_model: ModelAsset, logistic_config: InferenceConfig, breast_cancer: Data
) -> None:
    """A buyer holding the key decodes complex slots: their imaginary parts must be
    flooded as well, or they would carry the weights times its known errors."""
    import tenseal as ts
    import tenseal.sealapi as sa

    backend = SharedKeys()
    buyer = CkksBuyer("bank", logistic_config, breast_cancer[0], backend=backend)
    reply = score_once(logistic_config, logistic_model, buyer.start())
    block = ScoreBlock.decode(
        reply.payload, logistic_config.digest, ciphertext_cap=10**6
    )
    secret = backend.keys._secret  # type: ignore[union-attr]
    ct = ts.ckks_vector_from(secret, block.ciphertext).ciphertext()[0]
    seal = secret.seal_context().data
    plain = sa.Plaintext()
    sa.Decryptor(seal, secret.secret_key().data).decrypt(ct, plain)
    slots = np.array(sa.CKKSEncoder(seal).decode_complex(plain))
    sigma = logistic_config.flood.slot_std
    assert 0.9 * sigma < slots.imag.std() < 1.1 * sigma


def test_config_digest_binds_every_public_field(
    logistic_model: ModelAsset, breast_cancer: Data
) -> None:
    base = dict(session_id="s", buyer="bank", owner="clinic", row_count=569)
    digests = {
        plan_inference(logistic_model, **base).digest,  # type: ignore[arg-type]
        plan_inference(logistic_model, **{**base, "session_id": "t"}).digest,  # type: ignore[arg-type]
        plan_inference(logistic_model, **{**base, "row_count": 568}).digest,  # type: ignore[arg-type]
        plan_inference(logistic_model, **base, precision_bits=9).digest,  # type: ignore[arg-type]
        plan_inference(logistic_model, **base, input_bound=12.0).digest,  # type: ignore[arg-type]
    }
    assert len(digests) == 5
    record = plan_inference(logistic_model, **base).to_json()  # type: ignore[arg-type]
    assert record["parameters"]["poly_modulus_degree"] == 8192
    assert record["flood"]["margin_bits"] == "exact"
    assert json.loads(json.dumps(record)) == record
