"""The analyst's typed Python client; the CLI is built on it, notebooks can use it too.

    with Client.from_federation("work/federation.json") as client:
        job = client.submit(open("count.yaml").read())
        done = client.wait(job.job.job_id)      # also runs the analyst's party
        print(client.result(done.job.job_id))

Every submission is a request signed with the analyst's protocol key (kept next
to its TLS key, created on first use), so the coordinator can neither invent nor
replay one. Jobs whose type has an analyst party (e.g. homomorphic queries) need
this client to run that party: ``wait`` and ``run`` do, and ``result`` turns the
released result into the analyst's reading (e.g. decrypts it).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from cleanroom import errors, jobtypes, wire
from cleanroom.analyst import AnalystSession, SessionStore
from cleanroom.federation import Federation
from cleanroom.jobspec import parse_spec
from cleanroom.keys import KeyBundle, NodeKeys, make_key_bundle
from cleanroom.links import AnalystLink, GrpcAnalystLink
from cleanroom.model import JobEvent, ModelEntry
from cleanroom.opened import OpenedResult
from cleanroom.pki import TlsIdentity
from cleanroom.provenance import check_attachments
from cleanroom.requests import sign_request
from cleanroom.serde import JobView

CatalogEntry = wire.CatalogNode


log = logging.getLogger(__name__)


def protocol_keys_path(tls_key: Path) -> Path:
    """Where an analyst's protocol keys live: beside its TLS key."""
    return tls_key.with_name(tls_key.name + ".protocol")


