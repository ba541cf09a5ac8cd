"""Record readers, preparation, the prepared-dataset type, splits and the synthetic city."""

from mstdiff.data.dataset import (
    PreparedDataset,
    check_T,
    normalisation_stats,
    split_dataset,
    user_level_split,
)

__all__ = ["PreparedDataset", "check_T", "normalisation_stats", "split_dataset", "user_level_split"]
