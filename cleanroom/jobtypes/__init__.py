"""Job types and their registry; importing this package registers the built-ins.
Plugins are entry points in ``cleanroom.job_types``, loaded by name from a config."""

from cleanroom.jobtypes.base import (
    AnalystContext,
    CoordinatorContext,
    JobType,
    NodeContext,
    Review,
    all_types,
    get,
    load_plugins,
    names,
    register,
)
from cleanroom.jobtypes.count import CountJob

register(CountJob())
import cleanroom.jobtypes.fedavg  # noqa: E402 - registers itself
import cleanroom.jobtypes.he_inference  # noqa: E402 - registers itself
import cleanroom.jobtypes.he_sum  # noqa: E402 - registers itself
import cleanroom.jobtypes.lookup  # noqa: E402 - registers verify, pir_lookup
import cleanroom.jobtypes.psi  # noqa: E402 - registers itself
import cleanroom.jobtypes.sandbox  # noqa: E402 - registers itself
import cleanroom.jobtypes.secure_stats  # noqa: E402 - registers itself
import cleanroom.jobtypes.vertical.register  # noqa: E402, F401 - registers itself

__all__ = [
    "AnalystContext",
    "CoordinatorContext",
    "JobType",
    "NodeContext",
    "Review",
    "all_types",
    "get",
    "load_plugins",
    "names",
    "register",
]
