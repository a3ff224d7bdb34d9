"""count and secure_stats end to end (the in-process federation: real coordinator,
nodes and analyst) on datasets served where they live — Parquet through DuckDB
and PostgreSQL tables — give the results the same rows give from CSV in memory;
a database that goes away fails the job with a reason naming the dataset, the
node stays up and the next job runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from helpers.tcpproxy import TcpProxy

from cleanroom.local import default_policy
from cleanroom.testing import InProcessFederation
from node.config import DatasetConfig

NODES = ("h1", "h2", "h3")
TYPES = {"age": "int", "bmi": "float", "sex": "str"}
STATS = {
    "columns": ["age", "bmi"],
    "stats": ["count", "mean", "std", "histogram"],
    "clip": {"age": [0, 120], "bmi": [10, 70]},
    "bins": {"age": [0, 40, 80, 120]},
    "group_by": "sex",
    "groups": ["F", "M"],
    "where": [{"column": "age", "op": ">=", "value": 20}],
}


def exact_policy() -> dict[str, Any]:
    """The default policy, with the holders' choice to release exact results from
    engine datasets (which keep no differencing record)."""
    policy: dict[str, Any] = default_policy()
    return {"default": {**policy["default"], "differencing": {"enabled": False}}}


def frames() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(11)
    return {
        name: pd.DataFrame(
            {
                "age": rng.integers(18, 90, n),
                "bmi": rng.normal(26, 4, n).round(2),
                "sex": rng.choice(["F", "M"], n),
            }
        )
        for name, n in zip(NODES, (60, 75, 90), strict=True)
    }


def spec(job_type: str, **extra: Any) -> str:
    return json.dumps({
        "type": job_type,
        "inputs": [{"node": n, "dataset": n} for n in NODES],
        "purpose": "research",
        **extra,
    })  # fmt: skip


def results(fed: InProcessFederation) -> tuple[Any, Any]:
    out = []
    for job in (spec("count"), spec("secure_stats", params=STATS)):
        view = fed.run(job)
        assert view.job.state.value == "succeeded", view.job.reason
        out.append(fed.client.result(view.job.job_id)["result"])
    return out[0]["counts"], out[1]["groups"]


@pytest.fixture(scope="module")
def in_memory() -> tuple[Any, Any]:
    with InProcessFederation(frames()) as fed:
        return results(fed)


def test_parquet_through_duckdb_gives_the_in_memory_results(
    tmp_path: Path, in_memory: tuple[Any, Any]
) -> None:
    configs = {}
    for name, data in frames().items():
        data.to_parquet(tmp_path / f"{name}.parquet")
        configs[name] = DatasetConfig(
            name, tmp_path / f"{name}.parquet", format="parquet", engine="duckdb"
        )
    with InProcessFederation(
        frames(), dataset_configs=configs, policy=exact_policy()
    ) as fed:
        counts, groups = results(fed)
    assert counts == in_memory[0]
    assert _close(groups, in_memory[1])


def test_postgres_tables_give_the_in_memory_results(
    postgres_url: str, in_memory: tuple[Any, Any]
) -> None:
    engine = sa.create_engine(postgres_url)
    for name, data in frames().items():
        data.to_sql(f"job_{name}", engine, if_exists="replace", index=False)
    engine.dispose()
    configs = {
        name: DatasetConfig(name, Path(), format="sql", columns=TYPES, engine="sql",
                            url=postgres_url, relation=f'"job_{name}"')
        for name in NODES
    }  # fmt: skip
    with InProcessFederation(
        frames(), dataset_configs=configs, policy=exact_policy()
    ) as fed:
        counts, groups = results(fed)
    assert counts == in_memory[0]
    assert _close(groups, in_memory[1])


def test_a_database_gone_fails_the_job_and_the_node_recovers(
    postgres_url: str, tmp_path: Path
) -> None:
    engine = sa.create_engine(postgres_url)
    frames()["h1"].to_sql("gone_h1", engine, if_exists="replace", index=False)
    engine.dispose()
    target = sa.make_url(postgres_url)
    with TcpProxy(str(target.host), int(target.port or 5432)) as proxy:
        via = target.set(host="127.0.0.1", port=proxy.port)
        configs = {"h1": DatasetConfig(
            "h1", Path(), format="sql", columns=TYPES, engine="sql",
            url=via.render_as_string(hide_password=False), relation='"gone_h1"',
        )}  # fmt: skip
        with InProcessFederation(
            frames(), dataset_configs=configs, policy=exact_policy()
        ) as fed:
            proxy.cut()
            view = fed.run(spec("count"))
            assert view.job.state.value == "failed", view.job.reason
            assert "h1" in view.job.reason
            assert "database is unreachable" in view.job.reason
            assert str(target.port) not in view.job.reason
            proxy.restore()
            view = fed.run(spec("count"))
            assert view.job.state.value == "succeeded", view.job.reason


def test_engine_datasets_refuse_exact_results_unless_the_holder_allows_them(
    tmp_path: Path,
) -> None:
    configs = {}
    for name, data in frames().items():
        data.to_parquet(tmp_path / f"{name}.parquet")
        configs[name] = DatasetConfig(
            name, tmp_path / f"{name}.parquet", format="parquet", engine="duckdb"
        )
    with InProcessFederation(frames(), dataset_configs=configs) as fed:
        view = fed.run(spec("count"))
        assert view.job.state.value == "refused", view.job.reason
        assert "keeps no record of released cells" in view.job.reason
        noisy = fed.run(spec("count", params={"dp": {"epsilon": 1.0, "delta": 0.001}}))
        assert noisy.job.state.value == "succeeded", noisy.job.reason


def _close(found: Any, expected: Any) -> bool:
    if isinstance(expected, dict):
        return set(found) == set(expected) and all(
            _close(found[k], v) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return len(found) == len(expected) and all(
            _close(a, b) for a, b in zip(found, expected, strict=True)
        )
    if isinstance(expected, float):
        return bool(found == pytest.approx(expected, rel=1e-9, abs=1e-6))
    return bool(found == expected)
