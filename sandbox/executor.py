"""Run approved analyst code in a locked-down, network-less Docker container."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from cleanroom.errors import SandboxError
from sandbox.image import SANDBOX_UID
from sandbox.runner import (
    JOB_TMP,
    MiB,
    RunReport,
    SandboxLimits,
    Tail,
    check_job_dirs,
    extract_output,
)

log = logging.getLogger(__name__)

_USER = f"{SANDBOX_UID}:{SANDBOX_UID}"
_LABEL = "cleanroom.sandbox"
_TMPFS_OPTS = "rw,noexec,nosuid,nodev"
# Run by our own exec once the job's process has ended: kill whatever the job
# left running (until kill(-1) finds nobody: ESRCH), so nothing writes while
# /output is copied; then read /output's usage and the container's own cgroup
# counters, which the job cannot forge (cgroup v1 paths first, then v2).
_HOUSEKEEPING = """
import json, os, resource, signal
for _ in range(1000):
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        break
def read(path, key=None):
    try:
        text = open(path).read()
    except OSError:
        return -1
    if key is None:
        return int(text.split()[0])
    fields = dict(line.split() for line in text.splitlines() if line.strip())
    return int(fields.get(key, -1))
s = os.statvfs("/output")
cpu = read("/sys/fs/cgroup/cpuacct/cpuacct.usage")
if cpu < 0:
    cpu = read("/sys/fs/cgroup/cpu.stat", "usage_usec") * 1000
oom = read("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill")
if oom < 0:
    oom = read("/sys/fs/cgroup/memory.events", "oom_kill")
peak = read("/sys/fs/cgroup/memory/memory.max_usage_in_bytes")
if peak < 0:
    peak = read("/sys/fs/cgroup/memory.peak")
own = resource.getrusage(resource.RUSAGE_SELF)
own_ns = int((own.ru_utime + own.ru_stime) * 1e9)
print(json.dumps({"output_used": (s.f_blocks - s.f_bfree) * s.f_frsize,
                  "cpu_ns": cpu - own_ns if cpu >= 0 else -1,
                  "oom_kills": oom, "memory_peak": peak}))
