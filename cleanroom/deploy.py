"""Containers for a real deployment: the coordinator and node image, built locally
(the sandbox's Debian root filesystem plus the project's wheels, no registry),
and ``init``, which writes everything ``deploy/compose.yaml`` mounts — a fresh
PKI, configs, the database password, sample datasets (one per kind of source:
a PostgreSQL table, Parquet through DuckDB, CSV in memory) and the analyst's
federation file. Nothing secret goes into the image."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import yaml

from cleanroom import pki
from cleanroom.errors import ConfigError
from cleanroom.federation import Federation
from cleanroom.local import default_policy

IMAGE: Final = "cleanroom-service:local"
BASE_IMAGE: Final = "cleanroom-service-base"
SERVICE_UID: Final = 10001
NODES: Final = ("h1", "h2", "h3")
DEPLOY_DIR: Final = Path(__file__).resolve().parent.parent / "deploy"
"""The Dockerfiles and compose file (in a source checkout)."""
COLUMNS: Final = {"age": "int", "bmi": "float", "sex": "str"}
_SQL_TYPES: Final = {"int": "bigint", "float": "double precision", "str": "text"}


def _run(args: list[str], what: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise ConfigError(f"{what} failed ({done.returncode}):\n{tail}")


def build_image(*, progress: Callable[[str], None] = lambda _: None) -> str:
    """Build ``cleanroom-service:local``: the base layer once per sandbox image,
    then the project's wheels on top (a rebuild after a code change is quick)."""
    from sandbox.image import ensure_image

    if not (DEPLOY_DIR / "Dockerfile").exists():
        raise ConfigError(f"no Dockerfile in {DEPLOY_DIR}: run from a source checkout")
    progress("the sandbox's Debian root filesystem (built once, cached)")
    sandbox = ensure_image(progress=progress)
    base = f"{BASE_IMAGE}:{sandbox.rpartition(':')[2]}"
    if subprocess.run(["docker", "image", "inspect", base],
                      capture_output=True).returncode != 0:  # fmt: skip
        progress(f"building {base} (PostgreSQL, libsodium; a few minutes)")
        _run(["docker", "build", "-q", "-t", base, "--build-arg",
              f"SANDBOX_IMAGE={sandbox}", "-f", str(DEPLOY_DIR / "Dockerfile.base"),
              str(DEPLOY_DIR)], "docker build of the base image")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="cleanroom-image-") as tmp:
        context = Path(tmp)
        shutil.copy(DEPLOY_DIR / "Dockerfile", context / "Dockerfile")
        shutil.copy(DEPLOY_DIR / "postgres-entrypoint.sh", context)
        progress("building the project's wheel and its dependencies' wheels")
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir",
              str(context / "wheels"), str(DEPLOY_DIR.parent), "pip"],
             "pip wheel")  # fmt: skip
        progress(f"building {IMAGE}")
        _run(["docker", "build", "-q", "-t", IMAGE, "--build-arg",
              f"BASE_IMAGE={base}", str(context)], "docker build")  # fmt: skip
    return IMAGE


def sample_frames(seed: int = 23) -> dict[str, pd.DataFrame]:
    """Each holder's sample dataset (synthetic; nothing is downloaded)."""
    rng = np.random.default_rng(seed)
    return {
        name: pd.DataFrame(
            {
                "age": rng.integers(18, 90, n),
                "bmi": rng.normal(26, 4, n).round(2),
                "sex": rng.choice(["F", "M"], n),
            }
        )
        for name, n in zip(NODES, (300, 400, 500), strict=True)
    }


_ENGINES = ("h1", "h2")
"""The sample nodes whose datasets a database engine serves (PostgreSQL, DuckDB)."""


def _sample_policy(*, engine: bool) -> str:
    policy: dict[str, Any] = default_policy("analyst")
    if not engine:
        return yaml.safe_dump(policy, sort_keys=False)
    policy["default"] = {**policy["default"], "differencing": {"enabled": False}}
    return (
        "# This dataset is served by a database engine, where the node keeps no\n"
        "# record of released cells against differencing; exact (non-DP) results\n"
        "# are allowed here only because differencing is turned off below. Remove\n"
        "# that line (or set dp.required) to release only noised results.\n"
        + yaml.safe_dump(policy, sort_keys=False)
    )


