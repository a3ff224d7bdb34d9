"""Verification and PIR on the OPRF-keyed table, against plaintext lookups."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest

from cleanroom.errors import ConfigError, ProtocolAbort, ProtocolError, QuotaExceeded
from protocols.oprf import messages
from protocols.oprf.core import OprfKey, hash_to_group
from protocols.oprf.download import decode_table, encode_table
from protocols.oprf.parties import LookupConfig, LookupHolder, PirBuyer, VerifyBuyer
from protocols.oprf.table import OprfTable, TableCache, build_table, pir_input
from protocols.party import Inbound
from protocols.psi.normalize import ColumnRule
from protocols.psi.simulate import drive

V1 = hashlib.sha256(b"dataset v1").digest()
ROWS = [
    {
        "id": f"ID-{i:03d}",
        "name": f"Name {i % 7}",
        "dob": f"19{i % 90 + 10}",
        "secret": f"s{i}" * (i % 5),
    }
    for i in range(40)
]
FIELDS = ("name", "dob")


@pytest.fixture(scope="module")
def holder_key() -> OprfKey:
    return OprfKey.generate(os.urandom)


@pytest.fixture(scope="module")
def table(holder_key: OprfKey) -> OprfTable:
    return build_table(
        holder_key,
        dataset="customers",
        content_hash=V1,
        rows=ROWS,
        id_column="id",
        pir_fields=("name", "dob"),
        verify_fields=FIELDS,
        all_fields=True,
    )


def run(
    config: LookupConfig, buyer: PirBuyer | VerifyBuyer, key: OprfKey, table: OprfTable
):
    holder = LookupHolder(config, "holder", key, table.header)
    transcript = drive({"holder": holder, "buyer": buyer})
    return holder, transcript


def claims_with_truth() -> tuple[list[dict[str, str]], list[dict[str, bool]]]:
    claims, truth = [], []
    for i, row in enumerate(ROWS[:20]):
        claim = {"id": row["id"].lower(), "name": row["name"], "dob": row["dob"]}
        if i % 3 == 0:
            claim["name"] = "someone else"
        if i % 4 == 0:
            claim["dob"] = "1800"
        claims.append(claim)
        truth.append({f: claim[f].casefold() == row[f].casefold() for f in FIELDS})
    claims.append({"id": "nobody", "name": "x", "dob": "y"})
    truth.append(dict.fromkeys(FIELDS, False))
    return claims, truth


def test_verify_per_field_equals_plaintext(
    holder_key: OprfKey, table: OprfTable
) -> None:
    claims, truth = claims_with_truth()
    config = LookupConfig(
        "v1", "holder", "buyer", "verify", table.header, 2 * len(claims)
    )
    buyer = VerifyBuyer(config, "buyer", decode_table(encode_table(table)), claims)
    holder, _ = run(config, buyer, holder_key, table)
    assert buyer.results() == truth
    assert holder.usage().units == {"oprf_evaluations": 2 * len(claims)}


def test_verify_claims_of_some_fields_only(
    holder_key: OprfKey, table: OprfTable
) -> None:
    claims, truth = claims_with_truth()
    for i, (claim, expected) in enumerate(zip(claims, truth, strict=True)):
        dropped = FIELDS[i % 2] if i % 3 else None
        if dropped is not None:
            del claim[dropped], expected[dropped]
    config = LookupConfig(
        "v1b", "holder", "buyer", "verify", table.header, 2 * len(claims)
    )
    buyer = VerifyBuyer(config, "buyer", table, claims)
    run(config, buyer, holder_key, table)
    assert buyer.results() == truth


def test_has_tags_matches_has_tag(table: OprfTable) -> None:
    column = table.all_tags
    assert column is not None
    probes = [bytes(column[0]).ljust(16, b"\0"), b"\xff" * 16, b"\0" * 16]
    probes += [bytes(t).ljust(16, b"\0") for t in column[-3:]]
    assert table.has_tags(column, probes) == [table.has_tag(column, p) for p in probes]
    assert table.has_tags(column, []) == []
    assert table.has_tags(column[:0], probes) == [False] * len(probes)


def test_verify_all_fields_bit(holder_key: OprfKey, table: OprfTable) -> None:
    claims, truth = claims_with_truth()
    config = LookupConfig(
        "v2", "holder", "buyer", "verify", table.header, len(claims), all_fields=True
    )
    buyer = VerifyBuyer(config, "buyer", table, claims)
    run(config, buyer, holder_key, table)
    assert buyer.results() == [all(t.values()) for t in truth]


def test_pir_returns_exactly_the_permitted_fields(
    holder_key: OprfKey, table: OprfTable
) -> None:
    keys = ["ID-007", " id-012 ", "ID-999"]
    config = LookupConfig("p1", "holder", "buyer", "pir", table.header, 3)
    buyer = PirBuyer(config, "buyer", table, keys)
    holder, _transcript = run(config, buyer, holder_key, table)
    got = buyer.results()
    assert got["ID-007"] == {"name": ROWS[7]["name"], "dob": ROWS[7]["dob"]}
    assert got[" id-012 "] == {"name": ROWS[12]["name"], "dob": ROWS[12]["dob"]}
    assert got["ID-999"] is None  # absent: the holder did the same single evaluation
    assert holder.usage().units == {"oprf_evaluations": 3}


def test_ciphertexts_are_one_size(table: OprfTable) -> None:
    size = table.ciphertext_bytes
    assert len(table.pir_ciphertexts) == size * len(ROWS)
    assert table.size_bytes() == len(encode_table(table))


def test_transcript_has_no_key_and_no_recomputable_hash(
    holder_key: OprfKey, table: OprfTable
) -> None:
    keys = [r["id"] for r in ROWS[:5]]
    config = LookupConfig("p2", "holder", "buyer", "pir", table.header, len(keys))
    _, transcript = run(
        config, PirBuyer(config, "buyer", table, keys), holder_key, table
    )
    blob = transcript.blob()
    for key in keys:
        for form in (key.encode(), key.casefold().encode()):
            unblinded_h1 = hash_to_group([pir_input(V1, form.decode())])
            for needle in (form, hashlib.sha256(form).digest(), unblinded_h1):
                assert needle not in blob


def test_changed_dataset_version_refused(holder_key: OprfKey, table: OprfTable) -> None:
    v2 = build_table(
        holder_key,
        dataset="customers",
        content_hash=hashlib.sha256(b"v2").digest(),
        rows=ROWS[:5],
        id_column="id",
        pir_fields=("name",),
    )
    stale = LookupConfig("p3", "holder", "buyer", "pir", table.header, 1)
    with pytest.raises(ProtocolError, match="not the current version"):
        LookupHolder(stale, "holder", holder_key, v2.header)
    with pytest.raises(ProtocolError, match="not the version this job uses"):
        PirBuyer(
            LookupConfig("p4", "holder", "buyer", "pir", v2.header, 1),
            "buyer",
            table,
            ["x"],
        )
    cache = TableCache()
    cache.put(table)
    assert cache.get("customers", V1, holder_key.key_id) is table
    rotated = OprfKey.generate(os.urandom)
    rebuilt = build_table(
        rotated,
        dataset="customers",
        content_hash=V1,
        rows=ROWS,
        id_column="id",
        pir_fields=("name",),
    )
    cache.put(rebuilt)
    with pytest.raises(ProtocolError, match="another version"):
        cache.get("customers", V1, holder_key.key_id)


def test_reply_for_another_table_refused(holder_key: OprfKey, table: OprfTable) -> None:
    config = LookupConfig("p5", "holder", "buyer", "pir", table.header, 1)
    buyer = PirBuyer(config, "buyer", table, ["ID-001"])
    query = buyer.start()[0]
    other = dataclasses.replace(config, session_id="p6")
    holder = LookupHolder(other, "holder", holder_key, table.header)
    with pytest.raises(ProtocolError, match="another session or config"):
        holder.receive(Inbound("buyer", query.stage, query.payload))


def test_quota_and_declared_count_enforced(
    holder_key: OprfKey, table: OprfTable
) -> None:
    config = LookupConfig("q", "holder", "buyer", "pir", table.header, 5)
    with pytest.raises(QuotaExceeded):
        LookupHolder(config, "holder", holder_key, table.header, quota=4)
    with pytest.raises(ConfigError, match="declares 5"):
        PirBuyer(config, "buyer", table, [f"ID-{i:03d}" for i in range(6)])
    # Fewer distinct keys than declared (repeats) are padded with random fillers:
    # the holder evaluates exactly the declared batch, the answers are unchanged.
    buyer = PirBuyer(config, "buyer", table, ["ID-001", "ID-001", "nobody"])
    holder, _ = run(config, buyer, holder_key, table)
    assert holder.usage().units == {"oprf_evaluations": 5}
    found = buyer.results()
    assert found["ID-001"] is not None and found["nobody"] is None


def test_holder_refuses_malformed_query(holder_key: OprfKey, table: OprfTable) -> None:
    config = LookupConfig("m", "holder", "buyer", "pir", table.header, 1)
    header = table.header
    for elements, match in (
        (bytes(32), "identity"),
        (b"\xff" * 32, "malformed"),
        (bytes(64), "declared 1"),
    ):
        holder = LookupHolder(config, "holder", holder_key, header)
        payload = messages.encode(
            messages.QUERY, config.digest, header.content_hash, header.key_id, elements
        )
        with pytest.raises(ProtocolError, match=match):
            holder.receive(Inbound("buyer", messages.QUERY, payload))
    holder = LookupHolder(config, "holder", holder_key, header)
    with pytest.raises(ProtocolError, match="expects oprf/query from buyer"):
        holder.receive(Inbound("mallory", messages.QUERY, b""))


def test_dropped_holder_aborts_buyer(holder_key: OprfKey, table: OprfTable) -> None:
    config = LookupConfig("d", "holder", "buyer", "pir", table.header, 1)
    buyer = PirBuyer(config, "buyer", table, ["ID-001"])
    buyer.start()
    with pytest.raises(ProtocolAbort, match="holder dropped during oprf/evaluate"):
        buyer.dropped(frozenset({"holder"}))


def test_tampered_download_refused(table: OprfTable) -> None:
    blob = encode_table(table)
    with pytest.raises(ProtocolError, match="size does not match"):
        decode_table(blob + b"\x00")
    with pytest.raises(ProtocolError):
        decode_table(blob[:-1])
    with pytest.raises(ProtocolError, match="cap"):
        decode_table(blob, max_bytes=len(blob) - 1)


def test_normalisation_rules_travel_with_the_table(holder_key: OprfKey) -> None:
    strict = build_table(
        holder_key,
        dataset="strict",
        content_hash=V1,
        rows=ROWS[:5],
        id_column="id",
        pir_fields=("name",),
        rules={"id": ColumnRule("id", casefold=False)},
    )
    cached = decode_table(encode_table(strict))
    assert cached.header == strict.header
    assert cached.header.rules[0] == ColumnRule("id", casefold=False)
    config = LookupConfig("r", "holder", "buyer", "pir", strict.header, 2)
    buyer = PirBuyer(config, "buyer", cached, ["ID-001", "id-002"])
    run(config, buyer, holder_key, strict)
    assert buyer.results() == {"ID-001": {"name": ROWS[1]["name"]}, "id-002": None}
