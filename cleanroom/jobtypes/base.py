"""The job-type interface and registry: a job type owns all of its behaviour — its
params, its parties, its admission and review hooks on the node, its node-side
service, its CLI commands — so the scheduler, the node and the CLI name none."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cleanroom.catalog import DatasetInfo
from cleanroom.errors import ConfigError, InvalidSignature, ProtocolError, SpecError
from cleanroom.jobspec import JobInput, JobSpec
from cleanroom.keys import verify_statement
from protocols.party import (
    SYSTEM_RANDOM,
    AnalystParty,
    CoordinatorParty,
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
    RandomSource,
)

if TYPE_CHECKING:
    import click

    from cleanroom.jobtypes.hooks import (
        Admission,
        AdmissionContext,
        HeldItem,
        HolderContext,
        NodeEnvironment,
    )
    from cleanroom.jobtypes.tables import Table

P = TypeVar("P")
CellPartition = tuple[npt.NDArray[np.signedinteger[Any]], int]
"""Cells about to be released, as a partition of a node's rows: each row's cell
(0..count-1, or -1 for none; any signed integer type: int8 suffices for one cell)
and the number of cells."""


def _release_all(partitions: Sequence[CellPartition]) -> list[bool]:
    return [True for _, count in partitions for _ in range(count)]


PLUGIN_GROUP = "cleanroom.job_types"
"""Entry-point group of job-type plugins; a config's ``plugins`` names which to load."""
DEFAULT_DEADLINE_S = 120.0
MAX_DEADLINE_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class NodeContext:
    """Everything a node-side party may use: its own dataset and keys, nothing else."""

    job_id: str
    spec: JobSpec
    node: str
    dataset: str
    data: pd.DataFrame
    dataset_hash: str
    min_group_size: int
    signing_key: Ed25519PrivateKey
    parties: tuple[str, ...]
    peer_signing_keys: Mapping[str, bytes]
    """Identity keys of the job's other parties (nodes, and ``ANALYST`` if any)."""
    analyst: str = ""
    organisation: str = ""
    random: RandomSource = SYSTEM_RANDOM
    service: Any = None
    """The job type's own node-side service (``JobType.node_service``), if any."""
    graph_seed: bytes = b""
    """32 bytes for a SecAgg+ neighbour graph that no single party chose
    (``cleanroom.requests.graph_seed``); empty for unsigned test runs."""
    min_inputs: int = 0
    """The fewest inputs the holder lets this contribution be aggregated with
    (0: every input of the spec)."""
    inputs_guard: Callable[[frozenset[str]], None] = lambda survivors: None
    """Call with the inputs an aggregate will cover, before revealing anything
    that completes it: refuses a set below ``min_inputs`` or, for a query
    released before, one other than the earlier release's."""
    cells_guard: Callable[[Sequence[CellPartition]], list[bool]] = _release_all
    """Call, for a release without DP, with the local rows of the cells about to
    be released; returns, per cell in order, whether it may be: False for a cell
    whose rows differ from an earlier released cell's by 1..k-1 (the node's
    differencing record, which records the cells it allows)."""
    table: Table | None = None
    """The dataset as its engine serves it (``tables.Table``), for job types that
    set ``queries_table``; None: query ``data`` (``tables.table_of``)."""

    @property
    def params(self) -> Any:
        """The spec's params as the job type parsed them (once per spec)."""
        return get(self.spec.type).params(self.spec)


@dataclass(frozen=True)
class CoordinatorContext:
    """What the coordinator's party may use: public keys and the spec, never data.

    ``random`` is seeded per job so that a replay after a restart is exact.
    """

    job_id: str
    spec: JobSpec
    parties: tuple[str, ...]
    signing_keys: Mapping[str, bytes]
    random: RandomSource = SYSTEM_RANDOM
    extra: Mapping[str, Any] = field(default_factory=dict)
    graph_seed: bytes = b""
    """The same graph seed the nodes derive (``NodeContext.graph_seed``)."""

    @property
    def params(self) -> Any:
        return get(self.spec.type).params(self.spec)


