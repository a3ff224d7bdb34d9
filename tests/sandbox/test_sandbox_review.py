"""Code-bundle digests pin approved code; static findings point reviewers at risks."""

from __future__ import annotations

import io
import tarfile
import textwrap
from pathlib import Path

import pytest

from cleanroom.errors import SandboxError
from sandbox.review import (
    bundle_digest,
    read_bundle,
    static_findings,
    unpack_bundle,
    verify_bundle,
)


def _bundle(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def _tar(path: Path, files: dict[str, bytes], link: str | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return path


def test_digest_changes_with_any_byte_and_any_rename(tmp_path: Path) -> None:
    code = _bundle(
        tmp_path / "code", {"main.py": "print(1)\n", "lib/util.py": "X = 1\n"}
    )
    approved = bundle_digest(code)
    assert approved == bundle_digest(code)
    verify_bundle(code, approved)

    (code / "lib/util.py").write_text("X = 2\n")
    assert bundle_digest(code) != approved
    with pytest.raises(SandboxError, match="changed since approval"):
        verify_bundle(code, approved)

    (code / "lib/util.py").write_text("X = 1\n")
    assert bundle_digest(code) == approved
    (code / "lib/util.py").rename(code / "lib/utils.py")
    assert bundle_digest(code) != approved
    (code / "lib/utils.py").rename(code / "lib/util.py")
    (code / "extra.py").write_text("")
    assert bundle_digest(code) != approved


def test_directory_and_tar_of_same_files_share_a_digest(tmp_path: Path) -> None:
    files = {"main.py": b"import json\n", "pkg/a.py": b"A = 1\n"}
    code = _bundle(tmp_path / "code", {k: v.decode() for k, v in files.items()})
    archive = _tar(tmp_path / "code.tar", {f"./{k}": v for k, v in files.items()})
    assert bundle_digest(code) == bundle_digest(archive)
    dest = tmp_path / "unpacked"
    dest.mkdir()
    unpack_bundle(archive, dest)
    assert bundle_digest(dest) == bundle_digest(code)


def test_links_and_escapes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="not a plain file"):
        read_bundle(_tar(tmp_path / "a.tar", {"main.py": b""}, link="evil.py"))
    with pytest.raises(SandboxError, match="escapes"):
        read_bundle(_tar(tmp_path / "b.tar", {"../main.py": b""}))
    code = _bundle(tmp_path / "code", {"main.py": ""})
    (code / "data.py").symlink_to("/etc/passwd")
    with pytest.raises(SandboxError, match="not a plain file"):
        bundle_digest(code)


def test_findings_flag_network_processes_and_host_paths(tmp_path: Path) -> None:
    code = _bundle(
        tmp_path / "code",
        {
            "main.py": """
                import socket
                import subprocess as sp
                from os import system
                import os, ctypes
                import urllib.request
                import pandas as pd

                def leak(rows):
                    s = socket.create_connection(("203.0.113.1", 443))
                    sp.run(["curl", "example.com"])
                    system("ls")
                    os.execv("/bin/sh", ["sh"])
                    eval("1 + 1")
                    __import__("requests")
                    open("/etc/passwd").read()
                    pd.read_csv("/data/data.csv")
                    open("/output/../etc/x", "w")
                    open("/tmp/scratch", "w")
            """,
            "notes.txt": "hello",
        },
    )
    found = {(f.rule, f.detail) for f in static_findings(code)}
    assert ("network", "imports socket") in found
    assert ("network", "imports urllib.request") in found
    assert ("process", "imports subprocess") in found
    assert ("process", "uses os.system") in found
    assert ("process", "uses os.execv") in found
    assert ("native-code", "imports ctypes") in found
    assert ("dynamic-code", "calls eval()") in found
    assert ("dynamic-code", "calls __import__()") in found
    assert ("non-python", "file is not Python source") in found
    host_paths = {d for r, d in found if r == "host-path"}
    assert any("/etc/passwd" in d for d in host_paths)
    assert any("/output/../etc/x" in d for d in host_paths)
    assert not any("/data/data.csv" in d or "/tmp/scratch" in d for d in host_paths)
    assert all(
        str(f).startswith(("main.py:", "notes.txt:")) for f in static_findings(code)
    )


def test_clean_analysis_has_no_findings(tmp_path: Path) -> None:
    code = _bundle(
        tmp_path / "code",
        {
            "main.py": """
                import json
                import numpy as np
                import pandas as pd
                from sklearn.linear_model import LogisticRegression

                df = pd.read_csv("/data/data.csv")
                mean = float(np.mean(df["age"]))
                json.dump({"mean": mean}, open("/output/m.json", "w"))
            """
        },
    )
    assert static_findings(code) == []


def test_unparseable_code_is_a_finding(tmp_path: Path) -> None:
    code = _bundle(tmp_path / "code", {"main.py": "def broken(:\n"})
    [finding] = static_findings(code)
    assert finding.rule == "syntax" and finding.line == 1
