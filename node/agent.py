"""The node agent: dials out to the coordinator, hands each work item to the part of
the node that owns it (admission, the job runner, release signing) and records how
every job ended. Calls go one way: the agent calls its parts; they report back
only through the typed values they return or the callbacks it gave them."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy.typing as npt
import pandas as pd

from cleanroom import errors, jobtypes, wire
from cleanroom.audit.log import AuditLog
from cleanroom.jobspec import parse_spec
from cleanroom.jobtypes.base import CellPartition
from cleanroom.keys import (
    KeyBundle,
    NodeKeys,
    canonical_json,
    make_key_bundle,
    verify_key_bundle,
)
from cleanroom.localdb import LocalDatabase
from cleanroom.metrics import MetricsEndpoint, serve_metrics
from cleanroom.requests import graph_seed
from node import services as node_services
from node.admission import Admission
from node.config import NodeConfig
from node.datasets import DatasetRegistry, LoadedDataset
from node.differencing import ReleaseGuard, ReleaseScope
from node.link import CoordinatorLink, GrpcCoordinatorLink, LinkFactory
from node.meters import Meters
from node.metrics import NodeMetrics
from node.policy import PolicySet
from node.release import ReleaseSigner
from node.runner import Ending, JobOutcome, JobRunner
from node.state import JobStatus, NodeState, node_database
from node.witness import LogWitness
from protocols.party import ANALYST, NodeParty, Progress

log = logging.getLogger(__name__)

PULL_WAIT: Final = 5.0
MAX_BACKOFF: Final = 10.0
PUSH_PATIENCE_S: Final = 60.0
"""How long a push keeps retrying while the coordinator is unreachable (e.g. it is
restarting); the job's own deadlines bound the wait beyond that."""
SOFTWARE_VERSION: Final = "0.2.0"


