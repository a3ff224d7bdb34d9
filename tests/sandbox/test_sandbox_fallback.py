"""The opt-in unshare fallback: hostile jobs fail clearly too; choosing a runner."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from cleanroom.errors import SandboxError
from sandbox.executor import DockerSandbox
from sandbox.fallback import (
    NO_ENGINE,
    UnshareSandbox,
    engine_available,
    select_runner,
    unshare_available,
)
from sandbox.runner import SandboxLimits
from sandbox.vetting import VettingRules, vet_outputs

needs_unshare = pytest.mark.skipif(
    not unshare_available(), reason="user namespaces (unshare) do not work here"
)


class _DeadEngine:
    def ping(self) -> None:
        raise ConnectionError("no engine")


@pytest.fixture
def jail() -> UnshareSandbox:
    return UnshareSandbox(
        SandboxLimits(memory_mb=1024, pids=32, tmp_mb=32, output_mb=20)
    )


def _fails(jail: UnshareSandbox, job: Any, timeout_s: float = 30) -> str:
    with pytest.raises(SandboxError) as caught:
        jail.run(job.code, job.data, job.out, timeout_s=timeout_s)
    assert list(job.out.iterdir()) == []
    return str(caught.value)


def test_refuses_without_engine_unless_fallback_allowed() -> None:
    assert not engine_available(_DeadEngine())
    with pytest.raises(SandboxError) as caught:
        select_runner(False, client=_DeadEngine())
    assert str(caught.value) == NO_ENGINE
    if unshare_available():
        assert isinstance(select_runner(True, client=_DeadEngine()), UnshareSandbox)


@pytest.mark.docker
def test_prefers_docker_when_an_engine_answers(
    docker_engine: Any, sandbox_image: str
) -> None:
    assert engine_available(docker_engine)
    assert isinstance(select_runner(True, client=docker_engine), DockerSandbox)


@needs_unshare
def test_fallback_runs_sklearn_and_passes_vetting(
    jail: UnshareSandbox, job: Any, rules: VettingRules
) -> None:
    bundle = job("""
        import json
        import pandas as pd
        from sklearn.linear_model import LogisticRegression
        df = pd.read_csv("/data/data.csv")
        model = LogisticRegression(max_iter=500).fit(df[["age"]], df["label"])
        json.dump({"accuracy": model.score(df[["age"]], df["label"]), "n": len(df)},
                  open("/output/metrics.json", "w"))
    """)
    report = jail.run(bundle.code, bundle.data, bundle.out, timeout_s=60)
    assert report.runner == "unshare" and report.output_files == ("metrics.json",)
    assert vet_outputs(bundle.out, bundle.dataset, rules).status == "pass"


@needs_unshare
def test_fallback_is_locked_down(
    jail: UnshareSandbox, job: Any, tmp_path: Path
) -> None:
    secret = secrets.token_hex(8)
    (tmp_path / "secret.txt").write_text(secret)
    (tmp_path / "secret.txt").chmod(0o644)
    bundle = job(f"""
        import os, socket, sys
        bad = []
        for path in [{str(tmp_path / "secret.txt")!r}, "/etc/shadow", "/root/.bashrc"]:
            try:
                bad.append(open(path).read())
            except OSError:
                pass
        for path in ["/code/x", "/data/x", "/x", "/usr/x", "/proc/sys/kernel/hostname"]:
            try:
                open(path, "w").write("x")
                bad.append(path)
            except OSError:
                pass
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=2)
            bad.append("network")
        except OSError:
            pass
        status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
        if status["CapEff"].strip() != "0000000000000000":
            bad.append("capabilities")
        if status["NoNewPrivs"].strip() != "1":
            bad.append("no_new_privs")
        if {os.geteuid() == 0} and open("/proc/self/uid_map").read().split() != [
            "0", "65534", "1"
        ]:
            bad.append("uid map")
        sys.exit(f"escaped: {{bad}}" if bad else "locked down")
    """)
    message = _fails(jail, bundle)
    assert "locked down" in message and secret not in message


@needs_unshare
@pytest.mark.parametrize(
    ("source", "timeout_s", "expected"),
    [
        ("while True:\n    pass\n", 2, "timed out after 2s"),
        (
            "import os\nwhile True:\n    try:\n        os.fork()\n"
            "    except OSError:\n        pass\n",
            3,
            "timed out after 3s",
        ),
        (
            "hog = []\nwhile True:\n    hog.append(b'x' * 2**25)\n",
            30,
            "ran out of memory (address-space limit 1024 MiB)",
        ),
        (
            "with open('/output/big.csv', 'wb') as f:\n"
            "    for _ in range(1024):\n        f.write(b'1,' * 2**19)\n",
            30,
            "output exceeds 20 MiB",
        ),
        ("raise RuntimeError('bad input')\n", 30, "RuntimeError: bad input"),
    ],
    ids=["loop", "fork-bomb", "memory", "big-output", "exit"],
)
def test_fallback_hostile_jobs_fail(
    jail: UnshareSandbox, job: Any, source: str, timeout_s: float, expected: str
) -> None:
    assert expected in _fails(jail, job(source), timeout_s)


@needs_unshare
def test_fallback_failure_carries_the_cpu_it_used(
    jail: UnshareSandbox, job: Any
) -> None:
    source = "import time\nend = time.process_time() + 0.5\n"
    source += "while time.process_time() < end:\n    pass\nraise SystemExit(3)\n"
    bundle = job(source)
    with pytest.raises(SandboxError, match="exited with code 3") as caught:
        jail.run(bundle.code, bundle.data, bundle.out, timeout_s=30)
    assert 0.4 < caught.value.cpu_s < 10


@needs_unshare
def test_fork_bomb_is_capped_by_nproc(jail: UnshareSandbox, job: Any) -> None:
    bundle = job("""
        import os, sys, time
        children = 0
        for _ in range(200):
            try:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                children += 1
            except OSError:
                break
        sys.exit(f"forked {children}")
    """)
    message = _fails(jail, bundle)
    forked = int(message.rsplit("forked ", 1)[1].split()[0])
    assert forked < 32
    assert os.getpid() > 0  # the host is still here
