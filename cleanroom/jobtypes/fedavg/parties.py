"""The ``fedavg`` parties: one sealed SecAgg+ session per aggregation (the
standardisation, then every training round), the nodes deriving every next model
themselves, the coordinator only relaying, unmasking and reporting progress.

Round ``r``'s stages are ``r{r}/secagg/...``. Each node seals its ring vector with
the job's seed (``SealedSum``, drawn by the leader node and sent only to the other
nodes), so the SecAgg+ sum the coordinator unmasks is still masked: it hands it
back (``fedavg/sum``) and every node opens and checks it, then runs the same
``FedAvgAggregator`` on it — standardisation, next model, metrics, early stopping,
divergence — and tells the coordinator the round's aggregated metrics and whether
training goes on (``fedavg/report``). The next round runs over the round's
survivors. At the end every node seals its signed final report (model,
standardisation, history) to the analyst and commits to it (``sealing``).

Each node's share-bundle encryption key pair is drawn once per job
(``protocols.secagg.keys.ChannelKeys``: never revealed) and every session names
the job's key scope (``key_scope``): a node signs its channel key once per job
and each neighbour verifies that certificate once. The standardisation (round
0) is a full SecAgg+ session, with fresh mask keys authenticated pairwise by the
share bundles' associated data (``protocols.secagg.keys`` says why that is as
strong as a signature). On the complete graph every training round is then a
two-stage series round (``protocols.secagg.series``, ``series_round``): fresh
self-mask seeds, per-round pair seeds from the certified agreements, every seed
Shamir-shared, no public-key operation; on the sparse graph every round stays a
full session (its neighbourhoods may change as nodes drop). Assumption named:
the pair seeds and bundles of all of a job's rounds are as safe as that one
in-memory key (no forward secrecy between rounds)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

from cleanroom.errors import DatasetError, ProtocolAbort, ProtocolError
from cleanroom.jobtypes.base import AnalystContext, CoordinatorContext, NodeContext
from cleanroom.jobtypes.fedavg.params import FedSpec
from cleanroom.jobtypes.sealing import (
    COMMITMENT,
    CommitmentCollector,
    attest_commitment,
    report_opener,
    seal_report,
)
from cleanroom.jobtypes.stats.cells import (
    dump,
    load,
    names,
    ring_from_text,
    ring_to_text,
)
from protocols.fl.aggregator import FedAvgAggregator
from protocols.fl.curves import training_curves_png
from protocols.fl.metrics import RoundMetrics
from protocols.fl.trainer import NodeTrainer
from protocols.party import (
    ANALYST,
    COORDINATOR,
    AnalystParty,
    CoordinatorParty,
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
    Progress,
)
from protocols.sealed_sum import DEFAULT_CHECKS, SealedSum
from protocols.secagg import SecAggClient, SecAggConfig, SecAggServer
from protocols.secagg.config import MIN_PARTIES
from protocols.secagg.keys import ChannelKeys, identity_keys
from protocols.secagg.series import SeriesClient
from protocols.secagg.series_server import SeriesServer

SEED: Final = "fedavg/seed"
SUM: Final = "fedavg/sum"
REPORT: Final = "fedavg/report"
FINAL: Final = "fedavg/final"
DONE: Final = "fedavg/done"
CURVE_ATTACHMENT: Final = "training-curve.png"
_MAX_HISTORY: Final = 100_000


def leader(parties: Sequence[str]) -> str:
    return min(parties)


def session(job_id: str, round_: int) -> str:
    return f"{job_id}/fedavg/r{round_}"


def key_scope(job_id: str) -> str:
    """The scope of a job's channel-key certificates: every round's session."""
    return f"{job_id}/fedavg"


def round_threshold(spec: FedSpec, parties: int) -> int:
    """SecAgg+'s threshold for a round of ``parties``: a strict majority, and never
    fewer than the plan's honest parties (the fewest whose sum may be released)."""
    needed = max(spec.params.honest_parties, parties // 2 + 1, MIN_PARTIES)
    if parties < needed:
        raise ProtocolAbort(
            f"only {parties} nodes remain; the plan needs at least {needed}"
        )
    return needed


def secagg_config(
    spec: FedSpec,
    job_id: str,
    round_: int,
    parties: Sequence[str],
    length: int,
    graph_seed: bytes,
) -> SecAggConfig:
    """One round's SecAgg+ configuration, which every party derives alike. On the
    sparse graph the threshold is the sound one for the round's party count (the
    plan's honest parties are still enforced on the sum's contributors)."""
    threshold = round_threshold(spec, len(parties))
    if spec.graph == "k-regular":
        if len(graph_seed) != 32:
            raise ProtocolAbort("a sparse graph needs the signed request's graph seed")
        return SecAggConfig.create(
            session_id=session(job_id, round_),
            parties=parties,
            vector_length=length + DEFAULT_CHECKS,
            modulus_bits=64,
            graph="k-regular",
            graph_seed=graph_seed,
            key_scope=key_scope(job_id),
        )
    return SecAggConfig.create(
        session_id=session(job_id, round_),
        parties=parties,
        vector_length=length + DEFAULT_CHECKS,
        threshold=threshold,
        modulus_bits=64,
        key_scope=key_scope(job_id),
    )


def series_round(spec: FedSpec, round_: int) -> bool:
    """Whether round ``round_`` runs as a two-stage series round
    (``protocols.secagg.series``): every training round on the complete graph,
    whose parties all certified their channel keys in the standardisation."""
    return round_ > 0 and spec.graph == "complete"


def vector_length(spec: FedSpec, round_: int) -> int:
    layout = spec.plan.standardisation if round_ == 0 else spec.plan.round
    return layout.length


def _split(stage: str) -> tuple[int, str] | None:
    head, _, rest = stage.partition("/")
    if len(head) < 2 or head[0] != "r" or not head[1:].isdigit() or not rest:
        return None
    return int(head[1:]), rest


def _prefix(round_: int, outbound: Sequence[Outbound]) -> list[Outbound]:
    return [Outbound(o.recipient, f"r{round_}/{o.stage}", o.payload) for o in outbound]


def metrics_text(metrics: Mapping[str, Any]) -> str:
    """One progress line: round, loss and the quality metric."""
    parts = [
        f"round {metrics.get('round')}",
        f"loss {metrics.get('train_loss', 0):.4f}",
    ]
    for key in ("val_accuracy", "val_auc", "val_r2"):
        value = metrics.get(key)
        if isinstance(value, int | float):
            parts.append(f"{key.removeprefix('val_')} {value:.4f}")
            break
    return ", ".join(parts)


def same_history(
    a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]
) -> bool:
    """Equal metrics, to float rounding (nodes on other hardware may differ in the
    last bits)."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if set(x) != set(y):
            return False
        for key, u in x.items():
            v = y[key]
            if isinstance(u, float) and isinstance(v, int | float):
                if not (math.isclose(u, v, rel_tol=1e-9, abs_tol=1e-12)
                        or (math.isnan(u) and math.isnan(v))):  # fmt: skip
                    return False
            elif u != v:
                return False
    return True


# ----------------------------------------------------------------- nodes --
class FedNode(NodeParty):
    """Trains on the node's rows; every contribution sealed and summed by SecAgg+."""

    def __init__(self, ctx: NodeContext, spec: FedSpec, min_rows: int) -> None:
        self._ctx = ctx
        self._spec = spec
        self._min_rows = min_rows
        self._trainer: NodeTrainer | None = None
        self._aggregator = FedAvgAggregator(spec.plan)
        self._seed: bytes | None = None
        self._round = -1
        self._client: SecAggClient | SeriesClient | None = None
        self._seal: SealedSum | None = None
        self._channel: ChannelKeys | None = None
        self._identities = identity_keys(ctx.peer_signing_keys)  # once per job
        self._survivors: frozenset[str] = frozenset()
        self._opened = -1
        self._history: list[dict[str, Any]] = []
        self._digest: str | None = None
        self._final: dict[str, Any] = {}

    def start(self) -> list[Outbound]:
        ctx = self._ctx
        if self._trainer is not None:
            raise ProtocolError(f"{ctx.node} has already started")
        x, y = self._spec.rows(ctx.data)
        if len(y) < self._min_rows:
            raise DatasetError(
                f"{ctx.node} holds fewer usable rows than its policy's minimum "
                f"({self._min_rows})"
            )
        self._trainer = NodeTrainer(self._spec.plan, x, y, random=ctx.random)
        if ctx.node != leader(ctx.parties):
            return []
        seed = ctx.random(32)
        body = dump({"seed": seed.hex()})
        out = [Outbound(p, SEED, body) for p in ctx.parties if p != ctx.node]
        return out + self._begin(seed)

    def _begin(self, seed: bytes) -> list[Outbound]:
        self._seed = seed
        # One share-bundle key pair for all of this job's sessions (fresh masks,
        # mask keys and self-masks every round: ``ChannelKeys`` says why it is sound).
        self._channel = ChannelKeys(self._ctx.random, key_scope(self._ctx.job_id))
        return self._open_round(0, tuple(self._ctx.parties))

    def _open_round(self, round_: int, parties: Sequence[str]) -> list[Outbound]:
        ctx, spec, trainer = self._ctx, self._spec, self._trainer
        assert trainer is not None and self._seed is not None
        if round_ == 0:
            vector = trainer.standardisation_vector()
        else:
            task = self._aggregator.next_task()
            if task is None or task.index != round_:
                raise ProtocolError(f"round {round_} is not the next aggregation")
            vector = trainer.round_vector(task.index, task.model)
        length = vector_length(spec, round_)
        # Kept for the round: opening the sum reuses its expanded check matrix.
        self._seal = SealedSum(self._seed, session(ctx.job_id, round_), length)
        sealed = self._seal.seal(ctx.node, vector)
        self._round = round_
        self._survivors = frozenset()
        config = secagg_config(
            spec, ctx.job_id, round_, sorted(parties), length, ctx.graph_seed
        )
        assert self._channel is not None
        if series_round(spec, round_):
            self._client = SeriesClient(
                ctx.node, config, sealed, channel=self._channel, random=ctx.random,
                approve_survivors=self._approve,
            )  # fmt: skip
        else:
            self._client = SecAggClient(
                ctx.node, config, sealed, signing_key=ctx.signing_key,
                peer_signing_keys=self._identities, random=ctx.random,
                approve_survivors=self._approve, channel=self._channel,
            )  # fmt: skip
        return _prefix(round_, self._client.start())

    def _approve(self, survivors: frozenset[str]) -> None:
        """Before unmasking. On the complete graph ``survivors`` is the whole sum's
        input set and is checked now; on the sparse graph a node sees only its
        neighbours', so the whole set is checked when the (still sealed) sum
        arrives, before this node opens it or sends anything derived from it."""
        if self._spec.graph == "complete":
            self._check_inputs(survivors)
        self._survivors = survivors

    def _check_inputs(self, survivors: frozenset[str]) -> None:
        """The standardisation (the job's first aggregate) goes through the node's
        release guard, which also pins the inputs a re-run of this query must
        have; later rounds, whose survivors may only shrink by dropouts, must
        still cover the holder's ``min_inputs``."""
        ctx = self._ctx
        if self._round == 0:
            ctx.inputs_guard(survivors)
        else:
            needed = ctx.min_inputs or len(ctx.parties)
            if len(survivors) < needed:
                raise ProtocolAbort(
                    f"round {self._round}: only {len(survivors)} inputs remain; "
                    f"this dataset may be aggregated with no fewer than {needed}"
                )

    def receive(self, message: Inbound) -> list[Outbound]:
        if message.stage == SEED:
            return self._on_seed(message)
        if message.stage == SUM and message.sender == COORDINATOR:
            return self._on_sum(message.payload)
        split = _split(message.stage)
        if split is None or self._client is None:
            raise ProtocolError(f"{self._ctx.node} expects no '{message.stage}' now")
        number, inner = split
        if number < self._round:
            return []
        if number != self._round:
            raise ProtocolError(f"round {number} is not open")
        out = self._client.receive(Inbound(message.sender, inner, message.payload))
        return _prefix(number, out)

    def _on_seed(self, message: Inbound) -> list[Outbound]:
        if message.sender != leader(self._ctx.parties) or self._seed is not None:
            raise ProtocolError(f"unexpected seed from '{message.sender}'")
        try:
            seed = bytes.fromhex(load(message.payload, "seed")["seed"])
        except (KeyError, ValueError, TypeError):
            raise ProtocolError("malformed seed") from None
        if len(seed) != 32:
            raise ProtocolError("malformed seed")
        return self._begin(seed)

    def _on_sum(self, payload: bytes) -> list[Outbound]:
        ctx, spec = self._ctx, self._spec
        body = load(payload, "sum")
        if body.get("round") != self._round or self._opened == self._round:
            raise ProtocolError("a sum for a round that is not waiting for one")
        if not self._survivors or self._seed is None or self._trainer is None:
            raise ProtocolError("the sum came before this node unmasked it")
        survivors = names(body.get("survivors"), ctx.parties, "survivor list")
        if spec.graph == "complete" and frozenset(survivors) != self._survivors:
            raise ProtocolError("the coordinator names other survivors than it did")
        if spec.graph != "complete":
            if not self._survivors <= frozenset(survivors):
                raise ProtocolError("the coordinator omits survivors it named before")
            self._check_inputs(frozenset(survivors))
        seal = self._seal
        if seal is None:
            raise ProtocolError("the sum came before this node unmasked it")
        total = ring_from_text(body.get("total"), seal.sealed_length)
        opened = seal.open(total, survivors)  # refuses a sum that does not verify
        self._opened = self._round
        report: dict[str, Any] = {"round": self._round}
        if self._round == 0:
            std = self._aggregator.read_standardisation(opened, len(survivors))
            self._trainer.receive_standardisation(std)
        else:
            metrics = self._aggregator.absorb(opened, len(survivors))  # may abort
            self._history.append(_json_metrics(metrics))
            report["metrics"] = self._history[-1]
        going_on = not self._aggregator.finished
        report["continue"] = going_on
        if not going_on:
            report["stop_reason"] = self._aggregator.result().stop_reason
        out = [Outbound(COORDINATOR, REPORT, dump(report))]
        if going_on:
            return out + self._open_round(self._round + 1, survivors)
        return out + self._seal_final(survivors)

    def _seal_final(self, survivors: Sequence[str]) -> list[Outbound]:
        ctx, spec = self._ctx, self._spec
        result = self._aggregator.result()
        statement: dict[str, Any] = {
            "job_id": ctx.job_id,
            "spec_hash": ctx.spec.spec_hash,
            "node": ctx.node,
            "dataset": ctx.dataset,
            "dataset_hash": ctx.dataset_hash,
            "weights": [float(v) for v in result.model],
            "standardisation": result.standardisation.to_json(),
            "best_round": result.best_round,
            "rounds_run": result.rounds_run,
            "stop_reason": result.stop_reason,
            "epsilon_spent": result.epsilon_spent,
            "survivors": list(survivors),
            "history": self._history,
            "classes": list(spec.classes),
        }
        self._final = {
            "rounds_run": result.rounds_run,
            "stop_reason": result.stop_reason,
            "survivors": sorted(survivors),
        }
        out, self._digest = seal_report(ctx, FINAL, statement)
        return out

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        if self._client is None or self._digest is not None:
            if COORDINATOR in parties:
                raise ProtocolAbort("the coordinator went away")
            return []
        return _prefix(self._round, self._client.dropped(parties))

    def waiting_for(self) -> frozenset[str]:
        if self._digest is not None:
            return frozenset()
        if self._seed is None:
            return frozenset({leader(self._ctx.parties)})
        return frozenset({COORDINATOR})

    def progress(self) -> Progress:
        return Progress(stage="training", round=max(self._round, 0),
                        rounds=self._spec.params.aggregations + 1)  # fmt: skip

    @property
    def finished(self) -> bool:
        return self._digest is not None

    def usage(self) -> NodeUsage:
        """Rows read; the whole plan's epsilon was charged before the job started."""
        if self._trainer is None:
            return NodeUsage()
        return self._trainer.usage()

    def attest(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        """This node's commitment, and the metrics and outcome it computed itself."""
        if self._digest is None:
            raise ProtocolError("training did not finish here")
        checked = attest_commitment(self._ctx.node, self._digest, result)
        for key, value in self._final.items():
            if result.get(key) != value:
                raise ProtocolError(f"the release's {key} is not this node's")
            checked[f"/{key}"] = value
        released = result.get("history")
        if not isinstance(released, list) or not same_history(released, self._history):
            raise ProtocolError("the released metrics are not the ones this node saw")
        return checked


def _json_metrics(metrics: RoundMetrics) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v)
        for k, v in metrics.to_json().items()
    }


