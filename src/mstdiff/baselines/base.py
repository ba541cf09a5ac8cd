"""The baseline interface, the registry, independent pairs and the generated-set writer.

Every baseline learns from a :class:`~mstdiff.data.dataset.PreparedDataset` and generates
:class:`GeneratedSeries` (traffic and/or locations on the training set's time bins and station
table), so the same evaluation runs on MSTDiff and on every baseline::

    model = make_baseline("csdi+timegeo", {"csdi": {"train": {"epochs": 50}}})
    model.fit(train)
    gen = generate_dataset(model, train, n=2000, seed=0)   # a PreparedDataset
    model.save("runs/csdi+timegeo.pt"); same = Baseline.load("runs/csdi+timegeo.pt")

A baseline that produces one output only (e.g. ``"csdi"``: traffic) can be paired with one that
produces the other (e.g. ``"timegeo"``: locations) as ``"csdi+timegeo"``: the two are generated
**independently** (sample i of the traffic has nothing to do with sample i of the trajectory),
which is exactly what the joint metrics should penalise.

Randomness: ``generate(n, seed=...)`` draws from ``numpy.random.default_rng(seed)`` and/or a
``torch.Generator`` seeded with ``seed``; nothing seeds a global RNG. Same seed, same output.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from mstdiff.config import deep_merge, from_dict, to_dict
from mstdiff.data.dataset import PreparedDataset
from mstdiff.errors import InputError
from mstdiff.training.utils import load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

__all__ = [
    "BASELINES",
    "Baseline",
    "GeneratedSeries",
    "Pair",
    "baseline_names",
    "child_seeds",
    "generate_dataset",
    "load_baseline",
    "make_baseline",
    "register_baseline",
]

CHECKPOINT_FORMAT = "mstdiff-baseline"
CHECKPOINT_VERSION = 1
OUTPUTS = ("traffic", "locations")

B = TypeVar("B", bound="Baseline")


# ----------------------------------------------------------------------------- output type
@dataclass
class GeneratedSeries:
    """What a baseline generates: ``traffic`` ``(n, T)`` float32 ≥ 0 and/or ``locations``
    ``(n, T)`` int32 station indices; an output the baseline does not produce is ``None``."""

    traffic: np.ndarray | None = None
    locations: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.traffic is not None:
            self.traffic = np.ascontiguousarray(self.traffic, dtype=np.float32)
        if self.locations is not None:
            self.locations = np.ascontiguousarray(self.locations, dtype=np.int32)
        if self.traffic is not None and self.locations is not None:
            if self.traffic.shape != self.locations.shape:
                raise ValueError(f"traffic {self.traffic.shape} and locations {self.locations.shape} differ")

    @property
    def n(self) -> int:
        arr = self.traffic if self.traffic is not None else self.locations
        return 0 if arr is None else int(arr.shape[0])

    @property
    def produces(self) -> frozenset[str]:
        return frozenset(k for k in OUTPUTS if getattr(self, k) is not None)


def child_seeds(seed: int, k: int) -> list[int]:
    """``k`` independent integer seeds derived from ``seed`` (``numpy.random.SeedSequence.spawn``)."""
    return [int(c.generate_state(1, dtype=np.uint32)[0]) for c in np.random.SeedSequence(seed).spawn(k)]


# ----------------------------------------------------------------------------- interface
class Baseline(ABC):
    """A generator fitted on a prepared dataset.

    Subclasses set ``name``, ``produces`` and ``config_class`` (a ``@dataclass`` with a comment per
    default), and implement :meth:`fit`, :meth:`generate`, :meth:`_get_state` and
    :meth:`_set_state`. ``save``/``load`` are shared: one atomic ``torch.save`` file holding the
    name, the resolved config and the fitted state.
    """

    name: ClassVar[str] = ""
    produces: ClassVar[frozenset[str]] = frozenset()
    config_class: ClassVar[type[Any]]

    def __init__(self, config: Any = None) -> None:
        if config is None or isinstance(config, dict):
            # nested sections (e.g. "train", "diffusion") override this baseline's own defaults key by key
            merged = deep_merge(to_dict(self.config_class()), config or {})
            config = from_dict(self.config_class, merged, where=f"baselines.{self.name}")
        elif not isinstance(config, self.config_class):
            raise InputError(
                f"config of type {type(config).__name__} given to {self.name!r}",
                where=f"baselines.{self.name}", fix=f"pass a dict or a {self.config_class.__name__}",
            )
        validate = getattr(config, "validate", None)
        if callable(validate):
            validate()
        self.config = config
        self.T: int | None = None  # time bins of the training set (set by fit)
        self.n_stations: int | None = None  # stations of the training set (set by fit)

    # ------------------------------------------------------------------ API
    @abstractmethod
    def fit(self: B, train: PreparedDataset, *, val: PreparedDataset | None = None,
            progress: bool = True) -> B:
        """Learn from ``train`` (``val``, if given, is only monitored); return ``self``."""

    @abstractmethod
    def generate(self, n: int, *, seed: int, progress: bool = True) -> GeneratedSeries:
        """``n`` new samples of length ``T``; the same ``seed`` gives the same output."""

    @property
    def fitted(self) -> bool:
        return self.T is not None

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise InputError(f"baseline {self.name!r} is not fitted", where=self.name,
                             fix="call .fit(train) (or load a saved baseline) before .generate()")

    @staticmethod
    def _check_n(n: int) -> None:
        if not isinstance(n, int | np.integer) or n < 0:
            raise InputError(f"n = {n!r} samples", where="generate", fix="ask for a non-negative integer")

    def _remember_shape(self, train: PreparedDataset) -> None:
        if train.n_samples == 0:
            raise InputError("the training set is empty", where=f"{self.name}.fit",
                             fix="pass a prepared dataset with at least one sample")
        self.T = train.T
        self.n_stations = train.n_stations

    # ------------------------------------------------------------------ state
    @abstractmethod
    def _get_state(self) -> dict[str, Any]:
        """Fitted state as plain Python / numpy / tensors (for ``torch.save``)."""

    @abstractmethod
    def _set_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`_get_state`."""

    def _checkpoint(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "name": self.name,
            "config": to_dict(self.config),
            "T": self.T,
            "n_stations": self.n_stations,
            "state": self._get_state(),
        }

    @classmethod
    def _from_checkpoint(cls: type[B], ckpt: dict[str, Any]) -> B:
        obj = cls(ckpt["config"])
        obj.T = ckpt["T"]
        obj.n_stations = ckpt["n_stations"]
        obj._set_state(ckpt["state"])
        return obj

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fitted baseline to one file, atomically (temp file + rename)."""
        save_checkpoint(path, self._checkpoint())
        logger.info("saved baseline %s to %s", self.name, path)

    @classmethod
    def load(cls: type[B], path: str | os.PathLike[str]) -> B:
        """Read a file written by :meth:`save`. ``Baseline.load`` accepts any baseline; a subclass
        (e.g. ``Markov.load``) checks that the file holds that kind."""
        ckpt = load_checkpoint(path, what="baseline file", fix="pass a file written by Baseline.save")
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise InputError("not a saved mstdiff baseline", where=str(path),
                             fix="pass a file written by Baseline.save")
        target = _class_for(ckpt["name"])
        if not issubclass(target, cls):
            raise InputError(f"file holds baseline {ckpt['name']!r}, not a {cls.__name__}", where=str(path),
                             fix="load it with Baseline.load (or load_baseline)")
        try:
            return target._from_checkpoint(ckpt)
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise InputError(f"baseline file does not fit {ckpt.get('name')!r} ({first}): written by an "
                             "incompatible version, or damaged", where=str(path),
                             fix="fit and save the baseline again with this version") from None

    def __repr__(self) -> str:
        state = f"T={self.T}, N={self.n_stations}" if self.fitted else "not fitted"
        return f"{type(self).__name__}({state})"


# ----------------------------------------------------------------------------- registry
BASELINES: dict[str, type[Baseline]] = {}


def register_baseline(cls: type[B]) -> type[B]:
    """Class decorator: make ``cls`` available to :func:`make_baseline` under ``cls.name``."""
    if not cls.name or "+" in cls.name:
        raise ValueError(f"bad baseline name {cls.name!r}")
    BASELINES[cls.name] = cls
    return cls


def baseline_names() -> list[str]:
    """Registered single-model names (pairs are written ``"a+b"``)."""
    _ensure_registered()
    return sorted(BASELINES)


def _ensure_registered() -> None:
    # importing the package registers the built-in baselines
    import mstdiff.baselines  # noqa: F401


def _class_for(name: str) -> type[Baseline]:
    _ensure_registered()
    if "+" in name:
        return Pair
    if name not in BASELINES:
        raise InputError(f"unknown baseline {name!r}", where="baseline name",
                         fix=f"valid names: {', '.join(sorted(BASELINES))}, or a pair 'traffic+trajectory' "
                             "such as 'csdi+timegeo'")
    return BASELINES[name]


def make_baseline(name: str, config: dict[str, Any] | None = None) -> Baseline:
    """Build a baseline by name: ``"markov"``, ``"timegeo"``, ``"difftraj"``, ``"csdi"``, ``"dit"``,
    ``"mstdiff-traffic"`` (MSTDiff without trajectory), or a pair ``"a+b"`` (a traffic-only and a
    trajectory-only baseline, generated independently).

    ``config`` is the baseline's config as a dict (keys of its config dataclass); for a pair it is
    keyed by the component names, e.g. ``{"csdi": {...}, "timegeo": {...}}``.
    """
    if not isinstance(name, str):
        raise InputError(f"baseline name {name!r} is not a string", where="baseline name")
    key = name.strip().lower()
    if "+" in key:
        parts = [p.strip() for p in key.split("+")]
        if len(parts) != 2 or not all(parts):
            raise InputError(f"bad pair name {name!r}", where="baseline name",
                             fix="write a pair as 'traffic_model+trajectory_model', e.g. 'csdi+timegeo'")
        cfg = dict(config or {})
        unknown = sorted(set(cfg) - set(parts))
        if unknown:
            raise InputError(f"config keys {unknown} are not parts of the pair {key!r}",
                             where=f"baselines.{key}", fix=f"key the config by {parts[0]!r} and {parts[1]!r}")
        models = [make_baseline(p, cfg.get(p)) for p in parts]
        return Pair(*models)
    return _class_for(key)(config)


def load_baseline(path: str | os.PathLike[str]) -> Baseline:
    """Read any baseline written by :meth:`Baseline.save`."""
    return Baseline.load(path)


# ----------------------------------------------------------------------------- pairs
class Pair(Baseline):
    """A traffic-only and a trajectory-only baseline combined into both outputs.

    The parts are fitted on the same training set and generated **independently** with two child
    seeds of ``seed`` (``numpy.random.SeedSequence(seed).spawn(2)``): sample i of the traffic is not
    tied to sample i of the trajectory. The name is ``"<first>+<second>"`` in the order given.

    Exception: a traffic model with ``conditions_on_locations = True`` (ADAPTIVE) gets the
    trajectory model's locations through its ``generate_given(locations, seed=...)``; such a pair
    is coupled (``independent`` is False), with the trajectory model as its trajectory source.
    """

    produces: ClassVar[frozenset[str]] = frozenset(OUTPUTS)

    def __init__(self, first: Baseline, second: Baseline) -> None:
        if "traffic" in first.produces and "locations" in second.produces:
            traffic_model, location_model = first, second
        elif "locations" in first.produces and "traffic" in second.produces:
            traffic_model, location_model = second, first
        else:
            raise InputError(
                f"cannot pair {first.name!r} ({'/'.join(sorted(first.produces))}) with {second.name!r} "
                f"({'/'.join(sorted(second.produces))})", where="baseline pair",
                fix="pair a traffic model (csdi, dit) with a trajectory model (markov, timegeo, difftraj)",
            )
        self.parts = (first, second)
        self.traffic_model = traffic_model
        self.location_model = location_model
        self.config = {first.name: first.config, second.name: second.config}

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"{self.parts[0].name}+{self.parts[1].name}"

    @property
    def T(self) -> int | None:  # type: ignore[override]
        return self.parts[0].T

    @property
    def n_stations(self) -> int | None:  # type: ignore[override]
        return self.location_model.n_stations

    @property
    def fitted(self) -> bool:
        return all(p.fitted for p in self.parts)

    @property
    def independent(self) -> bool:
        """False when the traffic model conditions on the trajectory model's locations."""
        return not getattr(self.traffic_model, "conditions_on_locations", False)

    def fit(self, train: PreparedDataset, *, val: PreparedDataset | None = None,
            progress: bool = True) -> Pair:
        for part in self.parts:
            logger.info("pair %s: fitting %s", self.name, part.name)
            part.fit(train, val=val, progress=progress)
        return self

    def generate(self, n: int, *, seed: int, progress: bool = True) -> GeneratedSeries:
        self._check_fitted()
        s_tr, s_loc = child_seeds(seed, 2)
        locations = self.location_model.generate(n, seed=s_loc, progress=progress).locations
        if self.independent:
            traffic = self.traffic_model.generate(n, seed=s_tr, progress=progress).traffic
        else:  # traffic along the generated trajectories
            traffic = self.traffic_model.generate_given(  # type: ignore[attr-defined]
                locations, seed=s_tr, progress=progress).traffic
        return GeneratedSeries(traffic=traffic, locations=locations)

    def _get_state(self) -> dict[str, Any]:
        return {"parts": [p._checkpoint() for p in self.parts]}

    def _set_state(self, state: dict[str, Any]) -> None:  # pragma: no cover - built in _from_checkpoint
        raise NotImplementedError

    def _checkpoint(self) -> dict[str, Any]:
        self._check_fitted()
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "name": self.name,
                "config": {k: to_dict(v) for k, v in self.config.items()}, "T": self.T,
                "n_stations": self.n_stations, "state": self._get_state()}

    @classmethod
    def _from_checkpoint(cls, ckpt: dict[str, Any]) -> Pair:
        parts = [_class_for(p["name"])._from_checkpoint(p) for p in ckpt["state"]["parts"]]
        return cls(parts[0], parts[1])

    def __repr__(self) -> str:
        return f"Pair({self.parts[0]!r}, {self.parts[1]!r})"


