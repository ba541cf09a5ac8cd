"""Command-line interface: argument parsing only; every command calls a library function."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="mstdiff")
def cli() -> None:
    """mstdiff: learn from cellular records, jointly simulate trajectories and traffic."""


def main() -> None:
    cli()
