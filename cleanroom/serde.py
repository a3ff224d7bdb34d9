"""Proto types stay at the edge: ``x_to_proto`` / ``x_from_proto`` pairs and the
catalog's JSON form. Domain code works with dataclasses only."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from cleanroom.catalog import ColumnInfo, DatasetInfo
from cleanroom.model import JobRecord, JobState
from proto import cleanroom_pb2 as pb


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

    def as_dict(self) -> dict[str, object]:
        j = self.job
        return {
            "job_id": j.job_id,
            "analyst": j.analyst,
            "type": j.job_type,
            "state": j.state.value,
            "reason": j.reason,
            "progress": j.progress,
            "created_at": j.created_at,
            "updated_at": j.updated_at,
            "spec_hash": j.spec_hash,
            "decisions": [
                {"node": d.node, "decision": d.decision, "reason": d.reason}
                for d in self.decisions
            ],
        }


def job_to_proto(
    job: JobRecord, decisions: Sequence[tuple[str, str, str]]
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
    )
    return JobView(
        job,
        tuple(NodeDecisionView(d.node, d.decision, d.reason) for d in msg.decisions),
    )
