"""An in-process federation for tests and benchmarks: every node and the coordinator
run the exact encode and decode code of a real job; a plain ring sum stands in for
SecAgg+ (which reveals exactly that sum and nothing else).

The standardisation travels through ``Standardisation.to_json`` / ``from_json`` as
it would over the wire. The splitters deal public test data out to simulated
hospitals (numpy's generator is fine: nothing about them is secret).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from cleanroom.errors import ConfigError
from protocols.fl.aggregator import FedAvgAggregator, TrainingResult
from protocols.fl.models import Matrix, Vector
from protocols.fl.plan import FedAvgParams, FedAvgPlan
from protocols.fl.standardise import Standardisation
from protocols.fl.trainer import NodeTrainer
from protocols.fl.vector import ring_sum
from protocols.party import SYSTEM_RANDOM, RandomSource

NodeRows = tuple[npt.ArrayLike, npt.ArrayLike]


def simulate(
    params: FedAvgParams,
    nodes: Sequence[NodeRows],
    *,
    seeds: Sequence[bytes] | None = None,
    dropouts: Mapping[int, frozenset[int]] | None = None,
    random: RandomSource = SYSTEM_RANDOM,
) -> TrainingResult:
    """Train with ``nodes[i] = (features, labels)`` held by node i.

    ``seeds[i]`` fixes node i's shuffling and validation split (else drawn from
    ``random``); ``dropouts[r]`` lists the nodes whose round-``r`` vectors are left
    out of the sum, as when SecAgg+ recovers without them.
    """
    if len(nodes) != params.parties:
        raise ConfigError(f"the params name {params.parties} parties, got {len(nodes)}")
    if seeds is not None and len(seeds) != len(nodes):
        raise ConfigError("one seed per node")
    plan = FedAvgPlan.create(params)
    trainers = [
        NodeTrainer(plan, x, y, seed=None if seeds is None else seeds[i], random=random)
        for i, (x, y) in enumerate(nodes)
    ]
    aggregator = FedAvgAggregator(plan)
    vectors = [t.standardisation_vector() for t in trainers]
    released = aggregator.read_standardisation(ring_sum(vectors), len(vectors))
    wire = released.to_json()
    for trainer in trainers:
        trainer.receive_standardisation(Standardisation.from_json(plan, wire))
    dropouts = dropouts or {}
    task = aggregator.next_task()
    while task is not None:
        gone = dropouts.get(task.index, frozenset())
        vectors = [t.round_vector(task.index, task.model) for t in trainers]
        summed = [v for i, v in enumerate(vectors) if i not in gone]
        aggregator.absorb(ring_sum(summed), len(summed))
        task = aggregator.next_task()
    return aggregator.result()


def split_iid(
    x: Matrix, y: Vector, parties: int, seed: int
) -> list[tuple[Matrix, Vector]]:
    """Rows shuffled and dealt into ``parties`` near-equal shares."""
    order = np.random.default_rng(seed).permutation(len(y))
    return [(x[part], y[part]) for part in np.array_split(order, parties)]


def split_by_label(
    x: Matrix, y: Vector, parties: int, seed: int
) -> list[tuple[Matrix, Vector]]:
    """Label-skewed hospitals: node k holds only the classes ``c`` (ranked from the
    most frequent) with ``c % parties == k``, or, with more nodes than classes,
    a share of class ``k % classes`` alone."""
    rng = np.random.default_rng(seed)
    labels, counts = np.unique(y, return_counts=True)
    ranked = labels[np.argsort(-counts, kind="stable")]
    shares: list[list[int]] = [[] for _ in range(parties)]
    for rank, label in enumerate(ranked):
        owners = [k for k in range(parties) if k % len(ranked) == rank % parties]
        if len(ranked) > parties:
            owners = [rank % parties]
        rows = rng.permutation(np.flatnonzero(y == label))
        for owner, part in zip(owners, np.array_split(rows, len(owners)), strict=True):
            shares[owner].extend(part.tolist())
    return [
        (x[np.array(s, dtype=np.intp)], y[np.array(s, dtype=np.intp)]) for s in shares
    ]


def predict_rows(
    params: FedAvgParams, result: TrainingResult, x: npt.ArrayLike
) -> Vector:
    """The released model's predictions on raw rows, clipped to the bounds as the
    nodes clipped theirs: class indices, or regression targets in their own units."""
    rows = np.array(x, dtype=np.float64, ndmin=2)
    lows = np.array([lo for lo, _ in params.feature_bounds])
    highs = np.array([hi for _, hi in params.feature_bounds])
    std = result.standardisation
    out = params.model.predict(result.model, std.features(np.clip(rows, lows, highs)))
    if params.model.task == "regression":
        return np.asarray(out * std.target_scale + std.target_mean)
    return out
