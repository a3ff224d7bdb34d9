"""Installing a test-only job-type plugin the way a real one is installed: a module
plus a ``*.dist-info`` with an entry point in ``cleanroom.job_types``, on the path
of this process and of every process it starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def install_plugin(
    directory: Path,
    module: str,
    source: str,
    entry_points: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Write ``module`` and a distribution naming ``entry_points`` (name ->
    ``module:Object``) into ``directory``, and put it on the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{module}.py").write_text(source)
    dist = directory / f"cleanroom_test_{module}-0.0.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: cleanroom-test-{module}\nVersion: 0.0\n"
    )
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[cleanroom.job_types]\n{lines}")
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(directory), old]))
    )
    monkeypatch.syspath_prepend(str(directory))