def init(directory: Path, *, port: int = 7700) -> Path:
    """Write a fresh deployment into ``directory``; return its ``deploy.env``."""
    directory = directory.resolve()
    if (directory / "deploy.env").exists():
        raise ConfigError(f"{directory} already holds a deployment; remove it first")
    ca = directory / "pki"
    pki.init_ca(ca, federation="compose")
    pki.issue(ca, "coordinator", "coordinator")
    pki.issue(ca, "analyst", "analyst", organisation="lab")
    for name in NODES:
        pki.issue(ca, "node", name)
    password = secrets.token_urlsafe(24)
    secret_dir = directory / "secrets"
    _write(secret_dir / "postgres_password", password + "\n")
    for party in ("coordinator", *NODES):
        for suffix in (".crt", ".key"):
            shutil.copy(ca / f"{party}{suffix}", _dir(secret_dir / party))
        shutil.copy(ca / "ca.crt", secret_dir / party)
    database = f"postgresql+psycopg://cleanroom:{password}@postgres:5432"
    _write(secret_dir / "h1" / "db_url", f"{database}/holders\n")
    tls = (
        '[tls]\ncert = "/run/secrets/cleanroom/{0}.crt"\n'
        'key = "/run/secrets/cleanroom/{0}.key"\n'
        'ca = "/run/secrets/cleanroom/ca.crt"\n'
    )
    _write(directory / "config" / "coordinator" / "coordinator.toml",
        'name = "coordinator"\nlisten = "0.0.0.0:7700"\n'
        'data_dir = "/var/lib/cleanroom"\nmetrics_listen = "0.0.0.0:9464"\n'
        f'store = "{database}/coordinator"\n'
        "\n" + tls.format("coordinator"))  # fmt: skip
    frames = sample_frames()
    columns = "".join(f'{c} = "{t}"\n' for c, t in COLUMNS.items())
    sources = {
        "h1": 'url_file = "/run/secrets/cleanroom/db_url"\ntable = "h1"\n'
              f"[datasets.h1.columns]\n{columns}",
        "h2": 'path = "/data/h2.parquet"\nengine = "duckdb"\n',
        "h3": 'path = "/data/h3.csv"\n',
    }  # fmt: skip
    for name in NODES:
        config = _dir(directory / "config" / name)
        (config / "policy.yaml").write_text(_sample_policy(engine=name in _ENGINES))
        _write(config / "node.toml",
            f'name = "{name}"\ncoordinator = "coordinator:7700"\n'
            'coordinator_name = "coordinator"\ndata_dir = "/var/lib/cleanroom"\n'
            'policy = "policy.yaml"\nmetrics_listen = "0.0.0.0:9464"\n\n'
            + tls.format(name) + f"\n[datasets.{name}]\n" + sources[name])  # fmt: skip
    seed = _dir(directory / "seed")
    frames["h1"].to_csv(seed / "h1.csv", index=False)
    create = ", ".join(f"{c} {_SQL_TYPES[t]}" for c, t in COLUMNS.items())
    (seed / "h1.sql").write_text(
        f"CREATE TABLE h1 ({create});\n\\copy h1 FROM '/seed/h1.csv' CSV HEADER\n"
    )
    frames["h2"].to_parquet(_dir(directory / "data" / "h2") / "h2.parquet")
    frames["h3"].to_csv(_dir(directory / "data" / "h3") / "h3.csv", index=False)
    Federation(
        coordinator_address=f"127.0.0.1:{port}",
        coordinator_name="coordinator",
        analyst_name="analyst",
        analyst_cert=ca / "analyst.crt",
        analyst_key=ca / "analyst.key",
        ca=ca / "ca.crt",
        nodes={n: {"dataset": n} for n in NODES},
        workdir=directory,
    ).save(directory / "federation.json")
    if os.geteuid() == 0:
        # The containers run as uid 10001 and read these mounts.
        for path in [
            *(directory / "secrets").rglob("*"),
            *(directory / "config").rglob("*"),
        ]:
            os.chown(path, SERVICE_UID, SERVICE_UID)
    env = directory / "deploy.env"
    env.write_text(
        f"CLEANROOM_DEPLOY_DIR={directory}\nCLEANROOM_PORT={port}\n"
        f"CLEANROOM_IMAGE={IMAGE}\n"
    )
    return env


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write(path: Path, text: str) -> None:
    _dir(path.parent)
    path.write_text(text)
    path.chmod(0o600)
