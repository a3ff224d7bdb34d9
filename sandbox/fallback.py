"""The weaker, opt-in fallback when no Docker engine exists, and picking a runner.

``UnshareSandbox`` runs a job with the node's own Python inside fresh user,
network, PID and mount namespaces (``unshare``), in a pivot_root jail built by
``sandbox/jail.py``: no network, read-only /usr, interpreter, /code and /data,
tmpfs /tmp and a size-capped tmpfs /output, no capabilities, no_new_privs,
rlimits (address space, CPU seconds, processes, file size) and a wall timeout.
When the node runs as root, the job runs as ``nobody`` (uid 65534), so dataset
files must be readable by others; otherwise it runs as the node's own user.

It is weaker than the Docker runner and is therefore off unless the holder sets
``jobtypes.sandbox.allow_unshare_fallback = true``: there is no seccomp filter (the
whole kernel syscall surface is reachable, including creating further
namespaces), memory is an address-space rlimit rather than a cgroup limit
(tmpfs pages are not counted), CPU is capped in seconds rather than shares,
and the job sees the host's kernel, /usr and Python installation (read-only).
"""

from __future__ import annotations

import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from functools import cache
from pathlib import Path
from typing import IO, Any

from cleanroom.errors import SandboxError
from sandbox.executor import DockerSandbox
from sandbox.image import docker_client, ensure_image
from sandbox.runner import (
    JOB_TMP,
    MiB,
    RunReport,
    SandboxLimits,
    SandboxRunner,
    Tail,
    check_job_dirs,
    extract_output,
)

NOBODY = 65534
NO_ENGINE = (
    "no Docker engine is available; sandbox jobs are refused (set "
    "allow_unshare_fallback = true under [jobtypes.sandbox] to accept the weaker "
    "namespace fallback)"
)
_UNSHARE_FLAGS = ("--user", "--net", "--pid", "--fork", "--mount")


def engine_available(client: Any = None) -> bool:
    """True when a Docker engine answers (through ``client`` or the environment)."""
    try:
        (client or docker_client()).ping()
    except Exception:
        return False
    return True


