"""``python -m cleanroom`` runs the CLI."""

from cleanroom.cli.main import main

main()
