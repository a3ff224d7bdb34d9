"""Horizontal federated training (FedAvg, FedProx, DP-FedSGD) whose every update is
summed through SecAgg+: models, local steps, vector layouts, aggregation, export.

Pipeline (``simulate.simulate`` runs it in one process):

1. Every party builds ``plan.FedAvgPlan.create(params)`` from the same public
   parameters (with DP this calibrates the noise and prices the whole job).
2. Standardisation round: each ``trainer.NodeTrainer`` sends
   ``standardisation_vector()``; the coordinator's ``aggregator.FedAvgAggregator``
   decodes the SecAgg+ sum (``read_standardisation``) and broadcasts it.
3. Rounds: ``next_task()`` gives the round number and global model; each node
   sends ``round_vector(index, model)``; ``absorb(sum, contributors)`` yields the
   round's metrics and the next model, stopping early or on divergence; the last
   planned round only evaluates.
4. ``result()`` is the released model; ``export`` turns it into scikit-learn or
   ONNX, ``curves`` into a PNG.

What each party learns: the coordinator (and the analyst it releases to) sees
only sums over at least ``threshold`` nodes: row counts, sums of standardised
moments, the sample-weighted sum of local updates, loss sums, correct counts and
score histograms; with DP all of them noisy. A node learns the same released
aggregates and the global model of every round. SecAgg+ hides every individual
vector as long as the coordinator does not collude with enough nodes to reach the
SecAgg+ threshold; without DP, the sums themselves (above all the model updates)
can still leak about rows, which is what the DP option bounds.
"""
