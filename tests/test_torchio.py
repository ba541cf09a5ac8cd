"""No file the package reads can run code: every loader refuses a pickle payload with an
InputError naming the file, and damaged files give clear errors instead of tracebacks."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mstdiff.baselines import Baseline
from mstdiff.cli import cli
from mstdiff.data.synthetic import synthetic_city
from mstdiff.diffusion.discrete import GraphTransition
from mstdiff.errors import InputError
from mstdiff.kg.tucker import TuckerConfig, train_tucker
from mstdiff.models.vqvae import VQVAE
from mstdiff.torchio import from_plain, load_torch_file, to_plain
from mstdiff.training.mstdiff import MSTDiff, load_transition
from mstdiff.training.utils import load_checkpoint, save_checkpoint


class _Payload:
    """Unpickling this object creates ``marker``: the stand-in for an attacker's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _crafted(path: Path, marker: Path, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": "mstdiff-model", "format": "x", "payload": _Payload(marker), **extra}, path)
    return path


def test_the_payload_runs_when_loaded_unsafely(tmp_path):
    """Control: the crafted file does run code under a plain unpickler, so the refusals below mean
    something."""
    marker = tmp_path / "pwned"
    f = _crafted(tmp_path / "x.pt", marker)
    torch.load(f, weights_only=False)
    assert marker.exists()


def _tucker(path: Path) -> None:
    tri = np.array([[0, 0, 1], [1, 0, 2], [2, 0, 0]])
    train_tucker(tri, 3, 1, TuckerConfig(epochs=1, entity_dim=4, relation_dim=4, batch_size=4),
                 checkpoint=path, progress=False)


LOADERS = {
    "model.pt (MSTDiff.load)": lambda p: MSTDiff.load(p),
    "checkpoint.pt (load_checkpoint)": lambda p: load_checkpoint(p),
    "baseline file (Baseline.load)": lambda p: Baseline.load(p),
    "VQ-VAE checkpoint (VQVAE.load)": lambda p: VQVAE.load(p),
    "transition (GraphTransition.load)": lambda p: GraphTransition.load(p),
    "transition dir (load_transition)": lambda p: load_transition(p),
    "TuckER resume checkpoint": _tucker,
}


@pytest.mark.parametrize("loader", list(LOADERS))
def test_every_loader_refuses_a_pickle_payload(tmp_path, loader):
    marker = tmp_path / "pwned"
    name = "transition.pt" if "transition" in loader else "model.pt"
    f = _crafted(tmp_path / "d" / name, marker)
    target = f.parent if loader.startswith("transition dir") else f
    with pytest.raises(InputError) as err:
        LOADERS[loader](target)
    assert str(f) in str(err.value)
    assert "refused" in str(err.value)
    assert not marker.exists()


def test_generate_cli_refuses_a_payload_model(tmp_path):
    marker = tmp_path / "pwned"
    f = _crafted(tmp_path / "m" / "model.pt", marker)
    like = synthetic_city(n_users=3, n_stations=14, days=1, seed=0).save(tmp_path / "like")
    res = CliRunner().invoke(cli, ["generate", "--model", str(f), "--like", str(like), "--n", "2",
                                   "--out", str(tmp_path / "g")])
    assert res.exit_code == 2, res.output
    assert "refused" in res.output and str(f) in res.output
    assert not marker.exists()
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_damaged_files_are_input_errors_naming_the_file(tmp_path, damage):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"a": torch.ones(1000), "b": "x"})
    bad = tmp_path / "bad.pt"
    data = good.read_bytes()
    bad.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "text": b"hello\n"}[damage])
    with pytest.raises(InputError) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(InputError):
        MSTDiff.load(bad)


def test_non_dict_file_is_refused(tmp_path):
    f = tmp_path / "t.pt"
    torch.save(torch.ones(3), f)
    with pytest.raises(InputError, match="not a checkpoint"):
        load_torch_file(f, what="checkpoint", fix="x")


def test_numpy_state_round_trips_through_the_restricted_loader(tmp_path):
    state = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": [np.float32(1.5), (np.ones(2, bool),)],
             "c": np.array(["x", "yz"]), "d": {"e": None, "f": torch.zeros(2)}}
    f = tmp_path / "s.pt"
    save_checkpoint(f, state)
    with open(f, "rb"):
        torch.load(f, weights_only=True)  # readable by the restricted unpickler itself
    back = load_checkpoint(f)
    assert back["a"].dtype == np.int16 and np.array_equal(back["a"], state["a"])
    assert back["b"][0] == 1.5 and isinstance(back["b"][0], float)
    assert np.array_equal(back["b"][1][0], np.ones(2, bool))
    assert back["c"].tolist() == ["x", "yz"]
    assert back["d"]["e"] is None and torch.equal(back["d"]["f"], torch.zeros(2))
    assert from_plain(to_plain({"k": 1})) == {"k": 1}


def test_no_loader_in_the_package_uses_the_unrestricted_unpickler():
    src = Path(__file__).resolve().parents[1] / "src" / "mstdiff"
    offenders = []
    for p in src.rglob("*.py"):
        text = p.read_text(encoding="utf-8")
        if "weights_only=False" in text or "pickle.load" in text or "allow_pickle=True" in text:
            offenders.append(p.name)
    assert offenders == []
    assert pickle  # the module is used by the payload class above


def test_model_file_of_another_shape_is_an_incompatible_version(tmp_path):
    from mstdiff.data.synthetic import synthetic_city as city
    from mstdiff.models.denoiser import DenoiserConfig
    from mstdiff.training.mstdiff import ModelConfig, TrainConfig, train_mstdiff

    ds = city(n_users=6, n_stations=14, days=1, seed=1)
    mcfg = ModelConfig(denoiser=DenoiserConfig(d_model=8, n_heads=2, layers_per_stage=1, final_layers=1,
                                               use_vqvae=False))
    train_mstdiff(ds, None, discrete=None, vqvae=None, model_config=mcfg, out_dir=tmp_path / "m",
                  train_config=TrainConfig(epochs=1, batch_size=6, device="cpu", progress=False,
                                           calibration_samples=0))
    payload = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    payload["state_dict"] = {k: v[..., :1] if v.ndim else v for k, v in payload["state_dict"].items()}
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="incompatible version"):
        MSTDiff.load(tmp_path / "bad.pt")
    del payload["scaler"]
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(InputError, match="incompatible version"):
        MSTDiff.load(tmp_path / "old.pt")


def test_corrupt_json_is_an_input_error_naming_the_file(tmp_path):
    from mstdiff.io import read_json

    for text, words in [("", "empty file"), ('{"a": 1', "not valid JSON"), (b"\xff\xfe\x00", "not a text")]:
        f = tmp_path / "meta.json"
        f.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(InputError, match=words) as err:
            read_json(f)
        assert str(f) in str(err.value)
