"""A node's datasets: CSV or Parquet loaded into memory, or Parquet/CSV queried in
place by DuckDB, or a SQL table or query — type-checked on load, hashed
(``node.sources``: what each source's hash covers) and re-checked before every
use, so data that changes or vanishes is refused."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import pandas as pd

from cleanroom.catalog import ColumnInfo, DatasetInfo, row_bucket
from cleanroom.errors import DatasetError
from cleanroom.jobtypes.tables import FrameTable, Table
from node.config import DatasetConfig
from node.sources import files
from node.sources.database import DatabaseTable


@dataclass(frozen=True)
class LoadedDataset:
    """A dataset as loaded: its rows stay here; only ``info`` leaves the node.

    ``table`` answers a job type's queries (``tables.Table``) where the rows
    live; ``frame`` is the in-memory rows in file order (loaded on demand from an
    engine). Once ``DatasetRegistry.arrange`` has run, the node keeps its rows in
    another order only (``kept_frame``; kept row ``file_order[j]`` is file row j),
    and ``frame`` rebuilds the file order for each caller.
    """

    config: DatasetConfig
    info: DatasetInfo
    content_hash: str
    rows: int
    table: Table
    loaded_frame: pd.DataFrame | None = None
    stamp: files.Stamp = ()
    file_order: npt.NDArray[np.intp] | None = None

    @property
    def in_engine(self) -> bool:
        """True when an engine serves the rows (they are not held in memory)."""
        return self.loaded_frame is None

    @property
    def arranged(self) -> bool:
        """True when the rows are kept in an order other than the file's."""
        return self.file_order is not None

    @property
    def kept_frame(self) -> pd.DataFrame:
        """The in-memory rows in the order the node keeps them, without a copy:
        only for consumers whose output does not depend on row order."""
        if self.loaded_frame is None:
            raise DatasetError(f"dataset '{self.config.name}' is not held in memory")
        return self.loaded_frame

    @property
    def frame(self) -> pd.DataFrame:
        if self.loaded_frame is not None:
            if self.file_order is None:
                return self.loaded_frame
            return self.loaded_frame.iloc[self.file_order].reset_index(drop=True)
        engine = self.table
        assert isinstance(engine, files.FileTable | DatabaseTable)
        frame: pd.DataFrame = engine.frame()
        return frame

    def columns_frame(self) -> pd.DataFrame:
        """No rows, only the published columns: for parties that query ``table``."""
        return pd.DataFrame(
            {c.name: pd.Series(dtype=object) for c in self.info.columns}
        )


file_hash = files.file_hash


