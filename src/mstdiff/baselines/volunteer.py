"""VOLUNTEER-style trajectory generator: a two-level VAE over users and their visit sequences.

Re-implemented from the description in Long, Tian, Liu, Chen, Liu, Cui & Zhou, "Practical Synthetic
Human Trajectories Generation Based on Variational Point Processes" (VOLUNTEER), KDD 2023 (nothing
copied): a **user VAE** learns the distribution of user-level attributes, and a **trajectory VAE**,
conditioned on a user's attributes, generates the user's visits as a (here discrete-time) point
process in which each visit has a location, a **dwell time** and a **travel time** to the next visit,
modelled by separate (decoupled) heads. On our prepared data, on 30-minute slots:

- a trajectory is its sequence of visits = maximal runs of one station: ``(s_k, d_k, τ_k)`` with
  arrival slot ``a_k = Σ_{j<k} (d_j + τ_j)``; preparation carries the last location forward, so the
  observed travel times are all 0 slots (the travel head learns that; on data with explicit gaps it
  would carry information). When generating, travel slots keep the previous station (as preparation
  does) and visits are drawn until the window's ``T`` slots are filled;
- **user attributes** (one vector per user, from all of the user's training days): home = the most
  frequent station in the night hours ``home_hours`` (x, y in km, standardised), log of the mean
  number of visits per day, log of the mean distinct stations per day, and ``log1p`` of the mean
  radius of gyration (km). The user VAE is fitted on one attribute vector per **sample** (a user with
  more days weighs more, as in the real set); generation draws ``z_u ~ N(0, I)`` and samples the
  attributes from the decoder's Gaussian;
- **trajectory VAE**: GRU encoder over the visit tokens (location, dwell, travel and arrival
  time-of-day embeddings) with the attributes → ``q(z | visits, attributes)``; autoregressive GRU
  decoder from ``(z, attributes)``: location (softmax over all N stations, tied to the embedding
  table, the previous visit's station excluded since visits are runs, plus a learned distance-to-home
  term ``−softplus(β) · km``), then dwell (categorical over ``1..T`` slots given the location; the
  last visit's dwell is right-censored by the window end and scored by its survival ``P(d ≥ d_obs)``),
  then travel (categorical over ``0..T-1`` given location and dwell);
- loss: both ELBOs, the trajectory KL weight warmed up linearly over ``kl_warmup_steps``.

Where the paper's exact architecture is not public here, the standard option is used (one-layer
GRUs, diagonal Gaussian posteriors, MLP user VAE). Seeded (``local_rng`` for the weights, a
``torch.Generator`` for the data order and the reparameterisation noise) and resumable
(:mod:`mstdiff.baselines._sequence`; ``epochs`` may grow between runs).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from mstdiff.baselines._learned import cpu_threads
from mstdiff.baselines._sequence import ResumeFile, SequenceTrainConfig, bins_per_day
from mstdiff.baselines.base import Baseline, GeneratedSeries, positive, register_baseline
from mstdiff.baselines.difftraj import StationSnapper
from mstdiff.config import to_dict
from mstdiff.data.dataset import PreparedDataset
from mstdiff.diffusion.common import sample_categorical
from mstdiff.errors import InputError
from mstdiff.training.utils import loading_device, local_rng, resolve_device

logger = logging.getLogger(__name__)

__all__ = ["Volunteer", "VolunteerConfig", "user_attributes", "visits"]

N_ATTR = 5  # home x, home y, log visits/day, log distinct/day, log1p radius of gyration


@dataclass
class VolunteerConfig:
    """VOLUNTEER-style two-level VAE trajectory baseline (see the module docstring)."""

    d_model: int = 64  # embedding and GRU width of the trajectory VAE
    latent_dim: int = 16  # trajectory latent z
    user_latent_dim: int = 4  # user latent z_u
    user_hidden: int = 32  # hidden width of the user VAE's MLPs
    epochs: int = 30  # passes over the training samples
    kl_weight: float = 1.0  # weight of the trajectory KL after warm-up
    kl_warmup_steps: int = 500  # linear warm-up of the trajectory KL weight from 0
    home_hours: tuple[int, int] = (0, 6)  # hours of the day whose most frequent station is "home"
    temperature: float = 1.0  # softmax temperature of the location, dwell and travel heads when generating
    train: SequenceTrainConfig = field(default_factory=SequenceTrainConfig)  # optimisation

    def validate(self) -> None:
        where = "baselines.volunteer"
        positive(where, d_model=self.d_model, latent_dim=self.latent_dim,
                 user_latent_dim=self.user_latent_dim, user_hidden=self.user_hidden,
                 temperature=self.temperature)
        if self.epochs < 0 or self.kl_warmup_steps < 0 or self.kl_weight < 0:
            raise InputError(f"epochs = {self.epochs}, kl_weight = {self.kl_weight}, kl_warmup_steps = "
                             f"{self.kl_warmup_steps}", where=where, fix="use non-negative values")
        h0, h1 = self.home_hours
        if not 0 <= h0 < h1 <= 24:
            raise InputError(f"home_hours = {self.home_hours}", where=f"{where}.home_hours",
                             fix="use [start, end) hours with 0 <= start < end <= 24, e.g. [0, 6]")
        self.train.validate(where)


# ----------------------------------------------------------------------------- data
def visits(row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Visits of one trajectory: stations, dwell slots, travel slots (0: carried forward) and
    arrival slots of its maximal runs."""
    row = np.asarray(row)
    starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
    dwell = np.diff(np.r_[starts, row.size])
    return row[starts], dwell, np.zeros_like(dwell), starts


