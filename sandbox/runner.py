"""What every sandbox runner shares: resource limits, the run report, bounded tails."""

from __future__ import annotations

import io
import math
import tarfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

from cleanroom.errors import ConfigError, SandboxError

MiB = 1024 * 1024
# The job's private scratch tmpfs inside its sandbox, never the host's /tmp.
JOB_TMP = "/tmp"  # noqa: S108


@dataclass(frozen=True)
class SandboxLimits:
    """Resources one sandboxed job may use; defaults suit a small analysis job."""

    memory_mb: int = 1024
    cpus: float = 1.0
    pids: int = 128
    tmp_mb: int = 64
    output_mb: int = 50
    tail_bytes: int = 8192

    def __post_init__(self) -> None:
        for name in ("memory_mb", "pids", "tmp_mb", "output_mb", "tail_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"sandbox limit {name} must be positive")
        if not (0 < self.cpus <= 256) or math.isnan(self.cpus):
            raise ConfigError("sandbox limit cpus must be in (0, 256]")
        # /tmp and /output are tmpfs, whose pages count against the memory limit.
        if self.memory_mb <= self.output_mb + self.tmp_mb:
            raise ConfigError("sandbox memory_mb must exceed output_mb + tmp_mb")

    @property
    def output_bytes(self) -> int:
        return self.output_mb * MiB

    @property
    def threads(self) -> int:
        """How many BLAS/OpenMP threads the CPU share can keep busy."""
        return max(1, math.ceil(self.cpus))


@dataclass(frozen=True)
class RunReport:
    """How a sandboxed run went; returned only when it succeeded."""

    exit_code: int
    duration_s: float
    cpu_s: float
    image_id: str
    stdout_tail: str
    stderr_tail: str
    output_files: tuple[str, ...]
    output_bytes: int
    memory_peak_bytes: int | None
    runner: str


class SandboxRunner(Protocol):
    """Runs ``entrypoint`` from ``code_dir`` on ``data_dir``, fills ``output_dir``."""

    def run(
        self,
        code_dir: Path,
        data_dir: Path,
        output_dir: Path,
        *,
        entrypoint: str = "main.py",
        timeout_s: float,
    ) -> RunReport: ...


class Tail:
    """Keeps the last ``limit`` bytes of a stream, so chatty code cannot flood us."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.truncated = False

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size - len(self._chunks[0]) >= self._limit:
            self._size -= len(self._chunks.popleft())
            self.truncated = True

    def text(self) -> str:
        data = b"".join(self._chunks)
        if len(data) > self._limit:
            data, self.truncated = data[-self._limit :], True
        prefix = "[…earlier output dropped…]\n" if self.truncated else ""
        return prefix + data.decode("utf-8", errors="replace")

    def last_lines(self, count: int = 20) -> str:
        return "\n".join(self.text().rstrip("\n").splitlines()[-count:])


def check_job_dirs(
    code_dir: Path, data_dir: Path, output_dir: Path, entrypoint: str, timeout_s: float
) -> None:
    """Refuse a run whose directories are missing, whose entrypoint escapes, or whose
    timeout is not a positive number of seconds."""
    if not (0 < timeout_s < math.inf):
        raise SandboxError("timeout_s must be a positive number of seconds")
    for label, path in (("code", code_dir), ("data", data_dir), ("output", output_dir)):
        if not path.is_dir():
            raise SandboxError(f"{label} directory {path} does not exist")
    if any(output_dir.iterdir()):
        raise SandboxError(f"output directory {output_dir} must be empty")
    pure = PurePosixPath(entrypoint)
    if pure.is_absolute() or ".." in pure.parts or pure.suffix != ".py":
        raise SandboxError(f"entrypoint {entrypoint!r} must be a relative .py path")
    if not (code_dir / pure).is_file():
        raise SandboxError(f"entrypoint {entrypoint} is not in the code bundle")


def extract_output(archive: IO[bytes], output_dir: Path, limit: int) -> list[str]:
    """Unpack a tar of /output into ``output_dir``: plain files, ``limit`` bytes total.

    Links, devices and names that climb out are refused rather than skipped, so
    a job cannot smuggle a pointer to a host path past the vetting step.
    """
    written: list[str] = []
    total = 0
    with tarfile.open(fileobj=archive, mode="r|") as tar:
        for member in tar:
            name = PurePosixPath(member.name)
            parts = [p for p in name.parts if p not in (".", "")]
            if not parts:
                continue
            if name.is_absolute() or ".." in parts:
                raise SandboxError(f"output entry {member.name!r} escapes /output")
            target = output_dir.joinpath(*parts)
            if member.isdir():
                target.mkdir(mode=0o700, parents=True, exist_ok=True)
                continue
            if not member.isreg():
                raise SandboxError(f"output entry {member.name!r} is not a plain file")
            total += member.size
            if total > limit:
                raise SandboxError(f"output exceeds {limit // MiB} MiB")
            source = tar.extractfile(member)
            if source is None:
                raise SandboxError(f"output entry {member.name!r} cannot be read")
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with open(target, "xb") as sink:
                sink.write(source.read())
            target.chmod(0o600)
            written.append("/".join(parts))
    return sorted(written)


def tar_of_directory(path: Path) -> io.BytesIO:
    """A tar of ``path`` (symlinks kept as links, so extract_output refuses them)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(path), arcname=".", recursive=True)
    buffer.seek(0)
    return buffer
