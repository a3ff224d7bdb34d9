"""The demo's built-in steps; each capability adds one here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from cleanroom.demo.runner import DemoStep, register_step


def _inputs(datasets: Mapping[str, str]) -> str:
    return "\n".join(f"  - {{node: {n}, dataset: {d}}}" for n, d in datasets.items())


def _count_spec(datasets: Mapping[str, str]) -> str:
    return f"""type: count
inputs:
{_inputs(datasets)}
params:
  where:
    - {{column: target, op: "==", value: 0}}
    - {{column: mean_radius, op: ">", value: 15}}
purpose: tumour-size audit
"""


def _count_compare(
    result: Mapping[str, Any], frames: Mapping[str, pd.DataFrame]
) -> list[tuple[str, str, str, bool]]:
    rows = []
    for entry in result["counts"]:
        f = frames[entry["node"]]
        want = int(((f.target == 0) & (f.mean_radius > 15)).sum())
        got = "suppressed (< 5)" if entry["suppressed"] else str(entry["count"])
        ok = (entry["count"] == want) if not entry["suppressed"] else want < 5
        rows.append((f"malignant & radius > 15 at {entry['node']}", got, str(want), ok))
    return rows


register_step(
    DemoStep(
        "count — rows per hospital, small cells suppressed", _count_spec, _count_compare
    )
)


# ---------------------------------------------------------------- sandbox --
_SANDBOX_NODE = "hospital-a"
_SANDBOX_TOLERANCE = 0.02  # the image has Debian's scikit-learn 1.2, not ours
_SANDBOX_CODE = """\
import json

import pandas as pd
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

data = pd.read_csv("/data/data.csv")
features = data.drop(columns=["patient_id", "target"])
x_train, x_test, y_train, y_test = train_test_split(
    features, data["target"], test_size=0.3, random_state=1, stratify=data["target"]
)
model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
model.fit(x_train, y_train)
with open("/output/metrics.json", "w") as sink:
    json.dump({"accuracy": round(float(model.score(x_test, y_test)), 4),
               "n_train": int(round(len(x_train), -1)),
               "sklearn": sklearn.__version__}, sink)
"""
_sandbox_review: dict[str, str] = {}


def _sandbox_available() -> str | None:
    from rich.console import Console

    from cleanroom.errors import SandboxError
    from sandbox import docker_client, ensure_image

    try:
        client = docker_client()
    except SandboxError as exc:
        return f"{exc}; start Docker (e.g. scripts/setup-docker.sh) to see it"
    console = Console()
    try:
        with console.status("sandbox image") as status:

            def progress(message: str) -> None:
                status.update(f"sandbox image: {message}")
                console.print(f"[dim]sandbox image: {message}[/]", highlight=False)

            ensure_image(client=client, progress=progress)
    except SandboxError as exc:
        return f"the sandbox image is missing and could not be built: {exc}"
    return None


def _node_config(node: str) -> Any:
    """The config file of the demo federation's node ``node``."""
    from pathlib import Path

    from cleanroom.demo.runner import current_federation

    fed = current_federation()
    return Path(fed.nodes[node]["config"]) if fed and node in fed.nodes else None


