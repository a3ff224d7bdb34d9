"""The ``sandbox`` section of a node's dataset policy: how the holder's approvals
apply, how often approved code may run, which outputs wait for review, and the
vetting information budget. Parsed by the job type (``JobType.policy_rules``) so
that the node's policy engine never names it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from cleanroom.errors import ConfigError

APPROVALS: Final = ("per_digest", "per_run")
"""per_digest: one approval covers every run of that exact code on the dataset;
per_run: every job waits for the holder, approved code or not."""
REVIEWS: Final = ("flagged", "always")
"""flagged: only outputs vetting flags wait for the holder; always: every one."""
KEYS: Final = ("approval", "max_runs_per_digest", "review_outputs",
               "max_released_values")  # fmt: skip


def parse_rules(rules: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """The section checked, every default spelled out."""
    for key in rules:
        if key not in KEYS:
            raise ConfigError(
                f"{where}.{key}: unknown key (allowed: {', '.join(KEYS)})"
            )
    out: dict[str, Any] = {
        "approval": rules.get("approval", APPROVALS[0]),
        "max_runs_per_digest": rules.get("max_runs_per_digest"),
        "review_outputs": rules.get("review_outputs", REVIEWS[0]),
        "max_released_values": rules.get("max_released_values"),
    }
    for key, allowed in (("approval", APPROVALS), ("review_outputs", REVIEWS)):
        if out[key] not in allowed:
            raise ConfigError(
                f"{where}.{key}: expected {' or '.join(map(repr, allowed))}, "
                f"got {out[key]!r}"
            )
    for key in ("max_runs_per_digest", "max_released_values"):
        value = out[key]
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(f"{where}.{key}: expected an integer >= 1, got {value!r}")
    return out
