"""cleanroom — data usable but not visible.

Importing ``cleanroom`` (or ``protocols``) loads no gRPC: the client is imported on
first use of ``cleanroom.Client``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cleanroom.client import Client

__all__ = ["Client"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from cleanroom.client import Client

        return Client
    raise AttributeError(f"module 'cleanroom' has no attribute {name!r}")
