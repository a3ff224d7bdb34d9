"""The wire contract as domain dataclasses: what nodes, analysts and the coordinator
say to each other. ``cleanroom.serde`` is the only place that converts these to and
from protobuf; everything else works with these types."""

from __future__ import annotations

from dataclasses import dataclass, field

from cleanroom.catalog import AssetInfo, DatasetInfo
from protocols.party import Progress


@dataclass(frozen=True)
class ProtocolMessage:
    """A protocol message: signed for the coordinator, sealed for anyone else."""

    job_id: str
    sender: str
    recipient: str
    stage: str
    body: bytes


@dataclass(frozen=True)
class ApprovalRequest:
    """Asks a node to decide on a job; the node checks the signed request itself."""

    job_id: str
    analyst: str
    organisation: str
    spec_yaml: str
    signed_request: bytes = b""
    analyst_bundle: bytes = b""


@dataclass(frozen=True)
class StartJob:
    """Every input approved: run your party with these parties' key bundles."""

    job_id: str
    analyst: str
    spec_yaml: str
    parties: tuple[str, ...]
    key_bundles: tuple[bytes, ...]
    analyst_bundle: bytes = b""


@dataclass(frozen=True)
class StopJob:
    """The job ended with ``state``; with ``dropped``, only this party left it."""

    job_id: str
    state: str
    reason: str
    dropped: bool = False


@dataclass(frozen=True)
class ReleaseRequest:
    """The protocol finished: sign the provenance of its output."""

    job_id: str
    output_hash: str
    coordinator_head: bytes
    document: bytes = b""


Work = ApprovalRequest | StartJob | ProtocolMessage | StopJob | ReleaseRequest

KIND_OF: dict[type, str] = {
    ApprovalRequest: "approval",
    StartJob: "start",
    ProtocolMessage: "message",
    StopJob: "stop",
    ReleaseRequest: "release",
}


def kind_of(work: Work) -> str:
    return KIND_OF[type(work)]


@dataclass(frozen=True)
class WorkItem:
    """One queued item and its mailbox seq (acknowledged once handled)."""

    seq: int
    work: Work


@dataclass(frozen=True)
class WorkBatch:
    items: tuple[WorkItem, ...] = ()
    retry_after: float = 0.0
    """> 0 when no long-poll slot was free: wait this long before pulling again."""


@dataclass(frozen=True)
class Registration:
    key_bundle: bytes
    datasets: tuple[DatasetInfo, ...]
    software_version: str = ""
    running_jobs: tuple[str, ...] = ()
    delivered_seq: int = 0
    assets: tuple[AssetInfo, ...] = ()


@dataclass(frozen=True)
class RegisterReply:
    heartbeat_seconds: float
    coordinator_bundle: bytes


@dataclass(frozen=True)
class PullRequest:
    wait_seconds: float
    ack_seq: int = 0
    job_id: str = ""


@dataclass(frozen=True)
class DecisionReport:
    job_id: str
    approved: bool
    reason: str


@dataclass(frozen=True)
class FailureReport:
    job_id: str
    reason: str


@dataclass(frozen=True)
class ProgressReport:
    job_id: str
    progress: Progress = field(default_factory=Progress)


@dataclass(frozen=True)
class ReleaseSignature:
    job_id: str
    statement_json: str
    signature: str
    cosignature: bytes


@dataclass(frozen=True)
class WitnessRequest:
    """See ``cleanroom.audit.witness``: the first call has only
    ``coordinator_since``; the second the node's head and co-signature."""

    coordinator_since: int = 0
    node_head: bytes = b""
    node_proof: tuple[bytes, ...] = ()
    coordinator_head: bytes = b""
    coordinator_cosignature: bytes = b""


@dataclass(frozen=True)
class WitnessReply:
    coordinator_head: bytes = b""
    coordinator_proof: tuple[bytes, ...] = ()
    node_since: int = 0
    node_cosignature: bytes = b""


@dataclass(frozen=True)
class Submission:
    """What an analyst submits: the spec, and (from a current client) the request
    it signed and its protocol key bundle."""

    spec_yaml: str
    signed_request: bytes = b""
    key_bundle: bytes = b""


@dataclass(frozen=True)
class CatalogNode:
    """A node as the catalog shows it: connection state and dataset metadata only."""

    node: str
    connected: bool
    last_seen: float
    datasets: tuple[DatasetInfo, ...]
    key_bundle: bytes
    assets: tuple[AssetInfo, ...] = ()
