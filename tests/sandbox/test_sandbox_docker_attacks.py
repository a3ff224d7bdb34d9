"""Hostile jobs against the Docker sandbox: each must fail clearly and leak nothing."""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cleanroom.errors import SandboxError
from sandbox.executor import DockerSandbox
from sandbox.runner import SandboxLimits

pytestmark = pytest.mark.docker


@pytest.fixture
def sandbox(docker_engine: Any, sandbox_image: str, small_limits: SandboxLimits) -> Any:
    yield DockerSandbox(docker_engine, sandbox_image, small_limits)
    leftover = docker_engine.containers.list(
        all=True, filters={"label": "cleanroom.sandbox"}
    )
    assert leftover == [], "a sandbox container was not removed"


def _fails(sandbox: Any, job: Any, timeout_s: float = 30) -> str:
    with pytest.raises(SandboxError) as caught:
        sandbox.run(job.code, job.data, job.out, timeout_s=timeout_s)
    assert list(job.out.iterdir()) == [], "a failed job released output"
    return str(caught.value)


@pytest.fixture
def host_listener() -> Iterator[tuple[int, list[Any]]]:
    """A TCP service on the host (all interfaces, port 0) that records connections."""
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(0.2)
    accepted: list[Any] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join(2)
    server.close()


def _host_address() -> str:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("1.1.1.1", 53))  # UDP connect sends nothing
        return str(probe.getsockname()[0])
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def test_no_network_egress(sandbox: Any, job: Any, host_listener: Any) -> None:
    port, accepted = host_listener
    targets = [
        ("1.1.1.1", 53),
        ("127.0.0.1", port),
        ("172.17.0.1", port),
        (_host_address(), port),
    ]
    bundle = job(f"""
        import json, socket, sys
        reached = []
        for host, port in {targets!r}:
            try:
                socket.create_connection((host, port), timeout=2).close()
                reached.append(host)
            except OSError as exc:
                print(host, "blocked:", exc, file=sys.stderr)
        try:
            socket.getaddrinfo("example.com", 443)
            reached.append("dns")
        except OSError as exc:
            print("dns blocked:", exc, file=sys.stderr)
        if reached:
            json.dump(reached, open("/output/leak.json", "w"))
        else:
            sys.exit("all network attempts failed")
    """)
    message = _fails(sandbox, bundle)
    assert "all network attempts failed" in message
    assert "dns blocked" in message
    assert accepted == []


def test_cannot_write_outside_output(sandbox: Any, job: Any) -> None:
    bundle = job("""
        import os, subprocess, sys
        written = []
        for path in ["/code/x.py", "/data/data.csv", "/x", "/etc/passwd",
                     "/usr/lib/python3/dist-packages/evil.py", "/var/tmp/x"]:
            try:
                with open(path, "a") as f:
                    f.write("pwned")
                written.append(path)
            except OSError as exc:
                print(path, exc, file=sys.stderr)
        open("/tmp/run.sh", "w").write("#!/bin/sh\\necho ran\\n")
        os.chmod("/tmp/run.sh", 0o755)
        try:
            subprocess.run(["/tmp/run.sh"], check=True)
            written.append("exec /tmp")
        except OSError as exc:
            print("exec blocked:", exc, file=sys.stderr)
        sys.exit(f"wrote {written}" if written else "all writes refused")
    """)
    before = (bundle.data / "data.csv").read_bytes()
    message = _fails(sandbox, bundle)
    assert "all writes refused" in message
    assert (bundle.data / "data.csv").read_bytes() == before
    assert sorted(p.name for p in bundle.code.iterdir()) == ["main.py"]


def test_host_files_are_invisible(sandbox: Any, job: Any, tmp_path: Path) -> None:
    secret_dir = tmp_path / "host-secret"
    secret_dir.mkdir()
    secret = secrets.token_hex(16)
    (secret_dir / "secret.txt").write_text(secret)
    bundle = job(f"""
        import os, sys
        seen = []
        for path in [{str(secret_dir / "secret.txt")!r}, "/etc/shadow",
                     "/root/.bash_history", "/etc/docker/daemon.json"]:
            try:
                seen.append(open(path).read()[:64])
            except OSError as exc:
                print(path, exc, file=sys.stderr)
        for sock in ["/var/run/docker.sock", "/run/docker.sock"]:
            if os.path.exists(sock):
                seen.append(sock)
        print(os.getuid(), os.getgid(), open("/proc/self/status").read())
        sys.exit(f"saw {{seen}}" if seen else "nothing from the host was readable")
    """)
    message = _fails(sandbox, bundle)
    assert "nothing from the host was readable" in message
    assert secret not in message


def test_fork_bomb_hits_pids_limit(sandbox: Any, job: Any) -> None:
    bundle = job("""
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    message = _fails(sandbox, bundle, timeout_s=6)
    assert "timed out after 6s" in message


def test_memory_bomb_is_oom_killed(sandbox: Any, job: Any) -> None:
    bundle = job("""
        hog = []
        while True:
            hog.append(b"x" * (32 * 1024 * 1024))
    """)
    message = _fails(sandbox, bundle)
    assert "ran out of memory (limit 384 MiB)" in message


def test_infinite_loop_times_out(sandbox: Any, job: Any) -> None:
    bundle = job("""
        while True:
            pass
    """)
    with pytest.raises(SandboxError, match="timed out after 2s") as caught:
        sandbox.run(bundle.code, bundle.data, bundle.out, timeout_s=2)
    # The CPU it burned is read before the kill, so the node can bill it.
    assert 0.5 < caught.value.cpu_s < 10


@pytest.mark.parametrize("swallow", [False, True])
def test_gigabyte_output_is_refused(sandbox: Any, job: Any, swallow: bool) -> None:
    bundle = job(f"""
        chunk = b"1," * (512 * 1024)
        try:
            with open("/output/big.csv", "wb") as f:
                for _ in range(1024):
                    f.write(chunk)
        except OSError:
            if not {swallow}:
                raise
    """)
    assert "output exceeds 50 MiB" in _fails(sandbox, bundle)


def test_symlink_in_output_is_refused(sandbox: Any, job: Any) -> None:
    bundle = job("""
        import os
        os.symlink("/etc/passwd", "/output/passwd.csv")
    """)
    assert "not a plain file" in _fails(sandbox, bundle)


def test_nonzero_exit_reports_stderr_tail(sandbox: Any, job: Any) -> None:
    bundle = job("""
        import sys
        print("x" * 100_000, file=sys.stderr)
        raise ValueError("model did not converge")
    """)
    message = _fails(sandbox, bundle)
    assert "exited with code 1" in message
    assert "ValueError: model did not converge" in message
    assert len(message) < 9000


def test_no_privileges_inside(sandbox: Any, job: Any) -> None:
    bundle = job("""
        import os, sys
        status = dict(
            line.split(":", 1) for line in open("/proc/self/status") if ":" in line
        )
        facts = {"uid": os.getuid(), "caps": status["CapEff"].strip(),
                 "nnp": status["NoNewPrivs"].strip(),
                 "seccomp": status["Seccomp"].strip()}
        ok = facts == {"uid": 10001, "caps": "0000000000000000", "nnp": "1",
                       "seccomp": "2"}
        sys.exit(f"locked down {facts}" if ok else f"NOT locked down {facts}")
    """)
    assert "exited with code 1; last lines of stderr:\nlocked down" in _fails(
        sandbox, bundle
    )
