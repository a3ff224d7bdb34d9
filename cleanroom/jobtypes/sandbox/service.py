"""The node's sandbox service: holds sandbox jobs for code review, runs approved
bundles in the sandbox, vets their output and keeps held output for the holder.
Built by the node from a ``NodeEnvironment``; it never sees the node itself.

Everything it decides goes to the node's audit log: the bundle's digest when a
job arrives, the image that ran it, the exit code and CPU seconds, the vetting
verdict, and the holder's release or rejection of held output.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pandas as pd

from cleanroom.errors import ConfigError, SandboxError
from cleanroom.jobtypes.base import NodeContext
from cleanroom.jobtypes.hooks import (
    Admission,
    AdmissionContext,
    NodeEnvironment,
    Verdict,
)
from cleanroom.jobtypes.sandbox.book import OutputStatus, SandboxBook
from cleanroom.jobtypes.sandbox.params import NAME, SandboxParams
from cleanroom.jobtypes.sandbox.parties import HOLDER_DECIDED, SandboxOutcome
from protocols.party import LocalEvent
from sandbox import (
    NO_ENGINE,
    SandboxLimits,
    SandboxRunner,
    VettingResult,
    VettingRules,
    bundle_digest,
    docker_client,
    engine_available,
    ensure_image,
    select_runner,
    unpack_bundle,
    unshare_available,
    vet_outputs,
)
from sandbox.outputs import cleaned, parse_output

log = logging.getLogger(__name__)

FALLBACK_IMAGE: Final = "host python (unshare fallback, no image)"
_STDERR_NOTE: Final = "; last lines of stderr:"
FAILED: Final = "the sandboxed code failed (the holder's audit log has the details)"
"""All the analyst learns of a failed run: never an exit code, signal or timeout."""
REVIEW_ALWAYS: Final = (
    "the holder reviews every output (sandbox.review_outputs: always)"
)
_LIMIT_KEYS: Final = ("memory_mb", "cpus", "pids", "tmp_mb", "output_mb")
_KEYS: Final = frozenset(
    {
        *_LIMIT_KEYS,
        "allow_unshare_fallback",
        "build_image",
        "max_timeout_seconds",
        "rounding",
        "count_columns",
        "sensitive_columns",
        "raw_row_columns",
    }
)
_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class SandboxSettings:
    """The node's ``[jobtypes.sandbox]`` table, checked; every key is optional."""

    allow_unshare_fallback: bool = False
    build_image: bool = True
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    max_timeout_s: float = 3600.0
    rounding: int | None = 4
    count_columns: tuple[str, ...] = ("count", "n")
    sensitive_columns: tuple[str, ...] = ()
    sensitive_by_dataset: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    raw_row_columns: int = 3

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> SandboxSettings:
        where = "node config: sandbox"
        unknown = sorted(set(raw) - _KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key '{unknown[0]}'")
        for key in ("allow_unshare_fallback", "build_image"):
            if not isinstance(raw.get(key, False), bool):
                raise ConfigError(f"{where}.{key}: expected true or false")
        limits: dict[str, Any] = {}
        for key in _LIMIT_KEYS:
            if key in raw:
                value = raw[key]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(f"{where}.{key}: expected a number")
                limits[key] = value if key == "cpus" else int(value)
        max_timeout = raw.get("max_timeout_seconds", 3600.0)
        if (
            isinstance(max_timeout, bool)
            or not isinstance(max_timeout, int | float)
            or not 0 < max_timeout < math.inf
        ):
            raise ConfigError(f"{where}.max_timeout_seconds: expected seconds > 0")
        rounding = raw.get("rounding", 4)
        if rounding is False:
            rounding = None
        elif isinstance(rounding, bool) or not isinstance(rounding, int):
            raise ConfigError(f"{where}.rounding: expected decimals or false")
        sensitive = raw.get("sensitive_columns", [])
        by_dataset: dict[str, tuple[str, ...]] = {}
        if isinstance(sensitive, dict):
            for dataset, columns in sensitive.items():
                by_dataset[str(dataset)] = _names(
                    columns, f"{where}.sensitive_columns.{dataset}"
                )
            everywhere: tuple[str, ...] = ()
        else:
            everywhere = _names(sensitive, f"{where}.sensitive_columns")
        raw_rows = raw.get("raw_row_columns", 3)
        if isinstance(raw_rows, bool) or not isinstance(raw_rows, int):
            raise ConfigError(f"{where}.raw_row_columns: expected an integer >= 2")
        settings = cls(
            allow_unshare_fallback=bool(raw.get("allow_unshare_fallback", False)),
            build_image=bool(raw.get("build_image", True)),
            limits=SandboxLimits(**limits),
            max_timeout_s=float(max_timeout),
            rounding=rounding,
            count_columns=_names(
                raw.get("count_columns", ["count", "n"]), f"{where}.count_columns"
            ),
            sensitive_columns=everywhere,
            sensitive_by_dataset=by_dataset,
            raw_row_columns=raw_rows,
        )
        settings.rules(min_cell_count=1, columns=(), id_column="", dataset="")
        return settings

    def rules(
        self,
        *,
        min_cell_count: int,
        columns: Any,
        id_column: str,
        dataset: str,
        max_numeric_values: int | None = None,
    ) -> VettingRules:
        """Vetting rules for one dataset: the policy's minimum group size, the
        dataset's identifier column, its sensitive columns from this table."""
        present = {str(c) for c in columns}
        if dataset in self.sensitive_by_dataset:
            sensitive = list(self.sensitive_by_dataset[dataset])
        else:
            sensitive = [c for c in self.sensitive_columns if c in present]
        return VettingRules(
            min_cell_count=min_cell_count,
            rounding=self.rounding,
            sensitive_columns=sensitive,
            identifier_columns=[id_column] if id_column else [],
            count_columns=list(self.count_columns),
            max_total_bytes=self.limits.output_bytes,
            raw_row_columns=self.raw_row_columns,
            max_numeric_values=max_numeric_values,
        )


class SandboxService:
    """One node's sandbox: admission, runs, vetting and held-output decisions."""

    def __init__(self, env: NodeEnvironment) -> None:
        self.settings = SandboxSettings.from_mapping(env.settings)
        self._node = env.node
        for name in self.settings.sensitive_by_dataset:
            if name not in env.datasets.names():
                raise ConfigError(
                    f"node config: jobtypes.sandbox.sensitive_columns names unknown "
                    f"dataset '{name}'"
                )
        self.book = SandboxBook(env.db)
        self._audit = env.audit
        self._datasets = env.datasets
        self._policy = env.policy
        self._notify = env.notify
        self._lock = threading.Lock()
        self._waiting: set[str] = set()

    # -------------------------------------------------------------- admission --
    def unavailable(self) -> str | None:
        """Why sandbox jobs cannot run here right now, or None if they can."""
        if engine_available():
            return None
        if not self.settings.allow_unshare_fallback:
            return NO_ENGINE
        if not unshare_available():
            return (
                "no Docker engine is available and the unshare fallback cannot "
                "create user namespaces here; sandbox jobs are refused"
            )
        return None

    def admit(self, params: SandboxParams, ctx: AdmissionContext) -> Admission | None:
        """Refused without a sandbox, held for review unless this exact code was
        approved before for the dataset."""
        dataset = ctx.dataset
        denials = []
        if problem := self.unavailable():
            denials.append(problem)
        if params.timeout_s > self.settings.max_timeout_s:
            denials.append(
                f"timeout_seconds {params.timeout_s:g} exceeds this node's limit "
                f"{self.settings.max_timeout_s:g}"
            )
        if params.columns is None and not self._policy.permitted_columns(dataset):
            denials.append(f"the policy permits no column of dataset '{dataset}'")
        digest = params.digest
        rules = self._rules(dataset)
        limit = rules.get("max_runs_per_digest")
        if limit is not None and (
            self.book.runs_today(dataset, digest, ctx.analyst) >= limit
        ):
            denials.append(
                f"this code already ran {limit} times today on dataset '{dataset}' "
                "(sandbox.max_runs_per_digest)"
            )
        if denials:
            return Admission(Verdict.DENY, tuple(denials))
        approved = self.book.digest_approved(dataset, digest)
        self._audit.append(
            "sandbox.bundle",
            job_id=ctx.job_id,
            data={"dataset": dataset, "digest": digest, "approved_before": approved},
        )
        if approved and rules.get("approval") == "per_run":
            return Admission(
                Verdict.HOLD,
                (
                    f"dataset '{dataset}' needs the holder's approval of every run "
                    f"(sandbox.approval: per_run); approve it with `cleanroom node "
                    f"approve {ctx.job_id}`",
                ),
            )
        if approved:
            return None
        return Admission(
            Verdict.HOLD,
            (
                f"sandbox code {digest[:16]}… has not been approved for dataset "
                f"'{dataset}'; review it with `cleanroom node jobs --show "
                f"{ctx.job_id}` and approve it with `cleanroom node approve "
                f"{ctx.job_id}`",
            ),
        )

    # -------------------------------------------------------------------- run --
    def execute(self, ctx: NodeContext) -> SandboxOutcome:
        """Run the approved bundle on the dataset and vet what it wrote."""
        params: SandboxParams = ctx.params
        with tempfile.TemporaryDirectory(prefix="cleanroom-sandbox-") as tmp:
            root = Path(tmp)
            # The sandbox user must reach code/ and data/, but other local users
            # must not find them: the root is traversable, not listable.
            root.chmod(0o711)
            token = secrets.token_hex(16)
            code, data, out = (root / f"{n}-{token}" for n in ("code", "data", "out"))
            for directory in (code, data, out):
                directory.mkdir()
                directory.chmod(0o755 if directory != out else 0o700)
            archive = root / f"bundle-{token}.tar.gz"
            archive.write_bytes(params.bundle)
            unpack_bundle(archive, code)
            digest = bundle_digest(code)  # of exactly what will be mounted
            if not self.book.digest_approved(ctx.dataset, digest):
                reason = (
                    f"code bundle {digest[:16]}… is not approved for dataset "
                    f"'{ctx.dataset}'; refusing to run it"
                )
                self._audit.append(
                    "sandbox.refused",
                    job_id=ctx.job_id,
                    data={"digest": digest, "reason": reason},
                )
                raise SandboxError(reason)
            try:
                self.book.record_run(
                    ctx.job_id,
                    ctx.dataset,
                    digest,
                    ctx.analyst,
                    self._policy.job_type_rules(ctx.dataset, NAME).get(
                        "max_runs_per_digest"
                    ),
                )
            except ConfigError as exc:
                raise SandboxError(str(exc)) from None
            frame = self._frame(ctx, params)
            (data / "data.csv").write_bytes(frame.to_csv(index=False).encode())
            (data / "data.csv").chmod(0o644)
            runner, image, kind = self._runner()
            limits = self.settings.limits
            self._audit.append(
                "sandbox.started",
                job_id=ctx.job_id,
                data={
                    "digest": digest,
                    "image": image,
                    "runner": kind,
                    "entrypoint": params.entrypoint,
                    "timeout_seconds": params.timeout_s,
                    "columns": [str(c) for c in frame.columns],
                    "limits": {k: getattr(limits, k) for k in _LIMIT_KEYS},
                },
            )
            try:
                report = runner.run(
                    code,
                    data,
                    out,
                    entrypoint=params.entrypoint,
                    timeout_s=params.timeout_s,
                )
            except SandboxError as exc:
                public = public_reason(exc)
                log.warning("job %s: sandbox run failed: %s", ctx.job_id, exc)
                self._audit.append(
                    "sandbox.failed",
                    job_id=ctx.job_id,
                    data={
                        "digest": digest,
                        "image": image,
                        "reason": public,
                        "cpu_seconds": round(exc.cpu_s, 3),
                    },
                )
                # Only "failed": an exit code, a signal or a timeout is a channel
                # the code controls (an exit code of 60 can be a person's age).
                raise SandboxError(FAILED, cpu_s=exc.cpu_s) from None
            self._audit.append(
                "sandbox.ran",
                job_id=ctx.job_id,
                data={
                    "digest": digest,
                    "image": image,
                    "image_id": report.image_id,
                    "runner": report.runner,
                    "exit_code": report.exit_code,
                    "cpu_seconds": round(report.cpu_s, 3),
                    "duration_seconds": round(report.duration_s, 3),
                    "memory_peak_bytes": report.memory_peak_bytes,
                    "output_files": list(report.output_files),
                    "output_bytes": report.output_bytes,
                },
            )
            return self._vet(ctx, digest, image, report.runner, report.cpu_s, out)

    def _vet(
        self,
        ctx: NodeContext,
        digest: str,
        image: str,
        runner: str,
        cpu_s: float,
        out: Path,
    ) -> SandboxOutcome:
        budget = self._policy.job_type_rules(ctx.dataset, NAME).get(
            "max_released_values"
        )
        rules = self.settings.rules(
            min_cell_count=ctx.min_group_size,
            columns=ctx.data.columns,
            id_column=self._datasets.info(ctx.dataset).id_column,
            dataset=ctx.dataset,
            max_numeric_values=budget
            if budget is not None
            else max(1, len(ctx.data) // ctx.min_group_size),
        )
        result = vet_outputs(out, ctx.data, rules)
        if result.status == "pass" and self._review_always(ctx.dataset):
            result = VettingResult("held", [REVIEW_ALWAYS], {})
        if result.status == "pass":
            outputs = result.release()
            self._audit.append(
                "sandbox.vetted",
                job_id=ctx.job_id,
                data={"status": "pass", "outputs": _hashes(outputs)},
            )
            return SandboxOutcome("pass", outputs, (), digest, image, runner, cpu_s)
        outputs = _as_written(out, rules.rounding)
        reasons = tuple(result.reasons)
        with self._lock:
            self._waiting.add(ctx.job_id)
        self.book.hold_output(ctx.job_id, reasons)
        self._audit.append(
            "sandbox.output_held",
            job_id=ctx.job_id,
            data={"reasons": list(reasons), "outputs": _hashes(outputs)},
        )
        log.warning(
            "job %s: output held for your review (%s); release it with `cleanroom "
            "node release %s` or reject it with `cleanroom node reject %s`",
            ctx.job_id,
            "; ".join(reasons),
            ctx.job_id,
            ctx.job_id,
        )
        return SandboxOutcome("held", outputs, reasons, digest, image, runner, cpu_s)

    def _rules(self, dataset: str) -> Mapping[str, Any]:
        """The dataset policy's ``sandbox`` section (``rules.parse_rules``)."""
        return self._policy.job_type_rules(dataset, NAME)

    def _review_always(self, dataset: str) -> bool:
        return bool(self._rules(dataset).get("review_outputs") == "always")

    def _frame(self, ctx: NodeContext, params: SandboxParams) -> pd.DataFrame:
        """The dataset as the code sees it: the asked-for columns, else every
        column the policy permits (forbidden ones never reach the sandbox)."""
        columns = list(params.columns or self._policy.permitted_columns(ctx.dataset))
        missing = [c for c in columns if c not in ctx.data.columns]
        if missing:
            raise SandboxError(f"dataset '{ctx.dataset}' has no column '{missing[0]}'")
        if not columns:
            raise SandboxError(f"the policy permits no column of '{ctx.dataset}'")
        return ctx.data[columns]

    def _runner(self) -> tuple[SandboxRunner, str, str]:
        """The runner, image and runner kind; builds the image first if missing."""
        limits = self.settings.limits
        try:
            client = docker_client()
        except SandboxError:
            client = None
        if client is not None:
            with _BUILD_LOCK:
                tag = ensure_image(
                    client=client,
                    build_if_missing=self.settings.build_image,
                    progress=lambda msg: log.info("sandbox image: %s", msg),
                )
            runner = select_runner(
                self.settings.allow_unshare_fallback, limits=limits, client=client
            )
            return runner, tag, "docker"
        runner = select_runner(self.settings.allow_unshare_fallback, limits=limits)
        return runner, FALLBACK_IMAGE, "unshare"

    # ------------------------------------------------------ held-output flow --
    def output_decision(self, job_id: str) -> tuple[str, str] | None:
        """The holder's decision on held output, recorded in the audit log once."""
        review = self.book.output_review(job_id)
        if review is None or review.status == OutputStatus.HELD:
            return None
        with self._lock:
            self._waiting.discard(job_id)
        self._audit.append(
            f"sandbox.output_{review.status.value}",
            job_id=job_id,
            data={"decided_by": "holder", "reason": review.reason},
        )
        return review.status.value, review.reason

    def poll(self) -> None:
        """Wake each job whose held output the holder has decided on."""
        with self._lock:
            waiting = list(self._waiting)
        for job_id in waiting:
            review = self.book.output_review(job_id)
            if review is None or review.status == OutputStatus.HELD:
                continue
            with self._lock:
                self._waiting.discard(job_id)
            self._notify(job_id, LocalEvent(HOLDER_DECIDED))


def public_reason(exc: SandboxError) -> str:
    """A run failure as the analyst may see it: without the job's stderr, which
    could carry raw rows the code printed."""
    return str(exc).split(_STDERR_NOTE, 1)[0]


def _as_written(out: Path, rounding: int | None) -> dict[str, bytes]:
    """Held output as it would be released anyway: readable files rounded like
    vetted ones, anything else as written."""
    files: dict[str, bytes] = {}
    for entry in sorted(out.rglob("*")):
        if entry.is_file() and not entry.is_symlink():
            name = entry.relative_to(out).as_posix()
            data = entry.read_bytes()
            try:
                files[name] = cleaned(parse_output(name, data), rounding)[1]
            except (SandboxError, ValueError):
                files[name] = data
    return files


def _hashes(outputs: Mapping[str, bytes]) -> dict[str, str]:
    return {n: hashlib.sha256(d).hexdigest() for n, d in sorted(outputs.items())}


def _names(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: expected a list of column names")
    return tuple(value)
