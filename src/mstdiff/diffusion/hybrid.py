"""The hybrid process: Gaussian noise on traffic coefficients and graph noise on locations.

MSTDiff (Algorithms 1 and 2) diffuses the two modalities with separate schedules but ONE shared
step ``s`` per sample: the pair ``(w_s, l_s)`` is noised to the same step, the network sees both
and predicts ``ε̂`` and the logits ``z`` of ``p_θ(l0 | l_s, w_s, s)``, and a reverse step moves
both from ``s`` to ``s − 1``.

The discrete process is duck-typed (:class:`DiscreteProcess`; the package's implementation is
``mstdiff.diffusion.discrete.GraphTransition``). This module imports no network code: the
denoiser is any callable ``model(w_s, loc, s) -> out`` with ``out.eps (B, T)`` and
``out.logits (B, T, N)``.

Location input of the network (``location_input``):

- ``"sampled"`` (default, the D3PM convention): the network gets the sampled ids ``l_s (B, T)``.
- ``"soft"`` (the paper's): the network gets a probability vector over the N stations, in training
  ``q(l_s | l0)`` (:meth:`DiscreteProcess.marginal`), in sampling the running vector
  ``p_θ(l_s | l_{s+1})`` of the previous reverse step (uniform at ``s = S``). In training this
  vector reveals ``l0`` almost exactly at small ``s``; in sampling it does not (a train/sample
  mismatch, DESIGN §1), which is why it is not the default.

Last step: at ``s = 1`` the reverse distribution is ``reverse_probs(z, l_1, 1)``; with
``Q̄_0 = I`` it is ``∝ Q_1[:, l_1] ⊙ softmax(z)``, i.e. the network's ``l0`` prediction
reweighted by the likelihood of the observed ``l_1``. ``final_location="sample"`` (default) draws
``l0`` from it (ancestral sampling, keeps the model's diversity); ``"argmax"`` takes its mode.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from mstdiff.config import Check, ge, gt, one_of
from mstdiff.diffusion.absorbing import UNMASK_ORDERS
from mstdiff.diffusion.common import sample_categorical, supports_rows
from mstdiff.diffusion.gaussian import GaussianDiffusion, randn
from mstdiff.errors import InputError

logger = logging.getLogger(__name__)

LOCATION_INPUTS = ("sampled", "soft")
# conditional generation: (w, l, a, s) -> (w, l, a) with the observed part of the state at step s
Imputer = Callable[[Tensor, Tensor, "Tensor | None", int], "tuple[Tensor, Tensor, Tensor | None]"]
FINAL_LOCATIONS = ("sample", "argmax")
LOCATION_DRAWS = ("two_stage", "dense")


@runtime_checkable
class DiscreteProcess(Protocol):
    """What the hybrid needs of a discrete (location) noise process; steps s = 1..S, s = 0 identity."""

    num_states: int  # N
    num_steps: int  # S

    def q_sample(self, l0: Tensor, s: Tensor, generator: torch.Generator | None) -> Tensor:
        """``l_s ~ Cat(onehot(l0) Q̄_s)``: Long[B, T]."""
        ...

    def marginal(self, l0: Tensor, s: Tensor) -> Tensor:
        """``q(l_s | l0)``: Float[B, T, N]."""
        ...

    def posterior(self, x0: Tensor, l_s: Tensor, s: Tensor) -> Tensor:
        """``q(l_{s-1} | l_s, x0)`` for ids Long[B, T] or probabilities Float[B, T, N]: Float[B, T, N]."""
        ...

    def reverse_probs(self, logits_x0: Tensor, l_s: Tensor, s: Tensor) -> Tensor:
        """``p_θ(l_{s-1} | l_s) ∝ Q_s[:, l_s] ⊙ (softmax(z) Q̄_{s-1})``: Float[B, T, N], differentiable."""
        ...


class DenoiserOutputLike(Protocol):
    eps: Tensor | None  # (B, T); None: a network without traffic
    logits: Tensor  # (B, T, N)


Denoiser = Callable[..., Any]  # model(w_s, loc, s[, activity=a_s]) -> DenoiserOutputLike


@dataclass
class HybridConfig:
    """How the two processes are combined."""

    CHECKS: ClassVar[dict[str, Check]] = {
        "location_input": one_of(*LOCATION_INPUTS), "final_location": one_of(*FINAL_LOCATIONS),
        "location_draw": one_of(*LOCATION_DRAWS), "location_temperature": gt(0),
        "unmask_order": one_of(*UNMASK_ORDERS), "condition_weight": ge(0),
    }

    location_input: str = "sampled"  # "sampled": network gets ids l_s (D3PM); "soft": probabilities (paper)
    final_location: str = "sample"  # last step: "sample" l0 from p_θ(l0 | l_1) or take its "argmax"
    # how l_{s-1} is drawn: "two_stage" (exact, rows of Q at single states only; needs the process's
    # sample_reverse) or "dense" (build p_θ(l_{s-1} | l_s) over all N stations for every token)
    location_draw: str = "two_stage"
    location_temperature: float = 1.0  # sampling: the network's l0 logits are divided by this
    # absorbing process: which masked slots unmask first, "random" (exact ancestral step),
    # "confidence" (same count per step, most probable drawn stations first; MaskGIT) or "single"
    # (one uniformly chosen token per network call, T calls: the random order as S → ∞; a network
    # without traffic or activity only, unconditional sampling)
    unmask_order: str = "random"
    # conditional sampling with given locations: the weight γ of those locations on the traffic and
    # activity predictions (1: the plain conditional; 0: the traffic of the model's own trajectories;
    # between: ε = ε_free + γ (ε_given − ε_free), a tempered conditional, see HybridDiffusion.sample)
    condition_weight: float = 1.0
    # sampling: clamp every step's predicted clean traffic series (the inverse wavelet transform of
    # ŵ_0) to the training range in model space, [encode(0), encode(max)], before the DDPM posterior
    # mean: DDPM's clip of x̂_0 to the data's range (applied by MSTDiff.sample, which holds the
    # scaler); False: ŵ_0 as predicted (a drifting sample can reach the decoder's cap, 2 · max)
    clip_traffic: bool = False

    def __post_init__(self) -> None:
        if not self.condition_weight >= 0:
            raise InputError(f"condition_weight = {self.condition_weight} must be 0 or more",
                             fix="use 1 (the plain conditional), 0 (ignore the given locations "
                                 "for the traffic) or a weight between")
        if not self.location_temperature > 0:
            raise InputError(f"location_temperature = {self.location_temperature} must be positive",
                             fix="use e.g. 1.0 (the model's own distribution) or 0.8 (sharper)")
        if self.unmask_order not in UNMASK_ORDERS:
            raise InputError(f"unmask_order = {self.unmask_order!r} is unknown",
                             fix=f"use one of {UNMASK_ORDERS}")
        if self.location_input not in LOCATION_INPUTS:
            raise InputError(
                f"location_input = {self.location_input!r} is unknown", fix=f"use one of {LOCATION_INPUTS}"
            )
        if self.location_draw not in LOCATION_DRAWS:
            raise InputError(
                f"location_draw = {self.location_draw!r} is unknown", fix=f"use one of {LOCATION_DRAWS}"
            )
        if self.final_location not in FINAL_LOCATIONS:
            raise InputError(
                f"final_location = {self.final_location!r} is unknown", fix=f"use one of {FINAL_LOCATIONS}"
            )


class Noised(NamedTuple):
    """A training pair noised to step s."""

    w_s: Tensor  # (B, T)
    eps: Tensor  # (B, T), the Gaussian noise used
    l_s: Tensor  # (B, T) long


@dataclass
class HybridStepOutput:
    """One joint reverse step s → s − 1."""

    w_prev: Tensor  # w_{s-1}, (B, T)
    l_prev: Tensor  # l_{s-1}, (B, T) long
    l_prev_probs: Tensor | None  # p_θ(l_{s-1} | l_s), (B, T, N): the next soft input (None: not built)
    w0_hat: Tensor  # ŵ_0 implied by ε̂, (B, T)
    a_prev: Tensor | None = None  # a_{s-1}, (B, T) long: the slot activity stream (None: no channel)


class HybridSample(tuple):
    """Output of :meth:`HybridDiffusion.sample`: unpacks as ``(w0, l0)``; ``a0`` as an attribute.

    - ``w0``: wavelet coefficients ``(n, T)``; the series is ``mstdiff.models.wavelet.idwt(w0)``;
    - ``l0``: station ids ``(n, T)`` long;
    - ``a0``: slot activity ids ``(n, T)`` long with an activity stream, else None.
    """

    a0: Tensor | None

    def __new__(cls, w0: Tensor, l0: Tensor, a0: Tensor | None = None) -> HybridSample:
        obj = super().__new__(cls, (w0, l0))
        obj.a0 = a0
        return obj

    @property
    def w0(self) -> Tensor:
        return self[0]

    @property
    def l0(self) -> Tensor:
        return self[1]


def sample_steps(
    batch_size: int,
    num_steps: int,
    generator: torch.Generator | None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform training steps ``s ∈ {1..S}``: Long[B]."""
    gen_device = generator.device if generator is not None else device
    return torch.randint(1, num_steps + 1, (batch_size,), generator=generator, device=gen_device).to(device)


