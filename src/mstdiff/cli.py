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
        try:
            out[k.strip().replace("-", "_")] = yaml.safe_load(v)
        except yaml.YAMLError:  # not YAML (e.g. %Y%m%d): the text as given
            out[k.strip().replace("-", "_")] = v
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
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads of every pool (PyTorch, Numba, DuckDB); default: their own choice.")
def cli(verbose: int, threads: int | None) -> None:
    """mstdiff: learn from cellular records, jointly simulate trajectories and traffic."""
    level = logging.WARNING - 10 * min(verbose + 1, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if threads is not None:
        from mstdiff.threads import set_threads

        set_threads(threads)  # before any pool starts: Numba's then has exactly this many threads


# --------------------------------------------------------------------------- data
@cli.command()
@click.option("--source", required=True,
              type=click.Choice(["shanghai-telecom", "app-usage", "csv", "movesim", "synthetic"]),
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
@click.option("--fractions", nargs=3, type=click.FloatRange(0, 1), default=None,
              help="User-level train/val/test fractions  [default: 0.8 0.1 0.1]")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--by", "by", default=None, metavar="COLUMN",
              help="Split by this samples column instead of fractions (e.g. part, with --train real "
              "--val val --test val for MoveSim-format data).")
@click.option("--train", "train_values", multiple=True, metavar="VALUE",
              help="With --by: a value of the train split (repeatable).")
@click.option("--val", "val_values", multiple=True, metavar="VALUE",
              help="With --by: a value of the val split.")
@click.option("--test", "test_values", multiple=True, metavar="VALUE",
              help="With --by: a value of the test split.")
@click.option("--val-share", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="With --by, instead of --val: this share of the train split's users (seeded).")
@click.option("--overwrite", is_flag=True)
def split(
    directory: Path, out: Path, fractions: tuple[float, float, float] | None, seed: int, by: str | None,
    train_values: tuple[str, ...], val_values: tuple[str, ...], test_values: tuple[str, ...],
    val_share: float | None, overwrite: bool,
) -> None:
    """Seeded user-level train/val/test split (no user in two splits), or a split by a samples column."""
    from mstdiff.data import PreparedDataset
    from mstdiff.data.dataset import save_splits
    from mstdiff.errors import InputError

    values: dict[str, Any] = {"train": list(train_values), "val": list(val_values), "test": list(test_values)}
    if val_share is not None:
        if by is None or val_values:
            raise InputError("--val-share takes the val split out of the --by train values",
                             where="split", fix="use it with --by and without --val")
        values["val"] = val_share
    if by is None and any(values.values()):
        raise InputError("--train/--val/--test name values of the --by column", where="split",
                         fix="add --by COLUMN (e.g. --by part), or split by --fractions")
    if by is not None and fractions is not None:
        raise InputError("--by and --fractions are two ways to split: choose one", where="split",
                         fix="drop --fractions (with --by) or --by")
    if by is not None and not values["train"]:
        raise InputError("--by needs the values of each split", where="split",
                         fix="e.g. --by part --train real --val val --test val")
    parts = save_splits(PreparedDataset.load(directory), out, fractions=fractions or (0.8, 0.1, 0.1),
                        seed=seed, by=by, parts=values if by is not None else None, overwrite=overwrite)
    for name, ds in parts.items():
        click.echo(f"{name:>5}: {ds.n_samples:,} samples, {ds.samples['user'].nunique():,} users")


# --------------------------------------------------------------------------- evaluation
@cli.command()
@click.option("--real", type=click.Path(path_type=Path), required=True, help="Held-out real dataset.")
@click.option("--generated", type=click.Path(path_type=Path), multiple=True, required=True,
              help="Generated dataset directory (repeatable); NAME=DIR names the row; NAME=DIR0,DIR1,... "
              "pools several sets of one model (e.g. generation seeds) into one row: mean ± sd over "
              "the sets.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="Second real set of other users (e.g. the train split) for the floor: then model and "
              "floor rows use the whole real set.")
@click.option("--train", type=click.Path(path_type=Path), default=None,
              help="The generators' training set: adds memorisation and train-on-synthetic scores.")
@click.option("--draws", type=click.IntRange(min=1), default=5, show_default=True,
              help="Random draws (mean ± sd).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the draws.")
@click.option("--conventions", type=click.Choice(["mstdiff", "movesim"]), default="mstdiff",
              show_default=True, help="Trajectory metrics in our conventions or in MoveSim's (squared "
              "degree distances, natural-log JSD, fixed bins), to set beside published tables.")
@click.option("--movesim-max-distance", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Distance scale D (deg²) of --conventions movesim; default: the squared diameter of the "
              "station table (MoveSim's GeoLife constant is 247.3).")
@click.option("--no-plots", is_flag=True)
@click.option("--overwrite", is_flag=True)
def evaluate(real: Path, generated: tuple[Path, ...], out: Path, reference: Path | None, train: Path | None,
             draws: int, seed: int, conventions: str, movesim_max_distance: float | None, no_plots: bool,
             overwrite: bool) -> None:
    """Compare generated sets with a real set; write metrics.json, metrics.md and plots."""
    from mstdiff.metrics.evaluate import evaluate_dirs

    result = evaluate_dirs(real, [str(g) for g in generated], out, reference=reference, train=train,
                           draws=draws, seed=seed, plots=not no_plots, overwrite=overwrite,
                           conventions=conventions, movesim_max_distance=movesim_max_distance)
    click.echo(result.to_markdown())
    _echo_warnings(result.warnings)
    click.echo(f"\nwrote {out}")


def _echo_warnings(warnings: list[str]) -> None:
    for w in warnings:
        click.secho(f"WARNING: {w}", fg="red", bold=True, err=True)


# --------------------------------------------------------------------------- knowledge graph
@cli.group()
def kg() -> None:
    """Urban knowledge graph, TuckER embeddings and the location transition process."""


@kg.command("build")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--poi-table", type=click.Path(path_type=Path), default=None,
              help="POI table matched to stations by nearest neighbour (e.g. llmapp_sample/location.csv).")
