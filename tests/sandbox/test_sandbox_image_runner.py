"""Image recipe, mirror discovery and the runner helpers, without a Docker engine."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from cleanroom.errors import ConfigError, SandboxError
from sandbox import image
from sandbox.runner import SandboxLimits, Tail, check_job_dirs, extract_output


def test_image_tag_is_a_stable_recipe_hash() -> None:
    tag = image.image_tag()
    assert tag == image.image_tag()
    repository, version = tag.split(":")
    assert repository == "cleanroom-sandbox"
    assert version == image.recipe_digest()[:16] and len(version) == 16
    recipe = image.recipe()
    assert "python3-sklearn" in recipe["include"] and recipe["suite"] == "bookworm"
    assert "useradd --uid 10001" in recipe["setup"]


def test_mirror_is_read_from_deb822_and_one_line_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLEANROOM_DEBIAN_MIRROR", raising=False)
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb deb-src\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert image.debian_mirror([deb822]) == "http://mirror.example/debian"
    legacy = tmp_path / "sources.list"
    legacy.write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://legacy.example/debian bookworm main\n"
    )
    assert image.debian_mirror([tmp_path / "missing", legacy]) == (
        "http://legacy.example/debian"
    )
    assert image.debian_mirror([]) == image.DEFAULT_MIRROR
    monkeypatch.setenv("CLEANROOM_DEBIAN_MIRROR", "http://override.example/debian")
    assert image.debian_mirror([deb822]) == "http://override.example/debian"


def test_cache_dir_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLEANROOM_CACHE_DIR", str(tmp_path))
    assert image.cache_dir() == tmp_path / "sandbox"
    monkeypatch.delenv("CLEANROOM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert image.cache_dir() == tmp_path / "xdg" / "cleanroom" / "sandbox"


class _Images:
    def __init__(self, present: bool) -> None:
        self.present = present

    def get(self, tag: str) -> Any:
        if not self.present:
            raise docker.errors.ImageNotFound(tag)
        return object()


class _Client:
    def __init__(self, present: bool) -> None:
        self.images = _Images(present)


def test_existing_image_is_reused_and_missing_one_is_reported() -> None:
    messages: list[str] = []
    tag = image.build_image(client=_Client(True), progress=messages.append)
    assert tag == image.image_tag() and "already exists" in messages[0]
    assert image.ensure_image(client=_Client(True)) == tag
    with pytest.raises(SandboxError, match="cleanroom sandbox build-image"):
        image.ensure_image(client=_Client(False), build_if_missing=False)


def test_limits_are_validated() -> None:
    SandboxLimits()
    for bad in ({"memory_mb": 0}, {"cpus": 0}, {"pids": -1}, {"memory_mb": 60}):
        with pytest.raises(ConfigError):
            SandboxLimits(**bad)


def test_tail_keeps_the_end_only() -> None:
    tail = Tail(10)
    for chunk in (b"0123456789", b"abcdef", b"XYZ"):
        tail.feed(chunk)
    assert tail.text().endswith("3456789abcdefXYZ"[-10:])
    assert tail.text().startswith("[…earlier output dropped…]")
    assert Tail(100).text() == ""


def test_job_dirs_and_entrypoint_are_checked(tmp_path: Path) -> None:
    code, data, out = (tmp_path / n for n in ("code", "data", "out"))
    for path in (code, data, out):
        path.mkdir()
    (code / "main.py").write_text("")
    check_job_dirs(code, data, out, "main.py", 10.0)
    for entry in ("../main.py", "/code/main.py", "main.sh", "other.py"):
        with pytest.raises(SandboxError):
            check_job_dirs(code, data, out, entry, 10.0)
    (out / "stale.json").write_text("{}")
    with pytest.raises(SandboxError, match="must be empty"):
        check_job_dirs(code, data, out, "main.py", 10.0)


def _archive(entries: list[tarfile.TarInfo], payload: bytes = b"{}") -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info in entries:
            tar.addfile(info, io.BytesIO(payload) if info.isreg() else None)
    buffer.seek(0)
    return buffer


def _entry(name: str, kind: bytes = tarfile.REGTYPE, size: int = 2) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info


def test_extract_output_takes_plain_files_only(tmp_path: Path) -> None:
    good = _archive(
        [
            _entry("./", tarfile.DIRTYPE),
            _entry("./sub", tarfile.DIRTYPE),
            _entry("./sub/a.json"),
            _entry("./b.csv"),
        ]
    )
    assert extract_output(good, tmp_path, 100) == ["b.csv", "sub/a.json"]
    for bad, why in (
        (_entry("./l.json", tarfile.SYMTYPE), "not a plain file"),
        (_entry("../x.json"), "escapes"),
        (_entry("./fifo", tarfile.FIFOTYPE), "not a plain file"),
    ):
        target = tmp_path / why.replace(" ", "_") / bad.name.replace("/", "_")
        target.mkdir(parents=True)
        with pytest.raises(SandboxError, match=why):
            extract_output(_archive([bad]), target, 100)
    with pytest.raises(SandboxError, match="output exceeds"):
        extract_output(_archive([_entry("./c.json")]), tmp_path / "small", 1)
