"""The MSTDiff denoiser: a multi-scale transformer with cross-attention between traffic and locations.

Reads top to bottom (DESIGN §1):

1. embeddings: the diffusion step (sinusoidal + MLP), time-aligned sinusoidal positions, a
   traffic/location type embedding, and the station table ``E (N, d)`` used both to embed the
   location input (ids → ``E[l]``; probabilities → ``p @ E``) and, tied, to score stations at the
   output;
2. one :class:`Stage` per wavelet scale, coarse to fine (cA3, cD3, cD2, cD1). A stage builds
   traffic tokens from its noisy coefficients (at the VQ-VAE's scale, cA3 by default, fused with
   the frozen VQ-VAE's codes through a learned gate) and location tokens from the location
   embedding average-pooled to its length; it adds the upsampled tokens of the previous (coarser)
   stage, runs ``layers_per_stage`` layers of self-attention + cross-attention in both directions
   (traffic ↔ location) + MLP, and predicts ε for its coefficients;
3. ε̂ = the per-scale predictions concatenated in coefficient order, aligned with ``w``;
4. location logits at full resolution, aligned with time: the finest stage's location tokens
   (length T/2) upsampled to T and added to a full-resolution path built from the location input
   itself, ``final_layers`` layers attending to themselves and to the finest traffic tokens, then
   dot products with the station table: cost O(B·T·N·d), no (N, N) table anywhere;
5. with ``copy_head`` (default) those table logits are mixed, through a learned gate, with copying a
   station of the sequence's own input and moving to one of its ``near_k`` nearest stations on the
   map (:class:`CopyHead`); the output is then log-probabilities;
6. with ``mask_token`` the location input has one more id, the absorbing process's mask (``N``);
   with ``activity_classes = K`` the slot activity ids (K classes + a mask) are embedded into the
   location stream and a head reads their logits ``(B, T, K)`` back from the full-resolution path.

N only enters through the station table and the logits, so N = 5,000 costs 5,000·d parameters.

``use_traffic = False`` is its mirror, "MSTDiff without traffic" (datasets without traffic, such as
GeoLife, and an ablation on joint data): the traffic stream of every stage is fed one learned vector
instead of wavelet coefficients, there is no VQ-VAE and no ε head (``eps`` is None); the location
stream, the cross-attention layers and the heads are unchanged.

``use_locations = False`` is the paper's ablation "MSTDiff without trajectory": the same stages,
layers and widths, but the location stream of every stage is fed one learned vector (no station
table, no trajectory input) and there are no logits. The traffic tokens still run through the
same self-/cross-attention layers, so the traffic branch has the same size and depth; only the
trajectory information (and the N·d station table, the full-resolution location path) is gone.
Token positions are the centre times of the slots a token covers (token i of a scale with stride
r sits at ``r·i + (r−1)/2``), so tokens of different scales describing the same time share a
position code.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mstdiff.config import Check, between, ge, gt, one_of
from mstdiff.data import check_T
from mstdiff.errors import InputError
from mstdiff.models.copy_head import CopyHead
from mstdiff.models.vqvae import VQVAE, init_weights_
from mstdiff.models.wavelet import SCALES, scale_slices

logger = logging.getLogger(__name__)


@dataclass
class DenoiserConfig:
    """Architecture of :class:`MSTDiffDenoiser` (nanoGPT-style: one comment per default)."""

    CHECKS: ClassVar[dict[str, Check]] = {
        "num_stations": ge(0), "seq_len": ge(1), "d_model": ge(1), "n_heads": ge(1),
        "layers_per_stage": ge(0), "final_layers": ge(0), "mlp_ratio": ge(1),
        "dropout": between(0, 1, open_hi=True), "init_std": gt(0), "location_head": one_of("cosine", "dot"),
        "near_k": ge(0), "activity_classes": ge(0),
    }

    num_stations: int = 0  # N, number of base stations; 0 = not set yet: fill in from the dataset
    seq_len: int = 48  # T, time bins per sample (48 = a day at 30 min, 336 = a week); multiple of 8
    d_model: int = 128  # width of every token; the station table is (N, d_model)
    n_heads: int = 4  # attention heads (must divide d_model): 32 dims per head by default
    layers_per_stage: int = 2  # cross-attention transformer layers per wavelet scale (4 scales)
    final_layers: int = 1  # full-resolution location layers after the finest stage
    mlp_ratio: int = 4  # hidden width of every MLP = mlp_ratio * d_model (transformer convention)
    dropout: float = 0.1  # attention and residual dropout (DDPM used 0.1 on small data)
    init_std: float = 0.02  # std of the normal init of Linear / Embedding weights (nanoGPT, GPT-2)
    use_vqvae: bool = True  # fuse the frozen pre-trained VQ-VAE at its scale (False: ablation)
    use_locations: bool = True  # False: "MSTDiff without trajectory" (traffic branch alone; ablation)
    # False: "MSTDiff without traffic" (trajectory branch alone: datasets without traffic, or ablation)
    use_traffic: bool = True
    location_head: str = "dot"  # h·E_j + b_j; "cosine": τ·cos(h, E_j) + b_j with a learned τ (init 10)
    # pointer/copy head: mix the station-table head with a distribution over the stations of the
    # sequence's own input (attention with a relative-time bias) through a learned gate
    copy_head: bool = True
    near_k: int = 16  # copy head: also move to one of the k stations nearest on the map (0: off)
    # copy head: the table's new station decays with its map distance to the stations of the nearest
    # filled slots before and after (a gravity model: popularity × learned power-law decay)
    move_decay: bool = False
    # copy head: learned attention biases toward the nearest filled slot before and after each token
    # (a copy then prefers the stations that bracket the gap) and gate logits, both by the context
    # of those slots (inside a stay, boundary, one side, span) and started at the training set's odds
    copy_nearest: bool = False
    # copy head (with copy_nearest): the copy splits in two gated parts, the stations of the nearest
    # filled slots before / after (stay, or step back to a neighbour) and the other stations of the
    # input (a return to an earlier place), each with its odds by context
    copy_split: bool = False
    # copy head (with copy_nearest): the context also says, for each of the two nearest filled slots,
    # whether the user was moving there (the filled slot beyond it holds another station), so that a
    # slot between two cells of a trip can tell itself from one between two stays
    copy_motion: bool = False
    # copy head: the table head draws new places only (the input's stations masked out of it, as
    # move_decay does): a day pattern's new label is then never one the day already holds
    table_new: bool = False
    mask_token: bool = False  # the location input has a mask id (= num_stations): absorbing noise
    # slot activity channel: K classes (3: zero / partial / full slot; 2: zero / positive), diffused as
    # its own absorbing stream beside the locations; 0: none (traffic atoms from the decoder alone)
    activity_classes: int = 0

    def validate(self) -> None:
        """Raise :class:`InputError` for a config no model can be built from."""
        if self.use_locations and self.num_stations < 2:
            raise InputError(
                f"denoiser.num_stations = {self.num_stations}",
                fix="set num_stations to the number of stations of the dataset (at least 2)",
            )
        check_T(self.seq_len, where="denoiser.seq_len")
        if self.d_model < 1 or self.n_heads < 1 or self.d_model % self.n_heads != 0:
            raise InputError(
                f"denoiser.d_model = {self.d_model} is not a positive multiple of n_heads = {self.n_heads}",
                fix="choose d_model divisible by n_heads",
            )
        if self.layers_per_stage < 1 or self.final_layers < 0 or self.mlp_ratio < 1:
            raise InputError("denoiser needs layers_per_stage >= 1, final_layers >= 0 and mlp_ratio >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"denoiser.dropout = {self.dropout} is not in [0, 1)")
        if self.location_head not in ("cosine", "dot"):
            raise InputError(f"denoiser.location_head = {self.location_head!r}", fix="use 'cosine' or 'dot'")
        if not (self.use_traffic or self.use_locations):
            raise InputError("the denoiser needs traffic or locations (use_traffic and use_locations "
                             "are both false)", fix="set at least one of them to true")
        if not self.use_traffic and self.use_vqvae:
            raise InputError("denoiser.use_vqvae needs use_traffic = true (the VQ-VAE encodes traffic)",
                             fix="set use_vqvae = false for a model without traffic")
        if (self.move_decay or self.copy_nearest) and not self.copy_head:
            raise InputError("denoiser.move_decay and copy_nearest need copy_head = true (the copy head "
                             "holds them)", fix="set copy_head = true, or both options false")
        if self.table_new and not self.copy_head:
            raise InputError("denoiser.table_new needs copy_head = true (the copy head holds it)",
                             fix="set copy_head = true, or table_new = false")
        for name in ("copy_split", "copy_motion"):
            if getattr(self, name) and not self.copy_nearest:
                raise InputError(f"denoiser.{name} needs copy_nearest = true (it works on the nearest "
                                 "filled slots)", fix=f"set copy_nearest = true, or {name} = false")
        if self.mask_token and not self.use_locations:
            raise InputError("denoiser.mask_token needs use_locations = true")
        if self.activity_classes and (not self.use_locations or not self.use_traffic
                                      or self.activity_classes < 2):
            raise InputError(f"denoiser.activity_classes = {self.activity_classes}",
                             fix="use 0 (no activity channel), or 2-3 with use_locations, use_traffic true")


@dataclass
class DenoiserOutput:
    """What the network predicts for ``(w_s, l_s, s)``."""

    eps: Tensor | None  # ε̂, (B, T), aligned with the wavelet coefficients w; None without traffic
    logits: Tensor | None  # z of p_θ(l0 | l_s, w_s, s), (B, T, N), aligned with time; None without locations
    activity_logits: Tensor | None = None  # (B, T, K) slot activity (zero / partial / full); None: no channel


# ---------------------------------------------------------------------------------------------
# small helpers


def sinusoidal_embedding(x: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Transformer sinusoids of real positions/steps ``x (...)`` → ``(..., dim)`` (half sin, half cos)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    args = x.float().unsqueeze(-1) * freqs  # (..., half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (..., 2*half)
    return F.pad(emb, (0, dim - 2 * half))  # (..., dim)


def time_positions(length: int, T: int, device: torch.device) -> Tensor:
    """Centre time of each of ``length`` tokens covering T slots: ``r·i + (r−1)/2`` with r = T/length."""
    r = T // length
    return torch.arange(length, device=device, dtype=torch.float32) * r + (r - 1) / 2  # (length,)


def upsample(x: Tensor, length: int) -> Tensor:
    """Repeat each token of ``x (B, L, d)`` so that the sequence has ``length`` tokens (L divides it)."""
    return x.repeat_interleave(length // x.shape[1], dim=1)  # (B, length, d)


def avg_pool(x: Tensor, length: int) -> Tensor:
    """Average ``x (B, T, d)`` over consecutive windows down to ``length`` tokens."""
    B, T, d = x.shape
    return x.view(B, length, T // length, d).mean(dim=2)  # (B, length, d)


# ---------------------------------------------------------------------------------------------
# transformer parts


class Attention(nn.Module):
    """Multi-head attention of queries from ``x`` over keys/values from ``ctx`` (self-attn: ctx = x)."""

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.dropout = cfg.dropout
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, ctx: Tensor) -> Tensor:
        B, Lq, d = x.shape
        Lk, H = ctx.shape[1], self.n_heads
        q = self.q(x).view(B, Lq, H, d // H).transpose(1, 2)  # (B, H, Lq, hd)
        k, v = self.kv(ctx).split(d, dim=2)  # (B, Lk, d) each
        k = k.view(B, Lk, H, d // H).transpose(1, 2)  # (B, H, Lk, hd)
        v = v.view(B, Lk, H, d // H).transpose(1, 2)  # (B, H, Lk, hd)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, Lq, d)  # (B, Lq, d)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class StreamLayer(nn.Module):
    """One stream's pre-LN layer: self-attention, cross-attention to the other stream, MLP."""

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ln_self = nn.LayerNorm(d)
        self.self_attn = Attention(cfg)
        self.ln_query = nn.LayerNorm(d)
        self.ln_context = nn.LayerNorm(d)
        self.cross_attn = Attention(cfg)
        self.ln_mlp = nn.LayerNorm(d)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, ctx: Tensor) -> Tensor:  # (B, L, d), (B, Lc, d)
        h = self.ln_self(x)
        x = x + self.self_attn(h, h)  # (B, L, d)
        x = x + self.cross_attn(self.ln_query(x), self.ln_context(ctx))  # (B, L, d)
        return x + self.mlp(self.ln_mlp(x))  # (B, L, d)


