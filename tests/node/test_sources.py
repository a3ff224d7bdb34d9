"""Datasets where holders keep them: DuckDB over Parquet (a file, a directory) and
CSV, and a PostgreSQL table or query, give the same counts and cell aggregates as
the in-memory reference; a file replaced under a job and a changed table are
refused by the content check; a database that goes away fails the query with a
reason and the next one reconnects."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from helpers.tcpproxy import TcpProxy

from cleanroom.errors import ConfigError, DatasetError
from cleanroom.jobtypes.predicates import Predicate
from cleanroom.jobtypes.stats import pushdown
from cleanroom.jobtypes.stats.encode import contribution
from cleanroom.jobtypes.stats.layout import build_layout
from cleanroom.jobtypes.stats.params import parse_params
from cleanroom.jobtypes.tables import CellQuery, CellResult, FrameTable, Table
from node.config import NodeConfig
from node.datasets import DatasetRegistry, load
from node.sources.database import DatabaseTable
from node.sources.files import FileTable

TYPES = {"age": "int", "income": "float", "sex": "str", "smoker": "bool"}


def frame(rows: int = 400, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    income = rng.lognormal(10, 0.6, rows)
    income[rng.random(rows) < 0.05] = np.nan
    income[:2] = [np.inf, -np.inf]
    return pd.DataFrame(
        {
            "age": rng.integers(10, 100, rows),
            "income": income,
            "sex": rng.choice(["F", "M", "X"], rows),
            "smoker": rng.random(rows) < 0.3,
        }
    )


WHERES = [
    (),
    (Predicate("age", ">=", 30),),
    (Predicate("age", "<", 50), Predicate("sex", "!=", "X")),
    (Predicate("income", ">", 20000.5),),
    (Predicate("income", "!=", 1.0),),
    (Predicate("sex", "in", ["F", "X"]),),
    (Predicate("sex", "not_in", ["F"]),),
    (Predicate("smoker", "==", True),),
    (Predicate("smoker", "==", 0),),
    (Predicate("age", "==", 42),),
]

QUERY = CellQuery(
    where=(Predicate("age", ">", 15),),
    columns=("age", "income"),
    clip={"age": (18.0, 90.0), "income": (0.0, 100_000.0)},
    group_by="sex",
    groups=("F", "M", "nobody"),
    sums=("age", "income"),
    products=(("age", "age"), ("age", "income"), ("income", "income")),
    histograms={"age": (18.0, 30.0, 50.0, 90.0), "income": (0.0, 5e4, 1e5)},
)


def assert_same(found: CellResult, expected: CellResult) -> None:
    assert found.outside == expected.outside
    assert len(found.cells) == len(expected.cells)
    for got, want in zip(found.cells, expected.cells, strict=True):
        assert got.count == want.count
        assert got.histograms == want.histograms
        for key, value in want.sums.items():
            assert got.sums[key] == pytest.approx(value, rel=1e-12, abs=1e-6)
        for pair, value in want.products.items():
            assert got.products[pair] == pytest.approx(value, rel=1e-12, abs=1e-6)


def check_against_reference(table: Table, data: pd.DataFrame) -> None:
    reference = FrameTable(data)
    assert table.rows == reference.rows
    for where in WHERES:
        assert table.count(where) == reference.count(where), where
    assert_same(table.cells(QUERY), reference.cells(QUERY))
    clipping = dataclasses.replace(QUERY, need_outside=False)
    assert_same(table.cells(clipping), reference.cells(clipping))
    assert table.cells(clipping).outside == frozenset()
    ungrouped = CellQuery(QUERY.where, ("age",), {"age": (0.0, 60.0)}, sums=("age",))
    assert_same(table.cells(ungrouped), reference.cells(ungrouped))
    assert table.cells(ungrouped).outside == {"age"}


# ------------------------------------------------------------------ files --
def test_duckdb_over_parquet_matches_pandas(tmp_path: Path) -> None:
    data = frame()
    data.to_parquet(tmp_path / "d.parquet")
    check_against_reference(FileTable("d", tmp_path / "d.parquet", "parquet", {}), data)


def test_duckdb_over_a_parquet_directory_matches_pandas(tmp_path: Path) -> None:
    data = frame()
    parts = tmp_path / "lake"
    (parts / "year=2026").mkdir(parents=True)
    data.iloc[:150].to_parquet(parts / "a.parquet")
    data.iloc[150:].to_parquet(parts / "year=2026" / "b.parquet")
    table = FileTable("d", parts, "parquet", {})
    check_against_reference(table, data)


def test_duckdb_over_csv_matches_pandas(tmp_path: Path) -> None:
    data = frame().replace([np.inf, -np.inf], 1e9)  # CSV has no one way to say inf
    data.to_csv(tmp_path / "d.csv", index=False)
    # Read back as pandas does: the reference is what the pandas engine loads.
    check_against_reference(
        FileTable("d", tmp_path / "d.csv", "csv", {}), pd.read_csv(tmp_path / "d.csv")
    )


def test_stats_vector_from_a_query_equals_the_row_level_one(tmp_path: Path) -> None:
    data = frame()
    data.to_parquet(tmp_path / "d.parquet")
    params = {
        "columns": ["age", "income"],
        "stats": ["count", "mean", "std", "correlation", "histogram"],
        "clip": {"age": [18, 90], "income": [0, 100_000]},
        "bins": {"age": [18, 40, 65, 90]},
        "group_by": "sex",
        "groups": ["F", "M"],
        "where": [{"column": "age", "op": ">", "value": 15}],
    }
    layout = build_layout(parse_params(params, parties=3, schemas=()))
    exact = contribution(layout, data)
    assert np.array_equal(pushdown.contribution(layout, FrameTable(data)), exact)
    engine = pushdown.contribution(
        layout, FileTable("d", tmp_path / "d.parquet", "parquet", {})
    )
    # Engines sum in another order: at most a rounding unit apart, per slot.
    assert np.max(np.abs(engine - exact)) <= 1


def test_a_parquet_file_replaced_under_a_job_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    frame().to_parquet(path)
    config = NodeConfig.from_mapping(_node({"path": "d.parquet", "engine": "duckdb"}),
                                     base=tmp_path).datasets[0]  # fmt: skip
    registry = DatasetRegistry((config,))
    table = registry.fresh("d").table
    assert table.count(()) == 400
    replacement = tmp_path / "new.parquet"
    frame(seed=9).to_parquet(replacement)
    os.replace(replacement, path)
    with pytest.raises(DatasetError, match="changed on disk"):
        table.count(())
    with pytest.raises(DatasetError, match="changed on disk"):
        registry.fresh("d")
    path.unlink()
    with pytest.raises(DatasetError, match="disappeared"):
        table.cells(QUERY)


def test_a_touched_but_identical_file_is_still_served(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    frame().to_parquet(path)
    table = FileTable("d", path, "parquet", {})
    os.utime(path, ns=(1, 1))
    assert table.count(()) == 400


def test_engine_datasets_publish_a_schema_and_load_rows_only_on_demand(
    tmp_path: Path,
) -> None:
    frame().to_parquet(tmp_path / "d.parquet")
    config = NodeConfig.from_mapping(
        _node({"path": "d.parquet", "engine": "duckdb",
               "columns": {"age": "float"}}), base=tmp_path,
    ).datasets[0]  # fmt: skip
    loaded = load(config)
    assert loaded.in_engine and loaded.rows == 400
    assert loaded.info.column_types() == {**TYPES, "age": "float"}
    assert loaded.info.row_bucket == "100-1k"
    assert list(loaded.columns_frame().columns) == list(TYPES)
    assert len(loaded.columns_frame()) == 0
    assert len(loaded.frame) == 400


def test_dataset_config_errors_name_the_key(tmp_path: Path) -> None:
    cases = [
        ({"path": "d.parquet", "engine": "spark"}, "engine"),
        ({"path": "d.parquet", "table": "t"}, "only for a database"),
        ({"url": "postgresql://x/y", "columns": {"a": "int"}}, "exactly one of"),
        ({"url": "postgresql://x/y", "table": "t; drop", "columns": {"a": "int"}},
         "table"),
        ({"url": "postgresql://x/y", "table": "t"}, "declares every column"),
        ({"url_file": "missing.secret", "table": "t", "columns": {"a": "int"}},
         "cannot read"),
    ]  # fmt: skip
    for spec, message in cases:
        with pytest.raises(ConfigError, match=message):
            NodeConfig.from_mapping(_node(spec), base=tmp_path)


def test_a_database_url_can_come_from_a_mounted_secret(tmp_path: Path) -> None:
    (tmp_path / "db.secret").write_text("postgresql+psycopg://u:pw@db/x\n")
    spec = {"url_file": "db.secret", "table": "public.people", "columns": TYPES}
    config = NodeConfig.from_mapping(_node(spec), base=tmp_path).datasets[0]
    assert config.url == "postgresql+psycopg://u:pw@db/x"
    assert config.relation == '"public"."people"'
    assert "pw" not in repr(config) and "pw" not in config.location


def _node(dataset: dict[str, object]) -> dict[str, object]:
    return {
        "name": "n1",
        "coordinator": "localhost:1",
        "tls": {"cert": "c", "key": "k", "ca": "ca"},
        "datasets": {"d": dataset},
    }


# --------------------------------------------------------------- postgres --
@pytest.fixture
def people(postgres_url: str) -> Iterator[tuple[str, pd.DataFrame]]:
    data = frame()
    engine = sa.create_engine(postgres_url)
    data.to_sql("people", engine, if_exists="replace", index=False)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS people_version"))
        conn.execute(sa.text("CREATE TABLE people_version (v integer)"))
        conn.execute(sa.text("INSERT INTO people_version VALUES (1)"))
    yield postgres_url, data
    engine.dispose()


def test_a_postgres_table_matches_pandas(people: tuple[str, pd.DataFrame]) -> None:
    url, data = people
    table = DatabaseTable("d", url, '"people"', TYPES)
    check_against_reference(table, data)
    table.dispose()


def test_a_postgres_query_dataset_with_a_snapshot_id(
    people: tuple[str, pd.DataFrame],
) -> None:
    url, data = people
    table = DatabaseTable(
        "d", url, "(SELECT * FROM people WHERE age >= 20)", TYPES,
        snapshot_query="SELECT v FROM people_version",
    )  # fmt: skip
    assert table.count(()) == int((data.age >= 20).sum())
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE people_version SET v = 2"))
    with pytest.raises(DatasetError, match="changed after the node loaded it"):
        table.count(())
    engine.dispose()
    table.dispose()


def test_a_changed_postgres_table_is_refused_by_its_streamed_hash(
    people: tuple[str, pd.DataFrame],
) -> None:
    url, _ = people
    table = DatabaseTable("d", url, '"people"', TYPES)
    before = table.content_hash
    assert DatabaseTable("d", url, '"people"', TYPES).content_hash == before
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE people SET age = age + 1 WHERE age = 42"))
    with pytest.raises(DatasetError, match="changed after the node loaded it"):
        table.cells(QUERY)
    engine.dispose()
    table.dispose()


def test_a_database_that_goes_away_fails_the_query_and_comes_back(
    people: tuple[str, pd.DataFrame],
) -> None:
    url, data = people
    target = sa.make_url(url)
    with TcpProxy(str(target.host), int(target.port or 5432)) as proxy:
        via = target.set(host="127.0.0.1", port=proxy.port)
        table = DatabaseTable(
            "d", via.render_as_string(hide_password=False), '"people"', TYPES
        )
        assert table.count(()) == len(data)
        proxy.cut()
        with pytest.raises(DatasetError, match="database is unreachable") as info:
            table.count(())
        assert str(target.host) not in str(info.value)
        proxy.restore()
        assert table.count(()) == len(data)
        table.dispose()


def test_reference_fsum_is_exact() -> None:
    # The reference sums with math.fsum; engines with their exact(-est) sum.
    assert math.fsum([1e16, 1.0, -1e16]) == 1.0
