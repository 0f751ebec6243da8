"""Shared fixtures of the retrieval tests."""
import pytest


@pytest.fixture(scope="module")
def one_faiss_thread():
    """OpenMP threads spin under load; the test machine's 2 cores are shared by parallel runs."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
