"""The ``sandbox`` job's params: the analyst's code as a reproducible tar.gz bundle
in the spec, checked and read once per spec (files, digest) — never inflated
before its sizes are checked — and the spec builder analysts use."""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import math
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

import yaml

from cleanroom.errors import SandboxError, SpecError
from cleanroom.jobspec import JobSpec, parse_spec
from sandbox.review import (
    MAX_BUNDLE_BYTES,
    MAX_BUNDLE_FILES,
    Finding,
    files_digest,
    read_bundle,
    static_findings,
)

NAME: Final = "sandbox"
DEFAULT_ENTRYPOINT: Final = "main.py"
DEFAULT_TIMEOUT_S: Final = 600.0
MAX_TIMEOUT_S: Final = 24 * 3600.0
_PARAMS: Final = ("bundle", "entrypoint", "timeout_seconds", "outputs", "columns")
_SPEC_LIMIT: Final = 1 << 20


@dataclass(frozen=True)
class SandboxParams:
    """A sandbox spec's parameters, checked."""

    bundle: bytes
    entrypoint: str
    timeout_s: float
    outputs: Any
    columns: tuple[str, ...] | None
    files: Mapping[str, bytes]
    digest: str
    """SHA-256 of the bundle's files: what a holder approves."""


@dataclass(frozen=True)
class BundleReview:
    """What a holder reviews before approving: the files, the digest, the findings."""

    digest: str
    files: tuple[tuple[str, int], ...]
    findings: tuple[Finding, ...]
    entrypoint: str
    timeout_s: float
    outputs: Any
    columns: tuple[str, ...] | None


def parse_params(spec: JobSpec) -> SandboxParams:
    """Check ``spec.params`` of a sandbox job; SpecError names the field."""
    params = spec.params
    extra = sorted(set(params) - set(_PARAMS))
    if extra:
        raise SpecError(
            f"params.{extra[0]}", f"unknown parameter (allowed: {', '.join(_PARAMS)})"
        )
    raw = params.get("bundle")
    if not isinstance(raw, str) or not raw:
        raise SpecError("params.bundle", "expected base64 of a tar.gz of the code")
    try:
        bundle = base64.b64decode(raw.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SpecError("params.bundle", "is not valid base64") from None
    entrypoint = params.get("entrypoint", DEFAULT_ENTRYPOINT)
    if not isinstance(entrypoint, str) or not _relative_py(entrypoint):
        raise SpecError(
            "params.entrypoint", f"expected a relative .py path, got {entrypoint!r}"
        )
    timeout = params.get("timeout_seconds", DEFAULT_TIMEOUT_S)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or not 0 < timeout <= MAX_TIMEOUT_S
    ):
        raise SpecError(
            "params.timeout_seconds",
            f"expected seconds in (0, {MAX_TIMEOUT_S:g}], got {timeout!r}",
        )
    outputs = params.get("outputs")
    if outputs is not None and not _is_description(outputs):
        raise SpecError(
            "params.outputs", "expected text, a list of text or a mapping of file: text"
        )
    columns = params.get("columns")
    if columns is not None and (
        not isinstance(columns, list)
        or not columns
        or not all(isinstance(c, str) and c for c in columns)
    ):
        raise SpecError("params.columns", "expected a non-empty list of column names")
    files = bundle_files(bundle)
    if entrypoint not in files:
        raise SpecError(
            "params.entrypoint", f"{entrypoint} is not in the bundle ({_names(files)})"
        )
    return SandboxParams(
        bundle,
        entrypoint,
        float(timeout),
        outputs,
        None if columns is None else tuple(columns),
        files,
        files_digest(files),
    )


