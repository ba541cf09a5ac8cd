"""PateGail-style trajectory generator: privacy-preserving generative adversarial imitation learning.

Re-implemented from the description in Wang, Gao, Wu, Jin, Yao & Li, "PateGail: A Privacy-Preserving
Mobility Trajectory Generator with Imitation Learning", AAAI 2024 (nothing copied). Mobility is a
sequence of decisions: at every slot the **policy** chooses the next station given the history and
the time of day; a **discriminator** of (state, action) pairs rewards decisions that look real, and
the policy is trained on that reward by PPO (Schulman et al. 2017) with GAE(γ, λ) advantages.

The privacy part, as in the paper's design: the training users are split into ``parties`` groups
(stand-ins for the paper's user devices); each party trains its **own discriminator** on its own real
trajectories only (against the generated ones the server sends), and the server sees only the
parties' rewards of the generated (state, action) pairs, aggregated PATE-style: each party's reward
is clipped to ``[-reward_clip, reward_clip]`` (bounded sensitivity), the clipped rewards are
averaged and calibrated noise is added,

    r(s, a) = (1/P) Σ_p clip(logit D_p(s, a), −c, c) + noise,  sensitivity Δ = 2c / P,

with Laplace noise of scale ``Δ / ε`` (ε-DP per release) or Gaussian noise of standard deviation
``Δ · sqrt(2 ln(1.25/δ)) / ε`` ((ε, δ)-DP per release, the classical bound for ε < 1). ``ε``, ``δ``,
``P`` and ``c`` are options; ``noise: none`` with ``parties: 1`` is plain GAIL (the reference).
Accounting: the guarantee is **per released reward**; an iteration releases ``rollouts · T`` rewards
and no composition over iterations is tracked here (:meth:`PateGail.privacy` states the numbers).
Choices where this package differs from or goes beyond the paper's text:

- reward = the discriminator logit ``log D − log(1 − D)`` (the paper aggregates per-device
  rewards with its own weighting and a "reward dynamics compensation"; here the plain clipped mean);
- policy: a one-layer GRU over station + time-of-day embeddings (the paper uses a transformer), with
  a learned "stay" logit added to the current station, and a linear value head (the PPO critic) on
  the detached GRU state, clipped apart from the policy, so that the value loss does not swamp the
  policy gradient;
- action space: **all N stations, full softmax**. The output layer is tied to the station embedding
  table, so the logits are one ``(B·T, d) × (d, N)`` product: at N = 2,047 that is cheaper in time and
  memory than gathering candidate sets (``(B·T, C, d)``), and exact (no station is unreachable);
- the discriminator sees its own GRU summary of the history, the action's embedding, the time of
  day, whether the action stays, and the log distance of the move;
- warm start: ``bc_epochs`` epochs of behaviour cloning (teacher-forced maximum likelihood of the
  real next station) before the adversarial iterations, a standard GAIL warm start. It uses the
  real data centrally, so it is **not** covered by the privacy mechanism: set ``bc_epochs: 0`` for a
  fully private run (the benchmark rows report it).

Seeded: weights from ``local_rng(train.seed)``; data order, party split, rollouts and noise from a
``torch.Generator`` seeded with ``train.seed``; generation from the ``seed`` given. Resumable: see
:mod:`mstdiff.baselines._sequence` (``gail_iterations`` may grow between runs).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from mstdiff.baselines._learned import cpu_threads
from mstdiff.baselines._sequence import ResumeFile, SequenceTrainConfig, bins_per_day, time_of_day
from mstdiff.baselines.base import Baseline, GeneratedSeries, one_of, positive, register_baseline
from mstdiff.baselines.difftraj import StationSnapper
from mstdiff.config import to_dict
from mstdiff.data.dataset import PreparedDataset
from mstdiff.diffusion.common import sample_categorical
from mstdiff.errors import InputError
from mstdiff.training.utils import loading_device, local_rng, resolve_device

logger = logging.getLogger(__name__)

__all__ = ["PateGail", "PateGailConfig", "aggregate_rewards", "noise_scale"]

NOISES = ("none", "laplace", "gaussian")


@dataclass
class PateGailConfig:
    """PateGail-style GAIL trajectory baseline (see the module docstring)."""

    d_model: int = 64  # station / time-of-day embedding and GRU width of the policy
    d_disc: int = 32  # the same for each discriminator
    bc_epochs: int = 5  # behaviour-cloning warm start (0: none; not covered by the privacy mechanism)
    gail_iterations: int = 100  # adversarial iterations: rollouts, discriminator steps, PPO update
    rollouts: int = 128  # generated trajectories per iteration
    disc_steps: int = 1  # discriminator steps per party per iteration
    disc_lr: float = 1e-3  # discriminator Adam learning rate
    ppo_epochs: int = 4  # passes over the rollouts per iteration
    ppo_minibatch: int = 64  # trajectories per PPO step
    clip_ratio: float = 0.2  # PPO clip ε of the probability ratio
    gamma: float = 0.99  # discount
    gae_lambda: float = 0.95  # GAE λ
    entropy_coef: float = 0.01  # entropy bonus weight
    value_coef: float = 0.5  # value loss weight
    bc_coef: float = 0.0  # behaviour-cloning loss weight kept during the GAIL iterations (0: off)
    # privacy (PATE-style reward aggregation)
    parties: int = 1  # P: disjoint user groups, one discriminator each
    noise: str = "none"  # none | laplace | gaussian
    epsilon: float = 1.0  # ε per released reward
    delta: float = 1e-5  # δ per released reward (gaussian only)
    reward_clip: float = 5.0  # c: each party's reward clipped to [-c, c] (sensitivity 2c / P)
    temperature: float = 1.0  # softmax temperature when generating
    train: SequenceTrainConfig = field(default_factory=SequenceTrainConfig)  # optimisation

    def validate(self) -> None:
        where = "baselines.pategail"
        positive(where, d_model=self.d_model, d_disc=self.d_disc, rollouts=self.rollouts,
                 disc_steps=self.disc_steps, disc_lr=self.disc_lr, ppo_epochs=self.ppo_epochs,
                 ppo_minibatch=self.ppo_minibatch, clip_ratio=self.clip_ratio, parties=self.parties,
                 epsilon=self.epsilon, reward_clip=self.reward_clip, temperature=self.temperature)
        for key in ("bc_epochs", "gail_iterations"):
            if getattr(self, key) < 0:
                raise InputError(f"{key} = {getattr(self, key)}", where=f"{where}.{key}",
                                 fix="use a non-negative number")
        for key in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise InputError(f"{key} = {getattr(self, key)}", where=f"{where}.{key}", fix="use [0, 1]")
        if not 0.0 < self.delta < 1.0:
            raise InputError(f"delta = {self.delta}", where=f"{where}.delta", fix="use (0, 1)")
        one_of(where, "noise", self.noise, NOISES)
        self.train.validate(where)


# ----------------------------------------------------------------------------- privacy
def noise_scale(noise: str, parties: int, clip: float, epsilon: float, delta: float) -> float:
    """Laplace scale ``b`` or Gaussian std ``σ`` of the aggregated reward (0 for ``none``)."""
    sensitivity = 2.0 * clip / parties
    if noise == "none":
        return 0.0
    if noise == "laplace":
        return sensitivity / epsilon
    if noise == "gaussian":
        return sensitivity * math.sqrt(2.0 * math.log(1.25 / delta)) / epsilon
    raise InputError(f"noise = {noise!r}", where="baselines.pategail.noise", fix=f"use one of {NOISES}")


def aggregate_rewards(party_rewards: torch.Tensor, *, noise: str, clip: float, epsilon: float,
                      delta: float, generator: torch.Generator | None) -> torch.Tensor:
    """PATE-style aggregate of ``party_rewards (P, ...)``: mean of the clipped rewards plus noise
    calibrated to the sensitivity ``2 · clip / P`` (see the module docstring)."""
    P = party_rewards.shape[0]
    mean = party_rewards.clamp(-clip, clip).mean(dim=0)
    scale = noise_scale(noise, P, clip, epsilon, delta)
    if scale == 0.0:
        return mean
    if noise == "laplace":
        u = torch.rand(mean.shape, generator=generator, dtype=torch.float64) - 0.5
        z = -torch.sign(u) * torch.log1p(-2.0 * u.abs())  # standard Laplace by inverse CDF
    else:
        z = torch.randn(mean.shape, generator=generator, dtype=torch.float64)
    return mean + (scale * z).to(mean.dtype).to(mean.device)


# ----------------------------------------------------------------------------- networks
class _Policy(nn.Module):
    """GRU policy over station + time-of-day embeddings; token ``N`` is the start of the window."""

    def __init__(self, N: int, per_day: int, d: int) -> None:
        super().__init__()
        self.N = N
        self.station = nn.Embedding(N + 1, d)
        self.tod = nn.Embedding(per_day, d)
        self.gru = nn.GRU(d, d, batch_first=True)
        self.query = nn.Linear(d, d)
        self.bias = nn.Parameter(torch.zeros(N))
        self.stay = nn.Linear(d, 1)
        self.value = nn.Linear(d, 1)
        nn.init.normal_(self.station.weight, std=d ** -0.5)

    def _heads(self, h: torch.Tensor, prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.query(h) @ self.station.weight[: self.N].T + self.bias  # (B, L, N)
        stay = self.stay(h).squeeze(-1) * (prev < self.N)  # the start token has no "stay"
        logits = logits.scatter_add(-1, prev.clamp(max=self.N - 1).unsqueeze(-1), stay.unsqueeze(-1))
        return logits, self.value(h.detach()).squeeze(-1)  # the critic does not move the trunk

    def forward(self, prev: torch.Tensor, tod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, L, N)`` of the station at each slot and values ``(B, L)``, from the previous
        tokens ``prev (B, L)`` (start token first) and the slots' time of day ``tod (L,)``."""
        h, _ = self.gru(self.station(prev) + self.tod(tod)[None])
        return self._heads(h, prev)

    def step(self, prev: torch.Tensor, tod: torch.Tensor, hx: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One slot of :meth:`forward`: ``prev (B,)``, ``tod ()`` → logits ``(B, N)``, new state."""
        h, hx = self.gru((self.station(prev) + self.tod(tod))[:, None], hx)
        logits, _ = self._heads(h, prev[:, None])
        return logits[:, 0], hx


class _Discriminator(nn.Module):
    """Logit that ``(state, action)`` is real: GRU summary of the history, the action's embedding,
    the time of day, a stay flag and ``log1p`` of the move's length in km."""

    xy: torch.Tensor

    def __init__(self, N: int, per_day: int, d: int, xy: torch.Tensor) -> None:
        super().__init__()
        self.N = N
        self.station = nn.Embedding(N + 1, d)
        self.tod = nn.Embedding(per_day, d)
        self.gru = nn.GRU(d, d, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(3 * d + 2, 2 * d), nn.SiLU(), nn.Linear(2 * d, 1))
        self.register_buffer("xy", torch.cat([xy, torch.zeros(1, 2)]).float())  # (N + 1, 2) km

    def forward(self, prev: torch.Tensor, act: torch.Tensor, tod: torch.Tensor) -> torch.Tensor:
        e_t = self.tod(tod)[None].expand(prev.shape[0], -1, -1)
        h, _ = self.gru(self.station(prev) + e_t)
        first = prev >= self.N
        stay = ((prev == act) & ~first).float()
        dist = torch.linalg.vector_norm(self.xy[act] - self.xy[prev], dim=-1) * (~first)
        feats = torch.cat([h, self.station(act), e_t, stay[..., None], torch.log1p(dist)[..., None]], -1)
        return self.mlp(feats).squeeze(-1)  # (B, L)


def _shift(loc: torch.Tensor, start: int) -> torch.Tensor:
    """Previous tokens of each slot: the start token, then ``loc[:, :-1]``."""
    return torch.cat([torch.full_like(loc[:, :1], start), loc[:, :-1]], dim=1)


@dataclass
class _History:
    bc: list[dict[str, Any]] = field(default_factory=list)
    gail: list[dict[str, Any]] = field(default_factory=list)


# ----------------------------------------------------------------------------- baseline
@register_baseline
class PateGail(Baseline):
    """GAIL of next-station decisions with PPO and PATE-style private reward aggregation.

    Fitted: the policy weights (the discriminators are training-time only and not kept).
    """

    name: ClassVar[str] = "pategail"
    produces: ClassVar[frozenset[str]] = frozenset({"locations"})
    config_class: ClassVar[type[Any]] = PateGailConfig

    def __init__(self, config: PateGailConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.per_day: int | None = None
        self.xy: np.ndarray | None = None  # (N, 2) projected station coordinates, km
        self.policy: _Policy | None = None
        self.history = _History()
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------ privacy statement
    def privacy(self) -> dict[str, Any]:
        """The privacy setting of this model, for a results table."""
        c = self.config
        scale = noise_scale(c.noise, c.parties, c.reward_clip, c.epsilon, c.delta)
        return {
            "parties": c.parties, "noise": c.noise, "reward_clip": c.reward_clip,
            "epsilon_per_release": None if c.noise == "none" else c.epsilon,
            "delta_per_release": {"gaussian": c.delta, "laplace": 0.0}.get(c.noise),
            "noise_scale": scale, "sensitivity": 2.0 * c.reward_clip / c.parties,
            "releases_per_iteration": c.rollouts * (self.T or 0), "iterations": c.gail_iterations,
            "bc_warm_start_epochs": c.bc_epochs, "bc_is_private": c.bc_epochs == 0,
            "composition": "not tracked (guarantee per released reward)",
        }

    # ------------------------------------------------------------------ helpers
    def _party_index(self, train: PreparedDataset, seed: int) -> list[torch.Tensor]:
        P = self.config.parties
        if "user" in train.samples.columns:
            users = train.samples["user"].astype(str).to_numpy()
        else:
            users = np.arange(train.n_samples).astype(str)
        uniq = np.unique(users)
        if P > uniq.size:
            raise InputError(f"parties = {P} but the training set has {uniq.size} users",
                             where="baselines.pategail.parties", fix=f"use at most {uniq.size} parties")
        order = np.random.default_rng(seed).permutation(uniq.size)
        party_of_user = np.empty(uniq.size, dtype=np.int64)
        party_of_user[order] = np.arange(uniq.size) % P
        party = party_of_user[np.searchsorted(uniq, users)]
        return [torch.from_numpy(np.flatnonzero(party == p)) for p in range(P)]

    def _tod(self) -> torch.Tensor:
        assert self.T is not None and self.per_day is not None
        return time_of_day(self.T, self.per_day).to(self.device)

    def _nll(self, policy: _Policy, loc: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per slot of real trajectories ``loc (B, T)`` (teacher forced)."""
        assert self.n_stations is not None
        logits, _ = policy(_shift(loc, self.n_stations), self._tod())
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), loc.reshape(-1))

    @torch.no_grad()
    def _rollout(self, policy: _Policy, n: int, g: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
        assert self.T is not None and self.n_stations is not None
        tod = self._tod()
        prev = torch.full((n,), self.n_stations, dtype=torch.long, device=self.device)
        hx = None
        out = torch.empty((n, self.T), dtype=torch.long, device=self.device)
        for t in range(self.T):
            logits, hx = policy.step(prev, tod[t], hx)
            probs = torch.softmax(logits.double() / temperature, dim=-1)
            prev = sample_categorical(probs.cpu(), g).to(self.device)
            out[:, t] = prev
        return out

    @torch.no_grad()
    def _val_nll(self, policy: _Policy, val: torch.Tensor | None) -> float | None:
        if val is None:
            return None
        policy.eval()
        total = 0.0
        bs = self.config.train.sample_batch_size
        for a in range(0, val.shape[0], bs):
            xb = val[a:a + bs].to(self.device)
            total += float(self._nll(policy, xb)) * xb.shape[0]
        policy.train()
        return total / val.shape[0]

    @staticmethod
    def _clip_step(params: list[nn.Parameter], opt: torch.optim.Optimizer, loss: torch.Tensor,
                   clip: float) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            nn.utils.clip_grad_norm_(params, clip)
        opt.step()

    # ------------------------------------------------------------------ fit
    def fit(self, train: PreparedDataset, *, val: PreparedDataset | None = None,
            progress: bool = True) -> PateGail:
        cfg: PateGailConfig = self.config
        tc = cfg.train
        t0 = time.perf_counter()
        self._remember_shape(train)
        N, T = train.n_stations, train.T
        self.per_day = bins_per_day(train, "baselines.pategail.fit")
        self.xy = StationSnapper(train.coords).project(train.coords)
        self.device = resolve_device(tc.device)
        data = torch.from_numpy(train.locations.astype(np.int64))
        val_data = None
        if val is not None and val.n_samples:
            if val.T != T or val.n_stations != N:
                raise InputError(f"validation set T = {val.T}, N = {val.n_stations} differs from the "
                                 f"training set's T = {T}, N = {N}", where="baselines.pategail.fit")
            val_data = torch.from_numpy(val.locations.astype(np.int64))
        parties = self._party_index(train, tc.seed)
        resume = ResumeFile(tc.checkpoint, to_dict(cfg), train, ("gail_iterations", "temperature"),
                            "baselines.pategail")
        xy = torch.from_numpy(self.xy).float()
        with local_rng(tc.seed), cpu_threads(tc.threads):
            policy = _Policy(N, self.per_day, cfg.d_model).to(self.device)
            discs = [_Discriminator(N, self.per_day, cfg.d_disc, xy).to(self.device)
                     for _ in range(cfg.parties)]
            pi_params = list(policy.parameters())
            opt_pi = torch.optim.AdamW(pi_params, lr=tc.lr, weight_decay=tc.weight_decay)
            opt_d = [torch.optim.AdamW(d.parameters(), lr=cfg.disc_lr, weight_decay=tc.weight_decay)
                     for d in discs]
            g = torch.Generator().manual_seed(tc.seed)
            self.history = _History()
            bc_done = it_done = 0
            state = resume.load()
            if state is not None:
                policy.load_state_dict(state["policy"])
                opt_pi.load_state_dict(state["opt_policy"])
                for d, o, sd, so in zip(discs, opt_d, state["discs"], state["opt_discs"], strict=True):
                    d.load_state_dict(sd)
                    o.load_state_dict(so)
                g.set_state(state["generator"])
                bc_done, it_done = int(state["bc_epochs"]), int(state["iterations"])
                self.history = _History(list(state["history_bc"]), list(state["history_gail"]))
                if it_done > cfg.gail_iterations:
                    raise InputError(f"the training checkpoint has {it_done} iterations, more than "
                                     f"gail_iterations = {cfg.gail_iterations}",
                                     where="baselines.pategail.train.checkpoint",
                                     fix="ask for at least as many iterations, or use a new checkpoint file")

            def save(bc: int, it: int) -> None:
                resume.save({
                    "policy": policy.state_dict(), "opt_policy": opt_pi.state_dict(),
                    "discs": [d.state_dict() for d in discs], "opt_discs": [o.state_dict() for o in opt_d],
                    "generator": g.get_state(), "bc_epochs": bc, "iterations": it,
                    "history_bc": self.history.bc, "history_gail": self.history.gail})

            total = (cfg.bc_epochs - bc_done) * math.ceil(train.n_samples / tc.batch_size) + max(
                cfg.gail_iterations - it_done, 0)
            bar = tqdm(total=total, desc="fit pategail", disable=not progress, leave=False)
            policy.train()
            # ---- behaviour-cloning warm start
            for epoch in range(bc_done, cfg.bc_epochs):
                perm = torch.randperm(train.n_samples, generator=g)
                losses = []
                for a in range(0, train.n_samples, tc.batch_size):
                    loss = self._nll(policy, data[perm[a:a + tc.batch_size]].to(self.device))
                    self._clip_step(pi_params, opt_pi, loss, tc.grad_clip)
                    losses.append(float(loss.detach()))
                    bar.update(1)
                    bar.set_postfix(bc_nll=f"{losses[-1]:.3f}", refresh=False)
                rec = {"epoch": epoch + 1, "nll": float(np.mean(losses)),
                       "val_nll": self._val_nll(policy, val_data)}
                self.history.bc.append(rec)
                logger.debug("pategail bc %s", rec)
                if (epoch + 1) % tc.checkpoint_every == 0 or epoch + 1 == cfg.bc_epochs:
                    save(epoch + 1, 0)
            # ---- adversarial iterations
            for it in range(it_done, cfg.gail_iterations):
                rec = self._gail_iteration(policy, discs, opt_pi, opt_d, data, parties, g)
                rec["iteration"] = it + 1
                rec["val_nll"] = self._val_nll(policy, val_data)
                self.history.gail.append(rec)
                bar.update(1)
                bar.set_postfix(d_acc=f"{rec['d_acc']:.2f}", reward=f"{rec['reward']:.2f}", refresh=False)
                if (it + 1) % tc.checkpoint_every == 0 or it + 1 == cfg.gail_iterations:
                    save(cfg.bc_epochs, it + 1)
            bar.close()
        self.policy = policy.eval()
        self.policy.requires_grad_(False)
        logger.info("pategail fitted in %.1fs (%d BC epochs, %d GAIL iterations, privacy %s)",
                    time.perf_counter() - t0, cfg.bc_epochs, cfg.gail_iterations, self.privacy())
        return self

    def _gail_iteration(self, policy: _Policy, discs: list[_Discriminator], opt_pi: torch.optim.Optimizer,
                        opt_d: Sequence[torch.optim.Optimizer], data: torch.Tensor,
                        parties: list[torch.Tensor], g: torch.Generator) -> dict[str, Any]:
        cfg: PateGailConfig = self.config
        tc = cfg.train
        assert self.n_stations is not None
        N, B, tod = self.n_stations, cfg.rollouts, self._tod()
        policy.eval()
        fake = self._rollout(policy, B, g)  # (B, T)
        policy.train()
        fake_prev = _shift(fake, N)
        # ---- each party's discriminator on its own real data
        d_losses, d_accs = [], []
        for D, opt, idx in zip(discs, opt_d, parties, strict=True):
            for _ in range(cfg.disc_steps):
                real = data[idx[torch.randint(idx.numel(), (B,), generator=g)]].to(self.device)
                lr_ = D(_shift(real, N), real, tod)
                lf = D(fake_prev, fake, tod)
                loss = (F.binary_cross_entropy_with_logits(lr_, torch.ones_like(lr_))
                        + F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf)))
                self._clip_step(list(D.parameters()), opt, loss, tc.grad_clip)
                d_losses.append(float(loss.detach()))
                d_accs.append(0.5 * float((lr_ > 0).float().mean() + (lf < 0).float().mean()))
        # ---- the server's reward: PATE-style aggregate of the parties' rewards
        with torch.no_grad():
            party_r = torch.stack([D(fake_prev, fake, tod) for D in discs])  # (P, B, T)
            reward = aggregate_rewards(party_r, noise=cfg.noise, clip=cfg.reward_clip, epsilon=cfg.epsilon,
                                       delta=cfg.delta, generator=g)
            logits, values = policy(fake_prev, tod)
            logp_old = torch.log_softmax(logits, -1).gather(-1, fake[..., None]).squeeze(-1)
            adv = torch.zeros_like(reward)
            last = torch.zeros(B, device=reward.device)
            T = reward.shape[1]
            for t in reversed(range(T)):
                v_next = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
                delta = reward[:, t] + cfg.gamma * v_next - values[:, t]
                last = delta + cfg.gamma * cfg.gae_lambda * last
                adv[:, t] = last
            ret = adv + values
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        # ---- PPO (policy and critic clipped apart)
        v_params = list(policy.value.parameters())
        pi_params = [p for n, p in policy.named_parameters() if not n.startswith("value.")]
        ppo_losses, entropies = [], []
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(B, generator=g)
            for a in range(0, B, cfg.ppo_minibatch):
                mb = perm[a:a + cfg.ppo_minibatch].to(self.device)
                logits, v = policy(fake_prev[mb], tod)
                logp_all = torch.log_softmax(logits, -1)
                logp = logp_all.gather(-1, fake[mb][..., None]).squeeze(-1)
                ratio = torch.exp(logp - logp_old[mb])
                surr = torch.minimum(ratio * adv[mb],
                                     ratio.clamp(1 - cfg.clip_ratio, 1 + cfg.clip_ratio) * adv[mb])
                entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
                loss = -surr.mean() + cfg.value_coef * F.mse_loss(v, ret[mb]) - cfg.entropy_coef * entropy
                if cfg.bc_coef > 0:
                    real = data[torch.randint(data.shape[0], (mb.numel(),), generator=g)].to(self.device)
                    loss = loss + cfg.bc_coef * self._nll(policy, real)
                opt_pi.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip > 0:
                    nn.utils.clip_grad_norm_(pi_params, tc.grad_clip)
                    nn.utils.clip_grad_norm_(v_params, tc.grad_clip)
                opt_pi.step()
                ppo_losses.append(float(loss.detach()))
                entropies.append(float(entropy.detach()))
        changes = float((fake[:, 1:] != fake[:, :-1]).float().sum(1).mean())
        return {"d_loss": float(np.mean(d_losses)), "d_acc": float(np.mean(d_accs)),
                "reward": float(reward.mean()), "ppo_loss": float(np.mean(ppo_losses)),
                "entropy": float(np.mean(entropies)), "changes_per_sample": changes}

    # ------------------------------------------------------------------ generate
    def log_likelihood(self, ds: PreparedDataset) -> float:
        """Mean log-likelihood per slot of ``ds``'s trajectories under the policy."""
        self._check_fitted()
        assert self.policy is not None
        nll = self._val_nll(self.policy, torch.from_numpy(ds.locations.astype(np.int64)))
        self.policy.eval()
        return -float(nll or 0.0)

    def generate(self, n: int, *, seed: int, progress: bool = True) -> GeneratedSeries:
        self._check_fitted()
        self._check_n(n)
        assert self.policy is not None and self.T is not None
        g = torch.Generator().manual_seed(int(seed))
        bs = self.config.train.sample_batch_size
        out = np.empty((n, self.T), dtype=np.int32)
        with cpu_threads(self.config.train.threads):
            for a in tqdm(range(0, n, bs), desc="generate pategail", disable=not progress, leave=False):
                b = min(a + bs, n)
                out[a:b] = self._rollout(self.policy, b - a, g, self.config.temperature).cpu().numpy()
        return GeneratedSeries(locations=out)

    # ------------------------------------------------------------------ state
    def _get_state(self) -> dict[str, Any]:
        assert self.policy is not None
        return {"per_day": self.per_day, "xy": self.xy,
                "policy": {k: v.detach().cpu() for k, v in self.policy.state_dict().items()},
                "history": {"bc": self.history.bc, "gail": self.history.gail}}

    def _set_state(self, state: dict[str, Any]) -> None:
        assert self.n_stations is not None
        self.per_day = int(state["per_day"])
        self.xy = np.asarray(state["xy"], dtype=np.float64)
        self.device = loading_device(self.config.train.device, self.name)
        with local_rng(0):
            policy = _Policy(self.n_stations, self.per_day, self.config.d_model)
        policy.load_state_dict(state["policy"])
        self.policy = policy.to(self.device).eval()
        self.policy.requires_grad_(False)
        hist = state.get("history") or {}
        self.history = _History(list(hist.get("bc", [])), list(hist.get("gail", [])))
