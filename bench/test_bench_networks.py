"""pytest-benchmark version of two small cells of bench_networks.py: `pytest bench/ --benchmark-only`.

LeNet-5 at batch 8 on one thread: fastconv inference and a fastconv training step. Before timing, each is
compared with the same cell in torch (bench/torch_models.py with the same weights): the logits, and the loss
of the first training step (LeNet-5 has no dropout, so the two steps see the same network). Images/s and
eff GFLOP/s (the bench_networks.py convention) go to extra_info.
"""
import numpy as np
import pytest

pytest.importorskip("pytest_benchmark")

from _common import all_threads, torch  # noqa: E402
from bench_networks import (CHECK_TOL, FLOPS_PER_MAC, Network, fastconv_infer, fastconv_train_step,  # noqa: E402
                            max_rel_err, torch_infer, torch_train_step)

BATCH = 8


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_lenet5_cell(benchmark, mode):
    net = Network("lenet5", use_torch=torch is not None, use_onnx=False)
    x, labels = net.batch(BATCH)
    with all_threads(1):
        if mode == "infer":
            fn = fastconv_infer(net.fc, x)
            reference = torch_infer(net.torch_model, x) if torch is not None else None
        else:
            fn = fastconv_train_step(net.fc, x, labels)
            reference = torch_train_step(net.torch_model, x, labels) if torch is not None else None
        first = fn()
        assert np.all(np.isfinite(first))
        if reference is not None:  # the first training step: both start from the same weights
            assert max_rel_err(first, reference()) < CHECK_TOL
        benchmark.group = f"lenet5 {mode} batch {BATCH} 1t"
        benchmark(fn)
    if benchmark.stats is None:  # --benchmark-disable: the call ran once, untimed
        return
    median = benchmark.stats["median"]
    benchmark.extra_info["images_per_s"] = BATCH / median
    benchmark.extra_info["gflops"] = FLOPS_PER_MAC[mode] * net.macs * BATCH / median / 1e9
    assert benchmark.extra_info["images_per_s"] > 0
