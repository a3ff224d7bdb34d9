"""Output vetting without Docker: formats, sizes, and each disclosure rule."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cleanroom.errors import ConfigError, SandboxError
from sandbox.outputs import cell_token
from sandbox.vetting import VettingRules, vet_outputs

DATA = pd.DataFrame()


@pytest.fixture(autouse=True)
def _data(dataset: pd.DataFrame) -> None:
    global DATA
    DATA = dataset


def _vet(rules: VettingRules, **files: bytes | str) -> tuple[str, list[str]]:
    encoded = {
        k.replace("_", "."): v.encode() if isinstance(v, str) else v
        for k, v in files.items()
    }
    result = vet_outputs(encoded, DATA, rules)
    return result.status, result.reasons


def _json(value: object) -> str:
    return json.dumps(value)


def test_aggregate_statistics_pass_and_are_rounded(rules: VettingRules) -> None:
    table = DATA.groupby("region").agg(n=("age", "size"), mean_age=("age", "mean"))
    result = vet_outputs(
        {
            "by_region.csv": table.reset_index().to_csv(index=False).encode(),
            "metrics.json": _json(
                {"auc": 0.7312345, "coef": [0.123456, -1.98765]}
            ).encode(),
        },
        DATA,
        rules,
    )
    assert result.status == "pass", result.reasons
    released = result.release()
    assert json.loads(released["metrics.json"]) == {
        "auc": 0.731,
        "coef": [0.123, -1.988],
    }
    frame = pd.read_csv(pd.io.common.BytesIO(released["by_region.csv"]))
    assert all(frame["mean_age"] == frame["mean_age"].round(3))


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("model.pkl", b"\x80\x04", "only .json and .csv"),
        ("notes.json", b"{not json", "not valid UTF-8 JSON"),
        ("table.csv", b"\xff\xfe\x00garbage\x00", "not a readable CSV"),
    ],
)
def test_only_parseable_json_and_csv_are_released(
    rules: VettingRules, name: str, data: bytes, reason: str
) -> None:
    result = vet_outputs({name: data}, DATA, rules)
    assert result.status == "held"
    assert any(reason in r for r in result.reasons)
    with pytest.raises(SandboxError, match="output held"):
        result.release()


def test_size_limits_per_file_and_total() -> None:
    rules = VettingRules(max_file_bytes=1000, max_total_bytes=1500)
    status, reasons = _vet(rules, a_json=_json(list(range(400))))
    assert status == "held" and "larger than 1000 bytes" in reasons[0]
    status, reasons = _vet(
        rules, a_json="[" + "1," * 400 + "1]", b_json="[" + "2," * 400 + "2]"
    )
    assert status == "held" and any("total more than" in r for r in reasons)


def test_small_counts_are_held(rules: VettingRules) -> None:
    status, reasons = _vet(
        rules,
        cells_json=_json(
            [{"region": "north", "count": 4}, {"region": "south", "count": 40}]
        ),
    )
    assert status == "held"
    assert (
        "count column 'count' has 1 value(s) below the minimum cell count 10"
        in reasons[0]
    )
    nested = _json({"groups": {"rare": {"n": 3}}})
    assert _vet(rules, g_json=nested)[0] == "held"


def test_sensitive_values_are_held(rules: VettingRules) -> None:
    diagnosis = DATA["diagnosis"].iloc[5]
    status, reasons = _vet(rules, top_csv=f"code,share\n{diagnosis},0.25\n")
    assert status == "held"
    assert reasons == [
        "top.csv: column 'code' contains raw values of sensitive column 'diagnosis'"
    ]
    income = float(DATA["income"].iloc[3])
    assert _vet(rules, m_json=_json({"max_income": income}))[0] == "held"


def test_rounding_cannot_hide_a_sensitive_value(rules: VettingRules) -> None:
    income = float(DATA["income"].iloc[3])
    nudged = income + 0.0001  # rounds back onto the raw value when released
    assert _vet(rules, m_json=_json({"mean": nudged}))[0] == "held"


def test_identifier_values_are_held(rules: VettingRules) -> None:
    ident = DATA["patient_id"].iloc[0]
    assert _vet(rules, a_json=_json({"best": ident}))[0] == "held"
    assert _vet(rules, b_json=_json({ident: 0.9}))[0] == "held"  # hidden in a key
    assert _vet(rules, c_csv=f"who\n{ident.lower()}\n")[0] == "held"


def test_numeric_identifiers_need_more_than_one_coincidence() -> None:
    data = DATA.assign(patient_id=range(1000, 1000 + len(DATA)))
    rules = VettingRules(identifier_columns=["patient_id"], count_columns=[])
    assert (
        vet_outputs({"a.json": b'{"iterations": 1003}'}, data, rules).status == "pass"
    )
    listed = _json({"ids": [1001, 1002, 1003, 1004]}).encode()
    assert vet_outputs({"b.json": listed}, data, rules).status == "held"
    named = _json([{"patient_id": 1001, "score": 0.5}]).encode()
    assert vet_outputs({"c.json": named}, data, rules).status == "held"


def test_raw_rows_are_held_even_renamed_or_nested(rules: VettingRules) -> None:
    row = DATA.iloc[17]
    # Quasi-identifiers only (age is rare in this small table), no sensitive values.
    plain = DATA.iloc[:3][["age", "sex", "region", "label"]].to_csv(index=False)
    status, reasons = _vet(rules, a_csv=plain)
    assert status == "held"
    assert "a.csv: row 2 reproduces a dataset row (4 matching columns)" in reasons
    leaked = _json(
        {
            "x": {
                "y": [
                    {
                        "A": int(row["age"]),
                        "B": row["region"],
                        "C": {"D": float(row["income"]) / 1},
                    }
                ]
            }
        }
    )
    rules_no_sensitive = VettingRules(min_cell_count=10, count_columns=[])
    status, reasons = _vet(rules_no_sensitive, leak_json=leaked)
    assert status == "held"
    assert any("reproduces a dataset row (3 matching columns)" in r for r in reasons)


def test_group_by_keys_are_not_raw_rows() -> None:
    rules = VettingRules(min_cell_count=5, count_columns=["count"])
    table = DATA.groupby(["sex", "region", "label"]).size().reset_index(name="count")
    assert (table["count"] >= 5).all()
    result = vet_outputs({"t.csv": table.to_csv(index=False).encode()}, DATA, rules)
    assert result.status == "pass", result.reasons


def test_directory_outputs_refuse_links(tmp_path: Path, rules: VettingRules) -> None:
    (tmp_path / "ok.json").write_text('{"n": 50}')
    (tmp_path / "link.json").symlink_to("/etc/hostname")
    result = vet_outputs(tmp_path, DATA, rules)
    assert result.status == "held"
    assert "link.json: not a plain file" in result.reasons


def test_empty_output_is_held(tmp_path: Path, rules: VettingRules) -> None:
    assert vet_outputs(tmp_path, DATA, rules).reasons == ["the job wrote no output"]


def test_rules_are_validated() -> None:
    with pytest.raises(ConfigError):
        VettingRules(min_cell_count=0)
    with pytest.raises(ConfigError):
        VettingRules(rounding=-1)
    with pytest.raises(ConfigError, match="columns the dataset lacks"):
        vet_outputs({"a.json": b"{}"}, DATA, VettingRules(sensitive_columns=["ssn"]))


def test_cell_tokens_compare_by_value() -> None:
    assert cell_token(1001) == cell_token(1001.0) == cell_token(" 1001 ")
    assert cell_token("Alice") == cell_token("alice")
    assert cell_token(True) is None and cell_token(float("nan")) is None
    assert cell_token(0.1) != cell_token(0.10000001)
