"""Command-line interface: argument parsing only; every command calls a library function."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from mstdiff.errors import MstdiffError

log = logging.getLogger("mstdiff")


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``("min_active_slots=5", "bbox=[30.6, 120.8, 31.9, 122.2]")`` → dict (values parsed as YAML)."""
    from mstdiff.errors import InputError

    out: dict[str, Any] = {}
    for text in pairs:
        if "=" not in text:
            raise InputError(f"option {text!r} has no '='", where="-o/--option", fix="write KEY=VALUE")
        k, v = text.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out


class _Group(click.Group):
    """Print user errors (bad input) as one clear message, without a traceback; exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MstdiffError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="mstdiff")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """mstdiff: learn from cellular records, jointly simulate trajectories and traffic."""
    level = logging.WARNING - 10 * min(verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --------------------------------------------------------------------------- data
@cli.command()
@click.option("--source", required=True,
              type=click.Choice(["shanghai-telecom", "app-usage", "csv", "synthetic"]),
              help="Record format of the raw input.")
@click.option("--raw", type=click.Path(path_type=Path), default=None,
              help="Raw input: folder or file (not needed for --source synthetic).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output dataset directory.")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Reader option, repeatable (e.g. -o min_active_slots=5). See README.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def prepare(source: str, raw: Path | None, out: Path, options: tuple[str, ...], overwrite: bool) -> None:
    """Bin raw records into a prepared dataset (arrays + stations + meta.json)."""
    from mstdiff.data.prepare import prepare as run_prepare

    ds = run_prepare(source, raw, out, overwrite=overwrite, **_parse_options(options))
    click.echo(ds.summary())
    click.echo(f"\nwrote {out}")


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
def info(directory: Path) -> None:
    """Summarise a prepared dataset: counts, T, N, sparsity."""
    from mstdiff.data import PreparedDataset

    click.echo(PreparedDataset.load(directory).summary())


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder that receives train/, val/, test/ prepared datasets.")
@click.option("--fractions", nargs=3, type=float, default=(0.8, 0.1, 0.1), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True)
def split(
    directory: Path, out: Path, fractions: tuple[float, float, float], seed: int, overwrite: bool
) -> None:
    """Seeded user-level train/val/test split (no user in two splits)."""
    from mstdiff.data import PreparedDataset
    from mstdiff.data.dataset import save_splits

    parts = save_splits(PreparedDataset.load(directory), out, fractions=fractions, seed=seed,
                        overwrite=overwrite)
    for name, ds in parts.items():
        click.echo(f"{name:>5}: {ds.n_samples:,} samples, {ds.samples['user'].nunique():,} users")


# --------------------------------------------------------------------------- evaluation
@cli.command()
@click.option("--real", type=click.Path(path_type=Path), required=True, help="Held-out real dataset.")
@click.option("--generated", type=click.Path(path_type=Path), multiple=True, required=True,
              help="Generated dataset directory (repeatable); NAME=DIR names the row.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the floor subsets.")
@click.option("--no-plots", is_flag=True)
@click.option("--overwrite", is_flag=True)
def evaluate(real: Path, generated: tuple[Path, ...], out: Path, seed: int, no_plots: bool,
             overwrite: bool) -> None:
    """Compare generated sets with a real set; write metrics.json, metrics.md and plots."""
    from mstdiff.metrics.evaluate import evaluate_dirs

    result = evaluate_dirs(real, [str(g) for g in generated], out, seed=seed, plots=not no_plots,
                           overwrite=overwrite)
    click.echo(result.to_markdown())
    click.echo(f"\nwrote {out}")


def main() -> None:
    cli()
