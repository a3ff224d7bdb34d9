"""Job-spec parsing: every malformed input names its field path."""

import pytest

from cleanroom import jobtypes
from cleanroom.errors import SpecError
from cleanroom.jobspec import parse_spec

GOOD = """
type: count
inputs:
  - {node: a, dataset: d}
purpose: research
"""


def test_good_spec_parses() -> None:
    spec = parse_spec(GOOD)
    assert spec.type == "count"
    assert spec.nodes == ("a",)
    assert spec.params == {}
    assert len(spec.spec_hash) == 64


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ("type: [unclosed", "", "malformed YAML: line 1"),
        ("- just\n- a list", "", "must be a mapping"),
        ("inputs: []\npurpose: x", "type", "missing"),
        ("type: count\npurpose: x", "inputs", "non-empty list"),
        (
            "type: count\ninputs: [{node: a}]\npurpose: x",
            "inputs[0].dataset",
            "non-empty string",
        ),
        (
            "type: count\ninputs: [{node: a, dataset: d, x: 1}]\npurpose: x",
            "inputs[0].x",
            "unknown",
        ),
        (
            "type: count\ninputs: [{node: a, dataset: d}, {node: a, dataset: e}]\npurpose: x",
            "inputs[1].node",
            "more than once",
        ),
        ("type: count\ninputs: [{node: a, dataset: d}]", "purpose", "missing"),
        (
            "type: count\ninputs: [{node: a, dataset: d}]\npurpose: x\nparams: 3",
            "params",
            "mapping",
        ),
        (
            "type: count\ninputs: [{node: a, dataset: d}]\npurpose: x\nextra: 1",
            "extra",
            "unknown",
        ),
    ],
)
def test_bad_specs_name_the_field(text: str, path: str, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert info.value.path == path
    assert fragment in info.value.problem


def test_unknown_job_type_lists_known_types() -> None:
    with pytest.raises(SpecError) as info:
        jobtypes.get("no_such_type")
    assert info.value.path == "type"
    assert "count" in info.value.problem


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("type: count\ntype: x\ninputs: []\npurpose: r\n", "duplicate key"),
        ("type: count\nparams: {where: 1, where: 2}\n", "duplicate key"),
        ("a: &x 1\nb: *x\n", "aliases are not allowed"),
        ("x: " + "[" * 3000 + "]" * 3000 + "\n", "nested deeper than 64"),
        (
            "type: count\ninputs: [{node: a, dataset: d}]\npurpose: r\n"
            "deadline_seconds: 0\n",
            "deadline_seconds",
        ),
    ],
)
def test_hostile_yaml_is_refused_with_a_clear_error(text: str, fragment: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(text)
    assert fragment in str(caught.value)


def test_a_deadline_is_read() -> None:
    spec = parse_spec(
        "type: count\ninputs: [{node: a, dataset: d}]\npurpose: r\n"
        "deadline_seconds: 2.5\n"
    )
    assert spec.deadline_seconds == 2.5
