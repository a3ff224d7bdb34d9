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
import cleanroom.jobtypes.sandbox_job  # noqa: E402 - registers itself
import cleanroom.jobtypes.secure_stats  # noqa: E402, F401 - registers itself

__all__ = [
    "CoordinatorContext",
    "JobType",
    "NodeContext",
    "get",
    "load_plugins",
    "names",
    "register",
]