class NodeAgent:
    """One data holder's node. ``run()`` blocks until ``stop()``."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        clock: Callable[[], float] = time.time,
        link_factory: LinkFactory | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        config.data_dir.mkdir(parents=True, exist_ok=True)
        jobtypes.load_plugins(config.plugins)
        self.identity = config.identity()
        self.keys = NodeKeys.load_or_create(config.data_dir / "node.keys")
        self.datasets = DatasetRegistry(config.datasets)
        self.policy = PolicySet.from_mapping(config.policy)
        self.db = LocalDatabase(node_database(config.data_dir))
        self.state = NodeState(self.db, clock=clock)
        self.meters = Meters(self.db, now=clock)
        self.audit = AuditLog(
            self.db, owner=config.name, signing_key=self.keys.signing, now=clock
        )
        self.bundle = make_key_bundle(config.name, self.keys, self.identity)
        self.release_guard = ReleaseGuard(
            self.db,
            audit=lambda job_id, data: self.audit.append(
                "differencing.refused", job_id=job_id, data=data
            ),
        )
        self._arrange_datasets()
        self._link_factory = link_factory or self._grpc_link
        self._link: CoordinatorLink | None = None
        self._coordinator_bundle: KeyBundle | None = None
        self._delivered = 0
        self.connected = threading.Event()
        self._stop = threading.Event()
        self.runner = JobRunner(
            node=config.name,
            keys=self.keys,
            send=self._push,
            on_end=self._job_ended,
            on_progress=self._progress,
            clock=clock,
        )
        self.services = node_services.build_services(
            config,
            audit=self.audit,
            datasets=self.datasets,
            policy=self.policy,
            db=self.db,
            notify=self.runner.local_event,
        )
        self.admission = Admission(
            node=config.name,
            ca_pem=self.identity.ca_pem,
            state=self.state,
            meters=self.meters,
            audit=self.audit,
            policy=self.policy,
            datasets=self.datasets,
            services=self.services,
            report=lambda r: self._call(lambda link: link.report_decision(r)),
            clock=clock,
        )
        self.releases = ReleaseSigner(
            node=config.name,
            keys=self.keys,
            state=self.state,
            audit=self.audit,
            sign=lambda s: self._call(lambda link: link.sign_release(s)),
            coordinator_bundle=lambda: self._coordinator_bundle,
            fail=self._report_failure,
        )
        self.witness = LogWitness(
            self.audit, coordinator=lambda: self._coordinator_bundle, call=self._call
        )
        self.metrics_endpoint: MetricsEndpoint | None = None
        self.metrics = NodeMetrics(
            self.meters,
            connected=self.connected.is_set,
            running=lambda: len(self.runner.active()),
        )
        self._audit_policy_version()

    def _arrange_datasets(self) -> None:
        """Keep every in-memory dataset that has a differencing record in the
        record's bucket order (``ReleaseGuard.arrange``): its checks then read
        each mask once, in order, with no reordering."""

        def arrange(dataset: LoadedDataset) -> tuple[pd.DataFrame, npt.NDArray[Any]]:
            kept = self.release_guard.arrange(
                dataset=dataset.config.name,
                dataset_hash=dataset.content_hash,
                frame=dataset.kept_frame,
                id_column=dataset.info.id_column,
            )
            return kept.frame, kept.order

        for name in self.datasets.names():
            if self.policy.for_dataset(name).differencing:
                self.datasets.arrange(name, arrange)

    def _grpc_link(self) -> CoordinatorLink:
        return GrpcCoordinatorLink(
            self.config.coordinator,
            self.identity,
            server_name=self.config.coordinator_name,
            observe=self.metrics.rpc,
        )

    # -------------------------------------------------------------- lifecycle --
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Connect, pull work, and reconnect with backoff until stopped."""
        threading.Thread(
            target=self._background, daemon=True, name="node-background"
        ).start()
        if self.config.metrics_listen:
            self.metrics_endpoint = serve_metrics(
                self.metrics.registry, self.config.metrics_listen
            )
            log.info("metrics on port %d", self.metrics_endpoint.port)
        try:
            self._serve()
        finally:
            if self.metrics_endpoint is not None:
                self.metrics_endpoint.stop()
                self.metrics_endpoint = None

    def _serve(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            link = self._link_factory()
            try:
                self._connect(link)
                backoff = 0.5
                while not self._stop.is_set():
                    batch = link.pull(wire.PullRequest(PULL_WAIT, self._delivered))
                    for item in batch.items:
                        if item.seq and item.seq <= self._delivered:
                            continue  # delivered again after a lost acknowledgement
                        self._handle(item.work)
                        self._delivered = max(self._delivered, item.seq)
                    if not batch.items and batch.retry_after > 0:
                        self._stop.wait(min(batch.retry_after, PULL_WAIT))
            except errors.TransportError as exc:
                wait = backoff * (1 + secrets.randbelow(1000) / 2000)
                log.warning(
                    "coordinator unreachable (%s); retrying in %.1fs", exc, wait
                )
                self._stop.wait(wait)
                backoff = min(backoff * 2, MAX_BACKOFF)
            except errors.CleanroomError as exc:
                log.error("the coordinator refused this node: %s", exc)
                self._stop.wait(MAX_BACKOFF)
            finally:
                self.connected.clear()
                self._link = None
                link.close()

    def _connect(self, link: CoordinatorLink) -> None:
        reply = link.register(
            wire.Registration(
                key_bundle=self.bundle.to_bytes(),
                datasets=tuple(self.datasets.infos()),
                software_version=SOFTWARE_VERSION,
                running_jobs=tuple(self.runner.active()),
                delivered_seq=self._delivered,
                assets=tuple(node_services.catalog_assets(self.services)),
            )
        )
        self._coordinator_bundle = verify_key_bundle(
            KeyBundle.from_bytes(reply.coordinator_bundle),
            self.identity.ca_pem,
            expected_name=self.config.coordinator_name,
            role="coordinator",
        )
        self._link = link
        self.connected.set()
        log.info("connected to coordinator at %s", self.config.coordinator)

    def close(self) -> None:
        self.db.close()

    def _background(self) -> None:
        """Holder decisions, job-type services' polls, deadline ticks."""
        while not self._stop.wait(0.5):
            try:
                node_services.poll(self.services)
                self.admission.holder_decisions(self.connected.is_set())
                self.runner.tick()
                if self.connected.is_set():
                    self.witness.maybe_run()
            except Exception:  # the loop must survive a bad moment
                log.exception("background step failed")

    # --------------------------------------------------------------- dispatch --
    def _handle(self, work: wire.Work) -> None:
        try:
            if isinstance(work, wire.ApprovalRequest):
                self.admission.on_request(work)
            elif isinstance(work, wire.StartJob):
                self._on_start(work)
            elif isinstance(work, wire.ProtocolMessage):
                self.runner.deliver(work)
            elif isinstance(work, wire.StopJob):
                self._on_stop(work)
            elif isinstance(work, wire.ReleaseRequest):
                threading.Thread(
                    target=self.releases.on_request,
                    args=(work,),
                    daemon=True,
                    name=f"release-{work.job_id}",
                ).start()
        except errors.CleanroomError as exc:
            log.warning("job %s: %s", work.job_id, exc)
            if isinstance(work, wire.StartJob):
                self._report_failure(work.job_id, str(exc))

    def _on_start(self, start: wire.StartJob) -> None:
        local = self.state.get(start.job_id)
        if local.status != JobStatus.APPROVED:
            raise errors.PolicyRefusal(
                [f"job {start.job_id} was not approved here ({local.status})"]
            )
        spec = parse_spec(start.spec_yaml)
        if spec.spec_hash != parse_spec(local.spec_yaml).spec_hash:
            raise errors.PolicyRefusal(["the job spec differs from the one approved"])
        bundles: dict[str, KeyBundle] = {}
        for raw in start.key_bundles:
            bundle = verify_key_bundle(KeyBundle.from_bytes(raw), self.identity.ca_pem)
            bundles[bundle.node] = bundle
        missing = set(start.parties) - set(bundles)
        if missing:
            raise errors.AuthError(f"no verified keys for {', '.join(sorted(missing))}")
        if start.analyst_bundle:
            analyst = self.admission.analyst(
                start.analyst_bundle, expected=local.analyst
            )
            bundles[ANALYST] = analyst.bundle
        job_type = jobtypes.get(spec.type)
        mine = spec.input_for(self.config.name)
        self.state.set_status(start.job_id, JobStatus.RUNNING, local.reason)
        self.audit.append(
            "job.started", job_id=start.job_id, data={"parties": list(start.parties)}
        )

        policy = self.policy.for_dataset(mine.dataset)
        min_inputs = policy.min_inputs or len(spec.inputs)
        query = hashlib.sha256(
            canonical_json({"type": spec.type, "params": dict(spec.params)})
        ).hexdigest()

        seed = (
            graph_seed(local.signed_request, bundles[ANALYST].signing_public)
            if local.signed_request and ANALYST in bundles
            else b""
        )

        def build() -> NodeParty:
            dataset = self.datasets.fresh(mine.dataset)  # refuses a changed file
            self.releases.started(start.job_id, dataset.content_hash)
            # Rows an engine serves are queried there, or loaded for job types
            # that read rows.
            in_place = job_type.queries_table and dataset.in_engine
            # Rows in the differencing record's order only where nothing the job
            # sends depends on the order; every other job type gets file order.
            kept = job_type.row_order_free and dataset.arranged
            rows = (
                dataset.columns_frame()
                if in_place
                else (dataset.kept_frame if kept else dataset.frame)
            )

            def guard(survivors: frozenset[str]) -> None:
                if len(survivors) < min_inputs:
                    raise errors.PolicyRefusal(
                        [
                            f"only {len(survivors)} inputs remain; this dataset may "
                            f"be aggregated with no fewer than {min_inputs}"
                        ]
                    )
                self.state.check_inputs(
                    query,
                    dataset.content_hash,
                    survivors,
                    start.job_id,
                    allow_change=policy.allow_survivor_change,
                )

            without_dp = job_type.epsilon(spec)[0] == 0

            def cells_guard(
                partitions: Sequence[CellPartition],
            ) -> list[bool]:
                if not (policy.differencing and without_dp):
                    return [True for _, count in partitions for _ in range(count)]
                return self.release_guard.check(
                    job_id=start.job_id,
                    dataset=mine.dataset,
                    dataset_hash=dataset.content_hash,
                    frame=rows,
                    id_column=dataset.info.id_column,
                    scope=ReleaseScope(local.analyst, local.organisation),
                    min_group_size=policy.min_group_size,
                    capacity=policy.differencing_capacity,
                    partitions=partitions,
                    arranged=kept,
                )

            return job_type.node_party(
                jobtypes.NodeContext(
                    job_id=start.job_id,
                    spec=spec,
                    node=self.config.name,
                    dataset=mine.dataset,
                    data=rows,
                    table=dataset.table,
                    dataset_hash=dataset.content_hash,
                    min_group_size=self.policy.for_dataset(mine.dataset).min_group_size,
                    signing_key=self.keys.signing,
                    parties=tuple(start.parties),
                    peer_signing_keys={n: b.signing_public for n, b in bundles.items()},
                    analyst=local.analyst,
                    organisation=local.organisation,
                    service=self.services.get(spec.type),
                    min_inputs=min_inputs,
                    inputs_guard=guard,
                    graph_seed=seed,
                    cells_guard=cells_guard,
                )
            )

        self.runner.start(
            start.job_id,
            {n: b for n, b in bundles.items() if n != self.config.name},
            build,
            deadline=lambda stage: job_type.deadline(spec, stage),
        )

    def _on_stop(self, stop: wire.StopJob) -> None:
        self.runner.stop(stop)
        self.witness.request()
        try:
            local = self.state.get(stop.job_id)
        except errors.NotFound:
            return
        if local.status in (JobStatus.PENDING, JobStatus.APPROVED):
            # Never started here: free what was reserved for it.
            with self.db.transaction():
                self.meters.release(
                    stop.job_id, reason=f"job {stop.state}: {stop.reason}"
                )
                self.state.set_status(stop.job_id, JobStatus.STOPPED, stop.reason)
        if not stop.dropped:
            self.audit.append(
                "job.ended",
                job_id=stop.job_id,
                data={"state": stop.state, "reason": stop.reason},
            )

    def _job_ended(self, outcome: JobOutcome) -> None:
        """Meters, job book and audit log learn how our part ended, together."""
        with self.db.transaction():
            if outcome.ok and outcome.usage is not None:
                self.meters.settle(outcome.job_id, outcome.usage)
                self.state.set_status(outcome.job_id, JobStatus.DONE, "")
                self.audit.append(
                    "job.released", job_id=outcome.job_id, data=_usage(outcome)
                )
            else:
                self.meters.release(
                    outcome.job_id, partial=outcome.usage, reason=outcome.reason
                )
                self.state.set_status(outcome.job_id, JobStatus.FAILED, outcome.reason)
                self.audit.append(
                    "job.dropped" if outcome.ending is Ending.DROPPED else "job.failed",
                    job_id=outcome.job_id,
                    data={"reason": outcome.reason, **_usage(outcome)},
                )
        self._observe_end(outcome)
        if outcome.ok and outcome.party is not None:
            self.releases.finished(outcome.job_id, outcome.party)
        else:
            self.releases.forget(outcome.job_id)
        if outcome.ending is Ending.FAILED:
            self._report_failure(outcome.job_id, outcome.reason)

    def _observe_end(self, outcome: JobOutcome) -> None:
        try:
            job = self.state.get(outcome.job_id)
        except errors.NotFound:
            return
        self.metrics.job_ended(
            job.job_type, outcome.ending.value, self._clock() - job.created_at
        )

    # ------------------------------------------------------------------- sends --
    def _call(self, fn: Callable[[CoordinatorLink], Any]) -> Any:
        link = self._link
        if link is None:
            raise errors.TransportError("not connected to the coordinator")
        return fn(link)

    def _push(self, msg: wire.ProtocolMessage) -> None:
        deadline = time.monotonic() + PUSH_PATIENCE_S
        attempt = 0
        while True:
            try:
                self._call(lambda link: link.push(msg))
                return
            except errors.TransportError:
                attempt += 1
                if time.monotonic() > deadline or self._stop.is_set():
                    raise
                self._stop.wait(min(0.2 * attempt, 2.0))

    def _report_failure(self, job_id: str, reason: str) -> None:
        try:
            self._call(
                lambda link: link.report_failure(wire.FailureReport(job_id, reason))
            )
        except errors.CleanroomError as exc:
            log.warning("could not report failure of %s: %s", job_id, exc)

    def _progress(self, job_id: str, progress: Progress) -> None:
        try:
            self._call(
                lambda link: link.report_progress(wire.ProgressReport(job_id, progress))
            )
        except errors.CleanroomError:
            pass  # progress is advisory; the next report catches up

    def _audit_policy_version(self) -> None:
        heads = self.audit.entries_for_job("policy") if self.audit.size else []
        last = heads[-1].data.get("version") if heads else None
        if last != self.policy.version:
            self.audit.append(
                "policy.changed", job_id="policy", data={"version": self.policy.version}
            )


def _usage(outcome: JobOutcome) -> dict[str, Any]:
    if outcome.usage is None:
        return {}
    return {
        "rows": outcome.usage.rows_touched,
        "epsilon": outcome.usage.epsilon,
        "units": dict(outcome.usage.units),
    }
