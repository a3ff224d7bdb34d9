"""The he_sum job: parties driven in one process against numpy, bad keys and
inputs refused before any encryption, dropouts, and one end-to-end run."""

from __future__ import annotations

import json
from typing import Any

import gmpy2
import numpy as np
import pandas as pd
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cleanroom import jobtypes
from cleanroom.errors import ProtocolAbort, ProtocolError, SpecError
from cleanroom.jobspec import parse_spec
from cleanroom.jobtypes.he_sum.parties import (
    CIPHER,
    KEY,
    HeSumCoordinator,
    vector_context,
)
from cleanroom.jobtypes.simulate import drive
from cleanroom.keys import canonical_json, sign_statement
from protocols.paillier import (
    Encryptor,
    generate_keypair,
    public_key_to_bytes,
    sum_vectors,
)
from protocols.party import ANALYST, Inbound

NODES = ("a", "b", "c")


def spec_text(
    params: dict[str, Any], nodes: tuple[str, ...] = NODES, *, named: bool = False
) -> str:
    """``named``: each node's dataset is called after it (as in-process)."""
    inputs = ", ".join(f"{{node: {n}, dataset: {n if named else 'd'}}}" for n in nodes)
    return (
        f"type: he_sum\ninputs: [{inputs}]\n"
        f"params: {yaml.safe_dump(params, default_flow_style=True).strip()}\n"
        "purpose: test\n"
    )


def frames(seed: int = 5) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, node in enumerate(NODES):
        rows = 40 + 15 * i
        frame = pd.DataFrame(
            {
                "age": rng.integers(18, 90, rows),
                "income": rng.lognormal(10, 0.5, rows),
                "sex": rng.choice(["F", "M", "X"], rows, p=[0.48, 0.48, 0.04]),
            }
        )
        frame.loc[0, "income"] = np.nan
        out[node] = frame
    return out


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Parties:
    def __init__(self, text: str, data: dict[str, pd.DataFrame], min_group: int = 5):
        self.spec = spec = parse_spec(text)
        job = jobtypes.get("he_sum")
        self.keys = {n: Ed25519PrivateKey.generate() for n in spec.nodes}
        self.analyst_key = Ed25519PrivateKey.generate()
        publics = {n: _raw(k) for n, k in self.keys.items()}
        publics[ANALYST] = _raw(self.analyst_key)
        self.coordinator = job.coordinator_party(
            jobtypes.CoordinatorContext("j1", spec, spec.nodes, publics)
        )
        self.analyst = job.analyst_party(
            jobtypes.AnalystContext(
                "j1", spec, "alice", spec.nodes, self.analyst_key, publics
            )
        )
        self.nodes = {
            n: job.node_party(
                jobtypes.NodeContext(
                    "j1",
                    spec,
                    n,
                    "d",
                    data[n],
                    "h",
                    min_group,
                    self.keys[n],
                    spec.nodes,
                    publics,
                )
            )
            for n in spec.nodes
        }


def pooled(
    data: dict[str, pd.DataFrame], nodes: tuple[str, ...] = NODES
) -> pd.DataFrame:
    return pd.concat([data[n] for n in nodes]).dropna(subset=["age", "income"])


def test_totals_match_numpy_within_the_fixed_point_step() -> None:
    data = frames()
    p = Parties(spec_text({"columns": ["age", "income"]}), data)
    run = drive(p.coordinator, p.nodes, p.analyst)
    assert run.opened is not None
    (cell,) = run.opened["cells"]
    pool = pooled(data)
    step = run.opened["fixed_point_step"]
    assert cell["count"] == len(pool)
    for column in ("age", "income"):
        assert abs(cell["sum"][column] - pool[column].sum()) <= len(NODES) * step
    assert run.opened["contributors"] == list(NODES)
    assert set(run.attested) == set(NODES)
    # The coordinator's release holds digests and a ciphertext, no value.
    text = json.dumps(run.result)
    assert str(len(pool)) not in text.split('"key_bits"')[0]