@dataclass(frozen=True)
class AnalystContext:
    """What the analyst's party may use: its own keys, the spec, public keys."""

    job_id: str
    spec: JobSpec
    analyst: str
    parties: tuple[str, ...]
    signing_key: Ed25519PrivateKey
    peer_signing_keys: Mapping[str, bytes]
    random: RandomSource = SYSTEM_RANDOM
    local_inputs: Mapping[str, Any] = field(default_factory=dict)
    """The analyst's own inputs to its party (e.g. rows to score), given to the
    client beside the spec and never sent to the coordinator as they are."""

    @property
    def params(self) -> Any:
        return get(self.spec.type).params(self.spec)


def check_node_statement(
    ctx: CoordinatorContext,
    sender: str,
    statement: object,
    signature: object,
    what: str,
) -> dict[str, Any]:
    """A node's signed statement about its part of this job, checked: it must name
    this job, its spec, the sender and the sender's dataset, and be signed by the
    sender's identity key. ``what`` names the report in the errors."""
    expected = {
        "job_id": ctx.job_id,
        "spec_hash": ctx.spec.spec_hash,
        "node": sender,
        "dataset": ctx.spec.input_for(sender).dataset,
    }
    if not isinstance(statement, dict) or any(
        statement.get(k) != v for k, v in expected.items()
    ):
        raise ProtocolError(f"{what} is for another job, node or dataset")
    try:
        verify_statement(ctx.signing_keys[sender], statement, str(signature))
    except InvalidSignature:
        raise ProtocolError(f"{what} from '{sender}' is not signed by it") from None
    return statement


class OneShotNode(NodeParty):
    """A node party that sends one report in ``start`` and is then done."""

    def __init__(self, ctx: NodeContext) -> None:
        self._ctx = ctx
        self._done = False

    @abstractmethod
    def report(self) -> Outbound:
        """The node's one message."""

    def start(self) -> list[Outbound]:
        out = self.report()
        self._done = True
        return [out]

    def receive(self, message: Inbound) -> list[Outbound]:
        raise ProtocolError(
            f"{type(self).__name__} expects no messages, got stage '{message.stage}'"
        )

    @property
    def finished(self) -> bool:
        return self._done

    def usage(self) -> NodeUsage:
        return NodeUsage(rows_touched=len(self._ctx.data))


@dataclass(frozen=True)
class Review:
    """What a holder is shown about a job before approving it (``node jobs --show``)
    and what it must explicitly accept; ``document`` is the same as plain data."""

    lines: tuple[str, ...] = ()
    document: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    """Code or other material the holder can print in full (``--source``)."""


