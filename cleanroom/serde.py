"""Proto types stay at the edge: ``x_to_proto`` / ``x_from_proto`` pairs and the
catalog's JSON form. Domain code works with dataclasses only."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from cleanroom import wire
from cleanroom.catalog import AssetInfo, ColumnInfo, DatasetInfo
from cleanroom.errors import ProtocolError
from cleanroom.model import JobRecord, JobState, ModelEntry
from proto import cleanroom_pb2 as pb
from protocols.party import Progress


def dataset_to_proto(info: DatasetInfo) -> pb.DatasetInfo:
    return pb.DatasetInfo(
        name=info.name,
        description=info.description,
        columns=[pb.Column(name=c.name, type=c.type) for c in info.columns],
        row_bucket=info.row_bucket,
        id_column=info.id_column,
    )


def dataset_from_proto(msg: pb.DatasetInfo) -> DatasetInfo:
    return DatasetInfo(
        name=msg.name,
        columns=tuple(ColumnInfo(c.name, c.type) for c in msg.columns),
        row_bucket=msg.row_bucket,
        id_column=msg.id_column,
        description=msg.description,
    )


def asset_to_proto(asset: AssetInfo) -> pb.Asset:
    return pb.Asset(
        name=asset.name,
        kind=asset.kind,
        description=asset.description,
        document_json=asset.document_json,
    )


def asset_from_proto(msg: pb.Asset) -> AssetInfo:
    return AssetInfo(msg.name, msg.kind, msg.description, msg.document_json or "{}")


def assets_to_json(assets: Sequence[AssetInfo]) -> str:
    return json.dumps([a.__dict__ for a in assets])


def assets_from_json(text: str) -> list[AssetInfo]:
    return [AssetInfo(**a) for a in json.loads(text or "[]")]


def catalog_to_json(infos: Sequence[DatasetInfo]) -> str:
    return json.dumps(
        [
            {
                "name": i.name,
                "description": i.description,
                "row_bucket": i.row_bucket,
                "id_column": i.id_column,
                "columns": [[c.name, c.type] for c in i.columns],
            }
            for i in infos
        ]
    )


def catalog_from_json(text: str) -> list[DatasetInfo]:
    return [
        DatasetInfo(
            name=d["name"],
            columns=tuple(ColumnInfo(n, t) for n, t in d["columns"]),
            row_bucket=d["row_bucket"],
            id_column=d.get("id_column", ""),
            description=d.get("description", ""),
        )
        for d in json.loads(text)
    ]


@dataclass(frozen=True)
class NodeDecisionView:
    node: str
    decision: str
    reason: str


@dataclass(frozen=True)
class JobView:
    """A job as an analyst sees it: its record plus each node's decision."""

    job: JobRecord
    decisions: tuple[NodeDecisionView, ...]
    analyst_party: bool = False
    """The job type has an analyst party: the analyst's client must run it."""

    @property
    def progress(self) -> Progress:
        """The parties' structured progress (empty before the job runs)."""
        try:
            raw = json.loads(self.job.progress_json) if self.job.progress_json else {}
        except ValueError:
            raw = {}
        return Progress.from_json(raw if isinstance(raw, dict) else {})

    def as_dict(self) -> dict[str, object]:
        j = self.job
        return {
            "job_id": j.job_id,
            "analyst": j.analyst,
            "type": j.job_type,
            "state": j.state.value,
            "reason": j.reason,
            "progress": j.progress,
            "progress_detail": self.progress.to_json(),
            "analyst_party": self.analyst_party,
            "created_at": j.created_at,
            "updated_at": j.updated_at,
            "spec_hash": j.spec_hash,
            "decisions": [
                {"node": d.node, "decision": d.decision, "reason": d.reason}
                for d in self.decisions
            ],
        }


