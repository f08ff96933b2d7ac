"""pytest-benchmark version of a few rows of bench_layers.py: `pytest bench/ --benchmark-only`.

Each benchmark group is one layer x pass x thread count, holding fastconv, torch and NumPy im2col side by side;
GFLOP/s (same convention as bench_layers.py) is stored in extra_info. Every benchmarked call's result is
first compared with torch (or the NumPy baseline without torch), so a fast wrong answer fails.
"""
import numpy as np
import pytest

pytest.importorskip("pytest_benchmark")

from _common import all_threads, torch  # noqa: E402
from bench_layers import (CHECK_TOL, FLOPS_PER_MAC, LAYERS_BY_NAME, conv_arrays, conv_callables,  # noqa: E402
                          max_rel_err)

LAYER_NAMES = ["lenet_conv2", "googlenet_1x1", "resnet50_3x3"]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("lib", ["fastconv", "torch", "numpy"])
@pytest.mark.parametrize("pas", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("layer_name", LAYER_NAMES)
def test_conv_layer(benchmark, layer_name, pas, lib, threads):
    if lib == "torch" and torch is None:
        pytest.skip("torch not installed")
    layer = LAYERS_BY_NAME[layer_name]
    callables = conv_callables(layer, conv_arrays(layer))
    fn = callables[lib][pas]
    reference = callables["torch" if torch is not None else "numpy"][pas]
    benchmark.group = f"{layer_name} {pas} {threads}t"
    benchmark.extra_info["flop"] = FLOPS_PER_MAC[pas] * layer.macs
    with all_threads(threads):
        for got, want in zip(fn(), reference()):
            assert max_rel_err(got, want) < CHECK_TOL
        benchmark(fn)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gflops_median"] = benchmark.extra_info["flop"] / benchmark.stats["median"] / 1e9
        assert np.isfinite(benchmark.extra_info["gflops_median"])
