"""Replay: real training trajectories drawn with replacement (a trivial trajectory "generator").

Not a model: it copies whole user-days of the training set. Paired with a traffic model that
conditions on locations (``"adaptive+replay"``) it gives that model **real** trajectories, so its
row shows the traffic model alone; its trajectory metrics are those of "copy the training set"
(DESIGN §3: a metric such a generator beats the floor on is not a headline metric).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from mstdiff.baselines.base import Baseline, GeneratedSeries, register_baseline
from mstdiff.data.dataset import PreparedDataset

__all__ = ["Replay", "ReplayConfig"]


@dataclass
class ReplayConfig:
    """Replay of training trajectories (no settings)."""


@register_baseline
class Replay(Baseline):
    """``generate(n, seed)``: ``n`` training trajectories drawn uniformly with replacement."""

    name: ClassVar[str] = "replay"
    produces: ClassVar[frozenset[str]] = frozenset({"locations"})
    config_class: ClassVar[type[Any]] = ReplayConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.trajectories: np.ndarray | None = None

    def fit(self, train: PreparedDataset, *, val: PreparedDataset | None = None,
            progress: bool = True) -> Replay:
        self._remember_shape(train)
        self.trajectories = np.array(train.locations, dtype=np.int32)
        return self

    def generate(self, n: int, *, seed: int, progress: bool = True) -> GeneratedSeries:
        self._check_fitted()
        self._check_n(n)
        assert self.trajectories is not None
        idx = np.random.default_rng(seed).integers(0, self.trajectories.shape[0], size=n)
        return GeneratedSeries(locations=self.trajectories[idx])

    def _get_state(self) -> dict[str, Any]:
        return {"trajectories": self.trajectories}

    def _set_state(self, state: dict[str, Any]) -> None:
        self.trajectories = np.asarray(state["trajectories"], dtype=np.int32)
