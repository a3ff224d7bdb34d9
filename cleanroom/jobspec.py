"""Job specs: the YAML an analyst submits, parsed and checked before anything runs.

    type: count
    inputs:
      - {node: hospital-a, dataset: patients}
    params: {where: [{column: age, op: ">=", value: 50}]}
    purpose: research

Every error names the field path (``inputs[1].dataset``) and what is wrong.
Optional top-level keys: ``description``, and ``deadline_seconds`` (how long any
stage may wait for a party before that party counts as dropped; the job type's
default otherwise, and each node's policy caps it). Duplicate keys, anchors and
aliases, and nesting deeper than 64 levels are refused.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from cleanroom.errors import SpecError

_TOP_KEYS: Final = {
    "type",
    "inputs",
    "params",
    "purpose",
    "description",
    "deadline_seconds",
}
_MAX_SPEC_BYTES: Final = 1 << 20
MAX_DEPTH: Final = 64
MAX_DEADLINE_SECONDS: Final = 7 * 24 * 3600.0


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, aliases and deep nesting, with the
    path of the offending key."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise SpecError(
                "", f"line {event.start_mark.line + 1}: YAML aliases are not allowed"
            )
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise SpecError(
                    "",
                    f"line {event.start_mark.line + 1}: nested deeper than "
                    f"{MAX_DEPTH} levels",
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: Any) -> Any:
        _check_keys(node, "")
        return super().construct_document(node)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                raise SpecError(
                    "", f"line {key_node.start_mark.line + 1}: a key must be scalar"
                )
            if key in seen:
                raise SpecError(
                    str(key),
                    f"duplicate key on line {key_node.start_mark.line + 1}",
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_keys(node: Any, path: str) -> None:
    """Refuse a repeated key anywhere in the document, naming its field path
    (``params.where[0].column``); composing has already bounded the depth."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError(
                    path, f"line {key_node.start_mark.line + 1}: a key must be scalar"
                )
            key = str(key_node.value)
            here = f"{path}.{key}" if path else key
            if key in seen:
                raise SpecError(
                    here, f"duplicate key on line {key_node.start_mark.line + 1}"
                )
            seen.add(key)
            _check_keys(value, here)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_keys(item, f"{path}[{i}]")


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
    deadline_seconds: float | None = None

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
        data = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader
    except RecursionError:
        raise SpecError("", f"nested deeper than {MAX_DEPTH} levels") from None
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
    deadline = data.get("deadline_seconds")
    if deadline is not None and (
        isinstance(deadline, bool)
        or not isinstance(deadline, int | float)
        or not math.isfinite(deadline)
        or not 0 < deadline <= MAX_DEADLINE_SECONDS
    ):
        raise SpecError(
            "deadline_seconds",
            f"expected seconds in (0, {MAX_DEADLINE_SECONDS:g}], got {_show(deadline)}",
        )
    return JobSpec(
        job_type,
        tuple(inputs),
        params,
        purpose,
        description,
        text,
        None if deadline is None else float(deadline),
    )
