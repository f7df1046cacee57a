import numba
import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread_each():
    """One torch thread and one renderer thread: the tiny models and small batches gain nothing
    from two, and the idle threads of two OpenMP runtimes (torch's, numba's) spin and starve each
    other when the machine's cores are shared (CI, parallel sessions): 10-100x slower."""
    n_torch, n_numba = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    yield
    torch.set_num_threads(n_torch)
    numba.set_num_threads(n_numba)