def test_groups_below_a_holders_minimum_are_suppressed_on_the_node() -> None:
    data = frames()
    params = {"columns": ["income"], "group_by": "sex", "groups": ["F", "M", "X"]}
    p = Parties(spec_text(params), data, min_group=5)
    run = drive(p.coordinator, p.nodes, p.analyst)
    assert run.opened is not None
    cells = {c["group"]: c for c in run.opened["cells"]}
    expected_count = {g: 0 for g in "FMX"}
    suppressed = {g: 0 for g in "FMX"}
    for node in NODES:
        frame = data[node].dropna(subset=["income"])
        for g in "FMX":
            n = int((frame["sex"] == g).sum())
            if n >= 5:
                expected_count[g] += n
            else:
                suppressed[g] += 1
    for g in "FMX":
        assert cells[g]["count"] == expected_count[g]
        assert cells[g]["suppressed_by"] == suppressed[g]
    assert suppressed["X"] >= 1
    # Every node's ciphertext has the same size whatever it suppressed.
    sizes = {len(v) for v in [run.attachments["aggregate"]]}
    assert len(sizes) == 1


def test_a_node_dropping_completes_without_it_when_the_spec_allows() -> None:
    data = frames()
    p = Parties(spec_text({"columns": ["age"], "min_inputs": 2}), data)
    run = drive(p.coordinator, p.nodes, p.analyst, drop_at={"c": "he_sum/cipher"})
    assert run.opened is not None
    assert run.opened["contributors"] == ["a", "b"]
    assert run.result["dropped"] == ["c"]
    assert run.opened["cells"][0]["count"] == len(data["a"]) + len(data["b"])


def test_a_node_dropping_ends_the_job_naming_it_when_all_are_needed() -> None:
    p = Parties(spec_text({"columns": ["age"]}), frames())
    with pytest.raises(ProtocolAbort, match="parties dropped out: c"):
        drive(p.coordinator, p.nodes, p.analyst, drop_at={"c": "he_sum/cipher"})


def test_overflow_of_the_packing_headroom_is_refused_naming_the_column() -> None:
    data = frames()
    data["b"].loc[:, "income"] = 1e15
    p = Parties(spec_text({"columns": ["age", "income"]}), data)
    with pytest.raises(SpecError, match=r"params\.columns\.income") as info:
        drive(p.coordinator, p.nodes, p.analyst)
    assert "refused before encryption" in str(info.value)
    assert "1e+15" not in str(info.value)


def _key_message(p: Parties, key_bytes: bytes, signer: Ed25519PrivateKey) -> Inbound:
    statement = {
        "job_id": "j1",
        "spec_hash": p.spec.spec_hash,
        "public_key": key_bytes.hex(),
    }
    body = canonical_json(
        {"statement": statement, "signature": sign_statement(signer, statement)}
    )
    return Inbound(ANALYST, KEY, body)


def _public_bytes(n: int, hs: int, width: int) -> bytes:
    return (
        b"CRPK\x01"
        + width.to_bytes(2, "big")
        + n.to_bytes(width, "big")
        + hs.to_bytes(2 * width, "big")
    )


@pytest.fixture(scope="module")
def other_key() -> Any:
    return generate_keypair()


def test_a_substituted_public_key_is_refused(other_key: Any) -> None:
    p = Parties(spec_text({"columns": ["age"]}), frames())
    forged = _key_message(
        p, public_key_to_bytes(other_key.public), Ed25519PrivateKey.generate()
    )
    with pytest.raises(ProtocolError, match="not signed by the analyst"):
        p.nodes["a"].receive(forged)
    with pytest.raises(ProtocolError, match="not signed by the analyst"):
        p.coordinator.receive(forged)
    assert not p.nodes["a"].finished


def test_keys_below_the_minimum_or_with_a_malformed_modulus_are_refused() -> None:
    p = Parties(spec_text({"columns": ["age"]}), frames())
    small = generate_keypair(2048, allow_legacy_2048=True)
    message = _key_message(p, public_key_to_bytes(small.public), p.analyst_key)
    with pytest.raises(ProtocolError, match="below the 3072-bit minimum"):
        p.nodes["a"].receive(message)
    width = 384
    even = (1 << 3071) + 2
    with pytest.raises(ProtocolError, match="modulus is even"):
        p.nodes["b"].receive(
            _key_message(p, _public_bytes(even, 5, width), p.analyst_key)
        )
    square = gmpy2.next_prime(3 << 1534) ** 2
    with pytest.raises(ProtocolError, match="perfect square"):
        p.nodes["c"].receive(
            _key_message(p, _public_bytes(int(square), 5, width), p.analyst_key)
        )
    assert not any(node.finished for node in p.nodes.values())