class JobType(ABC, Generic[P]):
    """A kind of job: its params, its parties and its hooks.

    Params are parsed once per spec (``params``) into the job type's own typed
    object; every hook and every party context receives that object.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    units: ClassVar[tuple[str, ...]] = ()
    """Usage units this job type meters beyond jobs and rows (e.g. ``lookups``)."""
    min_inputs: ClassVar[int] = 1
    resumable: ClassVar[bool] = True
    """Whether the coordinator may resume a running job after a restart by
    replaying its party's journal (the party must be deterministic)."""
    default_deadline: ClassVar[float] = DEFAULT_DEADLINE_S
    """Seconds a stage may wait for a party before that party counts as dropped."""
    queries_table: ClassVar[bool] = False
    """True when the node party reads its dataset only through
    ``tables.table_of(ctx)``: a dataset an engine serves (a database, DuckDB) is
    then aggregated where it lives and ``NodeContext.data`` is left empty. False:
    the node loads the columns the job uses into ``data`` first."""
    row_order_free: ClassVar[bool] = False
    """True when nothing the node party sends depends on the order of the rows in
    ``NodeContext.data`` (counts and exactly rounded sums do not; a plain float
    sum's last bits, a trained model or a sandbox's output do). The node may then
    hand it the rows in the order it keeps them for its differencing record, which
    must not reach any analyst (docs/policy.md, "Cost"); other job types get file
    order."""
    _CACHE_SIZE: ClassVar[int] = 256

    def __init__(self) -> None:
        self._cache: OrderedDict[str, P] = OrderedDict()
        self._cache_lock = threading.Lock()

    # ---------------------------------------------------------------- params --
    @abstractmethod
    def parse_params(self, spec: JobSpec) -> P:
        """``spec.params`` checked and typed; SpecError names the field path."""

    def params(self, spec: JobSpec) -> P:
        """The spec's parsed params, parsed once per spec text."""
        key = spec.spec_hash
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        parsed = self.parse_params(spec)
        with self._cache_lock:
            self._cache[key] = parsed
            while len(self._cache) > self._CACHE_SIZE:
                self._cache.popitem(last=False)
        return parsed

    def validate(self, spec: JobSpec, catalog: Mapping[JobInput, DatasetInfo]) -> None:
        """Check the spec against the inputs' schemas; SpecError has the path."""
        if len(spec.inputs) < self.min_inputs:
            raise SpecError(
                "inputs", f"'{self.name}' needs at least {self.min_inputs} inputs"
            )
        self.check_catalog(spec, self.params(spec), catalog)

    def check_catalog(
        self, spec: JobSpec, params: P, catalog: Mapping[JobInput, DatasetInfo]
    ) -> None:
        """Job-type specific checks of the params against the inputs' schemas."""

    @abstractmethod
    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        """Every column the job reads, for the node's column policy."""

    def epsilon(self, spec: JobSpec) -> tuple[float, float]:
        """The (epsilon, delta) the job spends on each input; (0, 0) without DP."""
        return (0.0, 0.0)

    def estimate_memory(self, spec: JobSpec, rows: int) -> int:
        """Bytes the job's node-side work needs on a dataset of ``rows`` rows, from
        the spec alone (the node refuses a job beyond its ``max_job_memory``),
        beyond the dataset the node holds loaded anyway. The default: a row mask
        and one float64 column per column read, plus 16 MiB."""
        return 16 * 2**20 + rows * (1 + 8 * len(self.columns_used(spec)))

    def estimate_units(self, spec: JobSpec, rows: int) -> Mapping[str, float]:
        """The declared units the job will consume on a dataset of ``rows`` rows."""
        return {}

    def deadline(self, spec: JobSpec, stage: str) -> float:
        """Seconds ``stage`` may wait for a party: the spec's ``deadline_seconds``
        if it sets one, else the job type's default."""
        return spec.deadline_seconds or self.default_deadline

    # --------------------------------------------------------------- parties --
    def has_analyst_party(self, spec: JobSpec) -> bool:
        """True if the analyst's client runs a party of this job."""
        return False

    def check_inputs(self, spec: JobSpec, inputs: Mapping[str, bytes]) -> None:
        """Check the analyst's private inputs against the spec before the client
        submits it (SpecError naming the input); by default none are taken."""
        if inputs:
            raise SpecError(
                f"inputs.{sorted(inputs)[0]}", f"'{self.name}' takes no private inputs"
            )

    def check_local_inputs(
        self, spec: JobSpec, local_inputs: Mapping[str, Any]
    ) -> None:
        """Check the analyst's local inputs against the spec on the analyst's
        machine, before the client submits it (SpecError naming the input), so a
        bad input costs no approval, quota or holder work. The default accepts
        anything (the analyst party checks what it uses)."""

    rereadable: bool = True
    """Whether anyone can re-derive the analyst's reading from the release and the
    messages the analyst party received (``cleanroom.opened``). False when the
    party needs the analyst's own secret, e.g. an HE secret key."""

    @abstractmethod
    def node_party(self, ctx: NodeContext) -> NodeParty:
        """The data holder's state machine."""

    @abstractmethod
    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        """The coordinator's state machine, which assembles the released result."""

    def analyst_party(self, ctx: AnalystContext) -> AnalystParty:
        """The analyst's state machine, when ``has_analyst_party``."""
        raise ProtocolError(f"'{self.name}' has no analyst party")

    def policy_rules(
        self, rules: Mapping[str, Any], *, where: str
    ) -> Mapping[str, Any]:
        """A dataset policy's section named after this job type, checked, with
        every default spelled out (ConfigError naming the path below ``where``).
        The default: this job type takes no rules of its own."""
        if rules:
            raise ConfigError(f"{where}: job type '{self.name}' takes no policy rules")
        return {}

    # ------------------------------------------------------- node-side hooks --
    def node_service(self, env: NodeEnvironment) -> Any:
        """The job type's own long-lived service on a node (None if it needs none);
        handed to its parties and hooks. Built when the node starts."""
        return None

    def admit(self, spec: JobSpec, ctx: AdmissionContext) -> Admission | None:
        """Refine the node policy's decision (None: nothing to add)."""
        return None

    def review(self, spec: JobSpec, job_id: str, holder: HolderContext) -> Review:
        """What the holder sees before approving the job by hand."""
        return Review()

    def holder_approved(
        self, spec: JobSpec, job_id: str, holder: HolderContext, expect: str | None
    ) -> str:
        """The holder approves the job by hand: check ``expect`` (what the holder
        reviewed, e.g. a code digest prefix) and record what the approval covers,
        inside the approval's transaction. Returns a note for the holder."""
        if expect is not None:
            raise SpecError("digest", f"'{self.name}' jobs have no digest to approve")
        return ""

    def holder_waiting(self, holder: HolderContext) -> Sequence[HeldItem]:
        """This job type's work waiting for the holder beyond approvals."""
        return ()

    # ------------------------------------------------------------- models --
    def model_card(
        self, spec: JobSpec, document: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """The model-registry card of a released job (``document``: the signed
        result document with its provenance), or None if it trains no model. The
        coordinator stores it at release; it must hold no weights."""
        return None

    def export_formats(self) -> Sequence[str]:
        """The file formats ``export_model`` writes, the default first; empty if
        this job type delivers no model."""
        return ()

    def export_model(
        self,
        reading: Mapping[str, Any],
        fmt: str | None = None,
        *,
        spec: JobSpec | None = None,
        job_id: str = "",
    ) -> bytes:
        """The file ``cleanroom model export`` writes from the analyst's reading,
        in ``fmt`` (one of ``export_formats``; None: the default). ``spec`` is the
        job's signed spec and ``job_id`` its id, for formats that record where the
        model came from; a format that needs them refuses without them."""
        raise SpecError("type", f"'{self.name}' jobs deliver no model to export")

    # ------------------------------------------------------------------ CLI --
    def cli_commands(self) -> Sequence[click.Command]:
        """Top-level ``cleanroom`` commands this job type adds (e.g. a group)."""
        return ()

    def node_cli_commands(self) -> Sequence[click.Command]:
        """Commands it adds under ``cleanroom node`` (e.g. releasing held output)."""
        return ()


_REGISTRY: dict[str, JobType[Any]] = {}
_LOCK = threading.Lock()


def register(job_type: JobType[Any]) -> JobType[Any]:
    """Add a built-in job type; a second registration of a name is refused."""
    with _LOCK:
        if job_type.name in _REGISTRY:
            raise ValueError(f"job type '{job_type.name}' is already registered")
        _REGISTRY[job_type.name] = job_type
    return job_type


def load_plugins(names: Sequence[str]) -> None:
    """Load the named job-type plugins: entry points in ``cleanroom.job_types``.

    Each entry point names a JobType subclass (or a factory returning one). A
    name that no installed distribution provides is a ConfigError.
    """
    if not names:
        return
    found = {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP)}
    for name in names:
        if name in _REGISTRY:
            continue
        if name not in found:
            raise ConfigError(
                f"no job-type plugin '{name}' is installed (entry points in "
                f"'{PLUGIN_GROUP}': {', '.join(sorted(found)) or 'none'})"
            )
        try:
            loaded = found[name].load()
            job_type = loaded() if callable(loaded) else loaded
        except Exception as exc:  # a broken plugin must say which one broke
            raise ConfigError(f"cannot load job-type plugin '{name}': {exc}") from None
        if not isinstance(job_type, JobType) or job_type.name != name:
            raise ConfigError(
                f"job-type plugin '{name}' did not give a JobType named '{name}'"
            )
        with _LOCK:
            _REGISTRY.setdefault(name, job_type)


def get(name: str) -> JobType[Any]:
    """The registered job type; SpecError naming the known types otherwise."""
    with _LOCK:
        found = _REGISTRY.get(name)
    if found is None:
        raise SpecError(
            "type", f"unknown job type '{name}' (known: {', '.join(names())})"
        )
    return found


def names() -> list[str]:
    with _LOCK:
        return sorted(_REGISTRY)


def all_types() -> list[JobType[Any]]:
    with _LOCK:
        return [_REGISTRY[n] for n in sorted(_REGISTRY)]
