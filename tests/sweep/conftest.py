"""Sweep tests run single-threaded: their tensors are small, and on shared, loaded cores torch's
thread pool makes each small op many times slower (measured ~12x for a sweep point)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