class HybridDiffusion:
    """Joint Gaussian (traffic) + discrete (location) diffusion with one shared step per sample."""

    def __init__(
        self,
        gaussian: GaussianDiffusion,
        discrete: DiscreteProcess,
        config: HybridConfig | None = None,
        activity: Any = None,
    ) -> None:
        if gaussian.num_steps != discrete.num_steps:
            raise InputError(
                f"the traffic process has {gaussian.num_steps} steps but the location process has "
                f"{discrete.num_steps}",
                fix="use the same number of diffusion steps S for both branches",
            )
        if activity is not None and activity.num_steps != gaussian.num_steps:
            raise InputError("the activity process needs the same number of steps S as the traffic one")
        self.gaussian = gaussian
        self.discrete = discrete
        self.config = config or HybridConfig()
        # optional slot-activity stream (an absorbing process over K classes, same step s)
        self.activity = activity

    @property
    def num_steps(self) -> int:
        """S, shared by both branches."""
        return self.gaussian.num_steps

    def sampling_calls(self, T: int) -> int:
        """Reverse steps (``on_step`` ticks) of one :meth:`sample` of T slots: T for the unmask order
        "single" (one token per call), else S."""
        return T if self.config.unmask_order == "single" else self.num_steps

    @property
    def num_states(self) -> int:
        """N, number of stations."""
        return int(self.discrete.num_states)

    def to(self, device: torch.device | str) -> HybridDiffusion:
        """Move both processes (the discrete one if it supports ``.to``)."""
        self.gaussian.to(device)
        move = getattr(self.discrete, "to", None)
        if callable(move):
            moved = move(device)
            if moved is not None:
                self.discrete = moved
        if self.activity is not None:
            self.activity = self.activity.to(device)
        return self

    # -- training (Algorithm 1) -------------------------------------------------------------

    def sample_steps(
        self, batch_size: int, generator: torch.Generator | None, device: torch.device | str | None = None
    ) -> Tensor:
        """Uniform training steps ``s ∈ {1..S}``: Long[B]."""
        return sample_steps(batch_size, self.num_steps, generator, device)

    def noise(self, w0: Tensor, l0: Tensor, s: Tensor, generator: torch.Generator | None) -> Noised:
        """Noise ``w0 (B, T)`` and ``l0 (B, T)`` to the same step ``s (B,)``: ``(w_s, ε, l_s)``."""
        if w0.shape != l0.shape:
            raise ValueError(f"traffic {tuple(w0.shape)} and locations {tuple(l0.shape)} differ in shape")
        eps = randn(w0.shape, generator=generator, device=w0.device, dtype=w0.dtype)
        w_s = self.gaussian.add_noise(w0, eps, s)
        l_s = self.discrete.q_sample(l0, s, generator)
        return Noised(w_s, eps, l_s)

    def location_input(self, l0: Tensor, l_s: Tensor, s: Tensor) -> Tensor:
        """The network's location input in training: ``l_s (B, T)`` or ``q(l_s | l0) (B, T, N)``."""
        if self.config.location_input == "soft":
            return self.discrete.marginal(l0, s)
        return l_s

    # -- sampling (Algorithm 2) -------------------------------------------------------------

    def step(
        self, out: DenoiserOutputLike, w_s: Tensor, l_s: Tensor, s: Tensor, generator: torch.Generator | None,
        cache: Any = None, a_s: Tensor | None = None, plan: tuple[Tensor, Tensor | None] | None = None,
        w0_clip: Callable[[Tensor], Tensor] | None = None,
    ) -> HybridStepOutput:
        """Reverse step s → s − 1: DDPM step for w, a draw from ``p_θ(l_{s-1} | l_s)`` for l.

        With ``location_draw = "two_stage"``, when the network does not need the probabilities of
        the next step (``location_input = "sampled"``) and the discrete process offers
        ``sample_reverse`` (the graph process: an exact draw without the dense ``(B, T, N)`` rows),
        that draw is used and ``l_prev_probs`` is None; ``cache`` is the process's row cache for the
        run (``discrete.row_cache()``). ``w0_clip`` maps the predicted coefficients ``ŵ_0`` into
        the data's domain (:meth:`GaussianDiffusion.step`'s ``clip``).
        """
        if out.eps is None:  # a network without traffic: the coefficients stay as they are
            w_prev, w0_hat = w_s, w_s
        else:
            g = self.gaussian.step(out.eps, s, w_s, generator, clip=w0_clip)
            w_prev, w0_hat = g.prev_sample, g.pred_original_sample
        a_prev = None
        if self.activity is not None and a_s is not None:
            act_logits = getattr(out, "activity_logits", None)
            if act_logits is None:
                raise ValueError("the hybrid has an activity stream but the network gave no activity logits")
            a_prev = self.activity.sample_reverse(act_logits, a_s, s, generator)
        at_last = bool((s == 1).any())
        fast = getattr(self.discrete, "sample_reverse", None)
        cfg = self.config
        logits = out.logits if cfg.location_temperature == 1.0 else out.logits / cfg.location_temperature
        masked = getattr(self.discrete, "mask_id", None) is not None
        if plan is not None:  # absorbing process, logits of the planned rows only (plan_reverse)
            l_prev = self.discrete.finish_reverse(logits, plan[0], plan[1], l_s,  # type: ignore[attr-defined]
                                                  generator)
            return HybridStepOutput(w_prev=w_prev, l_prev=l_prev, l_prev_probs=None,
                                    w0_hat=w0_hat, a_prev=a_prev)
        if masked and callable(fast) and cfg.location_input == "sampled":
            # absorbing process: carry-over and unmasking (the exact step, no dense rows needed)
            l_prev = fast(logits, l_s, s, generator, cache, order=cfg.unmask_order)
            return HybridStepOutput(w_prev=w_prev, l_prev=l_prev, l_prev_probs=None,
                                    w0_hat=w0_hat, a_prev=a_prev)
        if (callable(fast) and cfg.location_input == "sampled" and cfg.location_draw == "two_stage"
                and not (at_last and cfg.final_location == "argmax")):
            l_prev = fast(logits, l_s, s, generator, cache)
            return HybridStepOutput(w_prev=w_prev, l_prev=l_prev, l_prev_probs=None,
                                    w0_hat=w0_hat, a_prev=a_prev)
        probs = self.discrete.reverse_probs(logits, l_s, s)  # (B, T, N) (absorbing: N + 1)
        l_prev = sample_categorical(probs, generator)  # (B, T)
        if self.config.final_location == "argmax":
            last = (s == 1).view(-1, *([1] * (l_prev.dim() - 1)))  # (B, 1)
            l_prev = torch.where(last, probs.argmax(-1), l_prev)
        return HybridStepOutput(
            w_prev=w_prev, l_prev=l_prev, l_prev_probs=probs, w0_hat=w0_hat,
            a_prev=a_prev,
        )

    @torch.no_grad()
    def sample(
        self,
        model: Denoiser,
        n: int,
        T: int,
        generator: torch.Generator | None,
        *,
        device: torch.device | str | None = None,
        progress: bool = False,
        on_step: Callable[[], None] | None = None,
        impute: Imputer | None = None,
        guide: bool = False,
        w0_clip: Callable[[Tensor], Tensor] | None = None,
    ) -> HybridSample:
        """Algorithm 2: ``w_S ~ N(0, I)``, ``l_S`` from the process's stationary law (uniform for the
        graph process, all masked for the absorbing one); for s = S..1 one network call and one step.

        Runs the model in eval mode (restoring its mode afterwards). ``device`` defaults to the
        device of the Gaussian schedule's buffers. ``on_step`` is called after every reverse step
        (for a caller's progress bar).

        ``impute(w, l, a, s)`` (conditional generation) replaces the observed part of the state at
        step ``s`` (the prior draw at ``s = S``, then after every step to ``s − 1``) and returns the
        new ``(w, l, a)``: the network sees the observed values at every step and generates the
        rest consistently with them (replacement, as in RePaint and masked-token infilling).

        ``guide`` (``impute`` gives locations) with ``config.condition_weight`` γ ≠ 1: a second chain
        of *free* locations runs on the same traffic state (drawn by the model as in unconditional
        sampling, never imputed), and the traffic noise and activity logits of each step are
        ``ε_free + γ (ε_given − ε_free)``, where ``ε_given`` sees the imputed locations and ``ε_free``
        the free ones: classifier-free guidance with the free chain as the marginal over locations,
        i.e. the tempered conditional ``p(x)^(1−γ) p(x | l)^γ``. It costs one more network call per
        step. The model learns ``p(traffic | trajectory)`` for the training users, where the pairing
        can be memorised, so γ < 1 undoes overconfidence on unseen users (chosen on validation).

        ``w0_clip``: maps every step's predicted coefficients ``ŵ_0`` into the data's domain
        (``MSTDiff.sample`` passes the training range of the series for ``config.clip_traffic``).
        """
        device = torch.device(device) if device is not None else self.gaussian.betas.device
        N, S = self.num_states, self.num_steps
        with_traffic = bool(getattr(getattr(model, "config", None), "use_traffic", True))
        # a network without traffic: no Gaussian draw (the location draws stay those of a joint model)
        w = (randn((n, T), generator=generator, device=device) if with_traffic
             else torch.zeros((n, T), device=device))  # (n, T)
        prior = getattr(self.discrete, "stationary", None)
        l = self._prior_locations(n, T, generator, device)  # (n, T)
        if callable(prior):  # a process with its own stationary law (absorbing: all masked)
            pi = prior().to(device)
        else:  # the graph process: uniform over the N stations
            pi = torch.full((N,), 1.0 / N, device=device)
        soft = self.config.location_input == "soft"
        probs = pi.expand(n, T, -1).clone() if soft else None  # (n, T, N) (absorbing: N + 1)
        make_cache = getattr(self.discrete, "row_cache", None)
        cache = make_cache() if callable(make_cache) else None
        was_training = bool(getattr(model, "training", False))
        set_mode = getattr(model, "train", None)
        if callable(set_mode):
            set_mode(False)
        a = self.activity.sample_prior((n, T), generator, device) if self.activity is not None else None
        if impute is not None:
            w, l, a = impute(w, l, a, S)
        gamma = float(self.config.condition_weight)
        guided = guide and impute is not None and gamma != 1.0
        # the free chain: locations drawn from the prior and stepped by the model, never imputed
        l_free = self._prior_locations(n, T, generator, device) if guided else None
        probs_free = probs.clone() if guided and probs is not None else None
        cache_free = make_cache() if guided and callable(make_cache) else None
        # absorbing process, ids as input: which tokens unmask is decided before the network call,
        # which then scores those tokens only (each token unmasks once in S steps), and a step at
        # which nothing unmasks needs no call at all when there is no traffic or activity to denoise
        if self.config.unmask_order == "single":
            self._check_single(with_traffic, a is not None, impute is not None or guide, soft)
            try:
                l = self._sample_single(model, l, generator, progress, on_step)
                return HybridSample(w0=w, l0=l, a0=None)
            finally:
                if callable(set_mode):
                    set_mode(was_training)
        plan_fn = getattr(self.discrete, "plan_reverse", None)
        planned = (callable(plan_fn) and not soft and supports_rows(model)
                   and getattr(self.discrete, "mask_id", None) is not None)
        try:
            for step in tqdm(range(S, 0, -1), desc="sampling", unit="step", disable=not progress):
                s = torch.full((n,), step, dtype=torch.long, device=device)
                loc_in = probs if probs is not None else l
                plan = None
                if planned:
                    assert callable(plan_fn)
                    plan = plan_fn(l, s, generator, order=self.config.unmask_order)
                    if not plan[0].numel() and not with_traffic and a is None:
                        if impute is not None:
                            w, l, a = impute(w, l, a, step - 1)
                        if on_step is not None:
                            on_step()
                        continue  # nothing to unmask and nothing else to denoise: l_{s-1} = l_s
                out = self._call(model, w, loc_in, s, a, plan)
                if guided:
                    assert l_free is not None
                    out, l_free, probs_free = self._guided(model, out, w, l_free, probs_free, a, s,
                                                           generator, cache_free, planned, plan_fn, gamma,
                                                           w0_clip)
                nxt = self.step(out, w, l, s, generator, cache, a_s=a, plan=plan, w0_clip=w0_clip)
                w, l, a = nxt.w_prev, nxt.l_prev, nxt.a_prev
                if impute is not None:
                    w, l, a = impute(w, l, a, step - 1)
                if on_step is not None:
                    on_step()
                if soft:
                    assert nxt.l_prev_probs is not None
                    probs = nxt.l_prev_probs
        finally:
            if callable(set_mode):
                set_mode(was_training)
        return HybridSample(w0=w, l0=l, a0=a)

    def _check_single(self, traffic: bool, activity: bool, conditional: bool, soft: bool) -> None:
        """Unmask order "single" has no steps of the Gaussian or activity chains to run beside it."""
        why = ("the network denoises traffic" if traffic else "the model has an activity stream" if activity
               else "the sampling is conditional (imputed or guided)" if conditional
               else "location_input is 'soft'" if soft
               else "the location process is not the absorbing one"
               if not callable(getattr(self.discrete, "plan_single", None)) else None)
        if why is not None:
            raise InputError(f"unmask_order 'single' needs a trajectory-only absorbing model, but {why}",
                             where="model.hybrid.unmask_order",
                             fix="use unmask_order 'random' (the exact step of the S-step chain)")

    def _sample_single(self, model: Denoiser, l: Tensor, generator: torch.Generator | None, progress: bool,
                       on_step: Callable[[], None] | None) -> Tensor:
        """Unmask order "single": T network calls, each drawing one masked token of every sample
        (:meth:`AbsorbingProcess.plan_single`) from the network's law given all tokens drawn before."""
        discrete: Any = self.discrete
        n, T = l.shape
        w = torch.zeros((n, T), device=l.device)
        rows_ok = supports_rows(model)
        temp = self.config.location_temperature
        for _ in tqdm(range(T), desc="sampling", unit="token", disable=not progress):
            rows, s = discrete.plan_single(l, generator)
            if not rows.numel():
                break
            out = model(w, l, s, rows=rows) if rows_ok else model(w, l, s)
            logits = out.logits if rows_ok else out.logits.reshape(n * T, -1)[rows]
            l = discrete.finish_reverse(logits if temp == 1.0 else logits / temp, rows, None, l, generator)
            if on_step is not None:
                on_step()
        return l

    def _prior_locations(self, n: int, T: int, generator: torch.Generator | None,
                         device: torch.device) -> Tensor:
        """``l_S (n, T)``: the process's own prior draw (absorbing: all masked), else uniform."""
        if callable(getattr(self.discrete, "stationary", None)):
            return self.discrete.sample_prior((n, T), generator, device)  # type: ignore[attr-defined]
        gen_device = generator.device if generator is not None else device
        return torch.randint(0, self.num_states, (n, T), generator=generator, device=gen_device).to(device)

    @staticmethod
    def _call(model: Denoiser, w: Tensor, loc_in: Tensor, s: Tensor, a: Tensor | None,
              plan: tuple[Tensor, Tensor | None] | None) -> Any:
        """The network call of a reverse step: the planned rows only (absorbing process) and the
        activity stream where there is one."""
        extra: dict[str, Any] = {} if plan is None else {"rows": plan[0]}
        if a is not None:
            extra["activity"] = a
        return model(w, loc_in, s, **extra)

    def _guided(self, model: Denoiser, out: Any, w: Tensor, l_free: Tensor, probs_free: Tensor | None,
                a: Tensor | None, s: Tensor, generator: torch.Generator | None, cache: Any, planned: bool,
                plan_fn: Any, gamma: float, w0_clip: Callable[[Tensor], Tensor] | None = None,
                ) -> tuple[Any, Tensor, Tensor | None]:
        """One step of the free location chain on the traffic state ``w`` and the mixed output: the
        traffic noise and activity logits ``free + γ (given − free)``, the location logits of the
        given chain unchanged. Returns ``(mixed output, next free locations, their next probs)``."""
        plan = plan_fn(l_free, s, generator, order=self.config.unmask_order) if planned else None
        free = self._call(model, w, probs_free if probs_free is not None else l_free, s, a, plan)
        nxt = self.step(free, w, l_free, s, generator, cache, a_s=a, plan=plan, w0_clip=w0_clip)

        def mix(given: Tensor | None, f: Tensor | None) -> Tensor | None:
            return given if given is None or f is None else f + gamma * (given - f)

        act = getattr(out, "activity_logits", None)
        act_free = getattr(free, "activity_logits", None)
        if act is not None and act_free is not None:  # geometric mixing of the two laws
            act, act_free = act.log_softmax(-1), act_free.log_softmax(-1)
        mixed = dataclasses.replace(out, eps=mix(out.eps, free.eps), activity_logits=mix(act, act_free))
        return mixed, nxt.l_prev, nxt.l_prev_probs
