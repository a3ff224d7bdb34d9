"""A malicious operator against ``fedavg``: the coordinator's party runs inside
modified code (``helpers.malicious.Tampering``) while every node, its policy and
the analyst's client are real. It can neither change a round's sum nor the
released metrics without every node refusing; nothing is released."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from helpers.malicious import Tampering

from cleanroom.jobtypes.fedavg.parties import SUM
from cleanroom.testing import InProcessFederation
from protocols.party import Outbound

NODES = ("h1", "h2", "h3")


def _frames() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(4)
    out = {}
    for name in NODES:
        x = rng.normal(size=(60, 3))
        y = (x[:, 0] - x[:, 1] > 0).astype(int)
        out[name] = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y})
    return out


def _spec() -> str:
    params = {
        "features": ["a", "b", "c"],
        "label": "y",
        "feature_bounds": {k: [-5.0, 5.0] for k in "abc"},
        "rounds": 3,
        "max_rows": 1000,
    }
    return json.dumps(
        {
            "type": "fedavg",
            "inputs": [{"node": n, "dataset": n} for n in NODES],
            "purpose": "research",
            "params": params,
        }
    )


def _run(tamper: Callable[..., None], **hooks: Any) -> tuple[str, str]:
    tamper("fedavg", **hooks)
    with InProcessFederation(_frames()) as fed:
        view = fed.run(_spec(), timeout=120)
        return view.job.state.value, view.job.reason


def test_an_altered_round_sum_is_refused_by_every_node(
    tamper: Callable[..., None],
) -> None:
    def say(party: Tampering, out: Outbound) -> Outbound:
        if out.stage != SUM:
            return out
        body = json.loads(out.payload)
        total = np.frombuffer(base64.b64decode(body["total"]), "<u8").copy()
        total[0] += np.uint64(1 << 20)
        body["total"] = base64.b64encode(total.tobytes()).decode()
        return Outbound(out.recipient, out.stage, json.dumps(body).encode())

    state, reason = _run(tamper, say=say)
    assert state == "failed"
    assert "does not verify" in reason


def test_altered_released_metrics_are_not_signed(
    tamper: Callable[..., None],
) -> None:
    def release(result: Mapping[str, Any]) -> Mapping[str, Any]:
        history = [dict(m) for m in result["history"]]
        history[-1]["train_loss"] = 0.001
        return {**result, "history": history}

    state, reason = _run(tamper, release=release)
    assert state == "failed"
    assert "metrics are not the ones this node saw" in reason
