"""The training curve as a PNG (base64) for the analyst's reading: drawn by the
analyst's own client from the released curve, deterministically (no timestamps
or version metadata in the file), so a replay of the analyst party gives the
same bytes."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any


def curve_png(curve: Sequence[Mapping[str, Any]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5), dpi=100)
    axes = figure.add_subplot()
    epochs = [int(p["epoch"]) for p in curve]
    for key, label in (("train_loss", "training"), ("validation_loss", "validation")):
        axes.plot(epochs, [float(p[key]) for p in curve], marker="o", label=label)
    axes.set_xlabel("epoch")
    axes.set_ylabel("log loss")
    axes.set_title("vertical_logreg training curve")
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")