def job_to_proto(
    job: JobRecord,
    decisions: Sequence[tuple[str, str, str]],
    *,
    analyst_party: bool = False,
) -> pb.JobStatus:
    return pb.JobStatus(
        job_id=job.job_id,
        analyst=job.analyst,
        job_type=job.job_type,
        state=job.state.value,
        reason=job.reason,
        progress=job.progress,
        created_at=job.created_at,
        updated_at=job.updated_at,
        decisions=[
            pb.NodeDecision(node=n, decision=d, reason=r) for n, d, r in decisions
        ],
        spec_yaml=job.spec_yaml,
        spec_hash=job.spec_hash,
        progress_json=job.progress_json,
        analyst_party=analyst_party,
    )


def job_from_proto(msg: pb.JobStatus) -> JobView:
    job = JobRecord(
        job_id=msg.job_id,
        analyst=msg.analyst,
        job_type=msg.job_type,
        spec_yaml=msg.spec_yaml,
        spec_hash=msg.spec_hash,
        state=JobState(msg.state),
        reason=msg.reason,
        progress=msg.progress,
        created_at=msg.created_at,
        updated_at=msg.updated_at,
        progress_json=msg.progress_json,
    )
    return JobView(
        job,
        tuple(NodeDecisionView(d.node, d.decision, d.reason) for d in msg.decisions),
        analyst_party=msg.analyst_party,
    )


# ------------------------------------------------------------------ work items --
def message_to_proto(msg: wire.ProtocolMessage) -> pb.ProtocolMessage:
    return pb.ProtocolMessage(
        job_id=msg.job_id,
        sender=msg.sender,
        recipient=msg.recipient,
        stage=msg.stage,
        body=msg.body,
    )


def message_from_proto(msg: pb.ProtocolMessage) -> wire.ProtocolMessage:
    return wire.ProtocolMessage(
        msg.job_id, msg.sender, msg.recipient, msg.stage, bytes(msg.body)
    )


def work_item_to_proto(item: wire.WorkItem) -> pb.WorkItem:
    work = item.work
    if isinstance(work, wire.ApprovalRequest):
        return pb.WorkItem(
            seq=item.seq,
            approval=pb.ApprovalRequest(
                job_id=work.job_id,
                analyst=work.analyst,
                spec_yaml=work.spec_yaml,
                organisation=work.organisation,
                signed_request=work.signed_request,
                analyst_bundle=work.analyst_bundle,
            ),
        )
    if isinstance(work, wire.StartJob):
        return pb.WorkItem(
            seq=item.seq,
            start=pb.StartJob(
                job_id=work.job_id,
                analyst=work.analyst,
                spec_yaml=work.spec_yaml,
                parties=list(work.parties),
                key_bundles=list(work.key_bundles),
                analyst_bundle=work.analyst_bundle,
            ),
        )
    if isinstance(work, wire.ProtocolMessage):
        return pb.WorkItem(seq=item.seq, message=message_to_proto(work))
    if isinstance(work, wire.StopJob):
        return pb.WorkItem(
            seq=item.seq,
            stop=pb.StopJob(
                job_id=work.job_id,
                state=work.state,
                reason=work.reason,
                dropped=work.dropped,
            ),
        )
    return pb.WorkItem(
        seq=item.seq,
        release=pb.ReleaseRequest(
            job_id=work.job_id,
            output_hash=work.output_hash,
            coordinator_head=work.coordinator_head,
            document=work.document,
        ),
    )


def work_item_from_proto(msg: pb.WorkItem) -> wire.WorkItem:
    kind = msg.WhichOneof("kind")
    work: wire.Work
    if kind == "approval":
        a = msg.approval
        work = wire.ApprovalRequest(
            a.job_id,
            a.analyst,
            a.organisation,
            a.spec_yaml,
            bytes(a.signed_request),
            bytes(a.analyst_bundle),
        )
    elif kind == "start":
        s = msg.start
        work = wire.StartJob(
            s.job_id,
            s.analyst,
            s.spec_yaml,
            tuple(s.parties),
            tuple(bytes(b) for b in s.key_bundles),
            bytes(s.analyst_bundle),
        )
    elif kind == "message":
        work = message_from_proto(msg.message)
    elif kind == "stop":
        work = wire.StopJob(
            msg.stop.job_id, msg.stop.state, msg.stop.reason, msg.stop.dropped
        )
    elif kind == "release":
        r = msg.release
        work = wire.ReleaseRequest(
            r.job_id, r.output_hash, bytes(r.coordinator_head), bytes(r.document)
        )
    else:
        raise ProtocolError("a work item of no known kind")
    return wire.WorkItem(msg.seq, work)


