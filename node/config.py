"""A node's configuration (TOML): identity, coordinator, datasets and their policies."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cleanroom.catalog import COLUMN_TYPES
from cleanroom.errors import ConfigError
from cleanroom.metrics import parse_listen
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
    "metrics_listen",
}
_DATASET = {
    "path",
    "id_column",
    "description",
    "format",
    "columns",
    "policy",
    "engine",
    "url",
    "url_file",
    "table",
    "query",
    "snapshot_query",
}
ENGINES = ("pandas", "duckdb", "sql")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset the node holds: where it lives and how to read and check it.

    ``engine``: ``pandas`` loads a CSV or Parquet file into memory; ``duckdb``
    queries Parquet (a file or a directory) or CSV in place; ``sql`` queries
    ``relation`` (a table or ``(query)``) in the database at ``url``.
    """

    name: str
    path: Path
    id_column: str = ""
    description: str = ""
    format: str = "csv"
    columns: Mapping[str, str] = field(default_factory=dict)
    engine: str = "pandas"
    url: str = field(default="", repr=False)
    """SQLAlchemy URL (``sql``); may hold a password, so never logged or shown."""
    relation: str = ""
    snapshot_query: str = ""

    @property
    def location(self) -> str:
        """Where the data is, safe to show (no URL credentials)."""
        if self.engine != "sql":
            return str(self.path)
        return f"{self.relation} in a database"


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
    metrics_listen: str = ""
    """``host:port`` of the node's Prometheus ``/metrics`` endpoint; empty: none."""

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
            metrics_listen=(
                parse_listen(raw["metrics_listen"], "node config: metrics_listen")
                if raw.get("metrics_listen")
                else ""
            ),
        )


def _dataset(name: str, spec: Any, base: Path) -> DatasetConfig:
    where = f"node config: datasets.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = sorted(set(spec) - _DATASET)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'")
    if "url" in spec or "url_file" in spec:
        return _sql_dataset(name, spec, base, where)
    if "path" not in spec:
        raise ConfigError(f"{where}: 'path' (or 'url' for a database) is required")
    path = base / str(spec["path"])
    parquet = path.suffix == ".parquet" or path.is_dir()
    fmt = str(spec.get("format", "parquet" if parquet else "csv"))
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"{where}.format: expected csv or parquet, got '{fmt}'")
    engine = str(spec.get("engine", "pandas"))
    if engine not in ("pandas", "duckdb"):
        raise ConfigError(
            f"{where}.engine: expected pandas or duckdb for a file, got '{engine}'"
        )
    for key in ("table", "query", "snapshot_query"):
        if key in spec:
            raise ConfigError(f"{where}.{key}: only for a database dataset (url)")
    columns = _columns(spec, where)
    return DatasetConfig(
        name,
        path,
        str(spec.get("id_column", "")),
        str(spec.get("description", "")),
        fmt,
        columns,
        engine=engine,
    )


def _sql_dataset(
    name: str, spec: dict[str, Any], base: Path, where: str
) -> DatasetConfig:
    if "url" in spec and "url_file" in spec:
        raise ConfigError(f"{where}: give url or url_file, not both")
    if "url_file" in spec:
        # A mounted secret: the URL (with its password) stays out of the config.
        secret = base / str(spec["url_file"])
        try:
            url = secret.read_text().strip()
        except OSError:
            raise ConfigError(f"{where}.url_file: cannot read {secret}") from None
    else:
        url = str(spec["url"])
    if ("table" in spec) == ("query" in spec):
        raise ConfigError(
            f"{where}: a database dataset needs exactly one of table, query"
        )
    if "table" in spec:
        table = str(spec["table"])
        if not _IDENTIFIER.match(table):
            raise ConfigError(f"{where}.table: expected [schema.]name, got '{table}'")
        relation = ".".join(f'"{part}"' for part in table.split("."))
    else:
        relation = f"({spec['query']})"
    columns = _columns(spec, where)
    if not columns:
        raise ConfigError(
            f"{where}.columns: a database dataset declares every column it publishes"
        )
    if spec.get("id_column") and spec["id_column"] not in columns:
        raise ConfigError(f"{where}.id_column: not among the declared columns")
    return DatasetConfig(
        name,
        Path(),
        str(spec.get("id_column", "")),
        str(spec.get("description", "")),
        "sql",
        columns,
        engine="sql",
        url=url,
        relation=relation,
        snapshot_query=str(spec.get("snapshot_query", "")),
    )


def _columns(spec: dict[str, Any], where: str) -> dict[str, str]:
    columns = spec.get("columns", {})
    if not isinstance(columns, dict):
        raise ConfigError(f"{where}.columns: expected a table of column = type")
    for column, col_type in columns.items():
        if col_type not in COLUMN_TYPES:
            raise ConfigError(
                f"{where}.columns.{column}: unknown type '{col_type}' "
                f"(known: {', '.join(COLUMN_TYPES)})"
            )
    return dict(columns)
