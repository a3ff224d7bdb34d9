"""The demo's homomorphic steps: ``he_sum`` totals only the analyst can decrypt,
and ``he_inference`` scoring the analyst's rows against a hospital's model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from cleanroom.demo.runner import DemoStep, register_step

OWNER: Final = "hospital-a"
MODEL: Final = "tumour-risk"
SCORED_ROWS: Final = 100
_SUM_COLUMNS: Final = ("mean_radius", "mean_area")
_MODELS: dict[str, Any] = {}


def _inputs(datasets: Mapping[str, str]) -> str:
    return "\n".join(f"  - {{node: {n}, dataset: {d}}}" for n, d in datasets.items())


# ----------------------------------------------------------------- he_sum --
def _sum_spec(datasets: Mapping[str, str]) -> str:
    return f"""type: he_sum
inputs:
{_inputs(datasets)}
params:
  columns: [{", ".join(_SUM_COLUMNS)}]
  group_by: target
  groups: [0, 1]
purpose: tumour-size totals
"""


def _sum_compare(
    result: Mapping[str, Any], frames: Mapping[str, pd.DataFrame]
) -> list[tuple[str, str, str, bool]]:
    pool = pd.concat(frames.values())
    tolerance = len(frames) * float(result["fixed_point_step"])
    rows = []
    for cell in result["cells"]:
        group = pool[pool.target == cell["group"]]
        want_count = len(group)
        rows.append(
            (
                f"count, target={cell['group']}",
                str(cell["count"]),
                str(want_count),
                cell["count"] == want_count,
            )
        )
        for column in _SUM_COLUMNS:
            got, want = cell["sum"][column], float(group[column].sum())
            rows.append(
                (
                    f"sum {column}, target={cell['group']}",
                    f"{got:.4f}",
                    f"{want:.4f}",
                    abs(got - want) <= tolerance,
                )
            )
    return rows


register_step(
    DemoStep(
        "he_sum — Paillier totals per group; only the analyst decrypts",
        _sum_spec,
        _sum_compare,
    )
)


# ----------------------------------------------------------- he_inference --
def _features(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("patient_id", "target")]


def _model_settings(
    root: Path, frames: Mapping[str, pd.DataFrame]
) -> Mapping[str, Mapping[str, Any]]:
    """As hospital-a's holder would: fit a model on its own data and register it."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from protocols.models.asset import ModelCard
    from protocols.models.codec import dump_model
    from protocols.models.sklearn_import import from_sklearn

    frame = frames[OWNER]
    names = _features(frame)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    pipe.fit(frame[names].to_numpy(), frame["target"].to_numpy())
    asset = from_sklearn(
        pipe,
        feature_names=names,
        model_id=MODEL,
        version="1",
        card=ModelCard.of(
            "tumour risk", description="logistic regression on 30 cell features"
        ),
    )
    _MODELS[MODEL] = asset
    document, _ = dump_model(asset)
    path = root / "models" / f"{MODEL}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(document)
    dataset = f"{OWNER.replace('-', '_')}_patients"
    return {
        OWNER: {
            "he_inference": {"models": {MODEL: {"path": str(path), "dataset": dataset}}}
        }
    }


def _buyer_rows(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The analyst's own patients to score (here: a sample of the other hospitals)."""
    others = pd.concat(f for n, f in frames.items() if n != OWNER)
    return others[_features(others)].head(SCORED_ROWS)


def _inference_spec(datasets: Mapping[str, str]) -> str:
    return f"""type: he_inference
inputs:
  - {{node: {OWNER}, dataset: {datasets[OWNER]}}}
params: {{model: {MODEL}, rows: {SCORED_ROWS}}}
purpose: triage scoring
"""


def _inference_compare(
    result: Mapping[str, Any], frames: Mapping[str, pd.DataFrame]
) -> list[tuple[str, str, str, bool]]:
    from protocols.models.reference import predict

    rows = _buyer_rows(frames)
    want = predict(_MODELS[MODEL], rows.to_numpy(dtype=np.float64))
    got = np.asarray(result["scores"], dtype=np.float64)
    worst = float(np.max(np.abs(got - want)))
    out = [
        (f"score of row {i}", f"{got[i]:.4f}", f"{want[i]:.4f}", True) for i in range(3)
    ]
    out.append(
        (f"max |score - plaintext| over {len(rows)} rows", f"{worst:.2e}", "< 1e-3",
         worst < 1e-3)
    )  # fmt: skip
    out.append(
        (
            "CKKS parameter set",
            str(result["parameter_set"]),
            "chosen from the model's depth",
            True,
        )
    )
    return out


register_step(
    DemoStep(
        "he_inference — the analyst's encrypted rows scored by hospital-a's model",
        _inference_spec,
        _inference_compare,
        node_settings=_model_settings,
        local_inputs=lambda frames: {"rows": _buyer_rows(frames)},
    )
)
