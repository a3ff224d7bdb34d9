"""The coordinator's side of ``fedavg``: decode each summed vector into the released
standardisation, the next global model (weighted by sample counts) and the round's
aggregated metrics; decide when training stops.

It only ever sees sums (SecAgg+ outputs) and what it derives from them. Without DP
the next model is ``w + server_lr * sum_i(n_i * delta_i) / sum_i(n_i)``, FedAvg's
sample-weighted mean of the nodes' local changes. With DP it is the noisy
gradient step ``w - server_lr * (g / N + l2 * w)`` on the sum ``g`` of per-example
clipped gradients, ``N`` the standardisation round's (noisy) training row count
and the L2 term, which depends on no data, added here (intercepts unpenalised).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cleanroom.errors import ProtocolAbort, ProtocolError
from protocols.fl.metrics import RoundMetrics, read_metrics
from protocols.fl.models import Vector
from protocols.fl.monitor import TrainingMonitor
from protocols.fl.plan import FedAvgPlan
from protocols.fl.standardise import Standardisation, read_standardisation
from protocols.prg import MaskVector


@dataclass(frozen=True)
class RoundTask:
    """What the coordinator sends every node for one aggregation."""

    index: int
    model: Vector
    evaluate_only: bool


@dataclass(frozen=True)
class TrainingResult:
    """The released outcome of a training job."""

    model: Vector
    best_round: int
    """The aggregation that evaluated the released model."""
    rounds_run: int
    history: tuple[RoundMetrics, ...]
    standardisation: Standardisation
    stop_reason: str
    epsilon_spent: float | None
    """Epsilon of the releases actually made (None without DP); the plan's total
    was charged before the job started."""


class FedAvgAggregator:
    """Coordinator state: standardisation, then one task and one sum per round."""

    def __init__(self, plan: FedAvgPlan) -> None:
        self._plan = plan
        params = plan.params
        self._model = params.model.init(params.model_seed)
        self._monitor = TrainingMonitor(params)
        self._std: Standardisation | None = None
        self._history: list[RoundMetrics] = []
        self._round = 0
        self._finished = False
        self._stop_reason = ""

    @property
    def finished(self) -> bool:
        return self._finished

    def read_standardisation(
        self, total: MaskVector, contributors: int
    ) -> Standardisation:
        """Decode the first round's sum; the result goes to every node."""
        if self._std is not None:
            raise ProtocolError("the standardisation was already decoded")
        self._check_contributors(contributors, "the standardisation round")
        sums = self._plan.standardisation.decode(total, contributors)
        self._std = read_standardisation(self._plan, sums)
        return self._std

    def next_task(self) -> RoundTask | None:
        """The next aggregation to run, or None once training is over."""
        if self._std is None:
            raise ProtocolError("standardise before training")
        if self._finished:
            return None
        index = self._round + 1
        evaluate_only = index == self._plan.params.aggregations
        return RoundTask(index, self._model.copy(), evaluate_only)

    def absorb(self, total: MaskVector, contributors: int) -> RoundMetrics:
        """Decode the current round's sum. Raises ProtocolAbort if training diverged."""
        task = self.next_task()
        std = self._std
        if task is None or std is None:
            raise ProtocolError("no round is waiting for a sum")
        plan = self._plan
        self._check_contributors(contributors, f"round {task.index}")
        sums = plan.round.decode(total, contributors)
        metrics = read_metrics(
            plan,
            sums,
            round_index=task.index,
            contributors=contributors,
            train_rows=std.train_rows,
            val_rows=std.val_rows,
            target_scale=std.target_scale,
            val_target_sst=std.val_target_sst,
        )
        self._history.append(metrics)
        self._round = task.index
        going_on = self._monitor.observe(metrics, task.model)
        if task.evaluate_only:
            self._finish(f"completed {plan.params.rounds} rounds")
        elif not going_on:
            self._finish(self._monitor.stop_reason)
        else:
            self._model = self._step(task, sums["update"], metrics, std)
        return metrics

    def result(self) -> TrainingResult:
        std = self._std
        if not self._finished or std is None:
            raise ProtocolError("training has not finished")
        best = self._monitor.best_model
        if self._plan.params.patience is not None and best is not None:
            model, evaluated = best, self._monitor.best_round
        else:
            model, evaluated = self._model, self._round
        privacy = self._plan.privacy
        return TrainingResult(
            model=model.copy(),
            best_round=evaluated,
            rounds_run=self._round,
            history=tuple(self._history),
            standardisation=std,
            stop_reason=self._stop_reason,
            epsilon_spent=None
            if privacy is None
            else privacy.epsilon_after(self._round),
        )

    def _check_contributors(self, contributors: int, what: str) -> None:
        # Fewer would release a sum over too few nodes, and under DP too little noise.
        needed = self._plan.params.honest_parties
        if contributors < needed:
            raise ProtocolAbort(
                f"{what}: {contributors} nodes contributed, the plan needs {needed}"
            )

    def _finish(self, reason: str) -> None:
        self._finished = True
        self._stop_reason = reason

    def _step(
        self,
        task: RoundTask,
        update: Vector,
        metrics: RoundMetrics,
        std: Standardisation,
    ) -> Vector:
        params = self._plan.params
        w, rate = task.model, params.server_learning_rate
        if self._plan.dp:
            mask = params.model.penalty_mask()
            step = update / std.train_rows + params.l2 * mask * w
            new = w - rate * step
        else:
            if metrics.train_rows < 1:
                raise ProtocolAbort(f"round {task.index}: no training rows were summed")
            new = w + rate * update / metrics.train_rows
        if not np.all(np.isfinite(new)):
            raise ProtocolAbort(f"training diverged in round {task.index}")
        return np.asarray(new)
