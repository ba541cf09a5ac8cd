from dataclasses import dataclass, field

import pytest

from mstdiff.config import apply_overrides, dump_yaml, from_dict, load_yaml
from mstdiff.errors import InputError


@dataclass
class Inner:
    lr: float = 1e-3
    steps: int = 10


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    dims: tuple[int, ...] = (1, 2)


def test_from_dict_nested_and_coercion():
    cfg = from_dict(Outer, {"inner": {"lr": 1, "steps": 5.0}, "dims": [3, 4]})
    assert cfg.inner.lr == 1.0 and isinstance(cfg.inner.lr, float)
    assert cfg.inner.steps == 5 and isinstance(cfg.inner.steps, int)
    assert cfg.dims == (3, 4)


def test_unknown_key_names_path_and_valid_keys():
    with pytest.raises(InputError) as err:
        from_dict(Outer, {"inner": {"lrr": 1}}, where="run.yaml")
    assert "inner.lrr" in str(err.value) and "run.yaml" in str(err.value) and "steps" in str(err.value)


def test_overrides_and_round_trip(tmp_path):
    data = apply_overrides({"inner": {"lr": 0.1}}, ["inner.steps=7", "name=abc"])
    assert data == {"inner": {"lr": 0.1, "steps": 7}, "name": "abc"}
    p = tmp_path / "c.yaml"
    p.write_text(dump_yaml(from_dict(Outer, data)))
    assert from_dict(Outer, load_yaml(p)) == from_dict(Outer, data)


def test_bad_yaml_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("a: 1\nb: [1, 2\n")
    with pytest.raises(InputError) as err:
        load_yaml(p)
    assert "bad.yaml:" in str(err.value)


def test_override_without_equals():
    with pytest.raises(InputError):
        apply_overrides({}, ["train.lr"])
