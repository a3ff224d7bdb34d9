"""``verify`` and ``pir_lookup`` end to end in an in-process federation: answers
equal a plaintext lookup, quotas refuse before work, a changed dataset gets a new
table, and nothing the coordinator keeps holds a claimed value or key."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pandas as pd
import pytest
import yaml

from cleanroom.local import default_policy
from cleanroom.testing import InProcessFederation

HOLDER = "telecom"
ROWS = [
    ("P-1001", "Ada Lovelace", "+44 20 7946 0001", "London"),
    ("P-1002", "Grace Hopper", "+1 212 555 0102", "New York"),
    ("P-1003", "Émile Zola", "+33 1 4020 5003", "Paris"),
    ("P-1004", "Alan Turing", "+44 161 496 0004", "Manchester"),
    ("P-1005", "Hedy Lamarr", "+1 310 555 0105", "Los Angeles"),
    ("P-1006", "Ken Thompson", "+1 908 555 0106", "Murray Hill"),
]
FRAME = pd.DataFrame(ROWS, columns=["id", "name", "phone", "city"])
CLAIMS = [
    ("P-1001", "Ada Lovelace", "+44 20 7946 0001"),  # both match
    ("p-1002 ", "GRACE HOPPER", "+1 000 000 0000"),  # name matches after normalising
    ("P-1003", "E\u0301mile Zola", "+33 1 4020 5003"),  # NFD name: matches
    ("P-9999", "Nobody", "+1 000"),  # absent id
]
SECRET_VALUES = ["Ada Lovelace", "GRACE HOPPER", "+1 000 000 0000", "P-9999", "Nobody"]


def _policy(quota: dict[str, dict[str, int]] | None = None) -> dict[str, object]:
    policy = default_policy("analyst")
    entry = dict(policy["default"])  # type: ignore[arg-type]
    entry["min_group_size"] = 1
    if quota:
        entry["quotas"] = quota
    return {"default": entry}


@pytest.fixture
def fed() -> Iterator[InProcessFederation]:
    with InProcessFederation(
        {HOLDER: FRAME},
        id_column="id",
        policy=_policy({"verified_records": {"per_day": 6}, "lookups": {"total": 5}}),
    ) as f:
        yield f


def _claims_csv(rows: list[tuple[str, ...]]) -> bytes:
    out = io.StringIO()
    pd.DataFrame(rows, columns=["id", "name", "phone"]).to_csv(out, index=False)
    return out.getvalue().encode()


def _spec(job_type: str, **params: object) -> str:
    return yaml.safe_dump(
        {
            "type": job_type,
            "inputs": [{"node": HOLDER, "dataset": HOLDER}],
            "params": {"key": "id", **params},
            "purpose": "test",
        }
    )


def _plain_verify(claim: tuple[str, ...]) -> dict[str, bool]:
    def norm(v: str) -> str:
        import unicodedata

        return unicodedata.normalize("NFC", unicodedata.normalize("NFC", v).strip().casefold())

    by_id = {norm(r[0]): r for r in ROWS}
    row = by_id.get(norm(claim[0]))
    return {
        "name": row is not None and norm(row[1]) == norm(claim[1]),
        "phone": row is not None and norm(row[2]) == norm(claim[2]),
    }


def test_verify_per_field_equals_plaintext_lookup(fed: InProcessFederation) -> None:
    view = fed.run(
        _spec("verify", records=len(CLAIMS), fields=["name", "phone"]),
        inputs={"claims": _claims_csv(CLAIMS)},
    )
    assert view.job.state.value == "succeeded", view.job.reason
    result = fed.client.result(view.job.job_id)["result"]
    got = [r["fields"] for r in result["records"]]
    assert got == [_plain_verify(c) for c in CLAIMS]
    assert got[1] == {"name": True, "phone": False}
    assert result["table_records"] == len(ROWS)
    usage = fed.agents[HOLDER].meters.usage()
    used = {u.meter: u.used_total for u in usage if u.meter == "verified_records"}
    assert used == {"verified_records": len(CLAIMS)}


def test_verify_all_fields_gives_one_bit(fed: InProcessFederation) -> None:
    view = fed.run(
        _spec("verify", records=2, fields=["name", "phone"], mode="all_fields"),
        inputs={"claims": _claims_csv(CLAIMS[:2])},
    )
    assert view.job.state.value == "succeeded", view.job.reason
    result = fed.client.result(view.job.job_id)["result"]
    assert [r["match"] for r in result["records"]] == [True, False]
    assert all("fields" not in r for r in result["records"])


def test_pir_returns_exactly_the_permitted_fields(fed: InProcessFederation) -> None:
    keys = "P-1004\nP-0000\n p-1005\n"
    view = fed.run(
        _spec("pir_lookup", lookups=3, fields=["name", "city"]),
        inputs={"keys": keys.encode()},
    )
    assert view.job.state.value == "succeeded", view.job.reason
    lookups = fed.client.result(view.job.job_id)["result"]["lookups"]
    assert lookups == [
        {"key": "P-1004", "found": True, "record": {"name": "Alan Turing", "city": "Manchester"}},
        {"key": "P-0000", "found": False, "record": None},
        {"key": " p-1005", "found": True, "record": {"name": "Hedy Lamarr", "city": "Los Angeles"}},
    ]


def test_batch_beyond_quota_is_refused_before_work(fed: InProcessFederation) -> None:
    first = fed.run(
        _spec("verify", records=4, fields=["name"]),
        inputs={"claims": _claims_csv(CLAIMS)},
    )
    assert first.job.state.value == "succeeded", first.job.reason
    meters = fed.agents[HOLDER].meters

    def used() -> float:
        return sum(
            u.used_total + u.reserved_total
            for u in meters.usage()
            if u.meter == "verified_records"
        )

    before = used()
    second = fed.run(
        _spec("verify", records=3, fields=["name"]),
        inputs={"claims": _claims_csv(CLAIMS[:3])},
    )
    assert second.job.state.value == "refused"
    assert "verified_records" in second.job.reason
    assert used() == before