@click.option("--poi-radius-km", type=click.FloatRange(min=0, min_open=True), default=0.5, show_default=True)
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE", help="KGOptions field.")
@click.option("--overwrite", is_flag=True)
def kg_build(dataset: Path, out: Path, poi_table: Path | None, poi_radius_km: float,
             options: tuple[str, ...], overwrite: bool) -> None:
    """Triples (BaseLocateAt, BaseBelongTo, BaseBorderBy, ServedBy) of a dataset's stations."""
    from mstdiff.kg.stages import build_kg_dir

    build_kg_dir(dataset, out, poi_table, poi_radius_km=poi_radius_km, overwrite=overwrite,
                 **_parse_options(options))
    click.echo((out / "summary.json").read_text())


@kg.command("embed")
@click.argument("kg_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="TuckerConfig field or holdout=0.1 / split_seed=0.")
@click.option("--overwrite", is_flag=True)
def kg_embed(kg_dir: Path, out: Path, device: str, options: tuple[str, ...], overwrite: bool) -> None:
    """Train TuckER and export one embedding per station (resumable)."""
    from mstdiff.kg.stages import embed_kg_dir

    embed_kg_dir(kg_dir, out, device=device, overwrite=overwrite, **_parse_options(options))
    if (out / "metrics.json").exists():
        click.echo((out / "metrics.json").read_text())


@kg.command("transition")
@click.argument("embed_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="k, eps, num_steps, schedule, method, ...")
@click.option("--overwrite", is_flag=True)
def kg_transition(embed_dir: Path, out: Path, options: tuple[str, ...], overwrite: bool) -> None:
    """kNN graph in embedding space, rate matrix and the transition process (transition.pt)."""
    from mstdiff.diffusion.discrete import transition_dir

    transition_dir(embed_dir, out, overwrite=overwrite, **_parse_options(options))
    click.echo((out / "meta.json").read_text())


# --------------------------------------------------------------------------- model
def _run_config(config: Path | None, sets: tuple[str, ...]) -> Any:
    from mstdiff.pipeline import load_run_config

    return load_run_config(config, sets)


@cli.command("pretrain-vqvae")
@click.argument("train_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--config", type=click.Path(path_type=Path), default=None, help="Run config (uses vqvae:).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Config override.")
@click.option("--overwrite", is_flag=True)
def pretrain_vqvae(train_dir: Path, out: Path, config: Path | None, sets: tuple[str, ...],
                   overwrite: bool) -> None:
    """Pre-train the VQ-VAE on the training split's coarsest wavelet coefficients."""
    from mstdiff.data import PreparedDataset
    from mstdiff.training.mstdiff import pretrain_vqvae_stage

    cfg = _run_config(config, sets)
    pretrain_vqvae_stage(PreparedDataset.load(train_dir), out, cfg.vqvae, seed=cfg.train.seed,
                         device=cfg.train.device, overwrite=overwrite)
    click.echo((out / "meta.json").read_text())


@cli.command()
@click.option("--train", "train_dir", type=click.Path(path_type=Path), required=True)
@click.option("--val", "val_dir", type=click.Path(path_type=Path), default=None)
@click.option("--transition", type=click.Path(path_type=Path), required=True,
              help="Directory (or file) written by `mstdiff kg transition`.")
@click.option("--vqvae", type=click.Path(path_type=Path), default=None, help="vqvae.pt (if use_vqvae).")
@click.option("--embeddings", type=click.Path(path_type=Path), default=None,
              help="station_embeddings.npy to initialise the station table (optional).")
@click.option("--config", type=click.Path(path_type=Path), default=None, help="Run config (model:, train:).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Config override.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/checkpoint.pt exactly.")
def train(train_dir: Path, val_dir: Path | None, transition: Path, vqvae: Path | None,
          embeddings: Path | None, config: Path | None, sets: tuple[str, ...], out: Path,
          resume: bool) -> None:
    """Train MSTDiff jointly on traffic and locations (Algorithm 1).

    Data-parallel: run it under `torchrun --nproc_per_node K --no-python mstdiff train ...`
    (batch_size is the global batch; only rank 0 writes to OUT).
    """
    import os

    import numpy as np
    import torch

    from mstdiff.data import PreparedDataset
    from mstdiff.models.vqvae import VQVAE
    from mstdiff.training.mstdiff import load_transition, train_mstdiff

    cfg = _run_config(config, sets)
    tpath = transition / "transition.pt" if transition.is_dir() else transition
    res = train_mstdiff(
        PreparedDataset.load(train_dir), PreparedDataset.load(val_dir) if val_dir else None,
        discrete=load_transition(tpath), vqvae=VQVAE.load(vqvae) if vqvae else None,
        model_config=cfg.model, train_config=cfg.train, out_dir=out,
        transition_path=os.path.abspath(tpath),
        station_embeddings=torch.from_numpy(np.load(embeddings)).float() if embeddings else None,
        resume=resume, calibration_sampling=cfg.generate.sampling,
    )
    if res.rank == 0:  # under torchrun: one summary, from the process that wrote the files
        procs = f" over {res.world_size} processes" if res.world_size > 1 else ""
        click.echo(f"{res.steps} steps in {res.seconds:.0f} s ({res.samples_per_second:.1f} samples/s"
                   f"{procs}); peak RSS {res.peak_rss_mb:.0f} MiB; wrote {out / 'model.pt'}")


@cli.command("generate")
@click.option("--model", "model_path", type=click.Path(path_type=Path), required=True,
              help="Training directory or its model.pt.")
@click.option("--like", type=click.Path(path_type=Path), required=True,
              help="Prepared dataset whose station table the samples use (e.g. the train split).")
@click.option("--n", type=click.IntRange(min=1), default=None,
              help="Number of samples (unconditional; with --condition: one per condition sample × K).")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True)
@click.option("--sample", "sampling", multiple=True, metavar="KEY=VALUE",
              help="Sampling option of model.hybrid or model.pattern, e.g. location_temperature=0.9, "
                   "unmask_order=single (one slot per network call; trajectory-only models), "
                   "clip_traffic=true (predicted series kept in the training range), redraw_invalid=true, "
                   "condition_weight=0.5 (weight of given locations on the traffic; 1: plain conditional).")
@click.option("--condition", default=None, metavar="KIND=DIR",
              help="Conditional generation on a prepared dataset: locations=DIR (traffic for these "
                   "trajectories), traffic=DIR (trajectories for this traffic), both=DIR (fill --mask "
                   "slots).")
@click.option("--mask", default=None, metavar="RULE",
              help="Slots to generate: all, after=HH:MM, before=HH:MM, random=P, or a .npy bool file.")
@click.option("--samples-per-condition", type=click.IntRange(min=1), default=1, show_default=True)
def generate_cmd(model_path: Path, like: Path, n: int | None, out: Path, seed: int, batch_size: int,
                 device: str, overwrite: bool, sampling: tuple[str, ...], condition: str | None,
                 mask: str | None, samples_per_condition: int) -> None:
    """Sample N joint (trajectory, traffic) series into a prepared dataset (Algorithm 2), or
    samples conditioned on given trajectories, traffic or partial records (--condition)."""
    from mstdiff.data import PreparedDataset
    from mstdiff.errors import InputError
    from mstdiff.training.mstdiff import MSTDiff, generate

    if condition is None and n is None:
        raise InputError("--n is required without --condition", where="generate", fix="pass --n N")
    if condition is None and (mask is not None or samples_per_condition != 1):
        raise InputError("--mask and --samples-per-condition need --condition", where="generate",
                         fix="add --condition KIND=DIR")
    model = MSTDiff.load(model_path).with_sampling(**_parse_options(sampling))
    like_ds = PreparedDataset.load(like)
    if condition is not None:
        from mstdiff.conditional import CONDITION_KINDS, generate_conditional

        kind, sep, cdir = condition.partition("=")
        if not sep or kind not in CONDITION_KINDS or not cdir:
            raise InputError(f"--condition {condition!r}", where="--condition",
                             fix=f"write KIND=DIR with KIND one of {', '.join(CONDITION_KINDS)}")
        if kind == "both" and mask is None:
            raise InputError("--condition both=DIR needs --mask (which slots to fill)", where="--mask",
                             fix="e.g. --mask after=18:00 or --mask random=0.3")
        ds = generate_conditional(model, like_ds, PreparedDataset.load(cdir), kind, out,
                                  mask=mask, samples_per_condition=samples_per_condition, seed=seed,
                                  batch_size=batch_size, device=device, overwrite=overwrite,
                                  condition_path=str(cdir))
    else:
        assert n is not None
        ds = generate(model, like_ds, n, out, seed=seed,
                      batch_size=batch_size, device=device, overwrite=overwrite)
    click.echo(ds.summary())
    from mstdiff.metrics.sanity import compare_sanity

    table, problems = compare_sanity(like_ds, ds, names=(f"{like.name} (--like)", "generated"))
    click.echo("\n" + table)
    _echo_warnings([f"generated: {p}" for p in problems])


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Config override.")
@click.option("--overwrite", is_flag=True, help="Delete an existing run directory and start again.")
def run(config: Path, out: Path, sets: tuple[str, ...], overwrite: bool) -> None:
    """The whole chain: prepare → split → kg → transition → vqvae → train → generate → evaluate."""
    from mstdiff.pipeline import run_pipeline

    meta = run_pipeline(_run_config(config, sets), out, overwrite=overwrite)
    click.echo(meta["table"])
    click.echo("\nstage times (s): " + ", ".join(f"{k} {v}" for k, v in meta["timings"].items()))


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Benchmark directory.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Config override.")
@click.option("--overwrite", is_flag=True, help="Delete an existing benchmark directory and start again.")
def benchmark(config: Path, out: Path, sets: tuple[str, ...], overwrite: bool) -> None:
    """Train MSTDiff and the baselines on one dataset; one metrics table with the floor row."""
    from mstdiff.pipeline import load_benchmark_config, run_benchmark

    res = run_benchmark(load_benchmark_config(config, sets), out, overwrite=overwrite)
    click.echo(res["markdown"])


@cli.command()
@click.argument("report", type=click.Path(path_type=Path))
def sanity(report: Path) -> None:
    """Plain statistics of an evaluation report's sets; exit status 1 if a generated set is implausible."""
    from mstdiff.metrics.sanity import report_problems

    table, problems = report_problems(report)
    click.echo(table)
    if problems:
        sys.exit(1)


def main() -> None:
    cli()
