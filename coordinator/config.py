"""The coordinator's configuration, read from TOML with validated defaults."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleanroom.errors import ConfigError
from cleanroom.metrics import parse_listen
from cleanroom.pki import TlsIdentity

DEFAULT_RPC_WORKERS = 256
MIN_RPC_WORKERS = 4


def long_poll_slots(rpc_workers: int) -> int:
    """How many long polls may wait at once: the pool minus a reserve (a quarter,
    at least two) that stays free for pushes, decisions and analysts."""
    if rpc_workers < MIN_RPC_WORKERS:
        raise ConfigError(f"rpc_workers must be at least {MIN_RPC_WORKERS}")
    return rpc_workers - max(2, rpc_workers // 4)


@dataclass(frozen=True)
class CoordinatorConfig:
    """Where the coordinator listens, keeps state, and how patient it is with nodes."""

    name: str
    listen: str
    data_dir: Path
    cert: Path
    key: Path
    ca: Path
    store_url: str
    node_timeout: float = 10.0
    rpc_workers: int = DEFAULT_RPC_WORKERS
    """gRPC worker threads; each connected node's long poll holds one while it waits."""
    address_file: Path | None = None
    plugins: tuple[str, ...] = ()
    """Job-type plugins to load (entry points in ``cleanroom.job_types``)."""
    max_jobs_per_analyst: int = 16
    """Unfinished jobs one analyst may have at once."""
    metrics_listen: str = ""
    """``host:port`` of the Prometheus ``/metrics`` endpoint; empty: none."""

    def identity(self) -> TlsIdentity:
        return TlsIdentity.load(self.cert, self.key, self.ca)

    @classmethod
    def load(cls, path: Path) -> CoordinatorConfig:
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"coordinator config not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        return cls.from_mapping(raw, base=path.parent)

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], *, base: Path) -> CoordinatorConfig:
        known = {
            "name",
            "listen",
            "data_dir",
            "store",
            "node_timeout_seconds",
            "rpc_workers",
            "address_file",
            "tls",
            "plugins",
            "max_jobs_per_analyst",
            "metrics_listen",
        }
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"coordinator config: unknown key '{unknown[0]}'")
        tls = raw.get("tls")
        if not isinstance(tls, dict) or not {"cert", "key", "ca"} <= set(tls):
            raise ConfigError("coordinator config: [tls] needs cert, key and ca paths")
        data_dir = base / str(raw.get("data_dir", "coordinator-data"))
        timeout = raw.get("node_timeout_seconds", 10.0)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError("coordinator config: node_timeout_seconds must be > 0")
        workers = raw.get("rpc_workers", DEFAULT_RPC_WORKERS)
        if (
            isinstance(workers, bool)
            or not isinstance(workers, int)
            or workers < MIN_RPC_WORKERS
        ):
            raise ConfigError(
                f"coordinator config: rpc_workers must be an integer >= "
                f"{MIN_RPC_WORKERS}, got {workers!r}"
            )
        address_file = raw.get("address_file")
        max_jobs = raw.get("max_jobs_per_analyst", 16)
        if isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1:
            raise ConfigError(
                "coordinator config: max_jobs_per_analyst must be an integer >= 1, "
                f"got {max_jobs!r}"
            )
        return cls(
            name=str(raw.get("name", "coordinator")),
            listen=str(raw.get("listen", "127.0.0.1:7700")),
            data_dir=data_dir,
            cert=base / tls["cert"],
            key=base / tls["key"],
            ca=base / tls["ca"],
            store_url=str(raw.get("store", f"sqlite:///{data_dir / 'coordinator.db'}")),
            node_timeout=float(timeout),
            rpc_workers=workers,
            address_file=base / address_file if address_file else None,
            plugins=tuple(raw.get("plugins", ())),
            max_jobs_per_analyst=max_jobs,
            metrics_listen=(
                parse_listen(
                    raw["metrics_listen"], "coordinator config: metrics_listen"
                )
                if raw.get("metrics_listen")
                else ""
            ),
        )
