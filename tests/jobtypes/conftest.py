"""Shared fixtures for job-type tests: a fitted breast-cancer logistic model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from protocols.models import ModelAsset
from protocols.models.asset import ModelCard
from protocols.models.codec import dump_model
from protocols.models.sklearn_import import from_sklearn


@pytest.fixture(scope="session")
def cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame: pd.DataFrame = data.frame
    return frame


@pytest.fixture(scope="session")
def cancer_model(cancer: pd.DataFrame) -> ModelAsset:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    names = [c for c in cancer.columns if c != "target"]
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    pipe.fit(cancer[names].to_numpy(), cancer["target"].to_numpy())
    return from_sklearn(
        pipe,
        feature_names=names,
        model_id="bc-lr",
        version="1",
        card=ModelCard.of("breast cancer logistic", description="demo model"),
    )


@pytest.fixture(scope="session")
def cancer_model_file(
    cancer_model: ModelAsset, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    document, arrays = dump_model(cancer_model)
    assert arrays is None
    path = tmp_path_factory.mktemp("models") / "bc-lr.json"
    path.write_bytes(document)
    return path


def features(cancer: pd.DataFrame) -> np.ndarray:
    return cancer.drop(columns="target").to_numpy(dtype=np.float64)
