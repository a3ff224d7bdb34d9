"""Audit ledger timings: fsynced appends, 10**6-leaf tree build, proof sizes and times.

Run: ``python -m cleanroom.audit.benchmark [--leaves N] [--appends N]``. Not part
of the test run; each figure is printed with a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .log import AuditLog
from .merkle import HASH_SIZE, MerkleTree, verify_consistency, verify_inclusion
from .verify import verify_export


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:.3f} ms"


def bench_appends(count: int, workdir: Path) -> None:
    key = Ed25519PrivateKey.generate()
    with AuditLog(workdir / "bench.db", owner="bench", signing_key=key) as log:
        start = time.perf_counter()
        for i in range(count):
            log.append("job.step", job_id=f"j{i % 50}", data={"i": i, "rows": 100})
        took = time.perf_counter() - start
        export_took = _timed(lambda: log.export(workdir / "bench.jsonl"))
    verify_took = _timed(lambda: verify_export(workdir / "bench.jsonl"))
    raw = sqlite3.connect(workdir / "raw.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=OFF")
    raw.execute("CREATE TABLE t (i INTEGER PRIMARY KEY, data TEXT)")
    raw_took = _timed(
        lambda: [
            raw.execute("INSERT INTO t VALUES (?, ?)", (i, "{}")) for i in range(count)
        ]
    )
    raw.close()
    print(f"appends (fsync per append): {count / took:,.0f}/s over {count}")
    print(f"  baseline raw INSERT, synchronous=OFF: {count / raw_took:,.0f}/s")
    print(f"  durability + chaining cost: {took / raw_took:.1f}x")
    print(f"export: {count / export_took:,.0f} entries/s")
    print(f"verify_export: {count / verify_took:,.0f} entries/s")


def bench_tree(leaves: int, samples: int) -> None:
    rng = random.Random(6962)
    start = time.perf_counter()
    hashes = [
        hashlib.sha256(b"\0" + f"entry-{i}".encode()).digest() for i in range(leaves)
    ]
    hash_took = time.perf_counter() - start
    tree = MerkleTree()
    build_took = _timed(lambda: tree.extend_hashes(hashes))
    incremental = MerkleTree()
    step = min(leaves, 100_000)
    start = time.perf_counter()
    for h in hashes[:step]:
        incremental.append_hash(h)
    inc_took = time.perf_counter() - start
    n = tree.size
    root = tree.root()
    print(f"tree of {n:,} leaves (~{2 * n * HASH_SIZE / 2**20:.0f} MB of hashes)")
    print(f"  hashing the leaves: {hash_took:.2f} s")
    print(f"  bulk build from leaf hashes: {build_took:.2f} s")
    print(f"  incremental append: {step / inc_took:,.0f} leaves/s")
    past = [
        _timed(lambda: tree.root(n - rng.randrange(n // 2))) for _ in range(samples)
    ]
    print(f"  root at a past size: {_median_ms(past)}")

    gen: list[float] = []
    ver: list[float] = []
    sizes: list[int] = []
    for _ in range(samples):
        i = rng.randrange(n)
        start = time.perf_counter()
        proof = tree.inclusion_proof(i)
        gen.append(time.perf_counter() - start)
        sizes.append(len(proof) * HASH_SIZE)
        leaf = tree.leaf(i)
        start = time.perf_counter()
        verify_inclusion(leaf, i, n, proof, root)
        ver.append(time.perf_counter() - start)
    print(
        f"  inclusion proof: {max(sizes)} bytes max, {statistics.mean(sizes):.0f} mean"
    )
    print(f"    build {_median_ms(gen)}, verify {_median_ms(ver)}")
    speedup = build_took / statistics.median(ver)
    print(f"    verify vs rebuilding the root: {speedup:,.0f}x faster")

    gen, ver, sizes = [], [], []
    for _ in range(samples):
        m = rng.randrange(1, n)
        start = time.perf_counter()
        cproof = tree.consistency_proof(m)
        gen.append(time.perf_counter() - start)
        sizes.append(len(cproof) * HASH_SIZE)
        old = tree.root(m)
        start = time.perf_counter()
        verify_consistency(m, n, old, root, cproof)
        ver.append(time.perf_counter() - start)
    mean = statistics.mean(sizes)
    print(f"  consistency proof: {max(sizes)} bytes max, {mean:.0f} mean")
    print(f"    build {_median_ms(gen)}, verify {_median_ms(ver)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--appends", type=int, default=2_000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bench_appends(args.appends, Path(tmp))
    bench_tree(args.leaves, args.samples)


if __name__ == "__main__":
    main()
