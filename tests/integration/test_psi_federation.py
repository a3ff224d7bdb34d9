"""The ``psi`` job over gRPC with real processes: a coordinator and two holder
nodes started by ``cleanroom local up``, the analyst submitting through the CLI.
The released cardinality equals the plaintext intersection after normalisation,
and only the named receiver reports itself as one."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers.federation import cli

from cleanroom import local

pytestmark = pytest.mark.integration


def _csvs(directory: Path) -> dict[str, Path]:
    bank = [f"user{i}@example.org" for i in range(0, 150)]
    # the telecom's copy of the shared keys differs in case and whitespace only
    telecom = [f" USER{i}@Example.org " for i in range(100, 220)]
    paths = {"bank": directory / "bank.csv", "telecom": directory / "telecom.csv"}
    pd.DataFrame({"email": bank, "balance": range(len(bank))}).to_csv(
        paths["bank"], index=False
    )
    pd.DataFrame({"email": telecom, "plan": ["a"] * len(telecom)}).to_csv(
        paths["telecom"], index=False
    )
    return paths


def test_psi_cardinality_and_receivers_over_grpc(tmp_path: Path) -> None:
    paths = _csvs(tmp_path)
    workdir = tmp_path / "fed"
    local.up(workdir=workdir, nodes=list(paths.items()))
    try:
        spec = tmp_path / "psi.yaml"
        spec.write_text(
            "type: psi\n"
            "inputs: [{node: bank, dataset: bank}, {node: telecom, dataset: telecom}]\n"
            "params: {columns: [email], output: intersection, receivers: [bank]}\n"
            "purpose: overlap\n"
        )
        fed = str(workdir / "federation.json")
        proc = cli(
            "job", "submit", str(spec), "--federation", fed, "--wait", "--json",
            check=True,
        )  # fmt: skip
        doc = json.loads(proc.stdout)
        assert doc["state"] == "succeeded", doc
        result = doc["result"]["result"]
        assert result["cardinality"] == 50  # user100..user149
        receivers = {n["node"]: n["receiver"] for n in result["nodes"]}
        assert receivers == {"bank": True, "telecom": False}
        assert "example.org" not in proc.stdout.casefold()  # no raw key released
    finally:
        local.down(workdir)
