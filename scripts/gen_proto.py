"""Generate the gRPC stubs from the .proto files named in pyproject.toml.

Usage: python scripts/gen_proto.py [--check]
With --check, generate into a temporary folder and fail if the committed stubs differ.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent


def _generate(files: list[str], out_dir: Path) -> None:
    # the protoc-gen-mypy plugins live beside this interpreter
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    opts = parser.parse_args()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["cleanroom"]
    files: list[str] = config["protos"]["files"]
    if not opts.check:
        _generate(files, ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        _generate(files, Path(tmp))
        stale = []
        for proto in files:
            stem = proto.removesuffix(".proto")
            for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
                fresh, committed = (
                    Path(tmp) / f"{stem}{suffix}",
                    ROOT / f"{stem}{suffix}",
                )
                if not committed.exists() or not filecmp.cmp(fresh, committed, False):
                    stale.append(str(committed.relative_to(ROOT)))
        if stale:
            print("stale generated stubs:", ", ".join(stale), file=sys.stderr)
            print("run: python scripts/gen_proto.py", file=sys.stderr)
            return 1
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
