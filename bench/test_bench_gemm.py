"""pytest-benchmark timings of a few GEMM shapes: `pytest bench/ --benchmark-only`.

Not collected by a plain `pytest` (testpaths is tests/). fastconv runs with its default kernel set and thread
count; NumPy alongside for comparison. bench/bench_gemm.py prints the full table with GFLOP/s and % of peak.
"""
import numpy as np
import pytest

import fastconv

pytest.importorskip("pytest_benchmark")

# (id, M, K, N, trans_b)
SHAPES = [
    ("square512", 512, 512, 512, False),
    ("resnet3x3", 64, 576, 3136, False),
    ("lenet_conv2", 16, 150, 100, False),
    ("resnet3x3_dW", 64, 3136, 576, True),
]


@pytest.fixture(params=SHAPES, ids=[s[0] for s in SHAPES])
def problem(request):
    _, m, k, n, trans_b = request.param
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    return a, b, trans_b, np.empty((m, n), np.float32)


def test_fastconv_gemm(benchmark, problem):
    a, b, trans_b, out = problem
    benchmark.extra_info["arch"] = fastconv.get_arch()
    benchmark.extra_info["threads"] = fastconv.get_num_threads()
    benchmark(fastconv.gemm, a, b, out, trans_b=trans_b)
    np.testing.assert_allclose(out, a @ (b.T if trans_b else b), rtol=1e-3, atol=1e-3 * np.sqrt(a.shape[1]))


def test_numpy_matmul(benchmark, problem):
    a, b, trans_b, out = problem
    benchmark(np.matmul, a, b.T if trans_b else b, out=out)
