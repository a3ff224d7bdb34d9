"""Approved jobs in Docker: real work passes vetting, disclosive output is held."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sandbox.executor import DockerSandbox
from sandbox.review import static_findings
from sandbox.runner import SandboxLimits
from sandbox.vetting import VettingRules, vet_outputs

pytestmark = pytest.mark.docker

TRAIN = """
    import json
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    df = pd.read_csv("/data/data.csv")
    X = pd.get_dummies(df[["age", "income", "sex"]], drop_first=True).astype(float)
    X["income"] = X["income"] / 10_000
    X_train, X_test, y_train, y_test = train_test_split(
        X, df["label"], test_size=0.2, random_state=0
    )
    model = LogisticRegression(max_iter=500).fit(X_train, y_train)
    json.dump(
        {
            "accuracy": model.score(X_test, y_test),
            "n": len(df),
            "coefficients": dict(zip(X.columns, model.coef_[0].tolist())),
            "intercept": float(model.intercept_[0]),
        },
        open("/output/metrics.json", "w"),
    )
    print("trained")
"""


@pytest.fixture
def sandbox(docker_engine: Any, sandbox_image: str, small_limits: SandboxLimits) -> Any:
    return DockerSandbox(docker_engine, sandbox_image, small_limits)


def test_sklearn_training_passes_vetting(
    sandbox: Any, job: Any, rules: VettingRules
) -> None:
    bundle = job(TRAIN)
    assert static_findings(bundle.code) == []
    report = sandbox.run(bundle.code, bundle.data, bundle.out, timeout_s=120)
    assert report.exit_code == 0
    assert report.output_files == ("metrics.json",)
    assert report.stdout_tail == "trained\n"
    assert report.cpu_s > 0
    assert report.image_id.startswith("sha256:")
    result = vet_outputs(bundle.out, bundle.dataset, rules)
    assert result.status == "pass", result.reasons
    released = json.loads(result.release()["metrics.json"])
    assert 0.5 < released["accuracy"] <= 1
    assert released["intercept"] == round(released["intercept"], 3)


def test_output_copying_raw_rows_is_held(
    sandbox: Any, job: Any, rules: VettingRules
) -> None:
    bundle = job("""
        import pandas as pd
        df = pd.read_csv("/data/data.csv")
        sample = df[["age", "sex", "region", "income"]].sample(15, random_state=1)
        sample = sample.rename(columns=lambda c: c.upper())
        sample.to_csv("/output/sample.csv", index=False)
    """)
    sandbox.run(bundle.code, bundle.data, bundle.out, timeout_s=60)
    result = vet_outputs(bundle.out, bundle.dataset, rules)
    assert result.status == "held"
    assert result.cleaned_outputs == {}
    assert any("reproduces a dataset row" in r for r in result.reasons)


def test_output_listing_identifiers_is_held(
    sandbox: Any, job: Any, rules: VettingRules
) -> None:
    bundle = job("""
        import json
        import pandas as pd
        df = pd.read_csv("/data/data.csv")
        high = df.loc[df["age"] > 80, "patient_id"].tolist()
        json.dump({"high_risk": {"who": high, "count": len(high)}},
                  open("/output/risk.json", "w"))
    """)
    sandbox.run(bundle.code, bundle.data, bundle.out, timeout_s=60)
    result = vet_outputs(bundle.out, bundle.dataset, rules)
    assert result.status == "held"
    assert any("identifier column 'patient_id'" in r for r in result.reasons)
    assert not any("P1" in r for r in result.reasons), (
        "reasons must not echo raw values"
    )


def test_chatty_job_keeps_bounded_tails(sandbox: Any, job: Any) -> None:
    bundle = job("""
        import json
        for i in range(200_000):
            print("line", i)
        json.dump({"n": 20}, open("/output/n.json", "w"))
    """)
    report = sandbox.run(bundle.code, bundle.data, bundle.out, timeout_s=60)
    assert len(report.stdout_tail) < 8300
    assert report.stdout_tail.rstrip().endswith("line 199999")