class Client:
    """Talks to the coordinator's analyst API and runs the analyst's parties."""

    def __init__(
        self,
        link: AnalystLink,
        *,
        analyst: str,
        keys: NodeKeys,
        bundle: KeyBundle,
        ca_pem: bytes,
        state_dir: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._link = link
        self.analyst = analyst
        self._keys = keys
        self._bundle = bundle
        self._ca_pem = ca_pem
        self._state_dir = state_dir
        self._clock = clock
        self._store: SessionStore | None = None
        self._sessions: dict[str, AnalystSession] = {}
        self._local_inputs: dict[str, Mapping[str, Any]] = {}

    @classmethod
    def connect(
        cls,
        *,
        address: str,
        identity: TlsIdentity,
        key_path: Path,
        server_name: str = "coordinator",
        state_dir: Path | None = None,
    ) -> Client:
        """A client over gRPC; ``key_path`` is the analyst's TLS key file, beside
        which its protocol keys are kept (created on first use)."""
        principal = identity.principal
        keys = NodeKeys.load_or_create(protocol_keys_path(key_path))
        bundle = make_key_bundle(principal.name, keys, identity, role="analyst")
        return cls(
            GrpcAnalystLink(address, identity, server_name=server_name),
            analyst=principal.name,
            keys=keys,
            bundle=bundle,
            ca_pem=identity.ca_pem,
            state_dir=state_dir or key_path.parent / "analyst-state",
        )

    @classmethod
    def from_federation(cls, path: str | Path) -> Client:
        fed = Federation.load(Path(path))
        jobtypes.load_plugins(fed.plugins)
        return cls.connect(
            address=fed.coordinator_address,
            identity=fed.analyst_identity(),
            key_path=fed.analyst_key,
            server_name=fed.coordinator_name,
        )

    def close(self) -> None:
        self._link.close()
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, *exc: type[BaseException] | BaseException | TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ jobs --
    def submit(
        self, spec_yaml: str, *, local_inputs: Mapping[str, Any] | None = None
    ) -> JobView:
        """Sign and submit a job spec; SpecError (with the field path) if invalid.

        ``local_inputs`` are the analyst's own inputs to its party (e.g. rows
        to score); they stay in this process and reach the
        others only as the job type's protocol sends them (encrypted)."""
        self._check_local_inputs(spec_yaml, local_inputs or {})
        signed = sign_request(
            spec_yaml,
            analyst=self.analyst,
            signing_key=self._keys.signing,
            now=self._clock(),
        )
        view = self._link.submit(
            wire.Submission(spec_yaml, signed, self._bundle.to_bytes())
        )
        if local_inputs:
            self.provide_inputs(view.job.job_id, local_inputs)
        return view

    @staticmethod
    def _check_local_inputs(spec_yaml: str, local_inputs: Mapping[str, Any]) -> None:
        """The job type's check of the local inputs, before anything is sent; a
        spec that does not parse is left to the coordinator to refuse."""
        try:
            spec = parse_spec(spec_yaml)
            job_type = jobtypes.get(spec.type)
        except errors.SpecError:
            return
        job_type.check_local_inputs(spec, local_inputs)

    def provide_inputs(self, job_id: str, local_inputs: Mapping[str, Any]) -> None:
        """Give the analyst party of ``job_id`` its local inputs (before it runs,
        e.g. when resuming a job submitted by another process)."""
        self._local_inputs[job_id] = dict(local_inputs)

    def status(self, job_id: str) -> JobView:
        return self._link.status(job_id)

    def list_jobs(self, *, limit: int = 100) -> list[JobView]:
        return self._link.list_jobs(limit)

    def cancel(self, job_id: str, reason: str = "") -> JobView:
        return self._link.cancel(job_id, reason)

    def events(self, job_id: str) -> list[JobEvent]:
        return self._link.events(job_id)

    def result_bytes(self, job_id: str) -> bytes:
        """The released result document exactly as the coordinator stores it."""
        return self._link.result_bytes(job_id)

    def result(self, job_id: str) -> dict[str, Any]:
        """The released result document; for jobs with an analyst party its
        ``result`` is the analyst party's reading of it (e.g. decrypted)."""
        document: dict[str, Any] = json.loads(self.result_bytes(job_id))
        if self.status(job_id).analyst_party:
            document["result"] = dict(self._open(job_id, document).reading)
        return document

    def opened(self, job_id: str) -> OpenedResult:
        """The analyst party's reading of a sealed release, with what it was read
        from, so that anyone can re-check it (``cleanroom.opened.reread``)."""
        return self._open(job_id, json.loads(self.result_bytes(job_id)))

    def _open(self, job_id: str, document: Mapping[str, Any]) -> OpenedResult:
        attachments = (
            self._link.attachments(job_id) if "attachments" in document else {}
        )
        check_attachments(document, attachments)
        session = self.session(job_id)
        session.drain()
        reading = session.finalize(document["result"], attachments)
        assert session.spec_yaml is not None  # finalize refuses an unstarted party
        return OpenedResult(
            reading, session.spec_yaml, tuple(session.transcript), attachments
        )

    def catalog(self) -> list[CatalogEntry]:
        """Nodes and their datasets' public metadata."""
        return self._link.catalog()

    def models(self, *, limit: int = 100) -> list[ModelEntry]:
        """This analyst's trained models in the coordinator's registry, newest first."""
        return self._link.models(limit)

    def model(self, job_id: str) -> ModelEntry:
        """The registry entry (model card) of one job's model; NotFound if none."""
        return self._link.models(1, job_id)[0]

    def healthy(self) -> bool:
        """True if the coordinator's health service answers SERVING."""
        return self._link.healthy()

    # -------------------------------------------------------- analyst party --
    def session(self, job_id: str) -> AnalystSession:
        """The analyst party of ``job_id`` (resumed from the local journal)."""
        if job_id not in self._sessions:
            if self._store is None:
                self._store = SessionStore(self._state_dir)
            self._sessions[job_id] = AnalystSession(
                self._link,
                self._store,
                job_id=job_id,
                analyst=self.analyst,
                keys=self._keys,
                ca_pem=self._ca_pem,
                clock=self._clock,
                local_inputs=self._local_inputs.get(job_id),
            )
        return self._sessions[job_id]

    def _step(self, session: AnalystSession, *, wait: float) -> bool:
        """One step of the analyst's party; if the party refuses (its input, or
        what it received), the job is cancelled with that reason, then re-raised,
        so the other parties do not wait for it until their deadlines."""
        try:
            return session.step(wait=wait)
        except errors.ProtocolError as exc:
            try:
                self.cancel(session.job_id, f"the analyst's party refused: {exc}")
            except errors.CleanroomError:
                log.warning("job %s: could not cancel after a refusal", session.job_id)
            raise

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 0.25,
        on_update: Callable[[JobView], None] | None = None,
        run_party: bool = True,
    ) -> JobView:
        """Block until the job reaches a final state, running the analyst's party
        meanwhile if the job has one; TransportError on timeout. A coordinator
        that is briefly unreachable (e.g. restarting) is waited for."""
        deadline = None if timeout is None else time.monotonic() + timeout
        session: AnalystSession | None = None
        while True:
            try:
                view = self.status(job_id)
                if on_update is not None:
                    on_update(view)
                if view.job.state.terminal:
                    return view
                if run_party and view.analyst_party:
                    session = session or self.session(job_id)
                    if self._step(session, wait=min(1.0, max(poll, 0.05))):
                        continue
            except errors.TransportError:
                if deadline is not None and time.monotonic() > deadline:
                    raise
                time.sleep(max(poll, 0.5))
                continue
            if deadline is not None and time.monotonic() > deadline:
                raise errors.TransportError(
                    f"job {job_id} still {view.job.state} after {timeout}s"
                )
            time.sleep(poll)