# ------------------------------------------------------------ coordinator --
class FedCoordinator(CoordinatorParty):
    """Relays and unmasks every round's sealed sum; learns the survivors and the
    per-round aggregated metrics the nodes report, never a model or an update."""

    def __init__(self, ctx: CoordinatorContext, spec: FedSpec) -> None:
        self._ctx = ctx
        self._spec = spec
        self._keys = identity_keys({p: ctx.signing_keys[p] for p in ctx.parties})
        self._round = 0
        self._round_parties: tuple[str, ...] = ()
        self._server = self._new_server(0, tuple(sorted(ctx.parties)))
        self._survivors: tuple[str, ...] = ()
        self._sum_sent = False
        self._reports: dict[int, dict[str, dict[str, Any]]] = {}
        self._history: list[dict[str, Any]] = []
        self._gone: set[str] = set()
        self._final: tuple[str, ...] | None = None
        self._stop_reason = ""
        self._commitments = CommitmentCollector(ctx, FINAL)
        self._done_sent = False

    def _new_server(
        self, round_: int, parties: tuple[str, ...]
    ) -> SecAggServer | SeriesServer:
        config = secagg_config(
            self._spec, self._ctx.job_id, round_, parties,
            vector_length(self._spec, round_), self._ctx.graph_seed,
        )  # fmt: skip
        self._round_parties = parties
        if series_round(self._spec, round_):
            return SeriesServer(config)
        return SecAggServer(config, {p: self._keys[p] for p in parties})

    def start(self) -> list[Outbound]:
        return _prefix(0, self._server.start())

    def receive(self, message: Inbound) -> list[Outbound]:
        sender, stage = message.sender, message.stage
        if sender not in self._ctx.parties:
            raise ProtocolError(f"'{sender}' is not a party of this job")
        if stage == REPORT:
            return self._on_report(sender, message.payload)
        if stage == FINAL + COMMITMENT:
            if self._final is None or sender not in self._final:
                raise ProtocolError(f"unexpected final report from '{sender}'")
            self._commitments.receive(message)
            return self._maybe_done()
        split = _split(stage)
        if split is None:
            raise ProtocolError(f"unexpected stage '{stage}'")
        number, inner = split
        if number < self._round:
            return []  # a late answer to a closed round changes nothing
        if number != self._round:
            raise ProtocolError(f"round {number} is not open")
        out = self._server.receive(Inbound(sender, inner, message.payload))
        return _prefix(number, out) + self._after_round()

    def _after_round(self) -> list[Outbound]:
        if not self._server.finished or self._sum_sent:
            return []
        summary = self._server.result()
        self._survivors = tuple(sorted(summary["survivors"]))
        self._sum_sent = True
        body = dump({
            "round": self._round,
            "survivors": list(self._survivors),
            "total": ring_to_text(self._server.sum_vector()),
        })  # fmt: skip
        return [Outbound(p, SUM, body) for p in self._survivors]

    def _on_report(self, sender: str, payload: bytes) -> list[Outbound]:
        body = load(payload, "report")
        round_ = body.get("round")
        if not isinstance(round_, int) or isinstance(round_, bool):
            raise ProtocolError("malformed report")
        if round_ != self._round or not self._sum_sent:
            if round_ in self._reports and round_ < self._round:
                self._check_agrees(round_, sender, body)
                return []
            raise ProtocolError(f"a report for round {round_}, which is not waiting")
        if sender not in self._survivors:
            raise ProtocolError(f"'{sender}' did not contribute to round {round_}")
        self._check_agrees(round_, sender, body)
        going_on = body.get("continue")
        if not isinstance(going_on, bool):
            raise ProtocolError("malformed report")
        if round_ > 0 and len(self._reports[round_]) == 1:
            metrics = body.get("metrics")
            if not isinstance(metrics, dict) or len(self._history) >= _MAX_HISTORY:
                raise ProtocolError("a round report without its metrics")
            self._history.append(metrics)
        if going_on:
            # The nodes open the next round over the survivors they were told;
            # one already gone is dropped from it at once.
            self._round += 1
            self._sum_sent = False
            self._server = self._new_server(self._round, self._survivors)
            out = _prefix(self._round, self._server.start())
            gone = frozenset(self._gone & set(self._survivors))
            if gone:
                out += self.dropped(gone)
            return out
        self._stop_reason = str(body.get("stop_reason", ""))[:500]
        self._final = self._survivors
        self._sum_sent = False
        self._round += 1  # closes the last round's sub-session
        return self._maybe_done()

    def _check_agrees(self, round_: int, sender: str, body: Mapping[str, Any]) -> None:
        seen = self._reports.setdefault(round_, {})
        if sender in seen:
            raise ProtocolError(f"'{sender}' already reported round {round_}")
        if seen:
            first = next(iter(seen.values()))
            if first.get("continue") != body.get("continue") or not same_history(
                [first.get("metrics") or {}], [body.get("metrics") or {}]
            ):
                raise ProtocolAbort(f"the nodes disagree on round {round_}'s outcome")
        seen[sender] = dict(body)

    def _maybe_done(self) -> list[Outbound]:
        if self._final is None or self._done_sent:
            return []
        expected = set(self._final) - self._gone
        if len(expected) < len(self._final) and len(expected) < MIN_PARTIES:
            raise ProtocolAbort("too few nodes delivered the trained model")
        if not expected <= set(self._commitments.commitments):
            return []
        self._final = tuple(sorted(expected))
        self._done_sent = True
        return [Outbound(ANALYST, DONE, dump({"survivors": list(self._final)}))]

    def dropped(self, parties: frozenset[str]) -> list[Outbound]:
        self._gone |= parties
        if self._final is not None:
            return self._maybe_done()
        in_round = frozenset(parties & set(self._round_parties))
        if not in_round or self._server.finished:
            return []
        try:
            out = _prefix(self._round, self._server.dropped(in_round))
        except ProtocolAbort as exc:
            raise ProtocolAbort(
                f"round {self._round}: too few nodes remain to unmask the sum: {exc}"
            ) from None
        return out + self._after_round()

    def waiting_for(self) -> frozenset[str]:
        if self._final is not None:
            return frozenset(self._final) - set(self._commitments.commitments)
        if self._sum_sent:
            return frozenset(self._survivors) - set(self._reports.get(self._round, {}))
        return self._server.waiting_for()

    def progress(self) -> Progress:
        rounds = self._spec.params.aggregations + 1
        if self._final is not None:
            return Progress(stage="sealing the model to the analyst",
                            round=rounds - 1, rounds=rounds)  # fmt: skip
        latest = metrics_text(self._history[-1]) if self._history else "standardising"
        inner = self._server.progress()
        return Progress(
            stage=f"{latest}; {inner.stage}",
            round=self._round,
            rounds=rounds,
            heard=inner.heard,
            expected=inner.expected,
        )

    @property
    def finished(self) -> bool:
        return self._done_sent

    def result(self) -> Mapping[str, Any]:
        if self._final is None or not self._done_sent:
            raise ProtocolError("training has not finished")
        commitments = {p: self._commitments.commitments[p] for p in self._final}
        return {
            "algorithm": self._spec.algorithm,
            "survivors": list(self._final),
            "dropped": sorted(set(self._ctx.parties) - set(self._final)),
            "rounds_run": len(self._history),
            "stop_reason": self._stop_reason,
            "history": list(self._history),
            "commitments": dict(sorted(commitments.items())),
            "sealed": {"stage": FINAL, "attachment": CURVE_ATTACHMENT},
        }

    def attachments(self) -> Mapping[str, bytes]:
        if not self._history:
            return {}
        history = [RoundMetrics(**_finite(m)) for m in self._history]
        return {CURVE_ATTACHMENT: training_curves_png(history, title="fedavg")}


