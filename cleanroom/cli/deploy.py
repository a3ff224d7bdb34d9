"""``cleanroom deploy``: the container image and a compose deployment's files."""

from __future__ import annotations

from pathlib import Path

import click

from cleanroom.cli.common import handle_errors


@click.group("deploy")
def deploy_group() -> None:
    """Containers: the coordinator/node image and a compose stack's files."""


@deploy_group.command("build-image")
@handle_errors
def build_image_command() -> None:
    """Build cleanroom-service:local from local Debian packages and wheels."""
    from cleanroom import deploy

    tag = deploy.build_image(progress=lambda m: click.echo(f"  {m}"))
    click.echo(f"built {tag}")


@deploy_group.command("init")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=Path("deploy-state"),
    show_default=True,
    help="Where to write the PKI, configs, secrets and sample data.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=7700,
    show_default=True,
    help="Host port the coordinator is published on.",
)
@handle_errors
def init_command(directory: Path, port: int) -> None:  # fmt: skip
    """Write a fresh PKI, configs, secrets and sample datasets for compose.yaml."""
    from cleanroom import deploy

    env = deploy.init(directory, port=port)
    click.echo(f"wrote {env.parent}; start it with:")
    click.echo(
        f"  docker-compose -f deploy/compose.yaml --env-file {env} -p cleanroom up -d"
    )
