"""The demo's privacy step on the bundled hospital data: one differencing attempt
withheld, an exact count refused and a noisy one released where DP is required."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from rich.console import Console

from cleanroom.demo import privacy
from cleanroom.demo.runner import sample_data


def test_the_privacy_step_shows_a_withheld_difference_and_required_dp(
    tmp_path: Path,
) -> None:
    frames = {n: pd.read_csv(p) for n, p in sample_data(tmp_path).items()}
    console = Console(record=True, width=120)
    assert privacy.show(frames, console)
    text = console.export_text()
    assert "withheld" in text and "releases only differentially private" in text
    assert "(noise std)" in text