def _radius_km(xy: np.ndarray) -> np.ndarray:
    """Radius of gyration (km) of each row of points ``(U, T, 2)``."""
    return np.sqrt(((xy - xy.mean(axis=1, keepdims=True)) ** 2).sum(-1).mean(-1))


def user_attributes(ds: PreparedDataset, xy: np.ndarray, home_slots: np.ndarray) -> np.ndarray:
    """Raw user attributes ``(U, 5)`` of every sample (those of its user): home x, y (km), log mean
    visits per day, log mean distinct stations per day, log1p mean radius of gyration (km)."""
    loc = ds.locations
    users = (ds.samples["user"].astype(str).to_numpy() if "user" in ds.samples.columns
             else np.arange(ds.n_samples).astype(str))
    n_visits = 1 + (loc[:, 1:] != loc[:, :-1]).sum(1)
    distinct = np.array([np.unique(r).size for r in loc])
    radius = _radius_km(xy[loc])
    out = np.empty((ds.n_samples, N_ATTR), dtype=np.float64)
    uniq, inv = np.unique(users, return_inverse=True)
    for u in range(uniq.size):
        idx = np.flatnonzero(inv == u)
        night = loc[idx][:, home_slots].ravel()
        home = np.bincount(night if night.size else loc[idx].ravel()).argmax()
        out[idx] = [xy[home, 0], xy[home, 1], np.log(n_visits[idx].mean()), np.log(distinct[idx].mean()),
                    np.log1p(radius[idx].mean())]
    return out


@dataclass
class _Batch:
    loc: torch.Tensor  # (B, K) stations (padded with 0)
    dwell: torch.Tensor  # (B, K) slots, 1..T
    travel: torch.Tensor  # (B, K) slots, 0..T-1
    arrive: torch.Tensor  # (B, K) arrival slot
    mask: torch.Tensor  # (B, K) bool: a real visit
    last: torch.Tensor  # (B,) index of the last visit (its dwell is censored)
    attr: torch.Tensor  # (B, 5) standardised user attributes


def _pad_visits(rows: np.ndarray, attr: np.ndarray) -> _Batch:
    vs = [visits(r) for r in rows]
    K = max(v[0].size for v in vs)
    arr = np.zeros((4, len(vs), K), dtype=np.int64)
    mask = np.zeros((len(vs), K), dtype=bool)
    for i, v in enumerate(vs):
        k = v[0].size
        for j in range(4):
            arr[j, i, :k] = v[j]
        mask[i, :k] = True
    arr[1][~mask] = 1
    t = [torch.from_numpy(a) for a in arr]
    return _Batch(t[0], t[1], t[2], t[3], torch.from_numpy(mask), torch.from_numpy(mask.sum(1) - 1),
                  torch.from_numpy(attr).float())


