"""The ``sandbox`` job: the analyst's own Python code runs on one node's dataset in
a locked-down container; only its vetted outputs, signed by the node, are released.

The spec carries the code as ``params.bundle`` (base64 of a tar.gz). The holder
reviews the bundle and approves its SHA-256 digest; the node runs only bundles
whose digest was approved for the dataset (see ``node/sandbox_service.py``).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import json
import math
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal, Protocol

import pandas as pd
import yaml

from cleanroom.catalog import DatasetInfo
from cleanroom.errors import (
    ProtocolError,
    SandboxError,
    SpecError,
)
from cleanroom.jobspec import JobInput, JobSpec, parse_spec
from cleanroom.jobtypes.base import (
    CoordinatorContext,
    JobType,
    NodeContext,
    check_node_statement,
    register,
)
from cleanroom.keys import sign_statement
from protocols.party import (
    COORDINATOR,
    CoordinatorParty,
    Inbound,
    NodeParty,
    NodeUsage,
    Outbound,
)
from sandbox.review import (
    MAX_BUNDLE_BYTES,
    MAX_BUNDLE_FILES,
    Finding,
    bundle_digest,
    read_bundle,
    static_findings,
)

NAME: Final = "sandbox"
SERVICE: Final = "sandbox"
"""The key of the node's sandbox service in ``NodeContext.services``."""
STAGE_OUTPUT: Final = "sandbox.output"
STAGE_HELD: Final = "sandbox.output_held_for_holder_review"
STAGE_DECISION: Final = "sandbox.holder_decision"
"""A node-local wake-up once the holder decided on held output; carries nothing."""
DEFAULT_ENTRYPOINT: Final = "main.py"
DEFAULT_TIMEOUT_S: Final = 600.0
MAX_TIMEOUT_S: Final = 24 * 3600.0
_PARAMS: Final = ("bundle", "entrypoint", "timeout_seconds", "outputs", "columns")
_SPEC_LIMIT: Final = 1 << 20


# ------------------------------------------------------------------ the spec --
@dataclass(frozen=True)
class SandboxParams:
    """A sandbox spec's parameters, checked."""

    bundle: bytes
    entrypoint: str
    timeout_s: float
    outputs: Any
    columns: tuple[str, ...] | None


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


def spec_bundle_digest(spec: JobSpec) -> str:
    """The SHA-256 digest a holder approves for this spec's code."""
    with _bundle_file(parse_params(spec).bundle) as path:
        return bundle_digest(path)


