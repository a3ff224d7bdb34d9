"""secure_stats on a real local federation of five node processes: pooled statistics
equal numpy's, nodes killed mid-protocol leave the survivors' exact result, and the
coordinator's logs and store hold neither one node's own contribution nor any
released value (the result is sealed to the analyst).

Nodes are killed deterministically: a test-only job-type plugin, installed like any
plugin (an entry point) and loaded through the ordinary ``plugins`` setting, is
``secure_stats`` itself except that a node SIGKILLs its own process when a message
of the stage named for it in a plan file arrives (``start``: when the job starts)
— before the node answers it, like ``cleanroom.jobtypes.simulate``'s ``drop_at``.
The coordinator only notices the silence. The holders' policy accepts being
aggregated with as few as three inputs (``min_inputs``), and re-running a query
over other survivors (``allow_survivor_change``), so that dropouts can succeed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers.federation import wait_for
from helpers.plugins import install_plugin

from cleanroom import local
from cleanroom.client import Client
from cleanroom.jobtypes.stats.encode import contribution
from cleanroom.jobtypes.stats.layout import build_layout
from cleanroom.jobtypes.stats.params import parse_params
from cleanroom.local import default_policy
from protocols.secagg import MASKED_INPUT, SHARE_KEYS, UNMASK

pytestmark = pytest.mark.integration

NODES = ("h1", "h2", "h3", "h4", "h5")
SIZES = (90, 140, 60, 110, 75)
PLAN_ENV = "CLEANROOM_TEST_KILL_PLAN"
PLUGIN = "secure_stats_kill"
PLUGIN_SOURCE = f'''"""Test only: SIGKILL this node when a planned stage arrives."""
import json
import os
import signal
from pathlib import Path

from cleanroom.jobtypes.secure_stats import SecureStatsJob
from protocols.party import NodeParty
_PLAN = Path(os.environ["{PLAN_ENV}"])


def _die_at(node, stage):
    if json.loads(_PLAN.read_text()).get(node) == stage:
        os.kill(os.getpid(), signal.SIGKILL)


class _Mortal(NodeParty):
    def __init__(self, party, node):
        self._party, self._node = party, node

    def start(self):
        _die_at(self._node, "start")
        return self._party.start()

    def receive(self, message):
        _die_at(self._node, message.stage)
        return self._party.receive(message)

    def dropped(self, parties):
        return self._party.dropped(parties)

    def waiting_for(self):
        return self._party.waiting_for()

    @property
    def finished(self):
        return self._party.finished

    def usage(self):
        return self._party.usage()

    def attest(self, result):
        return self._party.attest(result)


class MortalStats(SecureStatsJob):
    name = "{PLUGIN}"

    def node_party(self, ctx):
        return _Mortal(super().node_party(ctx), ctx.node)
'''

PARAMS: dict[str, Any] = {
    "columns": ["age", "bmi", "income"],
    "stats": ["count", "sum", "mean", "std", "correlation", "histogram", "quantiles"],
    "clip": {"age": [18, 90], "bmi": [10, 50], "income": [0, 200000]},
    "bins": {"age": [18, 30, 45, 60, 75, 90]},
    "quantiles": [0.25, 0.5, 0.75],
    "group_by": "sex",
    "groups": ["F", "M"],
    "max_rows": 10000,
}


@dataclass
class Fed:
    workdir: Path
    paths: dict[str, Path]
    plan: Path


def make_csvs(directory: Path) -> dict[str, Path]:
    rng = np.random.default_rng(11)
    paths = {}
    for node, rows in zip(NODES, SIZES, strict=True):
        frame = pd.DataFrame(
            {
                "patient_id": [f"{node}-{k}" for k in range(rows)],
                "age": rng.integers(18, 91, rows),
                "sex": rng.choice(["F", "M"], rows),
                "bmi": rng.normal(26, 4, rows).round(2),
                "income": rng.lognormal(10, 0.6, rows).clip(0, 200000),
            }
        )
        frame.loc[rng.choice(rows, 2, replace=False), "bmi"] = np.nan
        paths[node] = directory / f"{node}.csv"
        frame.to_csv(paths[node], index=False)
    return paths


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    root = tmp_path_factory.mktemp("secure-stats")
    plan = root / "kill-plan.json"
    plan.write_text("{}")
    env = pytest.MonkeyPatch()
    env.setenv(PLAN_ENV, str(plan))
    install_plugin(
        root / "plugin",
        "mortal_stats",
        PLUGIN_SOURCE,
        {PLUGIN: "mortal_stats:MortalStats"},
        env,
    )
    policy = default_policy()
    policy["default"] = {  # type: ignore[dict-item]
        **policy["default"],  # type: ignore[dict-item]
        "min_inputs": 3,
        "allow_survivor_change": True,
    }
    policy_file = root / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy))
    state = Fed(root / "fed", make_csvs(root), plan)
    local.up(
        workdir=state.workdir,
        nodes=list(state.paths.items()),
        node_timeout=2.0,
        plugins=[PLUGIN],
        policy=policy_file,
    )
    try:
        yield state
    finally:
        local.down(state.workdir)
        env.undo()


def spec(params: Mapping[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "type": PLUGIN,
            "inputs": [{"node": n, "dataset": n} for n in NODES],
            "params": dict(params),
            "purpose": "research",
        }
    )


def run(
    fed: Fed, params: Mapping[str, Any], kill: Mapping[str, str] | None = None
) -> tuple[Any, dict[str, Any] | None, float]:
    """Run a job with ``kill`` planned; restart the killed nodes afterwards."""
    fed.plan.write_text(json.dumps(dict(kill or {})))
    started = time.monotonic()
    with Client.from_federation(fed.workdir / "federation.json") as client:
        job = client.submit(spec(params)).job.job_id
        final = client.wait(job, timeout=90)
        took = time.monotonic() - started
        fed.plan.write_text("{}")
        document = client.result(job) if final.job.state.value == "succeeded" else None
        for node in kill or {}:
            local.restart(fed.workdir, node)  # recorded, so local.down stops it
        if kill:
            wait_for(
                lambda: all(e.connected for e in client.catalog()),
                timeout=30,
                what="killed nodes to reconnect",
            )
    return final, document, took


def pooled(fed: Fed, nodes: list[str]) -> pd.DataFrame:
    data = pd.concat([pd.read_csv(fed.paths[n]) for n in nodes], ignore_index=True)
    return data.dropna(subset=PARAMS["columns"])


def check(result: Mapping[str, Any], data: pd.DataFrame, contributors: int) -> None:
    cols = PARAMS["columns"]
    for sex in ("F", "M"):
        cell, rows = result["groups"][sex], data[data.sex == sex]
        values = rows[cols].to_numpy(dtype=float)
        assert cell["count"] == len(rows)
        assert cell["sum"]["age"] == int(rows.age.sum())
        for j, c in enumerate(cols):
            step = contributors * result["resolution"]["sum"][c]
            assert cell["sum"][c] == pytest.approx(values[:, j].sum(), abs=step)
            assert cell["mean"][c] == pytest.approx(values[:, j].mean(), rel=1e-12)
            assert cell["std"][c] == pytest.approx(values[:, j].std(ddof=1), rel=1e-9)
        corr = np.corrcoef(values, rowvar=False)
        for a, ca in enumerate(cols):
            for b, cb in enumerate(cols):
                assert cell["correlation"][ca][cb] == pytest.approx(
                    corr[a, b], abs=1e-9
                )
        edges = PARAMS["bins"]["age"]
        counts = np.histogram(rows.age, bins=edges)[0].tolist()
        k = result["min_group_size"]  # every bin is a cell: small ones are withheld
        released = [c if c >= k else None for c in counts]
        assert cell["histogram"]["age"] == {"edges": edges, "counts": released}
        for p, q in cell["quantiles"]["age"].items():
            if None not in released:
                assert abs(q - np.quantile(rows.age, float(p))) <= 15  # one bin


def _needles(fed: Fed) -> dict[str, set[bytes]]:
    """Each node's own contribution as the coordinator could have stored it."""
    layout = build_layout(parse_params(PARAMS, parties=len(NODES), schemas=()))
    out: dict[str, set[bytes]] = {}
    for node in NODES:
        frame = pd.read_csv(fed.paths[node])
        encoded = contribution(layout, frame)
        needles: set[bytes] = set()
        for value in encoded.tolist():
            if abs(value) >= 10**6:  # big enough never to match by chance
                needles.add(str(value).encode())
                needles.add(str(value % 2**64).encode())
                raw = int(value % 2**64).to_bytes(8, "little")
                if len(set(raw) - {0, 255}) >= 5:  # binary only where distinctive
                    needles.add(raw)
        data = frame.dropna(subset=PARAMS["columns"])
        for sex in ("F", "M"):
            rows = data[data.sex == sex]
            for c in PARAMS["columns"]:
                for value in (rows[c].sum(), (rows[c] ** 2).sum(), rows[c].mean()):
                    for text in (repr(float(value)), f"{value:.6f}", f"{value:.2f}"):
                        if len(text.replace(".", "").lstrip("0")) >= 7:
                            needles.add(text.encode())
        out[node] = needles
    return out