def _infer(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "str"


def _first(bad: pd.Series) -> int:
    return int(np.argmax(bad.to_numpy())) + 1


def _coerce(series: pd.Series, declared: str, where: str) -> pd.Series:
    """Convert a column to its declared type; name the first bad row, not its value."""
    if declared == "str":
        return series.astype(str)
    if declared == "bool":
        mapping = {"true": True, "false": False, "1": True, "0": False}
        lowered = series.astype(str).str.strip().str.lower()
        bad = ~lowered.isin(list(mapping))
        if bad.any():
            raise DatasetError(
                f"{where}: declared bool but row {_first(bad)} is not true/false/0/1"
            )
        return lowered.map(mapping).astype(bool)
    numeric = pd.to_numeric(series, errors="coerce")
    bad = numeric.isna() & series.notna()
    if bad.any():
        raise DatasetError(
            f"{where}: declared {declared} but row {_first(bad)} is not a number"
        )
    if declared == "int":
        if numeric.isna().any():
            raise DatasetError(f"{where}: declared int but has missing values")
        if not np.all(np.equal(np.mod(numeric.to_numpy(dtype=float), 1), 0)):
            raise DatasetError(f"{where}: declared int but has non-integer values")
        return numeric.astype(np.int64)
    return numeric.astype(float)


def load(config: DatasetConfig) -> LoadedDataset:
    """Read (or open in its engine), type-check and hash one dataset."""
    if config.engine == "pandas":
        return _load_frame(config)
    where = f"dataset '{config.name}' ({config.location})"
    table: files.FileTable | DatabaseTable
    if config.engine == "sql":
        table = DatabaseTable(
            config.name,
            config.url,
            config.relation,
            dict(config.columns),
            snapshot_query=config.snapshot_query,
        )
    else:
        try:
            table = files.FileTable(
                config.name, config.path, config.format, dict(config.columns)
            )
        except FileNotFoundError:
            raise DatasetError(f"{where}: file not found") from None
        except OSError as exc:
            raise DatasetError(
                f"{where}: cannot be read: {type(exc).__name__}"
            ) from None
    if config.id_column and config.id_column not in table.types:
        raise DatasetError(
            f"{where}: id column '{config.id_column}' is not in the data"
        )
    info = DatasetInfo(
        config.name,
        tuple(ColumnInfo(c, t) for c, t in table.types.items()),
        row_bucket(table.rows),
        config.id_column,
        config.description,
    )
    return LoadedDataset(config, info, table.content_hash, table.rows, table)


def _load_frame(config: DatasetConfig) -> LoadedDataset:
    where = f"dataset '{config.name}' ({config.path})"
    try:
        stamp = files.stamp(config.path)
        digest = files.content_hash(config.path)
        frame = (
            pd.read_parquet(config.path)
            if config.format == "parquet"
            else pd.read_csv(config.path)
        )
    except FileNotFoundError:
        raise DatasetError(f"{where}: file not found") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DatasetError(
            f"{where}: cannot be read as {config.format}: {type(exc).__name__}"
        ) from None
    for column in config.columns:
        if column not in frame.columns:
            raise DatasetError(
                f"{where}: declared column '{column}' is not in the file"
            )
    if config.id_column and config.id_column not in frame.columns:
        raise DatasetError(
            f"{where}: id column '{config.id_column}' is not in the file"
        )
    columns = []
    for name in frame.columns:
        declared = config.columns.get(str(name))
        if declared:
            frame[name] = _coerce(frame[name], declared, f"{where}, column '{name}'")
        columns.append(ColumnInfo(str(name), declared or _infer(frame[name])))
    info = DatasetInfo(
        config.name,
        tuple(columns),
        row_bucket(len(frame)),
        config.id_column,
        config.description,
    )
    return LoadedDataset(
        config, info, digest, len(frame), FrameTable(frame), frame, stamp
    )


class DatasetRegistry:
    """The node's loaded datasets, each re-verified against its file before use."""

    def __init__(self, configs: tuple[DatasetConfig, ...]) -> None:
        self._lock = threading.Lock()
        self._loaded = {c.name: load(c) for c in configs}

    def infos(self) -> list[DatasetInfo]:
        return [d.info for d in self._loaded.values()]

    def names(self) -> list[str]:
        return sorted(self._loaded)

    def arrange(
        self,
        name: str,
        arrange: Callable[[LoadedDataset], tuple[pd.DataFrame, npt.NDArray[np.intp]]],
    ) -> None:
        """Keep an in-memory dataset's rows in the order ``arrange`` returns (the
        rows reordered, and ``order``: kept row i is file row ``order[i]``) in
        place of the file order; the file-order frame is let go."""
        with self._lock:
            loaded = self._loaded[name]
            if loaded.in_engine or loaded.arranged:
                return
            kept, order = arrange(loaded)
            if len(kept) != loaded.rows or order.shape != (loaded.rows,):
                raise DatasetError(f"dataset '{name}': an arrangement lost rows")
            file_order = np.empty_like(order)
            file_order[order] = np.arange(order.size, dtype=order.dtype)
            self._loaded[name] = replace(
                loaded,
                table=FrameTable(kept),
                loaded_frame=kept,
                file_order=file_order,
            )

    def fresh(self, name: str) -> LoadedDataset:
        """The dataset, after checking its file is still the one that was loaded."""
        with self._lock:
            if name not in self._loaded:
                raise DatasetError(f"this node has no dataset '{name}'")
            loaded = self._loaded[name]
        if isinstance(loaded.table, files.FileTable | DatabaseTable):
            loaded.table.check()
            return loaded
        path = loaded.config.path
        try:
            stamp = files.stamp(path)
        except (FileNotFoundError, DatasetError):
            raise DatasetError(
                f"dataset '{name}': its file {path} has disappeared"
            ) from None
        if stamp != loaded.stamp:
            if files.content_hash(path) != loaded.content_hash:
                raise DatasetError(
                    f"dataset '{name}': its file changed on disk after the node loaded "
                    "it; restart the node to load and publish the new version"
                )
        return loaded