def review(spec: JobSpec) -> BundleReview:
    """Everything the holder is shown about a sandbox job's code."""
    params = parse_params(spec)
    files = bundle_files(params.bundle)
    with _bundle_file(params.bundle) as path:
        digest = bundle_digest(path)
        findings = tuple(static_findings(path))
    return BundleReview(
        digest=digest,
        files=tuple((name, len(data)) for name, data in sorted(files.items())),
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
    spec = parse_spec(text)
    SandboxJob().validate(spec, {})
    return text


# ------------------------------------------------------------ the node side --
@dataclass(frozen=True)
class SandboxOutcome:
    """What the node's sandbox service made of one run.

    ``pass``: ``outputs`` are the vetted, cleaned files. ``held``: vetting found
    ``reasons``; ``outputs`` are what would be released if the holder releases
    them anyway.
    """

    status: Literal["pass", "held"]
    outputs: Mapping[str, bytes]
    reasons: tuple[str, ...]
    digest: str
    image: str
    runner: str
    cpu_s: float


class SandboxHost(Protocol):
    """The node-side service a sandbox party needs (``node/sandbox_service.py``)."""

    def execute(self, ctx: NodeContext) -> SandboxOutcome:
        """Verify the approved digest, run the code, vet its output."""
        ...

    def output_decision(self, job_id: str) -> tuple[str, str] | None:
        """``("released" | "rejected", reason)`` once the holder decided, else None."""
        ...


class SandboxNode(NodeParty):
    """Runs the approved bundle through the node's sandbox service; releases
    vetted output at once, held output only after the holder releases it."""

    def __init__(self, ctx: NodeContext) -> None:
        host = ctx.services.get(SERVICE)
        if host is None:
            raise SandboxError("this node offers no sandbox service")
        self._ctx = ctx
        self._host: SandboxHost = host
        self._outcome: SandboxOutcome | None = None
        self._done = False

    def start(self) -> list[Outbound]:
        outcome = self._host.execute(self._ctx)
        self._outcome = outcome
        if outcome.status == "pass":
            return [self._release("vetting")]
        notice = json.dumps({"reasons": list(outcome.reasons)}).encode()
        return [Outbound(COORDINATOR, STAGE_HELD, notice)]

    def receive(self, message: Inbound) -> list[Outbound]:
        if message.stage != STAGE_DECISION or self._outcome is None or self._done:
            raise ProtocolError(
                f"sandbox expects no message at stage '{message.stage}'"
            )
        # The wake-up says nothing; the decision is read from the node's own state.
        decision = self._host.output_decision(self._ctx.job_id)
        if decision is None:
            return []
        verdict, reason = decision
        if verdict == "released":
            return [self._release("holder")]
        raise SandboxError(
            "the data holder rejected the output"
            + (f": {reason}" if reason else "")
            + " (vetting: "
            + "; ".join(self._outcome.reasons)
            + ")"
        )

    def _release(self, released_by: str) -> Outbound:
        ctx, outcome = self._ctx, self._outcome
        assert outcome is not None
        statement = {
            "job_id": ctx.job_id,
            "spec_hash": ctx.spec.spec_hash,
            "node": ctx.node,
            "dataset": ctx.dataset,
            "dataset_hash": ctx.dataset_hash,
            "bundle_digest": outcome.digest,
            "image": outcome.image,
            "runner": outcome.runner,
            "released_by": released_by,
            "vetting": list(outcome.reasons),
            "outputs": {
                name: hashlib.sha256(data).hexdigest()
                for name, data in sorted(outcome.outputs.items())
            },
        }
        payload = {
            "statement": statement,
            "signature": sign_statement(ctx.signing_key, statement),
            "files": {
                name: base64.b64encode(data).decode("ascii")
                for name, data in outcome.outputs.items()
            },
        }
        self._done = True
        return Outbound(COORDINATOR, STAGE_OUTPUT, json.dumps(payload).encode())

    @property
    def finished(self) -> bool:
        return self._done

    def usage(self) -> NodeUsage:
        ran = self._outcome is not None
        return NodeUsage(rows_touched=len(self._ctx.data) if ran else 0)


# ----------------------------------------------------- the coordinator side --
@dataclass
class _Collected:
    statement: dict[str, Any]
    signature: str
    outputs: dict[str, Any] = field(default_factory=dict)


class SandboxCoordinator(CoordinatorParty):
    """Collects the node's signed, vetted outputs; JSON parsed, CSV as records."""

    def __init__(self, ctx: CoordinatorContext) -> None:
        self._ctx = ctx
        self._collected: _Collected | None = None

    def start(self) -> list[Outbound]:
        return []

    def receive(self, message: Inbound) -> list[Outbound]:
        ctx = self._ctx
        if message.sender not in ctx.parties:
            raise ProtocolError(f"'{message.sender}' is not a party of this job")
        if message.stage == STAGE_HELD:
            # Only a progress notice: the job waits for the holder's decision.
            return []
        if message.stage != STAGE_OUTPUT or self._collected is not None:
            raise ProtocolError(f"unexpected stage '{message.stage}'")
        try:
            report = json.loads(message.payload)
            statement, signature = report["statement"], report["signature"]
            files = {
                str(n): base64.b64decode(d, validate=True)
                for n, d in report["files"].items()
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProtocolError("malformed sandbox output") from exc
        statement = check_node_statement(
            ctx, message.sender, statement, signature, "sandbox output"
        )
        hashes = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
        if hashes != statement.get("outputs"):
            raise ProtocolError("sandbox output files do not match the signed hashes")
        collected = _Collected(statement, signature)
        for name, data in sorted(files.items()):
            collected.outputs[name] = _readable(name, data)
        self._collected = collected
        return []

    @property
    def finished(self) -> bool:
        return self._collected is not None

    def result(self) -> Mapping[str, Any]:
        collected = self._collected
        if collected is None:
            raise ProtocolError("the node has not released any output")
        statement = collected.statement
        return {
            "node": statement["node"],
            "dataset": statement["dataset"],
            "bundle_digest": statement["bundle_digest"],
            "image": statement["image"],
            "runner": statement["runner"],
            "released_by": statement["released_by"],
            "vetting": statement["vetting"],
            "outputs": collected.outputs,
            "attestations": [
                {
                    "node": statement["node"],
                    "statement": statement,
                    "signature": collected.signature,
                }
            ],
        }


def _readable(name: str, data: bytes) -> Any:
    """A released file as the analyst gets it: JSON parsed, CSV records, else text."""
    lower = name.lower()
    try:
        if lower.endswith(".json"):
            return json.loads(data.decode("utf-8"))
        if lower.endswith(".csv"):
            frame = pd.read_csv(io.BytesIO(data))
            return json.loads(frame.to_json(orient="records", double_precision=15))
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError):
        pass
    return data.decode("utf-8", errors="replace")


# --------------------------------------------------------------- the type --
class SandboxJob(JobType):
    name = NAME
    summary = "the analyst's Python code on one dataset, in a sandbox; vetted outputs"
    units = ("sandbox_cpu_seconds",)

    def validate_params(
        self, spec: JobSpec, catalog: Mapping[JobInput, DatasetInfo]
    ) -> None:
        if len(spec.inputs) != 1:
            raise SpecError(
                "inputs",
                f"a sandbox job reads exactly one dataset; got {len(spec.inputs)}",
            )
        params = parse_params(spec)
        for info in catalog.values():
            known = info.column_names()
            for i, column in enumerate(params.columns or ()):
                if column not in known:
                    raise SpecError(
                        f"params.columns[{i}]",
                        f"dataset '{info.name}' has no column {column!r}",
                    )

    def columns_used(self, spec: JobSpec) -> frozenset[str]:
        # Without params.columns the node mounts only the columns its policy
        # permits, so there is nothing more for the column rules to check.
        return frozenset(parse_params(spec).columns or ())

    def estimate_units(self, spec: JobSpec, rows: int) -> Mapping[str, float]:
        return {"sandbox_cpu_seconds": parse_params(spec).timeout_s}

    def node_party(self, ctx: NodeContext) -> NodeParty:
        return SandboxNode(ctx)

    def coordinator_party(self, ctx: CoordinatorContext) -> CoordinatorParty:
        return SandboxCoordinator(ctx)


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


register(SandboxJob())