def _finite(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(metrics)
    for key in ("train_loss", "val_loss"):
        if not isinstance(out.get(key), int | float):
            out[key] = math.nan
    return out


# ---------------------------------------------------------------- analyst --
class FedAnalyst(AnalystParty):
    """Opens the nodes' sealed final reports; checks they agree and match the
    release's commitments; reads the model."""

    def __init__(self, ctx: AnalystContext, spec: FedSpec) -> None:
        self._ctx = ctx
        self._spec = spec
        self._opener = report_opener(ctx, FINAL)
        self._survivors: tuple[str, ...] | None = None

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        if message.stage == DONE and message.sender == COORDINATOR:
            if self._survivors is not None:
                raise ProtocolError("the end of training was announced twice")
            self._survivors = names(
                load(message.payload, "done").get("survivors"),
                self._ctx.parties,
                "survivor list",
            )
            return []
        self._opener.receive(message)
        return []

    def progress(self) -> Progress:
        return self._opener.progress()

    @property
    def finished(self) -> bool:
        return self._survivors is not None and set(self._survivors) <= set(
            self._opener.reports
        )

    def finalize(self, result: Mapping[str, Any]) -> Mapping[str, Any]:
        reports = self._opener.open(result)  # every report matches its commitment
        if not reports or list(result.get("survivors", [])) != sorted(reports):
            raise ProtocolError("the release does not cover the nodes that reported")
        statements = [reports[n].statement for n in sorted(reports)]
        first = statements[0]
        for other in statements[1:]:
            if not _same_model(first, other):
                raise ProtocolError("the nodes delivered different models")
        if not same_history(first["history"], list(result.get("history", []))):
            raise ProtocolError("the released metrics are not the nodes' own")
        spec = self._spec
        return {
            **{k: v for k, v in result.items() if k != "commitments"},
            "commitments": dict(result["commitments"]),
            "model": model_document(spec, first),
            "best_round": first["best_round"],
            "epsilon_spent": first["epsilon_spent"],
        }


def _same_model(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    wa, wb = a.get("weights"), b.get("weights")
    if not isinstance(wa, list) or not isinstance(wb, list) or len(wa) != len(wb):
        return False
    return all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
               for x, y in zip(wa, wb, strict=True))  # fmt: skip


def model_document(spec: FedSpec, statement: Mapping[str, Any]) -> dict[str, Any]:
    """What ``cleanroom model export`` writes: shape, weights, standardisation."""
    model = spec.model
    return {
        "format": "cleanroom-fedavg-model/v1",
        "algorithm": spec.algorithm,
        "task": model.task,
        "features": list(spec.features),
        "label": spec.label,
        "classes": list(spec.classes),
        "n_classes": model.n_classes,
        "hidden": model.hidden,
        "activation": model.activation,
        "weights": list(statement["weights"]),
        "standardisation": dict(statement["standardisation"]),
        "feature_bounds": [list(b) for b in spec.params.feature_bounds],
    }
