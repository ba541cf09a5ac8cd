"""End-to-end: the smoke benchmark (all models, tiny configs) and the CLI around it."""

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mstdiff.cli import cli
from mstdiff.errors import InputError
from mstdiff.pipeline import load_benchmark_config, run_benchmark

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "b"
    cfg = load_benchmark_config(REPO / "configs" / "benchmark_smoke.yaml", ["train.num_threads=1"])
    return out, run_benchmark(cfg, out, progress=False)


def test_smoke_benchmark_all_models(smoke):
    out, res = smoke
    results = json.loads((out / "results.json").read_text())
    rows = results["metrics"]["metrics"]  # generated set -> metric -> value
    names = ["mstdiff", "mstdiff-paper", "mstdiff-traffic+markov", "dit+markov", "csdi+timegeo",
             "csdi+difftraj", "mshgan+markov", "adaptive+markov", "csdi+pategail", "dit+volunteer"]
    assert set(names) <= set(rows)
    adaptive = json.loads((out / "models" / "adaptive+markov" / "generated" / "meta.json").read_text())
    assert adaptive["independent_pair"] is False and adaptive["trajectory_source"] == "markov"
    assert adaptive["model_config"]["adaptive"]["embeddings"].endswith("station_embeddings.npy")
    # the two MSTDiff configurations: absorbing noise + copy head, and the paper's graph process
    import yaml

    for name, process, copy in (("mstdiff", "absorbing", True), ("mstdiff-paper", "graph", False)):
        trained = yaml.safe_load((out / "models" / name / "train" / "config.yaml").read_text())
        assert trained["model"]["location"]["process"] == process
        assert trained["model"]["denoiser"]["copy_head"] is copy
    assert "Sanity statistics" in md_text(out)
    for name in names:
        assert (out / "models" / name / "generated" / "meta.json").exists()
        assert results["costs"][name]["seconds"] >= 0
    md = (out / "results.md").read_text()
    assert "**floor**" in md and "independent pair" in md
    assert all(f"| {n} |" in md for n in names)


def md_text(out: Path) -> str:
    return (out / "results.md").read_text()


def test_variant_may_not_change_shared_stages():
    with pytest.raises(InputError, match="may only change"):  # at load time, before any stage
        load_benchmark_config(REPO / "configs" / "benchmark_smoke.yaml",
                              ["variants.mstdiff-paper.data={source: csv}"])


def test_benchmark_is_resumable_and_checks_config(smoke):
    out, _ = smoke
    cfg = load_benchmark_config(REPO / "configs" / "benchmark_smoke.yaml", ["train.num_threads=1"])
    again = run_benchmark(cfg, out, progress=False)  # nothing retrained: outputs exist
    assert all(c["seconds"] < 30 for c in again["costs"].values())
    other = load_benchmark_config(REPO / "configs" / "benchmark_smoke.yaml", ["train.epochs=2"])
    with pytest.raises(InputError, match="different config"):
        run_benchmark(other, out, progress=False)


def test_benchmark_runs_a_single_modality_baseline_with_its_other_metrics_not_applicable(tmp_path):
    cfg = load_benchmark_config(REPO / "configs" / "benchmark_smoke.yaml", ["models=[markov]"])
    run_benchmark(cfg, tmp_path / "x", progress=False)
    res = json.loads((tmp_path / "x" / "results.json").read_text())
    row = res["metrics"]["metrics"]["markov"]
    assert row["traffic_volume_jsd"] is None and row["joint_jsd"] is None  # n/a, not 0
    assert row["distance_jsd"] is not None and row["distance_jsd"] > 0
    assert "n/a" in (tmp_path / "x" / "results.md").read_text()


def test_benchmark_pools_every_model_over_the_generation_seeds(tmp_path):
    cfg = load_benchmark_config(REPO / "configs" / "benchmark_smoke.yaml",
                                ["models=[markov, timegeo]", "generate.seeds=[0, 3, 3]"])
    assert cfg.generate.all_seeds() == [0, 3]
    res = run_benchmark(cfg, tmp_path / "x", progress=False)
    model_dir = tmp_path / "x" / "models" / "markov"
    assert (model_dir / "generated" / "meta.json").exists()
    assert (model_dir / "generated-seed3" / "meta.json").exists()
    pooled = res["metrics"]["pooled"]
    assert pooled["markov"]["sets"] == 2 and pooled["timegeo"]["sets"] == 2
    assert res["generation_seeds"] == [0, 3]
    assert "2 sets of" in md_text(tmp_path / "x") and "Pooled row(s)" in md_text(tmp_path / "x")
    with pytest.raises(InputError, match="generate.seeds"):
        load_benchmark_config(REPO / "configs" / "benchmark_smoke.yaml", ["generate.seeds=[-1]"])