def test_spec_key_size_below_the_minimum_is_refused() -> None:
    with pytest.raises(SpecError, match=r"params\.key_bits"):
        jobtypes.get("he_sum").params(
            parse_spec(spec_text({"columns": ["a"], "key_bits": 1024}))
        )
    with pytest.raises(SpecError, match="allow_legacy_2048"):
        jobtypes.get("he_sum").params(
            parse_spec(spec_text({"columns": ["a"], "key_bits": 2048}))
        )


class _SwappingCoordinator(HeSumCoordinator):
    """An operator that counts node a twice and leaves node c out of the sum
    while still naming every input's digest in the release."""

    def _product(self) -> bytes:
        if self._aggregate is None:
            assert self._key is not None
            a, b = self._vectors["a"][0], self._vectors["b"][0]
            total = sum_vectors([a, a, b])
            self._aggregate = Encryptor(self._key).to_bytes(
                total, context=vector_context("j1", self._ctx.spec.spec_hash)
            )
        return self._aggregate


def test_an_operator_that_repeats_or_drops_an_input_is_caught() -> None:
    p = Parties(spec_text({"columns": ["age"]}), frames())
    ctx = jobtypes.CoordinatorContext(
        "j1", p.spec, p.spec.nodes, {**{n: _raw(k) for n, k in p.keys.items()},
                                     ANALYST: _raw(p.analyst_key)},
    )  # fmt: skip
    with pytest.raises(ProtocolError, match="holds other inputs than released"):
        drive(_SwappingCoordinator(ctx), p.nodes, p.analyst)


def test_ciphertexts_under_another_key_are_refused(other_key: Any) -> None:
    p = Parties(spec_text({"columns": ["age"]}), frames())
    key_message = p.analyst.start()[0]
    p.coordinator.receive(Inbound(ANALYST, KEY, key_message.payload))
    params = jobtypes.get("he_sum").params(p.spec)
    vector = Encryptor(other_key.public).encrypt_integers(
        [1] * params.length, params.layout()
    )
    data = Encryptor(other_key.public).to_bytes(
        vector, context=vector_context("j1", p.spec.spec_hash)
    )
    with pytest.raises(ProtocolError, match="under another public key"):
        p.coordinator.receive(Inbound("a", CIPHER, data))


DP_PARAMS: dict[str, Any] = {
    "columns": ["age"],
    "clip": {"age": [0, 100]},
    "dp": {"epsilon": 1.0, "delta": 1e-6},
}


def test_dp_noise_shares_are_added_before_encryption_and_charged() -> None:
    data = frames()
    spec = parse_spec(spec_text(DP_PARAMS))
    assert jobtypes.get("he_sum").epsilon(spec) == (1.0, 1e-6)
    p = Parties(spec_text(DP_PARAMS), data)
    run = drive(p.coordinator, p.nodes, p.analyst)
    assert run.opened is not None
    (cell,) = run.opened["cells"]
    pool = pd.concat(data.values())
    std = cell["noise_std"]
    assert std["count"] > 1 and std["sum"]["age"] > 50
    assert abs(cell["count"] - len(pool)) < 8 * std["count"]
    assert abs(cell["sum"]["age"] - pool["age"].sum()) < 8 * std["sum"]["age"]
    # Noise is there: exact answers on both values would be a 1-in-millions event.
    assert (cell["count"], round(cell["sum"]["age"])) != (len(pool), pool["age"].sum())
    assert run.opened["dp"] == {"epsilon": 1.0, "delta": 1e-6}


def test_dp_needs_public_bounds_for_every_column() -> None:
    params = {**DP_PARAMS, "clip": {}}
    with pytest.raises(SpecError, match=r"params\.clip\.age"):
        jobtypes.get("he_sum").params(parse_spec(spec_text(params)))
