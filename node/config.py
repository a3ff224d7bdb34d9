"""A node's configuration (TOML): identity, coordinator, datasets and their policies."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cleanroom.catalog import COLUMN_TYPES
from cleanroom.errors import ConfigError
from cleanroom.pki import TlsIdentity

_TOP = {
    "name",
    "coordinator",
    "coordinator_name",
    "data_dir",
    "policy",
    "tls",
    "datasets",
    "jobtypes",
    "plugins",
}
_DATASET = {"path", "id_column", "description", "format", "columns", "policy"}


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset the node holds: where its file is and how to read and check it."""

    name: str
    path: Path
    id_column: str = ""
    description: str = ""
    format: str = "csv"
    columns: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeConfig:
    """Everything ``cleanroom node serve`` needs."""

    name: str
    coordinator: str
    coordinator_name: str
    data_dir: Path
    cert: Path
    key: Path
    ca: Path
    datasets: tuple[DatasetConfig, ...]
    policy: Mapping[str, Any]
    jobtypes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """``[jobtypes.<name>]`` tables: each job type's own node settings."""
    plugins: tuple[str, ...] = ()
    """Job-type plugins to load (entry points in ``cleanroom.job_types``)."""

    def identity(self) -> TlsIdentity:
        return TlsIdentity.load(self.cert, self.key, self.ca)

    @property
    def state_path(self) -> Path:
        return self.data_dir / "node.db"

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"node config not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        return cls.from_mapping(raw, base=path.parent.resolve())

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, base: Path) -> NodeConfig:
        unknown = sorted(set(raw) - _TOP)
        if unknown:
            raise ConfigError(f"node config: unknown key '{unknown[0]}'")
        for key in ("name", "coordinator"):
            if not isinstance(raw.get(key), str) or not raw[key]:
                raise ConfigError(f"node config: '{key}' is required")
        tls = raw.get("tls")
        if not isinstance(tls, dict) or not {"cert", "key", "ca"} <= set(tls):
            raise ConfigError("node config: [tls] needs cert, key and ca paths")
        policy: dict[str, Any] = {}
        if "policy" in raw:
            policy_path = base / str(raw["policy"])
            try:
                loaded = yaml.safe_load(policy_path.read_text()) or {}
            except FileNotFoundError:
                raise ConfigError(f"policy file not found: {policy_path}") from None
            except yaml.YAMLError as exc:
                raise ConfigError(f"{policy_path}: malformed YAML: {exc}") from None
            if not isinstance(loaded, dict):
                raise ConfigError(
                    f"{policy_path}: expected a mapping of dataset -> policy"
                )
            policy.update(loaded)
        tables = raw.get("jobtypes", {})
        if not isinstance(tables, dict) or not all(
            isinstance(v, dict) for v in tables.values()
        ):
            raise ConfigError("node config: [jobtypes.NAME] must be tables of settings")
        plugins = raw.get("plugins", [])
        if not isinstance(plugins, list) or not all(
            isinstance(p, str) for p in plugins
        ):
            raise ConfigError("node config: plugins must be a list of plugin names")
        datasets = []
        raw_sets = raw.get("datasets", {})
        if not isinstance(raw_sets, dict) or not raw_sets:
            raise ConfigError("node config: declare at least one [datasets.NAME]")
        for name, spec in raw_sets.items():
            datasets.append(_dataset(name, spec, base))
            if isinstance(spec.get("policy"), dict):
                policy[name] = spec["policy"]
        return cls(
            name=raw["name"],
            coordinator=raw["coordinator"],
            coordinator_name=str(raw.get("coordinator_name", "coordinator")),
            data_dir=base / str(raw.get("data_dir", f"{raw['name']}-data")),
            cert=base / tls["cert"],
            key=base / tls["key"],
            ca=base / tls["ca"],
            datasets=tuple(datasets),
            policy=policy,
            jobtypes={str(k): dict(v) for k, v in tables.items()},
            plugins=tuple(plugins),
        )


def _dataset(name: str, spec: Any, base: Path) -> DatasetConfig:
    where = f"node config: datasets.{name}"
    if not isinstance(spec, dict) or "path" not in spec:
        raise ConfigError(f"{where}: 'path' is required")
    unknown = sorted(set(spec) - _DATASET)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'")
    path = base / str(spec["path"])
    fmt = str(spec.get("format", "parquet" if path.suffix == ".parquet" else "csv"))
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"{where}.format: expected csv or parquet, got '{fmt}'")
    columns = spec.get("columns", {})
    if not isinstance(columns, dict):
        raise ConfigError(f"{where}.columns: expected a table of column = type")
    for column, col_type in columns.items():
        if col_type not in COLUMN_TYPES:
            raise ConfigError(
                f"{where}.columns.{column}: unknown type '{col_type}' "
                f"(known: {', '.join(COLUMN_TYPES)})"
            )
    return DatasetConfig(
        name,
        path,
        str(spec.get("id_column", "")),
        str(spec.get("description", "")),
        fmt,
        dict(columns),
    )
