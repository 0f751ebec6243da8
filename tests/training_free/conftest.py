"""Training-free tests run tiny models: one intra-op thread is as fast as two and avoids OpenMP
spin contention when parallel test runs share the machine's cores."""
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
