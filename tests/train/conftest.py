"""Single-threaded BLAS for these tests: their matrices are tiny, and on a shared 2-core machine
OpenBLAS's worker threads spin against other processes and make small GEMMs several times slower."""

import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True, scope="session")
def _single_threaded_blas():
    with threadpool_limits(limits=1, user_api="blas"):
        yield
