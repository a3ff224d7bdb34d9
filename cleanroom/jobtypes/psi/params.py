"""``psi`` params: key columns with their normalisation, the output mode, who
receives it and the size cap; one :class:`PsiConfig` per job from them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from cleanroom.errors import ConfigError, SpecError
from cleanroom.jobspec import JobSpec
from protocols.psi import ColumnRule, OutputMode, PsiConfig

DEFAULT_MAX_ITEMS: Final = 1 << 20
_KEYS: Final = ("columns", "output", "receivers", "max_items")
_RULE_KEYS: Final = ("name", "trim", "casefold", "nfc", "blank")
_OUTPUTS: Final = ("intersection", "cardinality", "aligned")


@dataclass(frozen=True)
class PsiParams:
    """Every input holds the key ``columns`` under the same names; ``receivers``
    (nodes) learn the ``output``; ``max_items`` caps each set's distinct keys."""

    columns: tuple[ColumnRule, ...]
    output: OutputMode
    receivers: tuple[str, ...]
    max_items: int

    def config(self, job_id: str, parties: Sequence[str]) -> PsiConfig:
        """The protocol's configuration, identical on every node."""
        return PsiConfig.create(
            session_id=job_id,
            parties=parties,
            output=self.output,
            receivers=self.receivers,
            columns=self.columns,
            max_items=self.max_items,
        )

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def _rule(raw: Any, path: str) -> ColumnRule:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be a column name or a rule mapping")
    extra = sorted(set(raw) - set(_RULE_KEYS))
    if extra:
        raise SpecError(
            f"{path}.{extra[0]}", f"unknown (allowed: {', '.join(_RULE_KEYS)})"
        )
    try:
        return ColumnRule(
            name=raw.get("name"),  # type: ignore[arg-type]
            trim=raw.get("trim", True),
            casefold=raw.get("casefold", True),
            nfc=raw.get("nfc", True),
            blank=raw.get("blank", "refuse"),
        )
    except ConfigError as exc:
        raise SpecError(path, str(exc)) from None


def parse(spec: JobSpec) -> PsiParams:
    params = spec.params
    extra = sorted(set(params) - set(_KEYS))
    if extra:
        raise SpecError(
            f"params.{extra[0]}", f"unknown parameter (allowed: {', '.join(_KEYS)})"
        )
    nodes = [i.node for i in spec.inputs]
    if len(set(nodes)) != len(nodes) or not 2 <= len(nodes) <= 16:
        raise SpecError("inputs", "psi needs 2..16 inputs on distinct nodes")
    raw_columns = params.get("columns")
    if not isinstance(raw_columns, list) or not raw_columns:
        raise SpecError("params.columns", "must be a non-empty list of key columns")
    columns = tuple(_rule(c, f"params.columns[{i}]") for i, c in enumerate(raw_columns))
    output = params.get("output", "cardinality")
    if output not in _OUTPUTS:
        raise SpecError("params.output", f"must be one of {', '.join(_OUTPUTS)}")
    receivers = params.get("receivers", nodes)
    if (
        not isinstance(receivers, list)
        or not receivers
        or not set(receivers) <= set(nodes)
        or len(set(receivers)) != len(receivers)
    ):
        raise SpecError("params.receivers", "must be a non-empty list of input nodes")
    if output == "aligned" and set(receivers) != set(nodes):
        raise SpecError("params.receivers", "aligned output goes to every input")
    max_items = params.get("max_items", DEFAULT_MAX_ITEMS)
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise SpecError("params.max_items", "must be a positive integer")
    parsed = PsiParams(columns, cast(OutputMode, output), tuple(receivers), max_items)
    try:
        parsed.config("check", nodes)
    except ConfigError as exc:
        raise SpecError("params", str(exc)) from None
    return parsed
