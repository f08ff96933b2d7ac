"""Shared fixtures: every kernel test runs for each micro-kernel set this CPU supports and for 1 and 2 threads."""
import numpy as np
import pytest

import fastconv

ARCHS = fastconv.available_archs()
THREADS = [1, 2]


@pytest.fixture(params=ARCHS)
def arch(request):
    """Select each available kernel set in turn (ref, avx2, avx512), restoring the previous one after."""
    previous = fastconv.set_arch(request.param)
    yield request.param
    fastconv.set_arch(previous)


@pytest.fixture(params=THREADS)
def nthreads(request):
    """Run with 1 and with 2 threads."""
    with fastconv.threads(request.param):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def torch_or_skip():
    """The torch module, or skip the test when torch is not installed."""
    return pytest.importorskip("torch")
