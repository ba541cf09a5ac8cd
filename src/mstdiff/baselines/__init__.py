"""Baselines of the paper behind one interface, producing the same output type as MSTDiff.

Trajectory: :class:`Markov` (time-of-day Markov chain), :class:`TimeGeo` (Jiang et al. 2016),
:class:`DiffTraj` (Zhu et al. 2023), :class:`PateGail` (Wang et al. 2024), :class:`Volunteer`
(Long et al. 2023). Traffic: :class:`CSDI` (Tashiro et al. 2021), :class:`DiT`
(DiT-1D, Peebles & Xie 2023), :class:`MSHGAN` (BiLSTM + self-attention over a switch-mode generator
group, WGAN-GP), :class:`ADAPTIVE` (Jin et al. 2023: station-feature-conditioned GAN with cross-city
alignment), :class:`MSTDiffTraffic` (MSTDiff without trajectory, the paper's ablation); and
:class:`Replay` (training trajectories drawn with replacement, a trivial trajectory source). A traffic
and a trajectory baseline combine into an independent :class:`Pair` (``"csdi+timegeo"``), or a coupled
one when the traffic model follows the trajectory (``"adaptive+markov"``). Build by name with
:func:`make_baseline`, fit on a prepared dataset, and write a generated set with
:func:`generate_dataset`; see :mod:`mstdiff.baselines.base`. All re-implemented from the papers.
"""

from mstdiff.baselines._gan import GANTrainConfig
from mstdiff.baselines._learned import DiffusionConfig, TrainConfig
from mstdiff.baselines.adaptive import ADAPTIVE, ADAPTIVEConfig
from mstdiff.baselines.base import (
    BASELINES,
    Baseline,
    GeneratedSeries,
    Pair,
    baseline_names,
    generate_dataset,
    load_baseline,
    make_baseline,
    register_baseline,
)
from mstdiff.baselines.csdi import CSDI, CSDIConfig
from mstdiff.baselines.difftraj import DiffTraj, DiffTrajConfig, StationSnapper
from mstdiff.baselines.dit import DiT, DiTConfig
from mstdiff.baselines.markov import Markov, MarkovConfig
from mstdiff.baselines.mshgan import MSHGAN, MSHGANConfig
from mstdiff.baselines.mstdiff_traffic import MSTDiffTraffic, MSTDiffTrafficConfig
from mstdiff.baselines.pategail import PateGail, PateGailConfig
from mstdiff.baselines.replay import Replay, ReplayConfig
from mstdiff.baselines.timegeo import TimeGeo, TimeGeoConfig
from mstdiff.baselines.volunteer import Volunteer, VolunteerConfig
from mstdiff.data.scaling import TrafficScaler

__all__ = [
    "ADAPTIVE",
    "ADAPTIVEConfig",
    "BASELINES",
    "CSDI",
    "CSDIConfig",
    "Baseline",
    "DiT",
    "DiTConfig",
    "DiffTraj",
    "DiffTrajConfig",
    "DiffusionConfig",
    "GANTrainConfig",
    "GeneratedSeries",
    "MSHGAN",
    "MSHGANConfig",
    "MSTDiffTraffic",
    "MSTDiffTrafficConfig",
    "Markov",
    "MarkovConfig",
    "Pair",
    "Replay",
    "ReplayConfig",
    "PateGail",
    "PateGailConfig",
    "StationSnapper",
    "TimeGeo",
    "TimeGeoConfig",
    "TrafficScaler",
    "TrainConfig",
    "Volunteer",
    "VolunteerConfig",
    "baseline_names",
    "generate_dataset",
    "load_baseline",
    "make_baseline",
    "register_baseline",
]