"""
_FACTS = ("output_used", "cpu_ns", "oom_kills", "memory_peak")


class DockerSandbox:
    """Runs one job per fresh container; the container is always removed.

    The container has no network, a read-only root, no capabilities, the
    default seccomp profile, ``no-new-privileges``, uid 10001, hard memory (no
    swap), CPU and PID limits. Code and data are read-only binds; the only
    writable places are tmpfs mounts: ``/tmp`` and a size-capped ``/output``
    whose files are copied out (plain files only) after the job ends. The
    container idles as PID 1 while the job runs as an exec, so its tmpfs
    outlives the job long enough to be copied out.
    """

    def __init__(self, client: Any, image: str, limits: SandboxLimits) -> None:
        self._client = client
        self._image = image
        self._limits = limits

    def run(
        self,
        code_dir: Path,
        data_dir: Path,
        output_dir: Path,
        *,
        entrypoint: str = "main.py",
        timeout_s: float,
    ) -> RunReport:
        check_job_dirs(code_dir, data_dir, output_dir, entrypoint, timeout_s)
        container = self._create(code_dir.resolve(), data_dir.resolve())
        try:
            container.start()
            report = self._run_in(container, output_dir, entrypoint, timeout_s)
        except BaseException:
            _remove(container, quiet=True)
            raise
        _remove(container, quiet=False)
        return report

    def _create(self, code_dir: Path, data_dir: Path) -> Any:
        import docker.types

        limits = self._limits
        # One MiB of headroom past the limit lets us tell "wrote too much" from
        # "wrote exactly the limit".
        output_kib = (limits.output_bytes + MiB) // 1024
        try:
            return self._client.containers.create(
                self._image,
                ["sleep", "infinity"],
                name=f"cleanroom-sandbox-{uuid.uuid4().hex[:12]}",
                labels={_LABEL: "1"},
                user=_USER,
                working_dir="/code",
                environment=self._environment(),
                network_mode="none",
                read_only=True,
                tmpfs={
                    JOB_TMP: f"{_TMPFS_OPTS},size={limits.tmp_mb}m,mode=1777",
                    "/output": f"{_TMPFS_OPTS},size={output_kib}k,"
                    f"uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700",
                },
                mounts=[
                    docker.types.Mount(
                        "/code", str(code_dir), type="bind", read_only=True
                    ),
                    docker.types.Mount(
                        "/data", str(data_dir), type="bind", read_only=True
                    ),
                ],
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                mem_limit=f"{limits.memory_mb}m",
                memswap_limit=f"{limits.memory_mb}m",
                nano_cpus=int(limits.cpus * 1e9),
                pids_limit=limits.pids,
                shm_size=f"{limits.tmp_mb}m",
                ulimits=[
                    docker.types.Ulimit(name="core", soft=0, hard=0),
                    docker.types.Ulimit(name="nofile", soft=1024, hard=1024),
                ],
                oom_score_adj=500,
                log_config=docker.types.LogConfig(type="none"),
                hostname="sandbox",
            )
        except Exception as exc:
            raise SandboxError(
                f"could not create the sandbox container: {exc}"
            ) from exc

    def _environment(self) -> dict[str, str]:
        threads = str(self._limits.threads)
        return {
            "HOME": JOB_TMP,
            "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "JOBLIB_TEMP_FOLDER": JOB_TMP,
        }

    def _run_in(
        self, container: Any, output_dir: Path, entrypoint: str, timeout_s: float
    ) -> RunReport:
        api = self._client.api
        limits = self._limits
        exec_id = api.exec_create(
            container.id,
            ["python3", "-B", "-E", "-s", f"/code/{entrypoint}"],
            user=_USER,
            workdir="/code",
            environment=self._environment(),
        )["Id"]
        stdout, stderr = Tail(limits.tail_bytes), Tail(limits.tail_bytes)
        since = int(time.time()) - 1
        started = time.monotonic()
        pump = threading.Thread(
            target=_pump,
            args=(api.exec_start(exec_id, stream=True, demux=True), stdout, stderr),
            daemon=True,
        )
        pump.start()
        pump.join(timeout_s)
        duration = time.monotonic() - started
        if pump.is_alive():
            used = _cpu_so_far(container)
            container.kill()
            pump.join(10)
            raise SandboxError(
                f"timed out after {timeout_s:g}s; the job was killed", cpu_s=used
            )
        exit_code = api.exec_inspect(exec_id)["ExitCode"]
        facts = self._housekeeping(container)
        cpu_s = facts["cpu_ns"] / 1e9 if facts["cpu_ns"] >= 0 else duration
        if exit_code != 0 and (
            facts["oom_kills"] > 0
            or (facts["oom_kills"] < 0 and self._oom_event(container, since))
        ):
            raise SandboxError(
                f"ran out of memory (limit {limits.memory_mb} MiB) and was killed"
                + _tail_note(stderr),
                cpu_s=cpu_s,
            )
        if facts["output_used"] > limits.output_bytes:
            raise SandboxError(
                f"output exceeds {limits.output_mb} MiB; nothing released",
                cpu_s=cpu_s,
            )
        if exit_code != 0:
            raise SandboxError(
                f"exited with code {exit_code}" + _tail_note(stderr), cpu_s=cpu_s
            )
        files, total = self._copy_output(container, output_dir)
        return RunReport(
            exit_code=exit_code,
            duration_s=duration,
            cpu_s=cpu_s,
            image_id=str(container.attrs.get("Image", self._image)),
            stdout_tail=stdout.text(),
            stderr_tail=stderr.text(),
            output_files=tuple(files),
            output_bytes=total,
            memory_peak_bytes=facts["memory_peak"]
            if facts["memory_peak"] >= 0
            else None,
            runner="docker",
        )

    def _housekeeping(self, container: Any) -> dict[str, int]:
        result = container.exec_run(
            ["python3", "-I", "-B", "-c", _HOUSEKEEPING], user=_USER, demux=True
        )
        out, err = result.output
        try:
            if result.exit_code != 0:
                raise ValueError((err or b"")[-300:].decode(errors="replace"))
            facts = json.loads(out)
            return {key: int(facts[key]) for key in _FACTS}
        except (ValueError, KeyError, TypeError) as exc:
            raise SandboxError(
                "could not stop the job's leftover processes or read its usage "
                f"(pids limit {self._limits.pids} reached?); nothing released: {exc}"
            ) from exc

    def _copy_output(self, container: Any, output_dir: Path) -> tuple[list[str], int]:
        limit = self._limits.output_bytes
        # docker cp cannot see a tmpfs, so tar it from inside the container.
        exec_id = self._client.api.exec_create(
            container.id, ["tar", "-C", "/output", "-cf", "-", "."], user=_USER
        )["Id"]
        stream = self._client.api.exec_start(exec_id, stream=True, demux=True)
        with tempfile.SpooledTemporaryFile(max_size=8 * MiB) as spool:
            errors = Tail(2000)
            for out, err in stream:
                if out:
                    spool.write(out)
                    if spool.tell() > limit + 4 * MiB:
                        raise SandboxError(f"output exceeds {limit // MiB} MiB")
                if err:
                    errors.feed(err)
            if self._client.api.exec_inspect(exec_id)["ExitCode"] != 0:
                raise SandboxError(f"could not copy /output: {errors.last_lines(5)}")
            spool.seek(0)
            files = extract_output(spool, output_dir, limit)
        total = sum((output_dir / name).stat().st_size for name in files)
        return files, total

    def _oom_event(self, container: Any, since: int) -> bool:
        """Ask the engine's event log; used only if the cgroup counter is unreadable."""
        events = self._client.events(
            since=since,
            until=int(time.time()) + 1,
            filters={"container": container.id, "event": "oom"},
            decode=True,
        )
        return any(event.get("Action") == "oom" for event in events)


def _remove(container: Any, *, quiet: bool) -> None:
    try:
        container.remove(force=True)
    except Exception as exc:
        if not quiet:  # never let this mask the job's own failure
            raise SandboxError(
                f"could not remove container {container.id}: {exc}"
            ) from exc


def _pump(stream: Any, stdout: Tail, stderr: Tail) -> None:
    for out, err in stream:
        if out:
            stdout.feed(out)
        if err:
            stderr.feed(err)


def _cpu_so_far(container: Any) -> float:
    """CPU seconds the container's processes have used, from the engine's cgroup
    stats; read before a timed-out run is killed so it can still be billed."""
    try:
        stats = container.stats(stream=False, one_shot=True)
        return float(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9
    except Exception as exc:  # billing must never mask the timeout itself
        log.warning("could not read the timed-out job's CPU use: %s", exc)
        return 0.0


def _tail_note(stderr: Tail) -> str:
    lines = stderr.last_lines(20)
    return f"; last lines of stderr:\n{lines}" if lines else ""
