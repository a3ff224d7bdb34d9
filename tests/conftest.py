"""Shared test fixtures: a throwaway PostgreSQL server for the postgres tests."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

POSTGRES_URL_ENV = "CLEANROOM_TEST_POSTGRES_URL"
# Set to 1 in CI so that a PostgreSQL that will not start fails the run.
POSTGRES_REQUIRED_ENV = "CLEANROOM_TEST_REQUIRE_POSTGRES"
POSTGRES_TEST_DB = "cleanroom_test"


class _PostgresUnavailable(Exception):
    """PostgreSQL could not be found or started; the message says why."""


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A ``postgresql+psycopg://`` URL of an empty database for this test session.

    Uses $CLEANROOM_TEST_POSTGRES_URL if set, else starts a private cluster on a
    free loopback port and stops it afterwards. Skips the test (fails it if
    $CLEANROOM_TEST_REQUIRE_POSTGRES=1) when PostgreSQL cannot be started.
    """
    if url := os.environ.get(POSTGRES_URL_ENV):
        yield url
        return
    workdir = Path(tempfile.mkdtemp(prefix="cleanroom-pg-"))
    cluster: _PostgresCluster | None = None
    try:
        try:
            cluster = _PostgresCluster.start(workdir)
        except _PostgresUnavailable as exc:
            message = (
                f"PostgreSQL tests NOT RUN: {exc}. Install it with "
                f"scripts/setup-postgres.sh or set {POSTGRES_URL_ENV}."
            )
            if os.environ.get(POSTGRES_REQUIRED_ENV) == "1":
                pytest.fail(message)
            warnings.warn(message, stacklevel=1)
            pytest.skip(message)
        yield cluster.url
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


class _PostgresCluster:
    """A temporary cluster in ``workdir``, run as the ``postgres`` user under root."""

    def __init__(self, bindir: Path, workdir: Path, user: str | None) -> None:
        self.bindir = bindir
        self.datadir = workdir / "data"
        self.logfile = workdir / "server.log"
        self.workdir = workdir
        self.user = user
        self.url = ""

    @classmethod
    def start(cls, workdir: Path) -> _PostgresCluster:
        bindir = _postgres_bindir()
        user = None
        if os.geteuid() == 0:
            # initdb and postgres refuse to run as root.
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise _PostgresUnavailable(
                    "running as root and there is no 'postgres' user to run it as"
                ) from None
            os.chown(workdir, owner.pw_uid, owner.pw_gid)
            user = "postgres"
        cluster = cls(bindir, workdir, user)
        cluster._run(
            "initdb", "-D", str(cluster.datadir), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--no-locale", "--no-sync",
        )  # fmt: skip
        last_error: _PostgresUnavailable | None = None
        for _attempt in range(3):  # another process may grab the port we picked
            port = _postgres_free_port()
            try:
                cluster._run(
                    "pg_ctl", "-D", str(cluster.datadir), "-l", str(cluster.logfile),
                    "-w", "-t", "60", "start", "-o",
                    f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1 "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                )  # fmt: skip
            except _PostgresUnavailable as exc:
                last_error = exc
                continue
            try:
                with psycopg.connect(
                    host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                    autocommit=True,
                ) as conn:  # fmt: skip
                    conn.execute(f"CREATE DATABASE {POSTGRES_TEST_DB}")
            except psycopg.Error as exc:
                cluster.stop()
                raise _PostgresUnavailable(f"cannot create a database: {exc}") from exc
            cluster.url = (
                f"postgresql+psycopg://postgres@127.0.0.1:{port}/{POSTGRES_TEST_DB}"
            )
            return cluster
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop")
        except _PostgresUnavailable:
            pass

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=120, cwd=self.workdir
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise _PostgresUnavailable(f"{tool} could not run: {exc}") from exc
        if done.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise _PostgresUnavailable(
                f"{tool} exited {done.returncode}: {done.stderr.strip()} {log[-2000:]}"
            )


def _postgres_bindir() -> Path:
    """Debian's versioned directories first (newest wins), then $PATH."""
    debian = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")]
    debian.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    on_path = shutil.which("initdb")
    candidates = debian[::-1] + ([Path(on_path).resolve().parent] if on_path else [])
    for directory in candidates:
        if all((directory / tool).exists() for tool in ("initdb", "pg_ctl")):
            return directory
    raise _PostgresUnavailable("initdb and pg_ctl not found")


def _postgres_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------- federation PKI --
@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A federation CA with a coordinator, two nodes and two analysts (P-256, real size)."""
    from cleanroom import pki

    directory = tmp_path_factory.mktemp("pki")
    pki.init_ca(directory, federation="test")
    pki.issue(directory, "coordinator", "coordinator")
    for name in ("n1", "n2"):
        pki.issue(directory, "node", name)
    for name in ("alice", "bob"):
        pki.issue(directory, "analyst", name)
    return directory


TEST_PLUGINS = Path(__file__).parent / "plugins"
"""A test-only job-type distribution (``testjobs`` and its ``*.dist-info``)."""


@pytest.fixture
def test_job_types(monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    """Puts the test-only job-type plugin on this process's path and on that of
    every process it starts, and loads it here; the plugin names."""
    from cleanroom import jobtypes

    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(TEST_PLUGINS), old]))
    )
    monkeypatch.syspath_prepend(str(TEST_PLUGINS))
    names = ("sealed_value", "rounds_sum", "rounds_sum_fragile")
    jobtypes.load_plugins(names)
    return names
