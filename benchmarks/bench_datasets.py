"""count and secure_stats on a large Parquet dataset queried in place (DuckDB):
the node's time against DuckDB running the same aggregate directly, and the
node's peak memory against DuckDB's own."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.registry import Context, Goal, Measurement, benchmark
from benchmarks.stats import Stats

GOAL: Final = Goal(
    "<=",
    1.5,
    "issue 17: node-side count/secure_stats on a 50M-row Parquet dataset at most "
    "1.5x DuckDB running the same aggregate directly",
    at="rows=50000000",
)
_BATCH: Final = 2_000_000
PARAMS: Final = {
    "columns": ["age", "income"],
    "stats": ["count", "mean", "std", "histogram"],
    "clip": {"age": [18, 90], "income": [0, 200_000]},
    "bins": {"age": [18, 30, 45, 60, 75, 90]},
    "group_by": "sex",
    "groups": ["F", "M"],
    "where": [{"column": "age", "op": ">=", "value": 21}],
}
DIRECT_COUNT: Final = "SELECT COUNT(*) FROM read_parquet($path) WHERE age >= 21"
DIRECT_STATS: Final = """
SELECT sex, COUNT(*), fsum(a - 54), fsum(i - 100000), fsum((a - 54) * (a - 54)),
       fsum((i - 100000) * (i - 100000)),
       SUM(CASE WHEN a >= 18 AND a < 30 THEN 1 ELSE 0 END),
       SUM(CASE WHEN a >= 30 AND a < 45 THEN 1 ELSE 0 END),
       SUM(CASE WHEN a >= 45 AND a < 60 THEN 1 ELSE 0 END),
       SUM(CASE WHEN a >= 60 AND a < 75 THEN 1 ELSE 0 END),
       SUM(CASE WHEN a >= 75 AND a <= 90 THEN 1 ELSE 0 END)
FROM (SELECT sex, LEAST(GREATEST(CAST(age AS DOUBLE), 18), 90) AS a,
             LEAST(GREATEST(income, 0), 200000) AS i
      FROM read_parquet($path)
      WHERE age >= 21 AND sex IS NOT NULL AND income IS NOT NULL
            AND NOT isnan(income) AND sex IN ('F', 'M'))
GROUP BY sex
"""


def write_parquet(path: Path, rows: int, seed: int = 17) -> None:
    """``rows`` synthetic people, written in batches (never all in memory)."""
    rng = np.random.default_rng(seed)
    schema = pa.schema(
        [("age", pa.int64()), ("income", pa.float64()), ("sex", pa.string())]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, _BATCH):
            n = min(_BATCH, rows - start)
            income = rng.lognormal(10.5, 0.6, n)
            income[rng.random(n) < 0.01] = np.nan
            writer.write_table(
                pa.table(
                    {
                        "age": rng.integers(16, 95, n),
                        "income": income,
                        "sex": rng.choice(np.array(["F", "M", "X"]), n),
                    },
                    schema=schema,
                ),
                row_group_size=1 << 20,
            )


def node_side(path: Path, which: str) -> Any:
    """What the node computes for one job (after loading): the count, or the
    secure_stats exact vector, both through the query seam."""
    from cleanroom.jobtypes.predicates import Predicate
    from cleanroom.jobtypes.stats import pushdown
    from cleanroom.jobtypes.stats.layout import build_layout
    from cleanroom.jobtypes.stats.params import parse_params
    from node.sources.files import FileTable

    table = FileTable("bench", path, "parquet", {})
    if which == "count":
        return lambda: table.count((Predicate("age", ">=", 21),))
    params = dict(PARAMS, max_rows=10 ** len(str(table.rows)))
    layout = build_layout(parse_params(params, parties=3, schemas=()))
    return lambda: pushdown.contribution(layout, table)


def direct(path: Path, which: str) -> Any:
    import duckdb

    sql = DIRECT_COUNT if which == "count" else DIRECT_STATS

    def run() -> object:
        with duckdb.connect(":memory:", config={"memory_limit": "512MB"}) as con:
            con.execute("PRAGMA disable_progress_bar")
            return con.execute(sql, {"path": str(path)}).fetchall()

    return run


_NODE_CHILD: Final = """
from cleanroom.jobtypes.predicates import Predicate
from cleanroom.jobtypes.stats import pushdown
from cleanroom.jobtypes.stats.layout import build_layout
from cleanroom.jobtypes.stats.params import parse_params
from node.sources.files import FileTable
table = FileTable("bench", PATH, "parquet", {})
if WHICH == "count":
    table.count((Predicate("age", ">=", 21),))
else:
    params = dict(PARAMS, max_rows=10 ** len(str(table.rows)))
    layout = build_layout(parse_params(params, parties=3, schemas=()))
    pushdown.contribution(layout, table)
"""
_DIRECT_CHILD: Final = """
import duckdb
with duckdb.connect(":memory:", config={"memory_limit": "512MB"}) as con:
    con.execute("PRAGMA disable_progress_bar")
    con.execute(SQL, {"path": str(PATH)}).fetchall()
"""


def _peak_rss(path: Path, side: str, which: str) -> float:
    """Peak resident memory (bytes) of a fresh process doing one job's work:
    the node's (imports, load and hash, one query) or DuckDB's alone."""
    sql = DIRECT_COUNT if which == "count" else DIRECT_STATS
    code = (
        "import json\n"
        f"PATH, WHICH, PARAMS, SQL = {str(path)!r}, {which!r}, {PARAMS!r}, {sql!r}\n"
        "from pathlib import Path\nPATH = Path(PATH)\n"
        + (_NODE_CHILD if side == "node" else _DIRECT_CHILD)
        # VmHWM, not ru_maxrss: the latter carries the parent's peak over exec.
        + "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
        + "print(json.dumps(int(hwm[0].split()[1])))\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return float(json.loads(out.stdout.strip().splitlines()[-1])) * 1024


@benchmark("dataset_pushdown", "datasets")
def dataset_pushdown(ctx: Context) -> Iterator[Measurement]:
    """count and secure_stats on a big Parquet file via DuckDB vs DuckDB directly."""
    rows = ctx.pick(quick=1_000_000, full=50_000_000)
    path = ctx.workdir / f"people-{rows}.parquet"
    if not path.exists():
        write_parquet(path, rows)
    size = path.stat().st_size
    for which in ("count", "secure_stats"):
        ours, theirs = ctx.time_interleaved(node_side(path, which), direct(path, which))
        yield ctx.measurement(
            case=f"{which} on Parquet via the node's query seam",
            params={"rows": rows},
            details={"file_bytes": size},
            metric="wall",
            measured=ours.wall,
            baseline=theirs.wall,
            baseline_name="DuckDB, the same aggregate written by hand",
            goal=GOAL,
            goal_applies=rows == 50_000_000,
            x=("rows",),
            note="node side includes the content check (stat before and after)",
        )
        mine = _peak_rss(path, "node", which)
        base = _peak_rss(path, "direct", which)
        yield ctx.measurement(
            case=f"{which} peak memory (fresh process, load + one job)",
            params={"rows": rows},
            details={"file_bytes": size},
            metric="peak_rss",
            measured=Stats.of([mine], "bytes"),
            baseline=Stats.of([base], "bytes"),
            baseline_name="DuckDB directly (python + duckdb)",
            x=("rows",),
            note="node side also loads cleanroom and hashes the file once",
        )
