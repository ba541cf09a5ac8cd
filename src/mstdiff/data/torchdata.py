"""PyTorch view of a prepared dataset."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from mstdiff.data.dataset import PreparedDataset


class SeriesDataset(Dataset[dict[str, torch.Tensor]]):
    """Samples ``{"traffic": (T,) float32, "locations": (T,) int64}`` of a prepared dataset.

    ``index`` restricts to a subset of sample positions (e.g. one split).
    """

    def __init__(self, ds: PreparedDataset, index: np.ndarray | None = None) -> None:
        self.ds = ds
        self.index = np.arange(ds.n_samples) if index is None else np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.index.size)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = int(self.index[i])
        return {
            "traffic": torch.from_numpy(np.array(self.ds.traffic[j], dtype=np.float32)),
            "locations": torch.from_numpy(np.array(self.ds.locations[j], dtype=np.int64)),
        }
