"""The coordinator's state store: pick a backend by URL with ``open_store``."""

from __future__ import annotations

from cleanroom.errors import ConfigError
from coordinator.store.base import Store
from coordinator.store.memory import MemoryStore
from coordinator.store.sql import SqlStore

__all__ = ["MemoryStore", "SqlStore", "Store", "open_store"]

SUPPORTED_SCHEMES = ("memory://", "sqlite:///", "postgresql://")


def open_store(url: str) -> Store:
    """Open the store named by ``url``.

    ``memory://`` keeps state in this process only; ``sqlite:///path/to/file.db``
    and ``postgresql://user:pass@host/db`` (also ``postgresql+psycopg://``) persist
    it. ConfigError for any other scheme, StoreError if the database is unusable.
    """
    scheme = url.partition("://")[0].lower()
    if url == "memory://":
        return MemoryStore()
    if scheme.partition("+")[0] in ("sqlite", "postgresql", "postgres"):
        return SqlStore(url)
    raise ConfigError(
        f"unsupported store URL {url!r}: use one of {', '.join(SUPPORTED_SCHEMES)}"
    )