# ----------------------------------------------------------------------------- generated set
PLACEHOLDER = {
    "traffic": "zeros: this model does not generate traffic; ignore traffic and joint metrics",
    "locations": "zeros (station 0): this model does not generate locations; ignore trajectory and "
                 "joint metrics",
}


def generate_dataset(model: Baseline, train: PreparedDataset, n: int, seed: int, *,
                     progress: bool = True, **meta_update: Any) -> PreparedDataset:
    """Generate ``n`` samples with ``model`` as a prepared dataset on ``train``'s station table.

    ``meta`` records ``model`` (the name), ``produces`` (the outputs the model generates),
    ``independent_pair`` (true for a :class:`Pair` whose traffic and trajectory are drawn
    independently; false for a coupled pair such as ``adaptive+markov``), ``trajectory_source``
    (for a coupled pair: the trajectory model whose locations the traffic follows),
    ``seed`` and the model config. An output the model does not produce is filled with zeros and
    listed under ``meta["placeholder"]`` so that the evaluation can skip its metrics.
    """
    model._check_fitted()
    Baseline._check_n(n)
    if model.T != train.T:
        raise InputError(f"{model.name} was fitted on T = {model.T} bins, the dataset has T = {train.T}",
                         where="generate_dataset", fix="pass the training set the model was fitted on")
    if "locations" in model.produces and model.n_stations != train.n_stations:
        raise InputError(
            f"{model.name} was fitted on {model.n_stations} stations, the dataset has {train.n_stations}",
            where="generate_dataset", fix="pass the training set the model was fitted on",
        )
    out = model.generate(int(n), seed=seed, progress=progress)
    placeholder: dict[str, str] = {}
    traffic, locations = out.traffic, out.locations
    if traffic is None:
        traffic = np.zeros((n, train.T), dtype=np.float32)
        placeholder["traffic"] = PLACEHOLDER["traffic"]
    if locations is None:
        locations = np.zeros((n, train.T), dtype=np.int32)
        placeholder["locations"] = PLACEHOLDER["locations"]
    if placeholder:
        logger.warning("%s does not generate %s: filled with zeros (see meta['placeholder'])",
                       model.name, " or ".join(placeholder))
    meta = {
        "model": model.name,
        "generator": "baseline",
        "produces": sorted(model.produces),
        "independent_pair": isinstance(model, Pair) and model.independent,
        "seed": int(seed),
        "model_config": to_dict(model.config),
    }
    if isinstance(model, Pair) and not model.independent:
        meta["trajectory_source"] = model.location_model.name
    if placeholder:
        meta["placeholder"] = placeholder
    meta.update(meta_update)
    return train.with_series(traffic, locations, source=f"baseline:{model.name}", **meta)



def positive(where: str, **values: float | int) -> None:
    """Raise :class:`InputError` unless every value is > 0 (config validation helper)."""
    for key, v in values.items():
        if not v > 0:
            raise InputError(f"{key} = {v} must be > 0", where=f"{where}.{key}")


def one_of(where: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{key} = {value!r} is not one of {choices}", where=f"{where}.{key}",
                         fix=f"use one of: {', '.join(choices)}")

