"""Governance costs: audit appends with fsync, Merkle proofs on large logs, and
policy evaluation as a share of the cheapest job."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.registry import Context, Measurement, benchmark
from benchmarks.stats import Stats
from cleanroom import jobtypes
from cleanroom.audit.log import AuditLog
from cleanroom.audit.merkle import (
    MerkleTree,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)
from cleanroom.jobspec import parse_spec
from node.policy import JobRequest, PolicySet


@benchmark("audit_append", "governance")
def audit_append(ctx: Context) -> Iterator[Measurement]:
    """AuditLog.append (hash chain + Merkle leaf + fsync'd SQLite row) vs a bare
    SQLite insert without sync: the price of durable, tamper-evident records."""
    count = ctx.pick(quick=200, full=2000)
    key = Ed25519PrivateKey.generate()
    samples, base = [], []
    for r in range(ctx.repeat):
        with AuditLog(
            ctx.workdir / f"audit-{r}.db", owner="bench", signing_key=key
        ) as log:
            started = time.perf_counter()
            for i in range(count):
                log.append("bench.event", job_id=f"job-{i}", data={"i": i})
            samples.append((time.perf_counter() - started) / count)
        db = sqlite3.connect(ctx.workdir / f"plain-{r}.db", isolation_level=None)
        db.execute("PRAGMA synchronous=OFF")
        db.execute("CREATE TABLE t (i INTEGER, kind TEXT, data TEXT)")
        started = time.perf_counter()
        for i in range(count):
            db.execute(
                "INSERT INTO t VALUES (?, 'bench.event', ?)", (i, f'{{"i":{i}}}')
            )
        base.append((time.perf_counter() - started) / count)
        db.close()
    measured = Stats.of(samples, "s")
    yield ctx.measurement(
        case="append with fsync",
        params={"appends": count},
        metric="wall per append",
        measured=measured,
        baseline=Stats.of(base, "s"),
        baseline_name="bare SQLite insert, no sync",
        details={"appends_per_second": round(1 / measured.median)},
        note="fsync per append (PRAGMA synchronous=FULL, WAL)",
    )


@benchmark("audit_proofs", "governance")
def audit_proofs(ctx: Context) -> Iterator[Measurement]:
    """Inclusion and consistency proofs on a large log: size and verification time."""
    for size in ctx.pick(quick=(100_000,), full=(100_000, 1_000_000)):
        yield from _proofs_at(ctx, size)


def _proofs_at(ctx: Context, size: int) -> Iterator[Measurement]:
    tree = MerkleTree()
    for i in range(size):
        tree.append_hash(leaf_hash(i.to_bytes(8, "big")))
    root = tree.root()
    rng = np.random.default_rng(size)
    indices = [int(i) for i in rng.integers(0, size, 50)]
    proofs = [(i, tree.inclusion_proof(i, size)) for i in indices]
    old = size // 3
    consistency = tree.consistency_proof(old, size)
    old_root = tree.root(old)

    def verify_all(_: object) -> None:
        for i, proof in proofs:
            verify_inclusion(leaf_hash(i.to_bytes(8, "big")), i, size, proof, root)

    def verify_consistency_once(_: object) -> None:
        verify_consistency(old, size, old_root, root, consistency)

    incl = ctx.time(verify_all)
    cons = ctx.time(verify_consistency_once)
    proof_bytes = max(32 * len(p) for _, p in proofs)
    yield ctx.measurement(
        case="inclusion proof verify",
        params={"entries": size},
        metric="cpu",
        measured=Stats.of([s / len(proofs) for s in incl.cpu.samples], "s"),
        details={"proof_bytes": proof_bytes},
        x=("entries",),
    )
    yield ctx.measurement(
        case="consistency proof verify",
        params={"entries": size},
        metric="cpu",
        measured=cons.cpu,
        details={"proof_bytes": 32 * len(consistency)},
        x=("entries",),
    )


@benchmark("policy_eval", "governance")
def policy_eval(ctx: Context) -> Iterator[Measurement]:
    """Policy evaluation per job vs the cheapest job's node-side work (a count)."""
    rules = {
        "analysts": ["a"],
        "organisations": "*",
        "job_types": "*",
        "columns": {"allow": "*", "forbid": ["ssn"]},
        "purposes": ["research"],
        "approval": "auto",
        "quotas": {"jobs": {"per_day": 100}},
        "valid": {"until": "2099-01-01T00:00:00Z"},
    }
    policy = PolicySet.from_mapping({"default": rules})
    request = JobRequest(
        job_id="j",
        analyst="a",
        organisation="",
        job_type="count",
        dataset="d",
        columns=frozenset({"age"}),
        purpose="research",
        rows=1000,
    )
    frame = pd.DataFrame({"age": np.arange(1000) % 90})
    spec = parse_spec(
        "type: count\ninputs: [{node: n, dataset: d}]\n"
        "params: {where: [{column: age, op: '>=', value: 40}]}\npurpose: research"
    )
    key = Ed25519PrivateKey.generate()
    job = jobtypes.get("count")
    reps = 200

    def evaluate(_: object) -> None:
        for _i in range(reps):
            policy.evaluate(request, now=time.time())

    def count_job(_: object) -> None:
        for _i in range(reps):
            ctx_ = jobtypes.NodeContext(
                "j", spec, "n", "d", frame, "h", 5, key, ("n",), {}
            )
            job.node_party(ctx_).start()

    ev, cj = ctx.time_interleaved(lambda: evaluate(None), lambda: count_job(None))
    yield ctx.measurement(
        case="policy evaluation per job",
        params={"rows": 1000},
        metric="cpu",
        measured=ev.cpu,
        baseline=cj.cpu,
        baseline_name="count job, node side (filter + sign)",
        note="ratio = share of the cheapest job's node-side time",
    )
