import pytest
import torch
from torch import nn

from mstdiff.errors import InputError
from mstdiff.training.utils import EMA, load_checkpoint, local_rng, lr_lambda, resolve_device, save_checkpoint


def test_ema_tracks_average():
    m = nn.Linear(2, 1)
    ema = EMA(m, decay=0.5)
    with torch.no_grad():
        m.weight.fill_(1.0)
    for _ in range(200):
        ema.update(m)
    assert torch.allclose(ema.shadow.weight, torch.ones_like(m.weight), atol=1e-6)
    assert not any(p.requires_grad for p in ema.shadow.parameters())


def test_ema_warmup_first_update_mostly_new():
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA(m, decay=0.999)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)  # decay_1 = 2/11
    assert ema.shadow.weight.item() == pytest.approx(1 - 2 / 11)


def test_local_rng_reproducible_and_isolated():
    before = torch.get_rng_state()
    with local_rng(5):
        a = torch.rand(3)
    with local_rng(5):
        b = torch.rand(3)
    assert torch.equal(a, b)
    assert torch.equal(before, torch.get_rng_state())


def test_lr_schedules():
    f = lr_lambda("cosine", total_steps=100, warmup_steps=10)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.05)
    g = lr_lambda("step", total_steps=100, step_every=10, gamma=0.5)
    assert g(25) == pytest.approx(0.25)
    with pytest.raises(InputError):
        lr_lambda("linear", 10)


def test_checkpoint_round_trip(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"x": torch.arange(3)})
    assert torch.equal(load_checkpoint(tmp_path / "c.pt")["x"], torch.arange(3))
    with pytest.raises(InputError):
        load_checkpoint(tmp_path / "missing.pt")


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(InputError):
            resolve_device("cuda")