class CrossLayer(nn.Module):
    """Traffic and location streams, each attending to itself and to the other (both directions)."""

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        self.traffic = StreamLayer(cfg)
        self.location = StreamLayer(cfg)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:  # (B, L, d) each
        return self.traffic(x, y), self.location(y, x)  # both read the other's input state


class Stage(nn.Module):
    """One wavelet scale: traffic and location tokens, merge of the coarser stage, layers, ε head."""

    def __init__(self, cfg: DenoiserConfig, scale: str, *, first: bool, vq_dim: int | None) -> None:
        super().__init__()
        d = cfg.d_model
        self.scale = scale
        # one coefficient per token → d; without traffic the stream starts from a learned vector
        self.coef_in = nn.Linear(1, d) if cfg.use_traffic else None
        self.traffic_start = None if cfg.use_traffic else nn.Embedding(1, d)
        # frozen VQ-VAE codes and the gate g = σ(W [raw; vq; step]) deciding how much of them to add
        self.vq_in = nn.Linear(vq_dim, d) if vq_dim is not None else None
        self.vq_gate = nn.Linear(3 * d, d) if vq_dim is not None else None
        self.loc_in = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(), nn.Linear(cfg.mlp_ratio * d, d)
        )
        self.merge_traffic = None if first else nn.Linear(d, d)  # coarser stage's tokens, upsampled
        self.merge_location = None if first else nn.Linear(d, d)
        self.layers = nn.ModuleList([CrossLayer(cfg) for _ in range(cfg.layers_per_stage)])
        self.ln_out = nn.LayerNorm(d) if cfg.use_traffic else None
        self.eps_head = nn.Linear(d, 1) if cfg.use_traffic else None

    def forward(
        self,
        coef: Tensor,  # (B, L) noisy coefficients of this scale (only their shape without traffic)
        loc_emb: Tensor,  # (B, T, d) location input embedded at full resolution
        cond: Tensor,  # (B, d) diffusion-step embedding
        pos: Tensor,  # (L, d) position code of this scale
        type_emb: Tensor,  # (2, d) traffic / location type embeddings
        prev: tuple[Tensor, Tensor] | None,  # coarser stage's (traffic, location) tokens
        vq: Tensor | None,  # (B, L, dv) frozen VQ-VAE codes of this scale, or None
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        B, L = coef.shape
        if self.coef_in is not None:
            x = self.coef_in(coef.unsqueeze(-1))  # (B, L, d)
        else:  # "without traffic": every traffic token starts from one learned vector
            assert self.traffic_start is not None
            x = self.traffic_start.weight.expand(B, L, -1)  # (B, L, d)
        if vq is not None and self.vq_in is not None and self.vq_gate is not None:
            h_vq = self.vq_in(vq)  # (B, L, d)
            gate = torch.sigmoid(self.vq_gate(torch.cat([x, h_vq, cond.unsqueeze(1).expand_as(x)], dim=-1)))
            # raw path always open, VQ path gated per step, position and channel
            x = x + gate * h_vq  # (B, L, d)
        y = self.loc_in(avg_pool(loc_emb, L))  # (B, L, d)
        if prev is not None and self.merge_traffic is not None and self.merge_location is not None:
            x = x + self.merge_traffic(upsample(prev[0], L))  # (B, L, d)
            y = y + self.merge_location(upsample(prev[1], L))  # (B, L, d)
        x = x + pos + type_emb[0] + cond.unsqueeze(1)  # (B, L, d)
        y = y + pos + type_emb[1] + cond.unsqueeze(1)  # (B, L, d)
        for layer in self.layers:
            x, y = layer(x, y)
        if self.eps_head is None or self.ln_out is None:
            return None, x, y
        eps = self.eps_head(self.ln_out(x)).squeeze(-1)  # (B, L)
        return eps, x, y


# ---------------------------------------------------------------------------------------------
# the denoiser


class MSTDiffDenoiser(nn.Module):
    """ε̂ and location logits from noisy coefficients ``w_s (B, T)``, locations and step ``s (B,)``.

    - ``vqvae``: the pre-trained VQ-VAE (required when ``config.use_vqvae``). It is frozen here:
      ``requires_grad_(False)`` and kept in eval mode by :meth:`train`. It stays a sub-module (so it
      moves with ``.to`` and is saved in ``state_dict``), but :meth:`trainable_parameters` and
      :meth:`optimizer_groups` leave it out: build the optimiser from those.
    - ``station_embeddings (N, k)``: optional vectors (e.g. TuckER) initialising the station table
      by projection on their top ``min(k, d)`` principal axes, rescaled to ``init_std``.
    - ``generator``: makes the initial weights reproducible (nothing is seeded globally).
    """

    supports_rows: ClassVar[bool] = True  # forward(..., rows=) computes the logits of some tokens only

    def __init__(
        self,
        config: DenoiserConfig,
        vqvae: VQVAE | None = None,
        *,
        station_embeddings: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        config.validate()
        self.config = cfg = config
        d, N = cfg.d_model, cfg.num_stations
        if cfg.use_vqvae and vqvae is None:
            raise InputError(
                "the denoiser is configured to use the VQ-VAE (use_vqvae = true) but none was given",
                fix="pre-train a VQ-VAE first (pretrain_vqvae) and pass it, or set use_vqvae = false",
            )
        if not cfg.use_vqvae and vqvae is not None:
            logger.warning("use_vqvae is false: the VQ-VAE passed to the denoiser is ignored")
            vqvae = None
        self.vq_scale: str | None = vqvae.config.scale if vqvae is not None else None

        # E (N, d), shared by the input embedding and the logits head; without locations, one vector
        self.station_emb = nn.Embedding(N if cfg.use_locations else 1, d)
        self.mask_emb = nn.Embedding(1, d) if cfg.mask_token else None  # the mask id N (absorbing noise)
        self.type_emb = nn.Embedding(2, d)  # 0 = traffic token, 1 = location token
        self.step_mlp = nn.Sequential(
            nn.Linear(d, cfg.mlp_ratio * d), nn.SiLU(), nn.Linear(cfg.mlp_ratio * d, d)
        )
        self.stages = nn.ModuleList(
            [
                Stage(
                    cfg,
                    scale,
                    first=i == 0,
                    vq_dim=vqvae.config.code_dim if scale == self.vq_scale and vqvae else None,
                )
                for i, scale in enumerate(SCALES)
            ]
        )
        self.full_in: nn.Module | None = None
        self.logits_head: nn.Linear | None = None
        if cfg.use_locations:
            self.full_in = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d))  # full-resolution location path
            self.full_merge = nn.Linear(d, d)  # finest stage's location tokens, upsampled T/2 → T
            self.full_layers = nn.ModuleList([StreamLayer(cfg) for _ in range(cfg.final_layers)])
            self.ln_f = nn.LayerNorm(d)
            self.head_proj = nn.Linear(d, d)
            self.logits_head = nn.Linear(d, N)  # logits = h Eᵀ + b_station
            self.logits_head.weight = self.station_emb.weight  # weight tying (one (N, d) table)
        self.copy: CopyHead | None = CopyHead(cfg) if cfg.use_locations and cfg.copy_head else None
        K = cfg.activity_classes
        # activity tokens (K classes + the mask) join the location stream; a head reads them back out
        self.act_emb = nn.Embedding(K + 1, d) if K else None
        self.act_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, K)) if K else None
        init_weights_(self, generator, std=cfg.init_std)
        if self.copy is not None:
            self.copy.reset_bias_()
        # cosine head: log τ, a scalar kept out of weight decay (dim < 2); τ = 10 at init
        cosine = cfg.location_head == "cosine" and cfg.use_locations
        self.log_tau = nn.Parameter(torch.tensor(math.log(10.0))) if cosine else None
        if station_embeddings is not None:
            if not cfg.use_locations:
                raise InputError("station embeddings given to a denoiser without locations",
                                 fix="drop station_embeddings or set use_locations = true")
            self.init_station_embeddings_(station_embeddings)

        self.vqvae = vqvae  # registered after init_weights_: its trained weights are left untouched
        if vqvae is not None:
            vqvae.requires_grad_(False)
            vqvae.eval()
        logger.info("MSTDiffDenoiser: %d trainable parameters", self.num_parameters())

    # -- parameters --------------------------------------------------------------------------

    @torch.no_grad()
    def init_station_embeddings_(self, vectors: Tensor) -> None:
        """Project ``vectors (N, k)`` on their top principal axes into the first columns of the table."""
        N, d = self.station_emb.weight.shape
        if vectors.dim() != 2 or vectors.shape[0] != N:
            raise InputError(
                f"station embeddings have shape {tuple(vectors.shape)}, expected ({N}, k)",
                fix="pass one embedding row per station, in station-table order",
            )
        X = vectors.detach().to("cpu", torch.float64)
        X = X - X.mean(dim=0)
        _, _, Vh = torch.linalg.svd(X, full_matrices=False)  # principal axes, (min(N, k), k)
        k = min(d, Vh.shape[0])
        P = X @ Vh[:k].T  # (N, k) principal coordinates
        sd = float(P.std())
        if sd > 0:
            P = P * (self.config.init_std / sd)
        self.station_emb.weight[:, :k] = P.to(self.station_emb.weight)

    @torch.no_grad()
    def init_station_prior_(self, counts: np.ndarray, pseudo_count: float = 0.5) -> None:
        """Set the table head's station biases to ``log((count_j + α) / Σ)``, centred: with the weights
        still near 0 the table head then draws stations by their training visit shares (the unigram
        prior of language models' output layers) instead of uniformly over N."""
        if self.logits_head is None or self.logits_head.bias is None:
            return
        N = self.logits_head.bias.shape[0]
        c = np.asarray(counts, dtype=np.float64)
        if c.shape != (N,) or (c < 0).any():
            raise InputError(f"station counts have shape {c.shape}, expected ({N},) non-negative")
        logp = np.log(c + pseudo_count) - np.log(c.sum() + N * pseudo_count)
        self.logits_head.bias.copy_(torch.from_numpy(logp - logp.mean()).to(self.logits_head.bias))

    @torch.no_grad()
    def init_copy_context_(self, locations: np.ndarray, *, seed: int = 0, draws: int = 8) -> None:
        """Start the copy head's context gate and its pull toward the nearest filled slots at the
        training set's odds (:meth:`CopyHead.init_context_`); nothing without ``copy_nearest``."""
        if self.copy is not None:
            self.copy.init_context_(locations, seed=seed, draws=draws)

    @torch.no_grad()
    def set_station_coordinates_(self, lat: np.ndarray, lon: np.ndarray) -> None:
        """Give the copy head the station map (:meth:`CopyHead.set_coordinates_`): its kernel over
        the ``near_k`` nearest stations and the move decay's positions."""
        if self.copy is not None:
            self.copy.set_coordinates_(lat, lon)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser should update (the frozen VQ-VAE excluded)."""
        return [p for p in self.parameters() if p.requires_grad]

    def optimizer_groups(self, weight_decay: float,
                         station_lr: float | None = None) -> list[dict[str, object]]:
        """AdamW groups as in nanoGPT: decay matrices/embeddings (dim >= 2), not biases, norms or the
        copy head's relative-time and nearest-slot biases (biases, stored as tables).

        ``station_lr``: the station table (embeddings and the table head's biases: N rows, the part
        that memorises the training days) gets this learning rate of its own (0: kept as initialised,
        from the knowledge graph's embeddings and the training visit shares); None: the optimiser's."""
        no_decay = set()
        if self.copy is not None:
            no_decay = {id(self.copy.rel_bias.weight)}
            if self.copy.nearest_bias is not None:
                no_decay.add(id(self.copy.nearest_bias.weight))
            if self.copy.gate_context is not None:
                no_decay.add(id(self.copy.gate_context.weight))
        params = self.trainable_parameters()
        table: list[Tensor] = []
        if station_lr is not None:
            table = [self.station_emb.weight]
            if self.logits_head is not None and self.logits_head.bias is not None:
                table.append(self.logits_head.bias)
            table = [p for p in table if p.requires_grad]
            params = [p for p in params if all(p is not q for q in table)]
        decay = [p for p in params if p.dim() >= 2 and id(p) not in no_decay]
        groups: list[dict[str, object]] = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2 or id(p) in no_decay], "weight_decay": 0.0},
        ]
        for p in table:
            groups.append({"params": [p], "weight_decay": weight_decay if p.dim() >= 2 else 0.0,
                           "lr": station_lr})
        return groups

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def train(self, mode: bool = True) -> MSTDiffDenoiser:
        super().train(mode)
        if self.vqvae is not None:
            self.vqvae.eval()  # frozen: always in eval mode
        return self

    # -- forward -----------------------------------------------------------------------------

    def embed_locations(self, loc: Tensor) -> Tensor:
        """Ids ``(B, T)`` → ``E[l]``; probabilities ``(B, T, N)`` → ``p @ E``: ``(B, T, d)``."""
        E = self.station_emb.weight  # (N, d)
        if self.mask_emb is not None:
            E = torch.cat([E, self.mask_emb.weight])  # (N + 1, d): the mask id is N
        N = E.shape[0]
        if not loc.is_floating_point():
            if loc.numel() and (int(loc.min()) < 0 or int(loc.max()) >= N):
                raise ValueError(
                    f"location ids must lie in 0..{N - 1}, got {int(loc.min())}..{int(loc.max())}"
                )
            return F.embedding(loc.long(), E)  # (B, T, d)
        if loc.dim() != 3 or loc.shape[-1] != N:
            raise ValueError(f"location probabilities must have shape (B, T, {N}), got {tuple(loc.shape)}")
        return loc.to(E.dtype) @ E  # (B, T, d)

    def forward(self, w_s: Tensor, loc: Tensor | None, s: Tensor,
                activity: Tensor | None = None, rows: Tensor | None = None) -> DenoiserOutput:
        """``w_s (B, T)`` float, ``loc`` ids ``(B, T)`` or probabilities ``(B, T, N)``, ``s (B,)``.

        ``rows (M,)``: flat indices into the B·T tokens whose location logits are wanted (e.g. the
        masked tokens of the absorbing process: the only ones its loss and its sampler read); the
        logits are then ``(M, N)`` instead of ``(B, T, N)`` — the O(N) head, the largest cost at
        large N, runs on those tokens only. Values equal the dense ones' rows.

        Without locations (``use_locations = False``) ``loc`` must be None and ``logits`` is None.
        With the activity channel, ``activity`` holds the noisy slot activity ids ``(B, T)`` (the
        mask is ``activity_classes``).
        """
        cfg = self.config
        B, T = w_s.shape
        if T != cfg.seq_len:
            check_T(T, where=f"denoiser input of shape {tuple(w_s.shape)}")
            raise InputError(
                f"the denoiser was built for T = {cfg.seq_len} but got T = {T}",
                fix="build the denoiser with seq_len equal to the dataset's T",
            )
        if (loc is None) == cfg.use_locations:
            raise ValueError("pass locations exactly when the denoiser uses them (use_locations = "
                             f"{cfg.use_locations}, got loc {'None' if loc is None else tuple(loc.shape)})")
        if (loc is not None and loc.shape[:2] != (B, T)) or s.shape != (B,):
            raise ValueError(f"shapes disagree: w_s {tuple(w_s.shape)}, "
                             f"loc {None if loc is None else tuple(loc.shape)}, s {tuple(s.shape)}")
        d = cfg.d_model
        slices = scale_slices(T)

        if loc is None:  # ablation: every location token starts from the one learned vector
            loc_emb = self.station_emb.weight.expand(B, T, d)  # (B, T, d)
        else:
            loc_emb = self.embed_locations(loc)  # (B, T, d)
        if self.act_emb is not None:
            if activity is None:
                raise ValueError("this denoiser has an activity channel: pass activity (B, T)")
            loc_emb = loc_emb + self.act_emb(activity.long())  # (B, T, d)
        cond = self.step_mlp(sinusoidal_embedding(s, d))  # (B, d)
        type_emb = self.type_emb.weight  # (2, d)
        vq = None
        if self.vqvae is not None and self.vq_scale is not None:
            with torch.no_grad():
                vq, _ = self.vqvae.encode(w_s[:, slices[self.vq_scale]])  # (B, L_vq, dv), frozen

        # multi-scale stages, coarse to fine; ε̂ pieces come out in coefficient order
        eps_parts: list[Tensor | None] = []
        prev: tuple[Tensor, Tensor] | None = None
        for scale, stage in zip(SCALES, self.stages):
            coef = w_s[:, slices[scale]]  # (B, L)
            pos = sinusoidal_embedding(time_positions(coef.shape[1], T, w_s.device), d)  # (L, d)
            eps_k, x, y = stage(
                coef, loc_emb, cond, pos, type_emb, prev, vq if scale == self.vq_scale else None
            )
            eps_parts.append(eps_k)  # (B, L)
            prev = (x, y)
        eps = (torch.cat([e for e in eps_parts if e is not None], dim=1)  # (B, T), aligned with w
               if cfg.use_traffic else None)
        assert prev is not None
        x_fine, y_fine = prev  # (B, T/2, d) each
        if self.full_in is None or self.logits_head is None:
            return DenoiserOutput(eps=eps, logits=None)

        # full-resolution location logits, aligned with time
        pos_T = sinusoidal_embedding(time_positions(T, T, w_s.device), d)  # (T, d)
        z = self.full_in(loc_emb) + self.full_merge(upsample(y_fine, T))  # (B, T, d)
        z = z + pos_T + type_emb[1] + cond.unsqueeze(1)  # (B, T, d)
        for layer in self.full_layers:
            z = layer(z, x_fine)  # (B, T, d): attends to itself and to the finest traffic tokens
        h = self.head_proj(self.ln_f(z))  # (B, T, d)
        h_all = h
        if rows is not None:
            h = h.reshape(B * T, d)[rows]  # (M, d): only the wanted tokens reach the O(N) head
        if self.log_tau is None:
            logits = self.logits_head(h)  # (B, T, N) = h Eᵀ + b
        else:  # τ cos(h, E_j) + b_j: a peaked distribution over N stations is reachable from step 0
            E = F.normalize(self.station_emb.weight, dim=-1)  # (N, d)
            logits = F.linear(F.normalize(h, dim=-1) * self.log_tau.exp(), E, self.logits_head.bias)
        if self.copy is not None:
            assert loc is not None
            N = cfg.num_stations
            if loc.is_floating_point():  # probabilities: copy their station part, weighted by it
                source, valid = loc[..., :N], loc[..., :N].sum(-1) > 0.5
            else:
                source, valid = loc, loc < N
            logits = self.copy(h_all, z, source, valid, logits, rows=rows)
        act = self.act_head(z) if self.act_head is not None else None  # (B, T, K)
        return DenoiserOutput(eps=eps, logits=logits, activity_logits=act)