def bundle_files(bundle: bytes) -> dict[str, bytes]:
    """The bundle's files by path; SpecError if it is not a small, plain tar.gz.

    Sizes are summed from the tar headers before anything is kept in memory, so
    a compressed bomb is refused without being inflated.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
            total, count = 0, 0
            for member in tar:
                total += max(member.size, 0)
                count += 1
                if total > MAX_BUNDLE_BYTES or count > MAX_BUNDLE_FILES:
                    raise SpecError(
                        "params.bundle",
                        f"bundle exceeds {MAX_BUNDLE_BYTES} bytes or "
                        f"{MAX_BUNDLE_FILES} files unpacked",
                    )
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as exc:
        raise SpecError("params.bundle", f"is not a readable tar.gz: {exc}") from None
    with _bundle_file(bundle) as path:
        try:
            return read_bundle(path)
        except SandboxError as exc:
            raise SpecError("params.bundle", str(exc)) from None


def review(params: SandboxParams) -> BundleReview:
    """Everything the holder is shown about a sandbox job's code."""
    with _bundle_file(params.bundle) as path:
        findings = tuple(static_findings(path))
    return BundleReview(
        digest=params.digest,
        files=tuple((name, len(data)) for name, data in sorted(params.files.items())),
        findings=findings,
        entrypoint=params.entrypoint,
        timeout_s=params.timeout_s,
        outputs=params.outputs,
        columns=params.columns,
    )


def pack_bundle(code_dir: Path) -> bytes:
    """A reproducible tar.gz of ``code_dir`` (same files, same bytes, same digest)."""
    files = read_bundle(code_dir)
    if not files:
        raise SpecError("params.bundle", f"{code_dir} holds no files")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=9, mtime=0)


def make_spec(
    code_dir: Path | str,
    *,
    inputs: Sequence[tuple[str, str]],
    purpose: str,
    entrypoint: str = DEFAULT_ENTRYPOINT,
    timeout_seconds: float = DEFAULT_TIMEOUT_S,
    outputs: Any = None,
    columns: Sequence[str] | None = None,
    description: str = "",
) -> str:
    """A sandbox job spec (YAML) running ``entrypoint`` from ``code_dir``.

    ``inputs`` is ``[(node, dataset)]`` — exactly one. The result is checked as
    the coordinator would check it, so a bad bundle fails here, not after submit.
    """
    params: dict[str, Any] = {
        "bundle": base64.b64encode(pack_bundle(Path(code_dir))).decode("ascii"),
        "entrypoint": entrypoint,
        "timeout_seconds": timeout_seconds,
    }
    if outputs is not None:
        params["outputs"] = outputs
    if columns is not None:
        params["columns"] = list(columns)
    doc: dict[str, Any] = {
        "type": NAME,
        "inputs": [{"node": node, "dataset": dataset} for node, dataset in inputs],
        "params": params,
        "purpose": purpose,
    }
    if description:
        doc["description"] = description
    text = yaml.safe_dump(doc, sort_keys=False, width=math.inf)
    if len(text.encode()) > _SPEC_LIMIT:
        raise SpecError(
            "params.bundle",
            f"the spec would be {len(text.encode())} bytes; specs are limited to 1 MiB "
            "(ship code only: data stays on the node)",
        )
    from cleanroom.jobtypes import get

    get(NAME).validate(parse_spec(text), {})
    return text


@contextmanager
def _bundle_file(data: bytes) -> Iterator[Path]:
    """A temporary ``bundle.tar.gz`` holding ``data``, removed on exit."""
    with tempfile.TemporaryDirectory(prefix="cleanroom-bundle-") as tmp:
        path = Path(tmp) / "bundle.tar.gz"
        path.write_bytes(data)
        yield path


def _relative_py(path: str) -> bool:
    pure = PurePosixPath(path)
    return not pure.is_absolute() and ".." not in pure.parts and pure.suffix == ".py"


def _is_description(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, list):
        return all(isinstance(v, str) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    return False


def _names(files: Mapping[str, bytes]) -> str:
    names = sorted(files)
    return ", ".join(names[:10]) + (" …" if len(names) > 10 else "") or "empty"