def test_cli_prepare_info_split_evaluate(tmp_path):
    r = CliRunner()
    res = r.invoke(cli, ["prepare", "--source", "synthetic", "--out", str(tmp_path / "d"),
                         "-o", "n_users=30", "-o", "n_stations=40", "-o", "days=1"])
    assert res.exit_code == 0, res.output
    assert "samples (U)" in r.invoke(cli, ["info", str(tmp_path / "d")]).output
    res = r.invoke(cli, ["split", str(tmp_path / "d"), "--out", str(tmp_path / "s")])
    assert res.exit_code == 0 and "train" in res.output
    res = r.invoke(cli, ["evaluate", "--real", str(tmp_path / "s" / "test"), "--generated",
                         f"train={tmp_path / 's' / 'train'}", "--out", str(tmp_path / "e"), "--no-plots"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "e" / "metrics.json").exists() and "floor" in res.output
    assert "Sanity statistics" in res.output
    # the sanity command: a real set "generated" passes its checks (exit 0) and prints the table
    import torch

    before = torch.get_num_threads()
    try:
        res = r.invoke(cli, ["--threads", "1", "sanity", str(tmp_path / "e")])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert res.exit_code == 0, res.output
    assert "changes / sample" in res.output and "all generated sets pass" in res.output


def test_cli_user_error_is_one_clear_message(tmp_path):
    res = CliRunner().invoke(cli, ["info", str(tmp_path / "missing")])
    assert res.exit_code == 2
    assert "error:" in res.output and "not a directory" in res.output and "Traceback" not in res.output


def test_run_dir_written_before_a_new_setting_existed_is_still_the_same_config(tmp_path):
    import yaml

    from mstdiff.pipeline import RunConfig, _start_run_dir

    cfg = RunConfig()
    _start_run_dir(cfg, tmp_path, overwrite=False)
    old = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del old["train"]["grad_clip"]  # as written by a version without that setting (default unchanged)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    _start_run_dir(cfg, tmp_path, overwrite=False)  # accepted
    old["train"]["lr"] = 0.5
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(InputError, match="different config"):
        _start_run_dir(cfg, tmp_path, overwrite=False)


def _movesim_folder(folder: Path) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name, n in (("real.data", 12), ("val.data", 4)):
        (folder / name).write_text("".join(" ".join(map(str, rng.integers(0, 10, 16))) + "\n"
                                           for _ in range(n)))
    (folder / "gps").write_text("".join(f"{39.9 + 0.01 * i} {116.3 + 0.01 * i}\n" for i in range(10)))
    return folder


def test_shared_stages_split_by_part_of_a_dataset_without_traffic(tmp_path):
    from mstdiff.pipeline import load_run_config, run_shared_stages

    raw = _movesim_folder(tmp_path / "raw")
    cfg = load_run_config(None, [
        "data.source=movesim", f"data.raw={raw}", "data.split_by=part",
        "data.parts={train: [real], val: [val], test: [val]}"])
    st = run_shared_stages(cfg, tmp_path / "run", {}, progress=False, need_mstdiff=False)
    assert (st.train.n_samples, st.val.n_samples, st.test.n_samples) == (12, 4, 4)
    assert set(st.train.samples["part"]) == {"real"} and set(st.test.samples["part"]) == {"val"}
    assert not st.data.has_traffic and not st.train.has_traffic and not st.test.has_traffic
    assert not (tmp_path / "run" / "split" / "train" / "traffic.npy").exists()
    split_meta = json.loads((tmp_path / "run" / "split" / "meta.json").read_text())
    assert split_meta["by"] == "part" and split_meta["counts"] == {"train": 12, "val": 4, "test": 4}


def test_a_day_pattern_run_skips_the_graph_stages_and_generates_stations(tmp_path):
    from mstdiff.data.dataset import PreparedDataset
    from mstdiff.pipeline import load_run_config, run_pipeline

    raw = _movesim_folder(tmp_path / "raw")
    cfg = load_run_config(REPO / "configs" / "demo.yaml", [
        "data.source=movesim", f"data.raw={raw}", "data.options={}", "data.split_by=part",
        "data.parts={train: [real], val: [val], test: [val]}", "train.epochs=1",
        "model.pattern={enabled: true}", "model.location.process=absorbing",
        "model.denoiser={d_model: 16, n_heads: 2, use_traffic: false, use_vqvae: false, copy_head: false, "
        "near_k: 0, move_decay: false}", "model.activity=false", "evaluate.plots=false",
        "generate.seeds=[0, 5]"])
    run_pipeline(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert not any((run / d).exists() for d in ("kg", "embed", "transition", "vqvae"))
    gen = PreparedDataset.load(run / "generated")
    assert gen.n_stations == 10 and gen.locations.max() < 10 and not gen.has_traffic
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert metrics["metrics"]["mstdiff"]["duration_jsd"] is not None
    # generate.seeds: a second set from the same model, and the row pooled over both
    other = PreparedDataset.load(run / "generated-seed5")
    assert other.n_samples == gen.n_samples and (other.locations != gen.locations).any()
    assert metrics["pooled"]["mstdiff"]["sets"] == 2
    with pytest.raises(InputError, match="absorbing"):
        load_run_config(REPO / "configs" / "demo.yaml", ["model.pattern={enabled: true}",
                                                        "model.location.process=graph"])


@pytest.mark.parametrize("sets, match", [
    (["data.parts={train: [real], val: [val], test: [val]}"], "data.split_by is not"),
    (["data.split_by=part"], "needs train, val and test"),
    (["data.split_by=part", "data.parts={train: [real], test: [val]}"], "needs train, val and test"),
    (["data.split_by=part", "data.parts={train: real, val: [val], test: [val]}"], "not a list"),
])
def test_split_by_config_is_checked_at_load_time(sets, match):
    from mstdiff.pipeline import load_run_config

    with pytest.raises(InputError, match=match):
        load_run_config(None, sets)


def test_run_on_a_dataset_without_traffic_trains_mstdiff_without_traffic(tmp_path):
    from mstdiff.pipeline import load_run_config, run_pipeline

    raw = _movesim_folder(tmp_path / "raw")
    cfg = load_run_config(REPO / "configs" / "demo.yaml", [
        "data.source=movesim", f"data.raw={raw}", "data.options={}", "data.split_by=part",
        "data.parts={train: [real], val: [val], test: [val]}", "kg.embed.epochs=1",
        "train.epochs=1", "train.calibration_samples=8", "model.denoiser.d_model=16",
        "model.denoiser.n_heads=2",
        "evaluate.plots=false"])
    run_pipeline(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert not (run / "vqvae").exists()  # nothing to pre-train the VQ-VAE on
    saved = yaml.safe_load((run / "train" / "config.yaml").read_text())
    assert saved["model"]["denoiser"]["use_traffic"] is False and saved["model"]["activity"] is False
    assert not (run / "generated" / "traffic.npy").exists()
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    row = metrics["metrics"]["mstdiff"]
    assert row["traffic_volume_jsd"] is None and row["joint_jsd"] is None
    assert row["duration_jsd"] is not None


@pytest.mark.parametrize("sets, match", [
    (["generate.condition={kind: nothing}"], "condition.kind"),
    (["generate.condition={kind: both}"], "needs a mask"),
    (["generate.condition={kind: locations, samples_per_condition: 0}"], "whole number"),
    (["generate.condition={kind: locations, on: x}"], "unknown condition key"),
    (["generate.condition={kind: both, mask: after=25:00}"], "HH:MM"),
    (["generate.condition={kind: traffic, given: /no/such/dir}"], "neither 'test'"),
])
def test_condition_config_is_checked_at_load_time(sets, match):
    from mstdiff.pipeline import load_run_config

    with pytest.raises(InputError, match=match):
        load_run_config(REPO / "configs" / "demo.yaml", sets)


def test_run_with_a_condition_generates_for_the_test_split_and_scores_the_pairs(tmp_path):
    import numpy as np

    from mstdiff.data.dataset import PreparedDataset
    from mstdiff.pipeline import load_run_config, run_pipeline

    cfg = load_run_config(REPO / "configs" / "demo.yaml", [
        "data.options={n_users: 40, n_stations: 30, days: 1, seed: 0}", "kg.embed.epochs=1",
        "vqvae.epochs=1", "train.epochs=1", "train.calibration_samples=8", "model.denoiser.d_model=16",
        "model.denoiser.n_heads=2", "evaluate.plots=false",
        "generate.condition={kind: locations, samples_per_condition: 2}"])
    meta = run_pipeline(cfg, tmp_path / "run", progress=False)
    test = PreparedDataset.load(tmp_path / "run" / "split" / "test")
    gen = PreparedDataset.load(tmp_path / "run" / "generated")
    assert gen.n_samples == 2 * test.n_samples
    np.testing.assert_array_equal(gen.locations[::2], test.locations)  # the condition passed through
    paired = json.loads((tmp_path / "run" / "evaluate" / "paired.json").read_text())["scores"]
    assert paired["samples_per_condition"] == 2 and paired["crps"] > 0 and 0 <= paired["cover90"] <= 1
    assert meta["paired"]["crps"] == paired["crps"]
