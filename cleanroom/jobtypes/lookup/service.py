"""The holder's OPRF tables, one per dataset version and field set, with their keys.

A table is built on first use for a dataset's current content hash under a fresh
OPRF key, kept in memory with it, and rebuilt (new key, new version) as soon as a
job runs on another content hash: a changed dataset is never served from a stale
table. Keys never leave this service; a node restart draws new keys, which makes
every buyer's cached table useless (they download the new version).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pandas as pd

from cleanroom.errors import ConfigError
from cleanroom.jobtypes.hooks import AuditSink, DatasetAccess
from protocols.oprf.core import OprfKey
from protocols.oprf.table import OprfTable, build_table
from protocols.psi.group import SERIAL, BatchRunner, ProcessRunner

DEFAULT_MAX_BATCH: Final = 10_000
_SETTINGS: Final = ("max_batch", "modes", "workers")
_MODES: Final = ("per_field", "all_fields")


@dataclass(frozen=True)
class LookupSettings:
    """The node config's ``[jobtypes.verify]`` / ``[jobtypes.pir_lookup]`` table.

    ``max_batch``: the most records (or lookups) one job may ask about;
    ``modes``: the verification modes the holder allows (``all_fields`` only:
    one bit per claimed record); ``workers``: processes for building tables.
    """

    max_batch: int = DEFAULT_MAX_BATCH
    modes: tuple[str, ...] = _MODES
    workers: int = 1

    @classmethod
    def parse(cls, raw: Mapping[str, Any], where: str) -> LookupSettings:
        extra = sorted(set(raw) - set(_SETTINGS))
        if extra:
            raise ConfigError(f"{where}: unknown setting '{extra[0]}'")
        max_batch = raw.get("max_batch", DEFAULT_MAX_BATCH)
        workers = raw.get("workers", 1)
        modes = tuple(raw.get("modes", _MODES))
        for name, value in (("max_batch", max_batch), ("workers", workers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{where}.{name}: must be a positive integer")
        if not modes or any(m not in _MODES for m in modes):
            raise ConfigError(f"{where}.modes: a non-empty list of {_MODES}")
        return cls(max_batch, modes, workers)


def cell_text(value: object) -> str:
    """A dataset cell as the text both sides compare (integers without '.0')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def content_hash(dataset_hash: str) -> bytes:
    """The 32-byte version binding of a dataset's content hash."""
    return hashlib.sha256(
        b"cleanroom/oprf-table/content\x00" + dataset_hash.encode()
    ).digest()


@dataclass(frozen=True)
class _Built:
    dataset_hash: str
    key: OprfKey
    table: OprfTable


class TableService:
    """Builds, caches and rebuilds one job type's tables on one node."""

    def __init__(
        self, settings: LookupSettings, audit: AuditSink, datasets: DatasetAccess
    ) -> None:
        self.settings = settings
        self._audit = audit
        self._datasets = datasets
        self._lock = threading.Lock()
        self._tables: dict[tuple[str, tuple[str, ...], str], _Built] = {}

    def _runner(self) -> BatchRunner:
        workers = self.settings.workers
        return SERIAL if workers == 1 else ProcessRunner(workers)

    def id_column(self, dataset: str) -> str:
        """The dataset's configured id column ('' if it has none)."""
        return self._datasets.info(dataset).id_column

    def current(self, dataset: str) -> list[str]:
        """Hex versions of the tables held for ``dataset`` (for the holder)."""
        with self._lock:
            return [
                b.table.header.digest.hex()
                for (name, _, _), b in self._tables.items()
                if name == dataset
            ]

    def table(
        self,
        *,
        job_id: str,
        dataset: str,
        dataset_hash: str,
        data: pd.DataFrame,
        id_column: str,
        fields: Sequence[str],
        kind: str,
    ) -> tuple[OprfKey, OprfTable]:
        """The table of this dataset version for ``fields``; built if the cached
        one is for another version (or there is none). ``kind`` is ``pir`` or a
        verification mode."""
        slot = (dataset, tuple(fields), kind)
        with self._lock:
            built = self._tables.get(slot)
            if built is not None and built.dataset_hash == dataset_hash:
                return built.key, built.table
            key = OprfKey.generate(os.urandom)
            rows = [
                {c: cell_text(v) for c, v in zip([id_column, *fields], r, strict=True)}
                for r in data[[id_column, *fields]].itertuples(index=False, name=None)
            ]
            common: dict[str, Any] = {
                "dataset": dataset,
                "content_hash": content_hash(dataset_hash),
                "rows": rows,
                "id_column": id_column,
            }
            runner = self._runner()
            try:
                if kind == "pir":
                    table = build_table(key, pir_fields=fields, runner=runner, **common)
                else:
                    table = build_table(
                        key,
                        verify_fields=fields,
                        per_field=kind == "per_field",
                        all_fields=kind == "all_fields",
                        runner=runner,
                        **common,
                    )
            finally:
                if isinstance(runner, ProcessRunner):
                    runner.close()
            self._tables[slot] = _Built(dataset_hash, key, table)
            self._audit.append(
                "oprf_table_built",
                job_id=job_id,
                data={
                    "dataset": dataset,
                    "dataset_hash": dataset_hash,
                    "version": table.header.digest.hex(),
                    "replaced": None
                    if built is None
                    else built.table.header.digest.hex(),
                    "records": table.header.records,
                    "fields": list(fields),
                    "kind": kind,
                },
            )
            return key, table
