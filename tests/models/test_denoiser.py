import pytest
import torch
import torch.nn.functional as F

from mstdiff.errors import InputError
from mstdiff.models.denoiser import DenoiserConfig, DenoiserOutput, MSTDiffDenoiser
from mstdiff.models.vqvae import VQVAE, VQVAEConfig

N = 20


def tiny_vqvae(seed=0, **kw):
    cfg = dict(hidden=8, code_dim=4, num_codes=8, num_res_blocks=1)
    cfg.update(kw)
    return VQVAE(VQVAEConfig(**cfg), generator=torch.Generator().manual_seed(seed))


def tiny_config(T=48, **kw):
    cfg = dict(num_stations=N, seq_len=T, d_model=16, n_heads=2, layers_per_stage=1, dropout=0.0)
    cfg.update(kw)
    return DenoiserConfig(**cfg)


def tiny_model(T=48, seed=0, vq=True, **kw):
    g = torch.Generator().manual_seed(seed)
    return MSTDiffDenoiser(tiny_config(T, use_vqvae=vq, **kw), tiny_vqvae() if vq else None, generator=g)


def batch(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(B, T, generator=g)
    l = torch.randint(0, N, (B, T), generator=g)
    s = torch.randint(1, 51, (B,), generator=g)
    probs = torch.softmax(torch.randn(B, T, N, generator=g), -1)
    return w, l, s, probs


@pytest.mark.parametrize("T", [48, 336])
@pytest.mark.parametrize("kind", ["ids", "probs"])
def test_output_shapes_and_dtypes(T, kind):
    model = tiny_model(T)
    w, l, s, probs = batch(3, T)
    out = model(w, l if kind == "ids" else probs, s)
    assert isinstance(out, DenoiserOutput)
    assert out.eps.shape == (3, T) and out.eps.dtype == torch.float32
    assert out.logits.shape == (3, T, N) and out.logits.dtype == torch.float32
    assert torch.isfinite(out.eps).all() and torch.isfinite(out.logits).all()


def test_ids_and_one_hot_probs_agree():
    model = tiny_model().eval()
    w, l, s, _ = batch(2, 48)
    a = model(w, l, s)
    b = model(w, F.one_hot(l, N).float(), s)
    torch.testing.assert_close(a.eps, b.eps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)


def _grad_check(model, loc, w, l, s):
    model.zero_grad(set_to_none=True)
    out = model(w, loc, s)
    loss = out.eps.square().mean() + F.cross_entropy(out.logits.flatten(0, 1), l.flatten())
    loss.backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert missing == []
    for n, p in model.vqvae.named_parameters():
        assert not p.requires_grad and p.grad is None, n


@pytest.mark.parametrize("kind", ["ids", "probs"])
def test_gradient_reaches_every_trainable_parameter_and_not_the_vqvae(kind):
    model = tiny_model()
    model.train()
    w, l, s, probs = batch(4, 48)
    _grad_check(model, l if kind == "ids" else probs, w, l, s)
    vq_params = {id(p) for p in model.vqvae.parameters()}
    trainable = model.trainable_parameters()
    assert vq_params and not vq_params & {id(p) for p in trainable}
    grouped = [p for g in model.optimizer_groups(0.1) for p in g["params"]]
    assert len(grouped) == len(trainable) and not vq_params & {id(p) for p in grouped}
    assert not model.vqvae.training  # frozen VQ-VAE stays in eval mode under model.train()
    # the frozen VQ-VAE's weights are its pre-trained ones, not re-initialised by the denoiser
    fresh = tiny_vqvae()
    for a, b in zip(model.vqvae.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_a_station_learning_rate_of_zero_keeps_the_station_table_and_trains_the_rest():
    model = tiny_model(vq=False)
    model.train()
    groups = model.optimizer_groups(0.1, station_lr=0.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.trainable_parameters())  # each once
    opt = torch.optim.AdamW(groups, lr=1e-2)
    table = model.station_emb.weight.detach().clone(), model.logits_head.bias.detach().clone()
    other = model.head_proj.weight.detach().clone()
    w, l, s, _ = batch(4, 48)
    out = model(w, l, s)
    (out.eps.square().mean() + F.cross_entropy(out.logits.flatten(0, 1), l.flatten())).backward()
    assert model.station_emb.weight.grad is not None
    opt.step()
    assert torch.equal(model.station_emb.weight, table[0]) and torch.equal(model.logits_head.bias, table[1])
    assert not torch.equal(model.head_proj.weight, other)


def test_vqvae_path_is_used_and_gated():
    model = tiny_model().eval()
    w, l, s, _ = batch(2, 48)
    before = model(w, l, s).eps.clone()
    with torch.no_grad():
        model.vqvae.codebook.weight.mul_(5.0)
    assert not torch.allclose(model(w, l, s).eps, before)
    assert model.stages[0].vq_gate is not None and all(st.vq_gate is None for st in model.stages[1:])


def test_vqvae_at_another_scale_and_ablation_without_vqvae():
    g = torch.Generator().manual_seed(0)
    model = MSTDiffDenoiser(tiny_config(), tiny_vqvae(scale="cD2"), generator=g)
    assert [st.vq_gate is not None for st in model.stages] == [False, False, True, False]
    w, l, s, _ = batch(2, 48)
    assert model(w, l, s).eps.shape == (2, 48)
    ablation = tiny_model(vq=False)
    assert ablation.vqvae is None and ablation(w, l, s).logits.shape == (2, 48, N)


def test_init_is_reproducible_from_generator():
    a, b, c = tiny_model(seed=1), tiny_model(seed=1), tiny_model(seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_memory_scales_with_N_only_through_the_station_table():
    small = tiny_model(vq=False, num_stations=10)
    big = tiny_model(vq=False, num_stations=5000)
    d = 16
    assert big.num_parameters() - small.num_parameters() == (5000 - 10) * (d + 1)  # table + logit bias
    w, l, s, _ = batch(2, 48)
    out = big(w, l % 5000, s)
    assert out.logits.shape == (2, 48, 5000)


def test_station_embedding_initialisation():
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(N, 6, generator=g) @ torch.randn(6, 6, generator=g)
    model = MSTDiffDenoiser(tiny_config(), tiny_vqvae(), station_embeddings=vectors, generator=g)
    E = model.station_emb.weight.detach()
    # first columns are the principal coordinates: same pairwise geometry as the centred vectors
    X = vectors - vectors.mean(0)
    scale = float(E[:, :6].std() / (X @ torch.linalg.svd(X, full_matrices=False)[2].T).std())
    torch.testing.assert_close(
        torch.cdist(E[:, :6], E[:, :6]), scale * torch.cdist(X, X), atol=1e-4, rtol=1e-4
    )
    assert model.logits_head.weight is model.station_emb.weight  # tied
    with pytest.raises(InputError):
        MSTDiffDenoiser(tiny_config(), tiny_vqvae(), station_embeddings=torch.zeros(N + 1, 4))


def test_input_errors():
    with pytest.raises(InputError, match="num_stations"):
        MSTDiffDenoiser(DenoiserConfig(), tiny_vqvae())
    with pytest.raises(InputError, match="divisible by 8"):
        tiny_model(T=50)
    with pytest.raises(InputError, match="use_vqvae"):
        MSTDiffDenoiser(tiny_config(), None)
    model = tiny_model()
    w, l, s, _ = batch(2, 48)
    with pytest.raises(InputError, match="built for T = 48"):
        model(torch.zeros(2, 96), torch.zeros(2, 96, dtype=torch.long), s)
    with pytest.raises(InputError, match="divisible by 8"):
        model(torch.zeros(2, 44), torch.zeros(2, 44, dtype=torch.long), s)
    with pytest.raises(ValueError, match="location ids"):
        model(w, l + N, s)
    with pytest.raises(ValueError, match="probabilities"):
        model(w, torch.zeros(2, 48, N + 1), s)


def test_cosine_location_head_bounds_logits_by_its_temperature():
    """``location_head = "cosine"``: logits − bias = τ·cos(h, E_j) ∈ [−τ, τ]; τ is learned."""
    cfg = DenoiserConfig(num_stations=30, seq_len=16, d_model=16, n_heads=2, layers_per_stage=1,
                         final_layers=1, use_vqvae=False, location_head="cosine",
                         copy_head=False)
    model = MSTDiffDenoiser(cfg, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.station_emb.weight.mul_(100.0)  # a large table: a dot head would give huge logits
    g = torch.Generator().manual_seed(1)
    loc = torch.randint(0, 30, (3, 16), generator=g)
    out = model(torch.randn(3, 16, generator=g), loc, torch.tensor([1, 2, 3]))
    tau = float(model.log_tau.detach().exp())
    centred = (out.logits - model.logits_head.bias).detach()
    assert abs(tau - 10.0) < 1e-5 and float(centred.abs().max()) <= tau + 1e-4
    out.logits.sum().backward()
    assert model.log_tau.grad is not None and torch.isfinite(model.log_tau.grad)
    assert MSTDiffDenoiser(DenoiserConfig(num_stations=30, seq_len=16, d_model=16, n_heads=2,
                                          use_vqvae=False)).log_tau is None  # default: dot head
