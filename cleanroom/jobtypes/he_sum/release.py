"""The analyst's reading of a decrypted ``he_sum`` vector: totals per cell."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cleanroom.jobtypes.he_sum.params import HEADER_SLOTS, HeSumParams


def read_totals(
    params: HeSumParams, values: Sequence[int], inputs: Sequence[str]
) -> dict[str, Any]:
    """Per cell: the pooled row count and column sums (and means) over the inputs
    that did not suppress it; ``suppressed_by`` counts the inputs that did."""
    step = 2.0**-params.scale_bits
    cells = []
    labels: Sequence[Any] = params.groups or (None,)
    for index, label in enumerate(labels):
        base = HEADER_SLOTS + index * params.per_cell
        suppressed, count = values[base], values[base + 1]
        sums = {
            column: values[base + 2 + j] * step
            for j, column in enumerate(params.columns)
        }
        cell: dict[str, Any] = {
            "count": count,
            "sum": sums,
            "mean": {c: (s / count if count else None) for c, s in sums.items()},
            "suppressed_by": suppressed,
        }
        if params.privacy is not None:
            std = params.privacy.total_std(len(inputs))
            sens = params.sensitivities()
            cell["noise_std"] = {
                "count": std,
                "sum": {
                    c: std * sens[1 + j] * step for j, c in enumerate(params.columns)
                },
            }
        if params.group_by is not None:
            cell = {"group": label, **cell}
        cells.append(cell)
    return {
        "columns": list(params.columns),
        "group_by": params.group_by,
        "cells": cells,
        "contributors": list(inputs),
        "fixed_point_step": step,
        "dp": None
        if params.privacy is None
        else {"epsilon": params.privacy.epsilon, "delta": params.privacy.delta},
    }
