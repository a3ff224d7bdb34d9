"""Job types and their registry; importing this package registers the built-ins."""

from cleanroom.jobtypes.base import (
    CoordinatorContext,
    JobType,
    NodeContext,
    get,
    load_plugins,
    names,
    register,
)
from cleanroom.jobtypes.count import CountJob

register(CountJob())

__all__ = ["CoordinatorContext", "JobType", "NodeContext", "get", "load_plugins", "names", "register"]
