"""Job specs: the YAML an analyst submits, parsed and checked before anything runs.

    type: count
    inputs:
      - {node: hospital-a, dataset: patients}
    params: {where: [{column: age, op: ">=", value: 50}]}
    purpose: research

Every error names the field path (``inputs[1].dataset``) and what is wrong.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from cleanroom.errors import SpecError

_TOP_KEYS: Final = {"type", "inputs", "params", "purpose", "description"}
_MAX_SPEC_BYTES: Final = 1 << 20


@dataclass(frozen=True)
class JobInput:
    """One dataset a job reads: which node holds it and under what name."""

    node: str
    dataset: str


@dataclass(frozen=True)
class JobSpec:
    """A parsed, shape-checked job spec (catalog and job-type checks come after)."""

    type: str
    inputs: tuple[JobInput, ...]
    params: Mapping[str, Any]
    purpose: str
    description: str
    source: str

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(i.node for i in self.inputs)

    @property
    def spec_hash(self) -> str:
        """SHA-256 of the exact submitted text: what nodes approve and sign."""
        return hashlib.sha256(self.source.encode()).hexdigest()

    def input_for(self, node: str) -> JobInput:
        for item in self.inputs:
            if item.node == node:
                return item
        raise SpecError("inputs", f"node '{node}' is not an input of this job")


def _name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SpecError(path, f"expected a non-empty string, got {_show(value)}")
    return value.strip()


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"[:80]


def parse_spec(text: str) -> JobSpec:
    """Parse and shape-check a YAML job spec; SpecError names the field path."""
    if len(text.encode()) > _MAX_SPEC_BYTES:
        raise SpecError("", "job spec is larger than 1 MiB")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError("", f"malformed YAML: {where}{problem}") from None
    if not isinstance(data, dict):
        raise SpecError("", f"a job spec must be a mapping, got {_show(data)}")
    unknown = sorted(set(map(str, data)) - _TOP_KEYS)
    if unknown:
        raise SpecError(
            unknown[0], f"unknown field (allowed: {', '.join(sorted(_TOP_KEYS))})"
        )
    if "type" not in data:
        raise SpecError("type", "missing; name the job type, e.g. 'count'")
    job_type = _name(data["type"], "type")
    if "purpose" not in data:
        raise SpecError("purpose", "missing; say what the result is for")
    purpose = _name(data["purpose"], "purpose")
    raw_inputs = data.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise SpecError(
            "inputs",
            f"expected a non-empty list of {{node, dataset}}, got {_show(raw_inputs)}",
        )
    inputs: list[JobInput] = []
    seen: set[str] = set()
    for i, item in enumerate(raw_inputs):
        path = f"inputs[{i}]"
        if not isinstance(item, dict):
            raise SpecError(
                path, f"expected a mapping with node and dataset, got {_show(item)}"
            )
        extra = sorted(set(map(str, item)) - {"node", "dataset"})
        if extra:
            raise SpecError(
                f"{path}.{extra[0]}", "unknown field (allowed: node, dataset)"
            )
        node = _name(item.get("node"), f"{path}.node")
        dataset = _name(item.get("dataset"), f"{path}.dataset")
        if node in seen:
            raise SpecError(f"{path}.node", f"node '{node}' appears more than once")
        seen.add(node)
        inputs.append(JobInput(node, dataset))
    params = data.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise SpecError("params", f"expected a mapping, got {_show(params)}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise SpecError("description", f"expected a string, got {_show(description)}")
    return JobSpec(job_type, tuple(inputs), params, purpose, description, text)
