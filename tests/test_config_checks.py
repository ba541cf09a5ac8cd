"""Run configs are checked when loaded, before any stage: type, range, allowed values and the
combined checks, each error naming the key, the value, what is allowed and where it was written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mstdiff.cli import cli
from mstdiff.errors import InputError
from mstdiff.pipeline import RunConfig, load_benchmark_config, load_run_config

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "demo.yaml"


def _yaml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


# (override, words the message must hold)
BAD_SETS = [
    ("train.lr=fast", "is not a number"),
    ("train.batch_size=abc", "is not an integer"),
    ("train.lr=-1", "must be > 0"),
    ("train.lr=.nan", "finite"),
    ("train.epochs=true", "is not an integer"),
    ("train.amp=yes please", "true or false"),
    ("train.ema_decay=1.0", "in [0, 1)"),
    ("train.schedule=fast", "one of cosine, step, constant"),
    ("train.loss_weights=[1, -1, 1]", "must be >= 0"),
    ("train.loss_weights=[1, 1]", "list of 3"),
    ("model.denoiser.dropout=1.5", "in [0, 1)"),
    ("model.denoiser.d_model=0", ">= 1"),
    ("model.location.process=gaussian", "one of absorbing, graph"),
    ("model.hybrid.location_temperature=0", "> 0"),
    ("model.gaussian.beta_end=2", "in (0, 1)"),
    ("vqvae.num_codes=1", ">= 2"),
    ("generate.batch_size=0", ">= 1"),
    ("generate.n=-5", ">= 1"),
    ("generate.sampling.location_temperature=-1", "> 0"),
    ("generate.sampling.temperature=0.9", "unknown sampling option"),
    ("generate.sampling.redraw_invalid=often", "true or false"),
    ("kg.embed.lr=0", "> 0"),
    ("kg.embed.holdout=1.5", "in [0, 1)"),
    ("kg.embed.dim=8", "unknown"),
    ("kg.build.cell_km=-1", "> 0"),
    ("kg.transition.k=0", ">= 1"),
    ("kg.transition.kk=3", "unknown"),
    ("kg.transition.num_steps=10", "set from model.gaussian.num_steps"),
    ("data.split=[0.5, 0.6, 0.1]", "summing to 1"),
    ("data.source=excel", "unknown"),
    ("train.typo=1", "unknown key"),
]


@pytest.mark.parametrize(("override", "words"), BAD_SETS)
def test_bad_override_is_refused_at_load_naming_key_value_range_and_origin(override, words):
    with pytest.raises(InputError) as err:
        load_run_config(DEMO, [override])
    msg = str(err.value)
    assert words in msg, msg
    assert f"--set {override}" in msg  # where it came from
    assert override.split("=")[0].split(".")[-1] in msg  # the key


def test_file_values_are_located_by_line(tmp_path):
    cfg = _yaml(tmp_path, "data: {source: synthetic}\ntrain:\n  epochs: 2\n  lr: \"fast\"\n")
    with pytest.raises(InputError) as err:
        load_run_config(cfg)
    assert f"{cfg}:4" in str(err.value) and "train.lr = 'fast'" in str(err.value)
    cfg = _yaml(tmp_path, "model:\n  denoiser:\n    d_model: 16\n    dropout: -0.1\n")
    with pytest.raises(InputError, match=r"run\.yaml:4.*dropout = -0\.1 is out of range"):
        load_run_config(cfg)


def test_unknown_key_in_a_file_is_located(tmp_path):
    cfg = _yaml(tmp_path, "train:\n  epochs: 2\n  batchsize: 3\n")
    with pytest.raises(InputError, match=r"run\.yaml:3.*train\.batchsize"):
        load_run_config(cfg)


def test_override_replaces_a_file_value_and_its_origin(tmp_path):
    cfg = _yaml(tmp_path, "train:\n  lr: 0.01\n")
    assert load_run_config(cfg, ["train.lr=0.002"]).train.lr == 0.002
    with pytest.raises(InputError, match="--set train.lr=-2"):
        load_run_config(cfg, ["train.lr=-2"])


def test_good_values_and_friendly_spellings_load():
    cfg = load_run_config(DEMO, ["train.lr=1e-3", "train.epochs=1e2", "train.max_steps=null"])
    assert cfg.train.lr == 1e-3 and cfg.train.epochs == 100 and cfg.train.max_steps is None
    assert isinstance(load_run_config(REPO / "configs" / "demo.yaml"), RunConfig)
    load_benchmark_config(REPO / "configs" / "benchmark_smoke.yaml")
    shared = Path("../shared/data/shanghai_telecom").exists()  # as the configs name it: from the cwd
    loaders = (("shanghai.yaml", load_run_config), ("benchmark_shanghai.yaml", load_benchmark_config))
    for name, load in loaders:
        if shared:
            load(REPO / "configs" / name)
        else:  # without the data (CI) the path is reported at load, not after the stages
            with pytest.raises(InputError, match="does not exist"):
                load(REPO / "configs" / name)
    geolife = Path("../shared/data/geolife_movesim").exists()
    for name, load in (("geolife.yaml", load_run_config), ("benchmark_geolife.yaml", load_benchmark_config)):
        if geolife:
            cfg = load(REPO / "configs" / name)
            assert cfg.data.split_by == "part" and not cfg.model.denoiser.use_traffic
        else:
            with pytest.raises(InputError, match="does not exist"):
                load(REPO / "configs" / name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_fails_at_load():
    with pytest.raises(InputError, match="CUDA is not available"):
        load_run_config(DEMO, ["train.device=cuda"])


def test_benchmark_model_names_and_baseline_configs_are_checked_at_load():
    smoke = REPO / "configs" / "benchmark_smoke.yaml"
    with pytest.raises(InputError, match="nosuchmodel"):
        load_benchmark_config(smoke, ["models=[mstdiff, nosuchmodel+markov]"])
    with pytest.raises(InputError, match="lr"):
        load_benchmark_config(smoke, ["models=[dit+markov]",
                                      "baselines={dit+markov: {dit: {train: {lr: -1}}}}"])
    with pytest.raises(InputError, match="models is empty"):
        load_benchmark_config(smoke, ["models=[]"])


def test_cli_run_with_a_bad_value_writes_nothing(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["run", str(DEMO), "--out", str(out), "--set", "train.lr=-1"])
    assert res.exit_code == 2 and "train.lr" in res.output and "Traceback" not in res.output
    assert not out.exists()


@pytest.mark.parametrize("args", [["--batch-size", "0"], ["--n", "0"], ["--seed", "-1"]])
def test_cli_generate_numbers_are_checked_by_the_parser(tmp_path, args):
    base = ["generate", "--model", "m", "--like", "l", "--n", "2", "--out", str(tmp_path / "g")]
    res = CliRunner().invoke(cli, base + args)
    assert res.exit_code == 2 and "Invalid value" in res.output


def test_reader_option_that_is_not_yaml_is_kept_as_text():
    from mstdiff.cli import _parse_options

    assert _parse_options(("timestamp_format=%Y%m%d%H%M%S", "n=3")) == {"timestamp_format": "%Y%m%d%H%M%S",
                                                                         "n": 3}


def test_a_pattern_sampling_option_is_accepted_beside_those_of_the_hybrid():
    cfg = load_run_config(DEMO, ["generate.sampling.redraw_invalid=true",
                                 "generate.sampling.location_temperature=0.9"])
    assert cfg.generate.sampling == {"redraw_invalid": True, "location_temperature": 0.9,
                                     "clip_traffic": True}  # the demo's own, kept