@cache
def unshare_available() -> bool:
    """True when unprivileged user, network, PID and mount namespaces work here."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        result = subprocess.run(
            [unshare, *_UNSHARE_FLAGS, "--map-root-user", "true"],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def select_runner(
    allow_fallback: bool,
    *,
    limits: SandboxLimits | None = None,
    client: Any = None,
) -> SandboxRunner:
    """Docker if an engine answers, else the fallback if allowed, else raise."""
    limits = limits or SandboxLimits()
    try:
        client = client or docker_client()
        client.ping()
    except Exception:
        client = None
    if client is not None:
        tag = ensure_image(client=client, build_if_missing=False)
        return DockerSandbox(client, tag, limits)
    if not allow_fallback:
        raise SandboxError(NO_ENGINE)
    if not unshare_available():
        raise SandboxError(
            "no Docker engine is available and the unshare fallback cannot create "
            "user namespaces here; sandbox jobs are refused"
        )
    return UnshareSandbox(limits)


class UnshareSandbox:
    """Runs a job in a namespace jail with rlimits; mind the module's caveats."""

    def __init__(self, limits: SandboxLimits) -> None:
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
        unshare = shutil.which("unshare")
        if unshare is None or not unshare_available():
            raise SandboxError("the unshare fallback is not usable on this host")
        binds = [[str(code_dir.resolve()), "/code"], [str(data_dir.resolve()), "/data"]]
        binds += [[root, root] for root in _interpreter_roots()]
        as_root = os.geteuid() == 0
        read_end, write_end = os.pipe()
        ready_r, ready_w = os.pipe() if as_root else (-1, -1)
        go_r, go_w = os.pipe() if as_root else (-1, -1)
        config = self._config(binds, write_end, entrypoint, timeout_s)
        config["handshake"] = [ready_w, go_r] if as_root else None
        # As root, --keep-caps lets the jail set up mounts before we map its
        # uid 0 to nobody; otherwise the usual map to our own uid is enough.
        mapping = ["--keep-caps"] if as_root else ["--map-root-user"]
        system_python = "/usr/bin/python3"
        bootstrap = (
            system_python if os.access(system_python, os.X_OK) else sys.executable
        )
        argv = [
            unshare,
            *_UNSHARE_FLAGS,
            *mapping,
            "--propagation",
            "private",
            "--kill-child",
            "--",
            bootstrap,
            "-I",
            "-B",
            "-c",
            _jail_source(),
            json.dumps(config),
        ]
        passed = [fd for fd in (write_end, ready_w, go_r) if fd >= 0]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=passed,
                start_new_session=True,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                extra_groups=[] if as_root else None,
            )
        except BaseException:
            for fd in (read_end, ready_r, go_w):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in passed:
                os.close(fd)
        with os.fdopen(read_end, "rb") as results:
            if as_root:
                _map_to_nobody(proc, ready_r, go_w)
            return self._supervise(proc, results, output_dir, timeout_s)

    def _config(
        self, binds: list[list[str]], result_fd: int, entrypoint: str, timeout_s: float
    ) -> dict[str, Any]:
        limits = self._limits
        threads = str(limits.threads)
        return {
            "binds": binds,
            "result_fd": result_fd,
            "timeout_s": timeout_s,
            "tmp_bytes": limits.tmp_mb * MiB,
            "output_bytes": limits.output_bytes + MiB,
            "rlimits": {
                "AS": limits.memory_mb * MiB,
                "CPU": math.ceil(timeout_s) + 1,
                "NPROC": limits.pids,
                "FSIZE": limits.output_bytes + MiB,
                "CORE": 0,
                "NOFILE": 1024,
            },
            "argv": [sys.executable, "-B", "-E", "-s", f"/code/{entrypoint}"],
            "env": {
                "HOME": JOB_TMP,
                "LANG": "C.UTF-8",
                "PATH": "/usr/bin:/bin",
                "OMP_NUM_THREADS": threads,
                "OPENBLAS_NUM_THREADS": threads,
                "JOBLIB_TEMP_FOLDER": JOB_TMP,
            },
        }

    def _supervise(
        self,
        proc: subprocess.Popen[bytes],
        results: IO[bytes],
        output_dir: Path,
        timeout_s: float,
    ) -> RunReport:
        limits = self._limits
        stdout, stderr = Tail(limits.tail_bytes), Tail(limits.tail_bytes)
        spool = tempfile.SpooledTemporaryFile(max_size=8 * MiB)
        cap = limits.output_bytes + 4 * MiB
        overflow: list[bool] = []
        readers = [
            threading.Thread(
                target=_drain, args=(proc.stdout, stdout.feed), daemon=True
            ),
            threading.Thread(
                target=_drain, args=(proc.stderr, stderr.feed), daemon=True
            ),
            threading.Thread(
                target=_spool, args=(results, spool, cap, overflow), daemon=True
            ),
        ]
        for reader in readers:
            reader.start()
        try:
            # The jail enforces timeout_s on the job; this is the backstop.
            proc.wait(timeout_s + 10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise SandboxError(
                f"timed out after {timeout_s:g}s; the job was killed"
            ) from None
        for reader in readers:
            reader.join(10)
        with spool:
            spool.seek(0)
            header_line = spool.readline(4096)
            try:
                header = json.loads(header_line)
            except ValueError:
                raise SandboxError(
                    f"the namespace jail failed (exit {proc.returncode}): "
                    f"{stderr.last_lines(10)}"
                ) from None
            self._judge(header, stderr, timeout_s)
            if overflow:
                raise SandboxError(f"output exceeds {limits.output_mb} MiB")
            files = extract_output(spool, output_dir, limits.output_bytes)
        total = sum((output_dir / name).stat().st_size for name in files)
        return RunReport(
            exit_code=0,
            duration_s=float(header["wall_s"]),
            cpu_s=float(header["cpu_s"]),
            image_id=f"host:{sys.executable} (Python {sys.version.split()[0]})",
            stdout_tail=stdout.text(),
            stderr_tail=stderr.text(),
            output_files=tuple(files),
            output_bytes=total,
            memory_peak_bytes=int(header["memory_peak"]),
            runner="unshare",
        )

    def _judge(self, header: dict[str, Any], stderr: Tail, timeout_s: float) -> None:
        limits = self._limits
        code = int(header["exit_code"])
        cpu_s = float(header["cpu_s"])
        note = f"; last lines of stderr:\n{stderr.last_lines(20)}"
        if float(header["wall_s"]) > timeout_s:
            raise SandboxError(
                f"timed out after {timeout_s:g}s; the job was killed", cpu_s=cpu_s
            )
        if code == -24:  # SIGXCPU
            raise SandboxError(
                f"exceeded its CPU time limit ({timeout_s:g}s)", cpu_s=cpu_s
            )
        if code != 0 and "MemoryError" in stderr.last_lines(20):
            raise SandboxError(
                f"ran out of memory (address-space limit {limits.memory_mb} MiB)"
                + note,
                cpu_s=cpu_s,
            )
        if int(header["output_used"]) > limits.output_bytes:
            raise SandboxError(
                f"output exceeds {limits.output_mb} MiB; nothing released", cpu_s=cpu_s
            )
        if code != 0:
            raise SandboxError(f"exited with code {code}" + note, cpu_s=cpu_s)


def _map_to_nobody(proc: subprocess.Popen[bytes], ready: int, go: int) -> None:
    """Map the jail's uid/gid 0 to nobody once its namespaces exist, then let it go."""
    try:
        ready_now, _, _ = select.select([ready], [], [], 30)
        if not ready_now or os.read(ready, 1) != b"r":
            raise SandboxError("the namespace jail did not start")
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"0 {NOBODY} 1"),
            ("gid_map", f"0 {NOBODY} 1"),
        ):
            Path(f"/proc/{proc.pid}/{name}").write_text(text)
        os.write(go, b"g")
    except (OSError, SandboxError) as exc:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise SandboxError(f"could not map the jail's users to nobody: {exc}") from exc
    finally:
        os.close(ready)
        os.close(go)


def _interpreter_roots() -> list[str]:
    """Directories the job's interpreter needs, outermost only, outside /usr."""
    prefixes = (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)
    roots = sorted({os.path.realpath(p) for p in prefixes})
    kept: list[str] = []
    for root in roots:
        if root == "/usr" or root.startswith("/usr/"):
            continue
        if not any(root.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(root)
    return kept


@cache
def _jail_source() -> str:
    return (Path(__file__).parent / "jail.py").read_text()


def _drain(stream: IO[bytes] | None, feed: Any) -> None:
    if stream is None:
        return
    for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
        feed(chunk)


def _spool(source: IO[bytes], sink: IO[bytes], cap: int, overflow: list[bool]) -> None:
    for chunk in iter(lambda: source.read1(65536), b""):  # type: ignore[attr-defined]
        if overflow or sink.tell() + len(chunk) > cap:
            overflow.append(True)  # keep draining so the jail is never stuck writing
        else:
            sink.write(chunk)