def _released_needles(result: Mapping[str, Any]) -> set[bytes]:
    """The released statistics, in every form the coordinator could keep them."""
    needles: set[bytes] = set()
    for cell in result["groups"].values():
        for sep in (b":", b": "):
            needles.add(b'"count"' + sep + str(cell["count"]).encode())
        for stat in ("sum", "mean", "std"):
            for value in cell[stat].values():
                for text in (repr(float(value)), f"{value:.6f}"):
                    if len(text.replace(".", "").lstrip("0")) >= 7:
                        needles.add(text.encode())
    return needles


def test_pooled_statistics_match_numpy_and_the_coordinator_keeps_no_contribution(
    fed: Fed,
) -> None:
    final, document, took = run(fed, PARAMS)
    assert final.job.state.value == "succeeded", final.job.reason
    assert document is not None
    result = document["result"]
    assert result["survivors"] == list(NODES) and result["dropped"] == []
    check(result, pooled(fed, list(NODES)), len(NODES))
    assert {a["node"] for a in document["provenance"]["attestations"]} == set(NODES)
    print(f"\nsecure_stats, 5 nodes, no dropout: {took:.1f}s")

    haystacks = [
        fed.workdir / "logs" / "coordinator.log",
        *sorted((fed.workdir / "coordinator" / "data").iterdir()),
    ]
    contents = b"".join(p.read_bytes() for p in haystacks if p.is_file())
    assert final.job.job_id.encode() in contents  # the store really holds this job
    released = _released_needles(result)
    assert len(released) > 20
    leaked = [n for n in released if n in contents]
    assert not leaked, f"released values are in the coordinator: {leaked[:5]}"
    for node, needles in _needles(fed).items():
        assert len(needles) > 20
        leaked = [n for n in needles if n in contents]
        assert not leaked, f"{node}'s own contribution is in the coordinator: {leaked}"


