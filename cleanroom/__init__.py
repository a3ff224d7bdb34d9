"""cleanroom — data usable but not visible."""

from cleanroom.client import Client

__all__ = ["Client"]
