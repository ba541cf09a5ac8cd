import numba
import torch

from mstdiff.threads import configured, set_threads


def test_set_threads_bounds_torch_and_numba_and_is_remembered():
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1 and configured() == 1
    finally:
        torch.set_num_threads(before)
        numba.set_num_threads(min(before, numba.config.NUMBA_NUM_THREADS))