def work_to_bytes(work: wire.Work) -> bytes:
    """A work item's stored form (its seq is assigned by the mailbox)."""
    return work_item_to_proto(wire.WorkItem(0, work)).SerializeToString()


def work_from_bytes(seq: int, data: bytes) -> wire.WorkItem:
    msg = pb.WorkItem()
    msg.ParseFromString(data)
    return wire.WorkItem(seq, work_item_from_proto(msg).work)


def batch_to_proto(batch: wire.WorkBatch) -> pb.WorkBatch:
    return pb.WorkBatch(
        items=[work_item_to_proto(i) for i in batch.items],
        retry_after_seconds=batch.retry_after,
    )


def batch_from_proto(msg: pb.WorkBatch) -> wire.WorkBatch:
    return wire.WorkBatch(
        tuple(work_item_from_proto(i) for i in msg.items), msg.retry_after_seconds
    )


# ---------------------------------------------------------------- node reports --
def registration_to_proto(reg: wire.Registration) -> pb.RegisterRequest:
    return pb.RegisterRequest(
        key_bundle=reg.key_bundle,
        datasets=[dataset_to_proto(d) for d in reg.datasets],
        software_version=reg.software_version,
        running_jobs=list(reg.running_jobs),
        delivered_seq=reg.delivered_seq,
        assets=[asset_to_proto(a) for a in reg.assets],
    )


def registration_from_proto(msg: pb.RegisterRequest) -> wire.Registration:
    return wire.Registration(
        bytes(msg.key_bundle),
        tuple(dataset_from_proto(d) for d in msg.datasets),
        msg.software_version,
        tuple(msg.running_jobs),
        msg.delivered_seq,
        tuple(asset_from_proto(a) for a in msg.assets),
    )


def progress_to_json(progress: Progress) -> str:
    return json.dumps(progress.to_json(), separators=(",", ":"))


def progress_from_json(text: str) -> Progress:
    if len(text) > 4096:
        raise ProtocolError("a progress report is too large")
    try:
        raw = json.loads(text) if text else {}
    except ValueError:
        raise ProtocolError("a malformed progress report") from None
    if not isinstance(raw, dict):
        raise ProtocolError("a malformed progress report")
    return Progress.from_json(raw)


def catalog_to_proto(nodes: Sequence[wire.CatalogNode]) -> pb.Catalog:
    return pb.Catalog(
        nodes=[
            pb.CatalogNode(
                name=n.node,
                connected=n.connected,
                last_seen=n.last_seen,
                datasets=[dataset_to_proto(d) for d in n.datasets],
                key_bundle=n.key_bundle,
                assets=[asset_to_proto(a) for a in n.assets],
            )
            for n in nodes
        ]
    )


def catalog_from_proto(msg: pb.Catalog) -> list[wire.CatalogNode]:
    return [
        wire.CatalogNode(
            n.name,
            n.connected,
            n.last_seen,
            tuple(dataset_from_proto(d) for d in n.datasets),
            bytes(n.key_bundle),
            tuple(asset_from_proto(a) for a in n.assets),
        )
        for n in msg.nodes
    ]


def models_to_proto(entries: Sequence[ModelEntry]) -> pb.ModelList:
    return pb.ModelList(
        models=[
            pb.ModelEntry(
                job_id=e.job_id,
                analyst=e.analyst,
                job_type=e.job_type,
                created_at=e.created_at,
                card_json=e.card_json,
            )
            for e in entries
        ]
    )


def models_from_proto(msg: pb.ModelList) -> list[ModelEntry]:
    return [
        ModelEntry(m.job_id, m.analyst, m.job_type, m.created_at, m.card_json)
        for m in msg.models
    ]
