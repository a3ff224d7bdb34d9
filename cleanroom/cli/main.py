"""The ``cleanroom`` command: one group per role, thin over the Python API."""

from __future__ import annotations

import click

from cleanroom.cli.admin import (
    coordinator_group,
    demo,
    local_group,
    node_group,
    pki_group,
)
from cleanroom.cli.bench import bench
from cleanroom.cli.deploy import deploy_group
from cleanroom.cli.governance import (
    audit_group,
    node_usage,
    result_group,
    usage_group,
)
from cleanroom.cli.jobs import catalog, job_group
from cleanroom.cli.models import model_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option("0.1.0", prog_name="cleanroom")
def cli() -> None:
    """cleanroom — data usable but not visible.

    Data holders run nodes, an operator runs the coordinator, analysts submit jobs
    whose released outputs are the only thing that leaves a node.
    """


for command in (
    pki_group,
    coordinator_group,
    node_group,
    local_group,
    job_group,
    model_group,
    catalog,
    demo,
    audit_group,
    result_group,
    usage_group,
    bench,
    deploy_group,
):
    cli.add_command(command)
node_group.add_command(node_usage)


def _add_job_type_commands() -> None:
    """Each job type registers its own commands, so none can silently fall out."""
    from cleanroom import jobtypes

    for job_type in jobtypes.all_types():
        for command in job_type.cli_commands():
            cli.add_command(command)
        for command in job_type.node_cli_commands():
            node_group.add_command(command)


_add_job_type_commands()


def main() -> None:
    cli()
