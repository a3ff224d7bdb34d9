"""Early stopping on the aggregated validation loss, and divergence detection that ends
the job with the round named.

Divergence (ProtocolAbort, naming the round) when a node reports that its local
training went non-finite, when the aggregated training loss is not finite, or when
it exceeds ``divergence_factor`` times the first round's. Under DP a loss is
noisy: it must exceed the threshold by more than ``NOISE_SIGMAS`` of its noise
standard deviation, so noise alone (probability < 10^-9) does not end a job.

Early stopping: the validation loss (the training loss when no node holds
validation rows) must improve on the best so far by more than
``min_improvement`` at least once every ``patience`` rounds. The released model
is then the best one seen, otherwise the last.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from cleanroom.errors import ProtocolAbort
from protocols.fl.metrics import RoundMetrics
from protocols.fl.models import Vector
from protocols.fl.plan import FedAvgParams

NOISE_SIGMAS: Final = 6.0


class TrainingMonitor:
    """Watches every round's metrics; keeps the best model."""

    def __init__(self, params: FedAvgParams) -> None:
        self._params = params
        self._reference: float | None = None
        self.best_loss = math.inf
        self.best_round = 0
        self.best_model: Vector | None = None
        self._stale = 0
        self.stop_reason = ""

    def observe(self, metrics: RoundMetrics, evaluated: Vector) -> bool:
        """Record the metrics of ``evaluated``; False when training should stop.

        Raises ProtocolAbort if training diverged.
        """
        self._check_divergence(metrics)
        loss = metrics.val_loss
        if not metrics.val_rows or not math.isfinite(loss):
            loss = metrics.train_loss
        if loss < self.best_loss - self._params.min_improvement:
            self.best_loss, self.best_round = loss, metrics.round
            self.best_model = np.array(evaluated, copy=True)
            self._stale = 0
            return True
        self._stale += 1
        patience = self._params.patience
        if patience is not None and self._stale >= patience:
            self.stop_reason = (
                f"early stop after round {metrics.round}: no improvement of the "
                f"validation loss for {patience} rounds (best {self.best_loss:.6g} "
                f"in round {self.best_round})"
            )
            return False
        return True

    def _check_divergence(self, m: RoundMetrics) -> None:
        if m.diverged_nodes > 0.5:  # only without DP, where this count is exact
            raise ProtocolAbort(
                f"training diverged in round {m.round}: local training produced "
                f"non-finite parameters at {round(m.diverged_nodes)} node(s); "
                "lower the learning rate"
            )
        if not math.isfinite(m.train_loss):
            raise ProtocolAbort(
                f"training diverged in round {m.round}: the aggregated training "
                "loss is not finite"
            )
        if self._reference is None:
            self._reference = max(
                m.train_loss, NOISE_SIGMAS * m.train_loss_noise, 1e-12
            )
            return
        limit = self._params.divergence_factor * self._reference
        if m.train_loss > limit + NOISE_SIGMAS * m.train_loss_noise:
            raise ProtocolAbort(
                f"training diverged in round {m.round}: the aggregated training "
                f"loss {m.train_loss:.6g} is over {self._params.divergence_factor:g}x "
                f"the first round's {self._reference:.6g}; lower the learning rate"
            )
