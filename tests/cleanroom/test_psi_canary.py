"""Canary: after a psi, a verify and a pir_lookup job, nothing the coordinator
stored or logged (SQLite store, audit log, log records) and nothing the holder
stored holds a raw key, a claimed value or a looked-up key."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cleanroom.local import default_policy
from cleanroom.testing import InProcessFederation

BANK = pd.DataFrame(
    {
        "id": ["C-7001", "C-7002", "C-7003"],
        "email": ["zed@canary.test", "yves@canary.test", "xan@canary.test"],
    }
)
TELECOM = pd.DataFrame(
    {
        "id": ["T-1", "T-2", "T-3"],
        "email": ["yves@canary.test", "wim@canary.test", "xan@canary.test"],
        "name": ["Yves Quarantotto", "Wim Sixtyseven", "Xan Ninetynine"],
    }
)
# What the buyer asks and the holder must never see (the holder has none of these).
CLAIMED = ["T-404", "Ursula Canaryclaim", "T-999"]
RAW_KEYS = ["zed@canary.test", "yves@canary.test", "wim@canary.test"]


def _spec(job_type: str, inputs: list[str], params: dict[str, object]) -> str:
    return yaml.safe_dump(
        {
            "type": job_type,
            "inputs": [{"node": n, "dataset": n} for n in inputs],
            "params": params,
            "purpose": "canary",
        }
    )


def test_nothing_kept_by_the_coordinator_holds_a_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = default_policy("analyst")
    policy["default"]["min_group_size"] = 1  # type: ignore[index]
    caplog.set_level(logging.DEBUG)
    with InProcessFederation(
        {"bank": BANK, "telecom": TELECOM},
        policy=policy,
        id_column="id",
        store_url=f"sqlite:///{tmp_path / 'store.db'}",
        directory=tmp_path / "fed",
    ) as fed:
        psi = fed.run(
            _spec(
                "psi",
                ["bank", "telecom"],
                {"columns": ["email"], "output": "intersection"},
            )
        )
        assert psi.job.state.value == "succeeded", psi.job.reason
        claims = "id,name\nT-404,Ursula Canaryclaim\nT-1,Yves Quarantotto\n"
        verify = fed.run(
            _spec(
                "verify", ["telecom"], {"key": "id", "records": 2, "fields": ["name"]}
            ),
            local_inputs={"claims": claims.encode()},
        )
        assert verify.job.state.value == "succeeded", verify.job.reason
        lookup = fed.run(
            _spec(
                "pir_lookup",
                ["telecom"],
                {"key": "id", "lookups": 2, "fields": ["name"]},
            ),
            local_inputs={"keys": b"T-999\nT-3\n"},
        )
        assert lookup.job.state.value == "succeeded", lookup.job.reason
        got = fed.client.result(lookup.job.job_id)["result"]["lookups"]
        assert got[1]["record"] == {"name": "Xan Ninetynine"}
        fed.kill_coordinator()
        coordinator = b"".join(
            p.read_bytes()
            for p in tmp_path.rglob("*")
            if p.is_file()
            and "nodes" not in p.parts
            and "analyst-state" not in p.parts
            and "pki" not in p.parts
        )
        holder = b"".join(
            p.read_bytes()
            for p in (tmp_path / "fed" / "nodes" / "telecom").rglob("*")
            if p.is_file() and p.suffix != ".csv"
        )
    logged = "\n".join(r.getMessage() for r in caplog.records).encode()
    assert b"purpose: canary" in coordinator  # the store was read
    for secret in RAW_KEYS + CLAIMED + ["Yves Quarantotto", "Xan Ninetynine"]:
        assert secret.encode() not in coordinator, secret
        assert secret.encode() not in logged, secret
    for secret in CLAIMED:
        assert secret.encode() not in holder, secret
