"""Demo step: a bank (label + 10 features) and a telecom (20 features) hold
breast_cancer split by columns, 20% of each side's customers unknown to the
other; ``vertical_logreg`` trains across them, ``vertical_predict`` scores, and a
centralised scikit-learn model on the joined data is the reference."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

BANK, TELECOM = "bank", "telecom"
LABEL = "defaulted"


@dataclass(frozen=True)
class VerticalSplit:
    bank: pd.DataFrame
    telecom: pd.DataFrame
    common: tuple[str, ...]
    bank_features: tuple[str, ...]
    telecom_features: tuple[str, ...]

    def joined(self) -> pd.DataFrame:
        """The aligned rows with every column, as a centralised model sees them."""
        return (
            self.bank.merge(self.telecom, on="customer_id")
            .set_index("customer_id")
            .loc[list(self.common)]
        )


def split(seed: int = 2026) -> VerticalSplit:
    """breast_cancer by columns: c common customers, c/4 more on each side only
    (20% of each side's rows), bundled data, nothing downloaded."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.frame.copy()
    names = [f"f{i:02d}" for i in range(30)]
    frame.columns = [*names, LABEL]
    frame[LABEL] = 1 - frame[LABEL]  # "malignant" as the positive class
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    ids = np.array([f"C{i:05d}" for i in range(len(frame))])
    frame.insert(0, "customer_id", ids)
    common_n = len(frame) * 2 // 3
    extra = (len(frame) - common_n) // 2
    common = order[:common_n]
    bank_only, telecom_only = (
        order[common_n : common_n + extra],
        order[common_n + extra :],
    )
    bank_cols, telecom_cols = names[:10], names[10:]
    bank_rows = rng.permutation(np.concatenate([common, bank_only]))
    telecom_rows = rng.permutation(np.concatenate([common, telecom_only]))
    bank = frame.iloc[bank_rows][["customer_id", LABEL, *bank_cols]]
    telecom = frame.iloc[telecom_rows][["customer_id", *telecom_cols]]
    return VerticalSplit(
        bank.reset_index(drop=True),
        telecom.reset_index(drop=True),
        tuple(ids[common]),
        tuple(bank_cols),
        tuple(telecom_cols),
    )


def train_spec(data: VerticalSplit, *, key_bits: int = 3072, epochs: int = 12) -> str:
    return "\n".join(
        [
            "type: vertical_logreg",
            f"inputs: [{{node: {BANK}, dataset: {BANK}}}, "
            f"{{node: {TELECOM}, dataset: {TELECOM}}}]",
            "purpose: joint default model",
            "params:",
            f"  guest: {BANK}",
            f"  label: {LABEL}",
            "  features:",
            f"    {BANK}: [{', '.join(data.bank_features)}]",
            f"    {TELECOM}: [{', '.join(data.telecom_features)}]",
            f"  epochs: {epochs}",
            "  batch_size: 64",
            "  learning_rate: 0.3",
            "  l2: 0.001",
            "  validation_fraction: 0.2",
            "  early_stopping: {patience: 3, min_delta: 0.0001}",
            f"  key_bits: {key_bits}",
        ]
    )


def predict_spec(model: str, ids: Sequence[str]) -> str:
    return "\n".join(
        [
            "type: vertical_predict",
            f"inputs: [{{node: {BANK}, dataset: {BANK}}}, "
            f"{{node: {TELECOM}, dataset: {TELECOM}}}]",
            "purpose: score customers",
            "params:",
            f"  guest: {BANK}",
            f"  model: {model}",
            f"  ids: [{', '.join(ids)}]",
        ]
    )


def centralised_auc(data: VerticalSplit) -> float:
    """scikit-learn on the joined data: the reference the split model is held to."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    joined = data.joined()
    x = StandardScaler().fit_transform(
        joined[[*data.bank_features, *data.telecom_features]]
    )
    y = joined[LABEL].to_numpy()
    model = LogisticRegression(max_iter=1000).fit(x, y)
    return float(roc_auc_score(y, model.predict_proba(x)[:, 1]))


def run(console: Console, *, key_bits: int = 3072) -> bool:
    """Train, score, compare with the centralised model; True if within 0.01."""
    from sklearn.metrics import roc_auc_score

    from cleanroom.testing import InProcessFederation

    data = split()
    console.rule("vertical logistic regression — bank x telecom")
    console.print(
        f"bank: {len(data.bank)} customers (label + {len(data.bank_features)} "
        f"features), telecom: {len(data.telecom)} customers "
        f"({len(data.telecom_features)} features), {len(data.common)} in common"
    )
    settings: dict[str, Any] = {"allow_legacy_2048": key_bits < 3072}
    # The in-process nodes' reconnect warnings at teardown are not the demo's story.
    logging.getLogger("node").setLevel(logging.ERROR)
    with InProcessFederation(
        {BANK: data.bank, TELECOM: data.telecom},
        id_column="customer_id",
        jobtypes={"vertical_logreg": settings, "vertical_predict": settings},
    ) as fed:
        trained = fed.run(train_spec(data, key_bits=key_bits), timeout=900)
        if trained.job.state.value != "succeeded":
            console.print(
                f"[red]training {trained.job.state.value}:[/] {trained.job.reason}"
            )
            return False
        result = fed.client.result(trained.job.job_id)["result"]
        scored = fed.run(predict_spec(trained.job.job_id, data.common), timeout=300)
        scores = fed.client.result(scored.job.job_id)["result"]["scores"]
    joined = data.joined()
    y = joined[LABEL].to_numpy()
    split_auc = float(roc_auc_score(y, [scores[i] for i in data.common]))
    reference = centralised_auc(data)
    table = Table("value", "split model (released)", "centralised sklearn", "match")
    ok = abs(split_auc - reference) <= 0.01
    table.add_row(
        "AUC on the aligned customers",
        f"{split_auc:.4f}",
        f"{reference:.4f}",
        "[green]yes[/]" if ok else "[red]NO[/]",
    )
    curve = result["training_curve"]
    table.add_row("epochs run", str(len(curve)), "-", "")
    table.add_row(
        "validation AUC", f"{result['metrics']['validation_auc']:.4f}", "-", ""
    )
    console.print(table)
    return ok