# ----------------------------------------------------------------------------- networks
class _UserVAE(nn.Module):
    def __init__(self, hidden: int, latent: int) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(N_ATTR, hidden), nn.SiLU(), nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.SiLU(), nn.Linear(hidden, N_ATTR))
        self.log_sigma = nn.Parameter(torch.full((N_ATTR,), -1.0))
        self.latent = latent

    def loss(self, a: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        mu, logvar = self.enc(a).chunk(2, dim=-1)
        z = mu + torch.randn(mu.shape, generator=g) * torch.exp(0.5 * logvar)
        rec = self.dec(z)
        nll = 0.5 * (((a - rec) / self.log_sigma.exp()) ** 2).sum(-1) + self.log_sigma.sum()
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(-1)
        return (nll + kl).mean()

    @torch.no_grad()
    def sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        z = torch.randn((n, self.latent), generator=g)
        return self.dec(z) + self.log_sigma.exp() * torch.randn((n, N_ATTR), generator=g)


class _TrajVAE(nn.Module):
    xy: torch.Tensor
    attr_mean: torch.Tensor
    attr_std: torch.Tensor

    def __init__(self, N: int, T: int, per_day: int, d: int, latent: int, xy: torch.Tensor,
                 attr_mean: torch.Tensor, attr_std: torch.Tensor) -> None:
        super().__init__()
        self.N, self.T, self.per_day, self.latent = N, T, per_day, latent
        self.station = nn.Embedding(N + 1, d)  # N: start token
        self.dwell_emb = nn.Embedding(T + 1, d)
        self.travel_emb = nn.Embedding(T + 1, d)
        self.tod = nn.Embedding(per_day, d)
        self.enc = nn.GRU(d, d, batch_first=True)
        self.post = nn.Linear(d + N_ATTR, 2 * latent)
        self.init = nn.Linear(latent + N_ATTR, d)
        self.cond = nn.Linear(latent + N_ATTR, d)
        self.dec = nn.GRU(d, d, batch_first=True)
        self.query = nn.Linear(d, d)
        self.bias = nn.Parameter(torch.zeros(N))
        self.beta = nn.Parameter(torch.tensor(-1.0))  # distance-to-home weight, softplus(beta) ≥ 0
        self.dwell_head = nn.Sequential(nn.Linear(2 * d, d), nn.SiLU(), nn.Linear(d, T))
        self.travel_head = nn.Sequential(nn.Linear(3 * d, d), nn.SiLU(), nn.Linear(d, T))
        nn.init.normal_(self.station.weight, std=d ** -0.5)
        self.register_buffer("xy", xy.float())  # (N, 2) km
        self.register_buffer("attr_mean", attr_mean.float())
        self.register_buffer("attr_std", attr_std.float())

    def _tokens(self, loc: torch.Tensor, dwell: torch.Tensor, travel: torch.Tensor,
                arrive: torch.Tensor) -> torch.Tensor:
        return (self.station(loc) + self.dwell_emb(dwell.clamp(max=self.T))
                + self.travel_emb(travel.clamp(max=self.T)) + self.tod(arrive % self.per_day))

    def _loc_logits(self, h: torch.Tensor, prev_loc: torch.Tensor, attr: torch.Tensor) -> torch.Tensor:
        logits = self.query(h) @ self.station.weight[: self.N].T + self.bias  # (B, K, N)
        home = attr[:, :2] * self.attr_std[:2] + self.attr_mean[:2]  # (B, 2) km
        dist = torch.cdist(home, self.xy)  # (B, N)
        logits = logits - F.softplus(self.beta) * dist[:, None, :]
        no_repeat = F.one_hot(prev_loc.clamp(max=self.N - 1), self.N).bool() & (prev_loc < self.N)[..., None]
        return logits.masked_fill(no_repeat, float("-inf"))

    def _dwell_logits(self, h: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
        return self.dwell_head(torch.cat([h, self.station(loc)], -1))  # (.., T): dwell 1..T

    def _travel_logits(self, h: torch.Tensor, loc: torch.Tensor, dwell: torch.Tensor) -> torch.Tensor:
        return self.travel_head(torch.cat([h, self.station(loc), self.dwell_emb(dwell)], -1))  # 0..T-1

    def loss(self, b: _Batch, g: torch.Generator, kl_w: float) -> tuple[torch.Tensor, dict[str, float]]:
        B, K = b.loc.shape
        tok = self._tokens(b.loc, b.dwell, b.travel, b.arrive)
        h_enc, _ = self.enc(tok)
        h_last = h_enc[torch.arange(B), b.last]
        mu, logvar = self.post(torch.cat([h_last, b.attr], -1)).chunk(2, -1)
        z = mu + torch.randn(mu.shape, generator=g).to(mu.device) * torch.exp(0.5 * logvar)
        zc = torch.cat([z, b.attr], -1)
        start = torch.full((B, 1), self.N, dtype=torch.long, device=b.loc.device)
        prev_loc = torch.cat([start, b.loc[:, :-1]], 1)
        prev_tok = torch.cat([self.station(start), tok[:, :-1]], 1)
        x = prev_tok + self.tod(b.arrive % self.per_day) + self.cond(zc)[:, None]
        h, _ = self.dec(x, torch.tanh(self.init(zc))[None])
        m = b.mask.float()
        lp_loc = torch.log_softmax(self._loc_logits(h, prev_loc, b.attr), -1)
        # padded visits may repeat the previous (padding) station: -inf there, so select, don't multiply
        nll_loc = -torch.where(b.mask, lp_loc.gather(-1, b.loc[..., None]).squeeze(-1), 0.0).sum(1)
        lp_dw = torch.log_softmax(self._dwell_logits(h, b.loc), -1)  # (B, K, T)
        exact = lp_dw.gather(-1, (b.dwell - 1).clamp(0, self.T - 1)[..., None]).squeeze(-1)
        survival = torch.logcumsumexp(lp_dw.flip(-1), -1).flip(-1)  # log P(d ≥ j + 1)
        censored = survival.gather(-1, (b.dwell - 1).clamp(0, self.T - 1)[..., None]).squeeze(-1)
        is_last = F.one_hot(b.last, K).bool()
        nll_dw = -(torch.where(is_last, censored, exact) * m).sum(1)
        lp_tr = torch.log_softmax(self._travel_logits(h, b.loc, b.dwell.clamp(max=self.T)), -1)
        # the last visit's travel time is not observed (the window ends during its dwell)
        m_tr = m * (~is_last).float()
        nll_tr = -(lp_tr.gather(-1, b.travel.clamp(max=self.T - 1)[..., None]).squeeze(-1) * m_tr).sum(1)
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(-1)
        loss = (nll_loc + nll_dw + nll_tr + kl_w * kl).mean()
        stats = {"nll_loc": float(nll_loc.detach().mean()), "nll_dwell": float(nll_dw.detach().mean()),
                 "nll_travel": float(nll_tr.detach().mean()), "kl": float(kl.detach().mean())}
        return loss, stats

    @torch.no_grad()
    def sample(self, attr: torch.Tensor, g: torch.Generator, temperature: float) -> torch.Tensor:
        """Trajectories ``(B, T)`` of stations for standardised attributes ``attr (B, 5)``."""
        B, dev = attr.shape[0], attr.device
        z = torch.randn((B, self.latent), generator=g).to(dev)
        zc = torch.cat([z, attr], -1)
        cond = self.cond(zc)
        hx = torch.tanh(self.init(zc))[None]
        out = torch.zeros((B, self.T), dtype=torch.long, device=dev)
        prev_loc = torch.full((B,), self.N, dtype=torch.long, device=dev)
        prev_tok = self.station(prev_loc)
        arrive = torch.zeros(B, dtype=torch.long, device=dev)
        ar = torch.arange(self.T, device=dev)

        def draw(logits: torch.Tensor) -> torch.Tensor:
            return sample_categorical(torch.softmax(logits.double() / temperature, -1).cpu(), g).to(dev)

        for _ in range(self.T):
            active = arrive < self.T
            if not bool(active.any()):
                break
            x = prev_tok + self.tod(arrive.clamp(max=self.T - 1) % self.per_day) + cond
            h, hx = self.dec(x[:, None], hx)
            loc = draw(self._loc_logits(h, prev_loc[:, None], attr)[:, 0])
            dwell = draw(self._dwell_logits(h[:, 0], loc)) + 1
            travel = draw(self._travel_logits(h[:, 0], loc, dwell))
            # slots [arrive, arrive + dwell + travel) at loc (travel slots carry loc forward)
            end = arrive + dwell + travel
            fill = active[:, None] & (ar[None] >= arrive[:, None]) & (ar[None] < end[:, None])
            out = torch.where(fill, loc[:, None], out)
            tok = self._tokens(loc, dwell, travel, arrive.clamp(max=self.T - 1))
            prev_tok = torch.where(active[:, None], tok, prev_tok)
            prev_loc = torch.where(active, loc, prev_loc)
            arrive = torch.where(active, arrive + dwell + travel, arrive)
        return out


@dataclass
class _History:
    epochs: list[dict[str, float | None]] = field(default_factory=list)


# ----------------------------------------------------------------------------- baseline
@register_baseline
class Volunteer(Baseline):
    """Two-level VAE (user attributes, visit sequences with decoupled dwell and travel times).

    Fitted: both VAEs' weights and the attributes' standardisation.
    """

    name: ClassVar[str] = "volunteer"
    produces: ClassVar[frozenset[str]] = frozenset({"locations"})
    config_class: ClassVar[type[Any]] = VolunteerConfig

    def __init__(self, config: VolunteerConfig | dict[str, Any] | None = None) -> None:
        super().__init__(config)
        self.per_day: int | None = None
        self.xy: np.ndarray | None = None
        self.attr_mean: np.ndarray | None = None
        self.attr_std: np.ndarray | None = None
        self.user_vae: _UserVAE | None = None
        self.traj_vae: _TrajVAE | None = None
        self.history = _History()
        self.device = torch.device("cpu")

    def _home_slots(self) -> np.ndarray:
        assert self.T is not None and self.per_day is not None
        h0, h1 = self.config.home_hours
        tod_h = (np.arange(self.T) % self.per_day) * 24.0 / self.per_day
        return np.flatnonzero((tod_h >= h0) & (tod_h < h1))

    def _attributes(self, ds: PreparedDataset) -> np.ndarray:
        assert self.xy is not None and self.attr_mean is not None and self.attr_std is not None
        raw = user_attributes(ds, self.xy, self._home_slots())
        return ((raw - self.attr_mean) / self.attr_std).astype(np.float32)

    def _build(self) -> tuple[_UserVAE, _TrajVAE]:
        cfg = self.config
        assert self.n_stations is not None and self.T is not None and self.per_day is not None
        assert self.xy is not None and self.attr_mean is not None and self.attr_std is not None
        user = _UserVAE(cfg.user_hidden, cfg.user_latent_dim)
        traj = _TrajVAE(self.n_stations, self.T, self.per_day, cfg.d_model, cfg.latent_dim,
                        torch.from_numpy(self.xy), torch.from_numpy(self.attr_mean),
                        torch.from_numpy(self.attr_std))
        return user.to(self.device), traj.to(self.device)

    def _kl_weight(self, step: int) -> float:
        w = self.config.kl_warmup_steps
        return self.config.kl_weight * (1.0 if w == 0 else min(1.0, step / w))

    def _to(self, b: _Batch) -> _Batch:
        fields = ("loc", "dwell", "travel", "arrive", "mask", "last", "attr")
        return _Batch(*(getattr(b, f).to(self.device) for f in fields))

    @torch.no_grad()
    def _val_loss(self, user: _UserVAE, traj: _TrajVAE, rows: np.ndarray, attr: np.ndarray) -> float:
        g = torch.Generator().manual_seed(7919)
        total = 0.0
        bs = self.config.train.sample_batch_size
        for a in range(0, rows.shape[0], bs):
            b = self._to(_pad_visits(rows[a:a + bs], attr[a:a + bs]))
            lt, _ = traj.loss(b, g, 1.0)
            total += float(lt + user.loss(b.attr, g)) * rows[a:a + bs].shape[0]
        return total / rows.shape[0]

    def fit(self, train: PreparedDataset, *, val: PreparedDataset | None = None,
            progress: bool = True) -> Volunteer:
        cfg: VolunteerConfig = self.config
        tc = cfg.train
        t0 = time.perf_counter()
        self._remember_shape(train)
        self.per_day = bins_per_day(train, "baselines.volunteer.fit")
        self.xy = StationSnapper(train.coords).project(train.coords)
        self.device = resolve_device(tc.device)
        raw = user_attributes(train, self.xy, self._home_slots())
        self.attr_mean = raw.mean(0)
        std = raw.std(0)
        self.attr_std = np.where(std > 1e-9, std, 1.0)
        attr = ((raw - self.attr_mean) / self.attr_std).astype(np.float32)
        rows = train.locations
        val_rows = val_attr = None
        if val is not None and val.n_samples:
            if val.T != train.T or val.n_stations != train.n_stations:
                raise InputError("the validation set's T or stations differ from the training set's",
                                 where="baselines.volunteer.fit")
            val_rows, val_attr = val.locations, self._attributes(val)
        resume = ResumeFile(tc.checkpoint, to_dict(cfg), train, ("epochs", "temperature"),
                            "baselines.volunteer")
        U = train.n_samples
        with local_rng(tc.seed), cpu_threads(tc.threads):
            user, traj = self._build()
            params = list(user.parameters()) + list(traj.parameters())
            opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
            g = torch.Generator().manual_seed(tc.seed)
            self.history = _History()
            done, step = 0, 0
            state = resume.load()
            if state is not None:
                user.load_state_dict(state["user"])
                traj.load_state_dict(state["traj"])
                opt.load_state_dict(state["opt"])
                g.set_state(state["generator"])
                done, step = int(state["epochs"]), int(state["step"])
                self.history = _History(list(state["history"]))
                if done > cfg.epochs:
                    raise InputError(f"the training checkpoint has {done} epochs, more than "
                                     f"epochs = {cfg.epochs}",
                                     where="baselines.volunteer.train.checkpoint",
                                     fix="ask for at least as many epochs, or use a new checkpoint file")
            per_epoch = math.ceil(U / tc.batch_size)
            bar = tqdm(total=(cfg.epochs - done) * per_epoch, desc="fit volunteer", disable=not progress,
                       leave=False)
            for epoch in range(done, cfg.epochs):
                perm = torch.randperm(U, generator=g).numpy()
                losses: list[float] = []
                for a in range(0, U, tc.batch_size):
                    idx = perm[a:a + tc.batch_size]
                    b = self._to(_pad_visits(rows[idx], attr[idx]))
                    lt, stats = traj.loss(b, g, self._kl_weight(step))
                    loss = lt + user.loss(b.attr, g)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if tc.grad_clip > 0:
                        nn.utils.clip_grad_norm_(params, tc.grad_clip)
                    opt.step()
                    step += 1
                    lv = float(loss.detach())
                    if not math.isfinite(lv):
                        raise FloatingPointError(f"volunteer: loss is {lv} at step {step}; lower train.lr")
                    losses.append(lv)
                    bar.update(1)
                    bar.set_postfix(loss=f"{lv:.3f}", kl=f"{stats['kl']:.2f}", refresh=False)
                rec: dict[str, float | None] = {"epoch": epoch + 1, "step": step,
                                                "loss": float(np.mean(losses)), "val_loss": None}
                if val_rows is not None and val_attr is not None:
                    rec["val_loss"] = self._val_loss(user, traj, val_rows, val_attr)
                self.history.epochs.append(rec)
                logger.debug("volunteer %s", rec)
                if (epoch + 1) % tc.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                    resume.save({"user": user.state_dict(), "traj": traj.state_dict(),
                                 "opt": opt.state_dict(),
                                 "generator": g.get_state(), "epochs": epoch + 1, "step": step,
                                 "history": self.history.epochs})
            bar.close()
        self.user_vae, self.traj_vae = user.eval(), traj.eval()
        self.user_vae.requires_grad_(False)
        self.traj_vae.requires_grad_(False)
        logger.info("volunteer fitted in %.1fs (%d epochs, %d steps)", time.perf_counter() - t0,
                    cfg.epochs, step)
        return self

    def generate(self, n: int, *, seed: int, progress: bool = True) -> GeneratedSeries:
        self._check_fitted()
        self._check_n(n)
        assert self.user_vae is not None and self.traj_vae is not None and self.T is not None
        g = torch.Generator().manual_seed(int(seed))
        bs = self.config.train.sample_batch_size
        out = np.empty((n, self.T), dtype=np.int32)
        with cpu_threads(self.config.train.threads):
            for a in tqdm(range(0, n, bs), desc="generate volunteer", disable=not progress, leave=False):
                b = min(a + bs, n)
                attr = self.user_vae.sample(b - a, g).to(self.device)
                out[a:b] = self.traj_vae.sample(attr, g, self.config.temperature).cpu().numpy()
        return GeneratedSeries(locations=out)

    # ------------------------------------------------------------------ state
    def _get_state(self) -> dict[str, Any]:
        assert self.user_vae is not None and self.traj_vae is not None
        return {"per_day": self.per_day, "xy": self.xy, "attr_mean": self.attr_mean,
                "attr_std": self.attr_std,
                "user": {k: v.detach().cpu() for k, v in self.user_vae.state_dict().items()},
                "traj": {k: v.detach().cpu() for k, v in self.traj_vae.state_dict().items()},
                "history": self.history.epochs}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.per_day = int(state["per_day"])
        self.xy = np.asarray(state["xy"], dtype=np.float64)
        self.attr_mean = np.asarray(state["attr_mean"], dtype=np.float64)
        self.attr_std = np.asarray(state["attr_std"], dtype=np.float64)
        self.device = loading_device(self.config.train.device, self.name)
        with local_rng(0):
            user, traj = self._build()
        user.load_state_dict(state["user"])
        traj.load_state_dict(state["traj"])
        self.user_vae, self.traj_vae = user.eval(), traj.eval()
        user.requires_grad_(False)
        traj.requires_grad_(False)
        self.history = _History(list(state.get("history") or []))
