"""Training curves as PNG bytes: loss and a quality metric per round, the secure run
against a centralised baseline when one is given (matplotlib's Agg canvas)."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cleanroom.errors import ConfigError
from protocols.fl.metrics import RoundMetrics

_METRICS = ("val_auc", "val_accuracy", "val_r2")


def training_curves_png(
    history: Sequence[RoundMetrics],
    *,
    baseline: Mapping[str, float] | None = None,
    title: str = "federated training",
) -> bytes:
    """Left: training and validation loss per round; right: the first of validation
    AUC, accuracy or R^2 the history has. ``baseline`` maps ``"loss"`` and a metric
    name (e.g. ``"val_accuracy"``) to a centralised model's values, drawn as lines.
    """
    if not history:
        raise ConfigError("no rounds to plot")
    rounds = [m.round for m in history]
    # A bare Agg figure: no pyplot, so no global backend or figure registry touched.
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    loss_ax, metric_ax = fig.subplots(1, 2)
    loss_ax.plot(rounds, [m.train_loss for m in history], label="train (secure)")
    if any(m.val_rows for m in history):
        loss_ax.plot(rounds, [m.val_loss for m in history], label="validation")
    if baseline and "loss" in baseline:
        loss_ax.axhline(baseline["loss"], ls="--", c="k", label="centralised")
    loss_ax.set(xlabel="round", ylabel="mean loss", title="loss")
    loss_ax.legend()
    name = next(
        (n for n in _METRICS if any(getattr(m, n) is not None for m in history)),
        None,
    )
    if name is not None:
        values = [getattr(m, name) for m in history]
        metric_ax.plot(
            rounds, [math.nan if v is None else v for v in values], label="secure"
        )
        if baseline and name in baseline:
            metric_ax.axhline(baseline[name], ls="--", c="k", label="centralised")
        metric_ax.set(xlabel="round", ylabel=name, title=name.replace("_", " "))
        metric_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