def test_nodes_killed_mid_protocol_leave_the_survivors_exact_result(fed: Fed) -> None:
    params = {**PARAMS, "threshold": 3}
    # h2 dies in the counts round before sending its masked input: it is left out
    # of both rounds. h4 dies in the values round after sending its masked values:
    # they are already in the sum, so its self-mask is rebuilt from shares.
    kill = {"h2": f"counts/{MASKED_INPUT}", "h4": f"values/{UNMASK}"}
    final, document, took = run(fed, params, kill)
    assert final.job.state.value == "succeeded", final.job.reason
    assert document is not None
    result = document["result"]
    included = ["h1", "h3", "h4", "h5"]
    assert result["survivors"] == included and result["dropped"] == ["h2"]
    check(result, pooled(fed, included), len(included))
    signers = {a["node"] for a in document["provenance"]["attestations"]}
    assert signers == {"h1", "h3", "h5"}
    print(f"\nsecure_stats, h2 killed at masked input, h4 at unmask: {took:.1f}s")


def test_one_node_killed_at_the_start_under_the_default_threshold(fed: Fed) -> None:
    final, document, took = run(fed, PARAMS, {"h5": "start"})
    assert final.job.state.value == "succeeded", final.job.reason
    assert document is not None
    result = document["result"]
    assert result["survivors"] == ["h1", "h2", "h3", "h4"]
    assert result["dropped"] == ["h5"]
    check(result, pooled(fed, ["h1", "h2", "h3", "h4"]), 4)
    print(f"\nsecure_stats, h5 killed at start: {took:.1f}s")


def test_more_than_n_minus_t_killed_aborts_with_a_clear_reason(fed: Fed) -> None:
    kill = dict.fromkeys(["h2", "h3", "h4"], f"counts/{SHARE_KEYS}")
    final, document, took = run(fed, {**PARAMS, "threshold": 3}, kill)
    assert final.job.state.value == "failed"
    assert document is None
    reason = final.job.reason
    assert "lost contact" in reason and "threshold is 3" in reason, reason
    print(f"\nsecure_stats, 3 of 5 killed, threshold 3: {took:.1f}s: {reason}")
