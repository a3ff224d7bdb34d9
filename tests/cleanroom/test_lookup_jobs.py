"""``verify`` and ``pir_lookup`` end to end in an in-process federation: answers
equal a plaintext lookup, quotas refuse before work, a changed dataset gets a new
table, and nothing the coordinator keeps holds a claimed value or key."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pandas as pd
import pytest
import yaml

from cleanroom.catalog import DatasetInfo
from cleanroom.errors import SpecError
from cleanroom.jobtypes.lookup import downloaded_table
from cleanroom.local import default_policy
from cleanroom.testing import InProcessFederation
from protocols.party import ANALYST, Inbound

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

        return unicodedata.normalize(
            "NFC", unicodedata.normalize("NFC", v).strip().casefold()
        )

    by_id = {norm(r[0]): r for r in ROWS}
    row = by_id.get(norm(claim[0]))
    return {
        "name": row is not None and norm(row[1]) == norm(claim[1]),
        "phone": row is not None and norm(row[2]) == norm(claim[2]),
    }


def test_verify_per_field_equals_plaintext_lookup(fed: InProcessFederation) -> None:
    view = fed.run(
        _spec("verify", records=len(CLAIMS), fields=["name", "phone"]),
        local_inputs={"claims": _claims_csv(CLAIMS)},
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
        local_inputs={"claims": _claims_csv(CLAIMS[:2])},
    )
    assert view.job.state.value == "succeeded", view.job.reason
    result = fed.client.result(view.job.job_id)["result"]
    assert [r["match"] for r in result["records"]] == [True, False]
    assert all("fields" not in r for r in result["records"])


def test_pir_returns_exactly_the_permitted_fields(fed: InProcessFederation) -> None:
    keys = "P-1004\nP-0000\n p-1005\n"
    view = fed.run(
        _spec("pir_lookup", lookups=3, fields=["name", "city"]),
        local_inputs={"keys": keys.encode()},
    )
    assert view.job.state.value == "succeeded", view.job.reason
    lookups = fed.client.result(view.job.job_id)["result"]["lookups"]
    assert lookups == [
        {
            "key": "P-1004",
            "found": True,
            "record": {"name": "Alan Turing", "city": "Manchester"},
        },
        {"key": "P-0000", "found": False, "record": None},
        {
            "key": " p-1005",
            "found": True,
            "record": {"name": "Hedy Lamarr", "city": "Los Angeles"},
        },
    ]


def test_batch_beyond_quota_is_refused_before_work(fed: InProcessFederation) -> None:
    first = fed.run(
        _spec("verify", records=4, fields=["name"]),
        local_inputs={"claims": _claims_csv(CLAIMS)},
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
        local_inputs={"claims": _claims_csv(CLAIMS[:3])},
    )
    assert second.job.state.value == "refused"
    assert "verified_records" in second.job.reason
    assert used() == before


def test_cached_table_is_used_and_a_changed_dataset_gets_a_new_one() -> None:
    with InProcessFederation({HOLDER: FRAME}, id_column="id", policy=_policy()) as fed:
        spec = _spec("pir_lookup", lookups=1, fields=["city"])
        first = fed.run(spec, local_inputs={"keys": b"P-1001"})
        assert first.job.state.value == "succeeded", first.job.reason
        opened = fed.client.opened(first.job.job_id)
        table = downloaded_table(opened.transcript)
        assert table is not None
        version = opened.reading["table_version"]
        cached = fed.run(
            _spec("pir_lookup", lookups=1, fields=["city"], table=version),
            local_inputs={"keys": b"P-1002", "table": table},
        )
        assert cached.job.state.value == "succeeded", cached.job.reason
        again = fed.client.opened(cached.job.job_id)
        assert downloaded_table(again.transcript) is None  # nothing re-sent
        assert again.reading["lookups"][0]["record"] == {"city": "New York"}
        # The holder's data changes: the node restarts on the new version.
        fed.stop_node(HOLDER)
        changed = FRAME.copy()
        changed.loc[1, "city"] = "Arlington"
        fed.start_node(HOLDER, changed)
        fed.wait_connected()
        stale = fed.run(
            _spec("pir_lookup", lookups=1, fields=["city"], table=version),
            local_inputs={"keys": b"P-1002", "table": table},
        )
        assert stale.job.state.value == "succeeded", stale.job.reason
        fresh = fed.client.opened(stale.job.job_id)
        assert fresh.reading["table_version"] != version
        assert downloaded_table(fresh.transcript) is not None  # the new version
        assert fresh.reading["lookups"][0]["record"] == {"city": "Arlington"}


def test_holder_policy_limits_mode_and_batch() -> None:
    with InProcessFederation(
        {HOLDER: FRAME},
        id_column="id",
        policy=_policy(),
        jobtypes={"verify": {"modes": ["all_fields"], "max_batch": 3}},
    ) as fed:
        per_field = fed.run(
            _spec("verify", records=2, fields=["name"]),
            local_inputs={"claims": _claims_csv(CLAIMS[:2])},
        )
        assert per_field.job.state.value == "refused"
        assert "allows only all_fields" in per_field.job.reason
        big = fed.run(
            _spec("verify", records=4, fields=["name", "phone"], mode="all_fields"),
            local_inputs={"claims": _claims_csv(CLAIMS)},
        )
        assert big.job.state.value == "refused"
        assert "exceed this holder's 3" in big.job.reason


def test_bad_claims_are_refused_before_submission(fed: InProcessFederation) -> None:
    bad = [
        (
            _spec("verify", records=3, fields=["name"]),
            _claims_csv(CLAIMS[:2]),
            "2 claimed",
        ),
        (
            _spec("verify", records=1, fields=["city"]),
            _claims_csv(CLAIMS[:1]),
            "'city'",
        ),
        (_spec("verify", records=1, fields=["name"]), b"\xff\xfe", "UTF-8"),
    ]
    for spec, claims, problem in bad:
        with pytest.raises(SpecError, match=problem):
            fed.client.submit(spec, local_inputs={"claims": claims})
    with pytest.raises(SpecError, match=r"inputs\.claims"):
        fed.client.submit(_spec("verify", records=1, fields=["name"]))
    with pytest.raises(SpecError, match="3 keys"):
        fed.client.submit(
            _spec("pir_lookup", lookups=2, fields=["name"]),
            local_inputs={"keys": b"a\nb\nc"},
        )
    assert fed.client.list_jobs() == []


def test_repeated_claims_are_padded_to_the_declared_batch(
    fed: InProcessFederation,
) -> None:
    claims = [CLAIMS[0], CLAIMS[0], CLAIMS[3]]
    view = fed.run(
        _spec("verify", records=3, fields=["name", "phone"]),
        local_inputs={"claims": _claims_csv(claims)},
    )
    assert view.job.state.value == "succeeded", view.job.reason
    got = [r["fields"] for r in fed.client.result(view.job.job_id)["result"]["records"]]
    assert got == [_plain_verify(c) for c in claims]


def test_the_holder_reviews_counts_and_fields_never_values() -> None:
    from cleanroom import jobtypes
    from cleanroom.jobspec import parse_spec

    spec = parse_spec(_spec("verify", records=7, fields=["name"], mode="all_fields"))
    review = jobtypes.get("verify").review(spec, "j", None)  # type: ignore[arg-type]
    assert review.document == {"records": 7, "fields": ["name"], "mode": "all_fields"}
    assert "will not see the claimed values" in " ".join(review.lines)
    spec = parse_spec(_spec("pir_lookup", lookups=3, fields=["city"]))
    review = jobtypes.get("pir_lookup").review(spec, "j", None)  # type: ignore[arg-type]
    assert review.document == {"lookups": 3, "fields": ["city"]}


class _Audit:
    def append(self, kind: str, *, job_id: str | None = None, data: dict) -> None:  # type: ignore[type-arg]
        self.last = (kind, data)


class _Datasets:
    def info(self, name: str) -> DatasetInfo:
        return DatasetInfo(name, (), "<10", "id")

    def frame(self, name: str) -> pd.DataFrame:
        return FRAME

    def names(self) -> list[str]:
        return [HOLDER]


def test_an_absent_key_looks_the_same_to_the_holder() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from cleanroom import jobtypes
    from cleanroom.jobspec import parse_spec
    from cleanroom.jobtypes.lookup.service import LookupSettings, TableService

    service = TableService(LookupSettings(), _Audit(), _Datasets())
    spec = parse_spec(_spec("pir_lookup", lookups=1, fields=["city"]))
    job = jobtypes.get("pir_lookup")
    node_key = Ed25519PrivateKey.generate()
    public = {HOLDER: node_key.public_key().public_bytes_raw()}
    seen = []
    for key in (b"P-1003", b"P-4040"):
        node = job.node_party(
            jobtypes.NodeContext(
                "j", spec, HOLDER, HOLDER, FRAME, "h", 1, node_key, (HOLDER,), {},
                service=service,
            )
        )  # fmt: skip
        buyer = job.analyst_party(
            jobtypes.AnalystContext(
                "j", spec, "analyst", (HOLDER,), Ed25519PrivateKey.generate(), public,
                local_inputs={"keys": key},
            )
        )  # fmt: skip
        (table,) = node.start()
        (query,) = buyer.receive(Inbound(HOLDER, table.stage, table.payload))
        replies = node.receive(Inbound(ANALYST, query.stage, query.payload))
        seen.append(
            (len(query.payload), [len(r.payload) for r in replies], node.usage())
        )
        for reply in replies:
            if reply.recipient == ANALYST:
                buyer.receive(Inbound(HOLDER, reply.stage, reply.payload))
        assert buyer.finished
    assert seen[0] == seen[1]  # same bytes in, same bytes out, same meter
