"""mstdiff: joint simulation of user trajectories over base stations and per-user mobile traffic.

The package follows the MSTDiff method (multi-scale diffusion transformer). Sub-packages:

- :mod:`mstdiff.data` — record readers, preparation, the prepared-dataset type, splits, synthetic city.
- :mod:`mstdiff.kg` — urban knowledge graph, TuckER embeddings, kNN graph and rate matrix.
- :mod:`mstdiff.diffusion` — Gaussian and graph-discrete noise processes (no network weights).
- :mod:`mstdiff.models` — wavelet transform, VQ-VAE, multi-scale denoiser.
- :mod:`mstdiff.training` — training loops, checkpoints, EMA, sampling drivers.
- :mod:`mstdiff.metrics` — pure metric functions, reports and plots.
- :mod:`mstdiff.baselines` — baselines behind the same fit/generate interface.
"""

__version__ = "0.1.0"