def _approve_as_holder(spec_yaml: str, digest: str) -> None:
    """What the holder of hospital-a does with ``cleanroom node approve``."""
    import json
    import subprocess
    import sys
    import time

    from rich.console import Console

    config = _node_config(_SANDBOX_NODE)
    if config is None:
        _sandbox_review["note"] = "could not find hospital-a's node to approve"
        return

    def holder(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cleanroom", "node", *args, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        listed = holder("jobs", "--json")
        for job in json.loads(listed.stdout or "[]") if listed.returncode == 0 else []:
            if job.get("spec_yaml") == spec_yaml:
                approved = holder(
                    "approve", job["job_id"], "--reason", "reviewed in the demo",
                    "--digest", digest[:16],
                )  # fmt: skip
                if approved.returncode == 0:
                    note = (
                        f"held for code review, then approved by the holder: "
                        f"sha256 {digest[:16]}…"
                    )
                    _sandbox_review["note"] = note
                    Console().print(
                        f"[yellow]{_SANDBOX_NODE} held {job['job_id']} for code "
                        "review (sandbox jobs always are until their exact code is "
                        "approved); the demo approves code sha256 "
                        f"{digest[:16]}… as the holder does: `cleanroom node "
                        f"approve {job['job_id']} --digest {digest[:16]} --config "
                        f"{config}`[/]",
                        highlight=False,
                    )
                else:
                    _sandbox_review["note"] = approved.stderr.strip()[:200]
                return
        time.sleep(0.3)


def _sandbox_spec(datasets: Mapping[str, str]) -> str:
    import tempfile
    import threading
    from pathlib import Path

    from cleanroom.jobtypes.sandbox import make_spec
    from sandbox import bundle_digest

    with tempfile.TemporaryDirectory(prefix="cleanroom-demo-code-") as tmp:
        (Path(tmp) / "main.py").write_text(_SANDBOX_CODE)
        digest = bundle_digest(Path(tmp))
        spec = make_spec(
            tmp,
            inputs=[(_SANDBOX_NODE, datasets[_SANDBOX_NODE])],
            purpose="tumour classifier evaluation",
            timeout_seconds=300,
            outputs={"metrics.json": "test accuracy, training rows"},
        )
    _sandbox_review.clear()
    threading.Thread(
        target=_approve_as_holder, args=(spec, digest), daemon=True, name="demo-holder"
    ).start()
    return spec


def _sandbox_compare(
    result: Mapping[str, Any], frames: Mapping[str, pd.DataFrame]
) -> list[tuple[str, str, str, bool]]:
    import sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = frames[_SANDBOX_NODE]
    features = data.drop(columns=["patient_id", "target"])
    x_train, x_test, y_train, y_test = train_test_split(
        features, data["target"], test_size=0.3, random_state=1, stratify=data["target"]
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    accuracy = float(model.fit(x_train, y_train).score(x_test, y_test))
    metrics = result["outputs"]["metrics.json"]
    return [
        (
            f"accuracy on {_SANDBOX_NODE}'s held-out 30% (± {_SANDBOX_TOLERANCE})",
            f"{metrics['accuracy']:.4f}",
            f"{accuracy:.4f}",
            abs(metrics["accuracy"] - accuracy) <= _SANDBOX_TOLERANCE,
        ),
        (
            "training rows (rounded to 10)",
            str(metrics["n_train"]),
            str(round(len(x_train), -1)),
            metrics["n_train"] == round(len(x_train), -1),
        ),
        (
            "scikit-learn",
            f"{metrics['sklearn']} (sandbox image)",
            f"{sklearn.__version__} (here)",
            True,
        ),
        (
            "code review",
            _sandbox_review.get("note", "not approved"),
            "held until its exact code is approved",
            "note" in _sandbox_review and "approved" in _sandbox_review["note"],
        ),
        (
            "released by",
            f"vetting on {result['node']}, image {result['image']}",
            "only vetted output leaves",
            result["released_by"] == "vetting",
        ),
    ]


register_step(
    DemoStep(
        "sandbox — analyst's own scikit-learn code, reviewed and vetted",
        _sandbox_spec,
        _sandbox_compare,
        _sandbox_available,
    )
)


# ----------------------------------------------------------- secure_stats --
_STATS_COLUMNS = ("mean_radius", "mean_texture", "mean_area")
_STATS_EDGES = [0, 10, 12, 14, 16, 18, 20, 25, 30]


def _stats_spec(datasets: Mapping[str, str]) -> str:
    return f"""type: secure_stats
inputs:
{_inputs(datasets)}
params:
  columns: [{", ".join(_STATS_COLUMNS)}]
  stats: [count, mean, std, correlation, histogram, quantiles]
  clip: {{mean_radius: [0, 30], mean_texture: [0, 40], mean_area: [0, 2600]}}
  bins: {{mean_radius: {_STATS_EDGES}}}
  quantiles: [0.25, 0.5, 0.75]
  group_by: target
  groups: [0, 1]
  max_rows: 100000
purpose: tumour-size statistics
"""


def _stats_compare(
    result: Mapping[str, Any], frames: Mapping[str, pd.DataFrame]
) -> list[tuple[str, str, str, bool]]:
    import numpy as np

    from cleanroom.jobtypes.stats.release import histogram_quantile

    pooled = pd.concat(frames.values(), ignore_index=True)
    rows: list[tuple[str, str, str, bool]] = []

    def close(what: str, got: float | None, want: float, tol: float) -> None:
        ok = got is not None and abs(got - want) <= tol
        rows.append((what, "—" if got is None else f"{got:.4f}", f"{want:.4f}", ok))

    for group in ("0", "1"):
        data = pooled[pooled.target == int(group)]
        label = "malignant" if group == "0" else "benign"
        cell = result["groups"].get(group)
        if cell is None:
            rows.append((f"{label}: cell", "suppressed", str(len(data)), False))
            continue
        rows.append(
            (
                f"{label}: count",
                str(cell["count"]),
                str(len(data)),
                cell["count"] == len(data),
            )
        )
        for c in _STATS_COLUMNS:
            close(f"{label}: mean {c}", cell["mean"][c], data[c].mean(), 1e-9)
            close(f"{label}: std {c}", cell["std"][c], data[c].std(ddof=1), 1e-9)
        for i, a in enumerate(_STATS_COLUMNS):
            for b in _STATS_COLUMNS[i + 1 :]:
                close(
                    f"{label}: correlation {a} ~ {b}",
                    cell["correlation"][a][b],
                    float(np.corrcoef(data[a], data[b])[0, 1]),
                    1e-9,
                )
        # Every bin is a cell of its own. It is withheld (None) when it holds
        # fewer than a holder's minimum group size in all, and may be withheld by
        # a holder's differencing record when that hospital holds 1..k-1 of its
        # rows (it would differ from a cell released before by fewer than k);
        # withheld bins count as empty in the quantiles.
        k = int(result["min_group_size"])
        counts = np.histogram(data.mean_radius, bins=_STATS_EDGES)[0].tolist()
        per_node = [
            np.histogram(f[f.target == int(group)].mean_radius, bins=_STATS_EDGES)[
                0
            ].tolist()
            for f in frames.values()
        ]
        got = cell["histogram"]["mean_radius"]["counts"]
        explained = all(
            g == c if g is not None else c < k or any(0 < n[i] < k for n in per_node)
            for i, (g, c) in enumerate(zip(got, counts, strict=True))
        )
        rows.append(
            (
                f"{label}: histogram mean_radius {_STATS_EDGES} (released bins "
                f"exact; bins < {k} or with 1..{k - 1} rows at a hospital withheld)",
                str(got),
                str(counts),
                explained,
            )
        )
        released = [c or 0 for c in got]
        for p, q in cell["quantiles"]["mean_radius"].items():
            exact = histogram_quantile(_STATS_EDGES, released, float(p))
            want = float(data.mean_radius.quantile(float(p)))
            rows.append(
                (
                    f"{label}: quantile {p} of mean_radius (from released bins)",
                    f"{q:.4f}",
                    f"{exact:.4f} (exact {want:.4f})",
                    abs(q - (exact or 0.0)) <= 1e-9,
                )
            )
    return rows


register_step(
    DemoStep(
        "secure_stats — pooled statistics by SecAgg+, by diagnosis",
        _stats_spec,
        _stats_compare,
    )
)
