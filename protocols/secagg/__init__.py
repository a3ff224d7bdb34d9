"""SecAgg+ secure aggregation: per-party state machines for nodes and coordinator."""

from protocols.secagg.client import SecAggClient
from protocols.secagg.config import SecAggConfig
from protocols.secagg.messages import (
    ADVERTISE_KEYS,
    MASKED_INPUT,
    SHARE_KEYS,
    STAGES,
    UNMASK,
)
from protocols.secagg.series import SeriesClient
from protocols.secagg.series_server import SeriesServer
from protocols.secagg.server import SecAggServer
from protocols.secagg.simulate import run_in_process

__all__ = [
    "ADVERTISE_KEYS",
    "MASKED_INPUT",
    "SHARE_KEYS",
    "STAGES",
    "UNMASK",
    "SecAggClient",
    "SecAggConfig",
    "SecAggServer",
    "SeriesClient",
    "SeriesServer",
    "run_in_process",
]
