"""The whole-network benchmark's peers are the same networks: bench/torch_models.py against fastconv.models
(parameter names, shapes, counts and output shapes at full size on torch's meta device; outputs on small inputs
with the same weights), the benchmark's training steps against each other, the ONNX export against torch, and
the `fastconv bench` command's plumbing."""
import argparse
import os
import sys

import numpy as np
import pytest

from fastconv import benchcli, models
from fastconv.testing import max_relative_error

torch = pytest.importorskip("torch")

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
import torch_models  # noqa: E402

NETS = ["lenet5", "alexnet", "vgg16", "googlenet", "resnet50"]
# input sizes that keep every layer and make the forward cheap; the classifier is sized for them on both sides
SMALL = {"lenet5": {}, "alexnet": dict(input_size=67), "vgg16": dict(input_size=32),
         "googlenet": dict(input_size=64), "resnet50": dict(input_size=32)}


def fastconv_shapes(model):
    return {k: tuple(v.shape) for k, v in torch_models.fastconv_arrays(model).items()}


def torch_shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("name", NETS)
def test_full_size_torch_definition_matches_fastconv(name):
    fc = models.get_model(name, init=None)  # zero weights: nothing is drawn, untouched pages cost nothing
    with torch.device("meta"):
        tm = torch_models.build(name)
    assert torch_shapes(tm) == fastconv_shapes(fc)
    assert sum(p.numel() for p in tm.parameters()) == fc.num_parameters()
    x = torch.empty((2,) + fc.input_shape, device="meta")
    assert tuple(tm.eval()(x).shape) == fc.output_shape((2,) + fc.input_shape)


def test_parameter_counts_are_the_published_ones():
    # independent of both definitions: the counts the architectures are known by (fastconv.models docstrings)
    expected = {"lenet5": 61_706, "alexnet": 62_378_344, "vgg16": 138_357_544, "googlenet": 6_998_552,
                "resnet50": 25_557_032}
    for name, count in expected.items():
        with torch.device("meta"):
            assert sum(p.numel() for p in torch_models.build(name).parameters()) == count, name


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def fastconv_leaves(model):
    """(dotted name, kind, hyperparameters) of every leaf module in forward order."""
    out = []
    for name, m in model.named_modules():
        if m.children:
            continue
        kind = type(m).__name__
        if kind == "Conv2d":
            hyper = (m.kernel_size, _pair(m.stride), _pair(m.padding), _pair(m.dilation), m.groups)
        elif kind in ("MaxPool2d", "AvgPool2d"):
            hyper = (_pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding), bool(m.ceil_mode))
        elif kind == "LocalResponseNorm":
            hyper = (m.size, m.alpha, m.beta, m.k)
        elif kind == "Dropout":
            hyper = (m.p,)
        elif kind == "GlobalAvgPool2d":
            kind, hyper = "GlobalAvgPool", ()
        else:
            hyper = ()
        out.append((name, kind, hyper))
    return out


def torch_leaves(model):
    out = []
    for name, m in model.named_modules():
        if list(m.children()) or isinstance(m, (torch_models.Concat, torch_models.Residual)):
            continue
        kind = type(m).__name__
        if kind == "Conv2d":
            hyper = (m.kernel_size, m.stride, m.padding, m.dilation, m.groups)
        elif kind in ("MaxPool2d", "AvgPool2d"):
            hyper = (_pair(m.kernel_size), _pair(m.stride), _pair(m.padding), bool(m.ceil_mode))
        elif kind == "LocalResponseNorm":
            hyper = (m.size, m.alpha, m.beta, m.k)
        elif kind == "Dropout":
            hyper = (m.p,)
        elif kind == "AdaptiveAvgPool2d" and _pair(m.output_size) == (1, 1):
            kind, hyper = "GlobalAvgPool", ()
        else:
            hyper = ()
        out.append((name, kind, hyper))
    return out


@pytest.mark.parametrize("name", NETS)
def test_same_layers_in_the_same_order(name):
    """Every leaf layer, parameter-free ones included (ReLU, pools, dropout), with its geometry."""
    fc = models.get_model(name, init=None)
    with torch.device("meta"):
        tm = torch_models.build(name)
    assert torch_leaves(tm) == fastconv_leaves(fc)


@pytest.mark.parametrize("name", ["lenet5", "alexnet", "googlenet",
                                  pytest.param("vgg16", marks=pytest.mark.slow),
                                  pytest.param("resnet50", marks=pytest.mark.slow)])
def test_same_weights_same_outputs_on_small_inputs(name):
    rng = np.random.default_rng(3)
    fc = models.get_model(name, num_classes=10, seed=1, **SMALL[name]).eval()
    tm = torch_models.load_fastconv_weights(torch_models.build(name, num_classes=10, **SMALL[name]), fc).eval()
    x = rng.standard_normal((2,) + fc.input_shape).astype(np.float32)
    with torch.no_grad():
        want = tm(torch.from_numpy(x)).numpy()
    got = fc.forward(x)
    assert got.shape == want.shape == (2, 10)
    assert max_relative_error(got, want) < 1e-4


def test_load_fastconv_weights_rejects_a_different_architecture():
    fc = models.get_model("lenet5", num_classes=10, init=None)
    with pytest.raises(ValueError, match="differ|shape"):
        torch_models.load_fastconv_weights(torch_models.build("lenet5", num_classes=7), fc)
    with pytest.raises(ValueError, match="differ"):
        torch_models.load_fastconv_weights(torch_models.build("alexnet", input_size=67), fc)


@pytest.mark.parametrize("name", ["lenet5", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_benchmark_training_steps_agree(name):
    """One step of bench_networks' fastconv and torch training steps from the same weights and batch gives the
    same loss and the same parameter updates (networks without dropout, whose masks differ). In float64: the
    small input leaves ResNet's last BatchNorms 4 values per channel, too few for a float32 comparison."""
    import bench_networks as bn
    rng = np.random.default_rng(5)
    fc = models.get_model(name, num_classes=10, seed=2, dtype=np.float64, **SMALL[name])
    tm = torch_models.build(name, num_classes=10, **SMALL[name]).double()
    torch_models.load_fastconv_weights(tm, fc)
    x = rng.standard_normal((4,) + fc.input_shape)
    labels = rng.integers(0, 10, 4).astype(np.int64)
    before = {k: v.copy() for k, v in torch_models.fastconv_arrays(fc).items()}
    loss_fc = bn.fastconv_train_step(fc, x, labels, lr=0.1)()
    loss_torch = float(bn.torch_train_step(tm, x, labels, lr=0.1)())
    assert abs(loss_fc - loss_torch) <= 1e-9 * abs(loss_torch)
    after_torch = {k: v.numpy() for k, v in tm.state_dict().items()}
    for k, after in torch_models.fastconv_arrays(fc).items():
        if "running" in k:  # BatchNorm statistics: compare the values themselves
            assert max_relative_error(after, after_torch[k]) < 1e-9, k
        else:
            assert max_relative_error(after - before[k], after_torch[k] - before[k]) < 1e-7, k
    first_conv = next(m for _, m in fc.named_modules() if type(m).__name__ == "Conv2d")
    assert first_conv.need_input_grad is False  # the input images got no gradient


def test_network_macs_follow_the_conv_and_linear_formulas():
    import bench_networks as bn
    # LeNet-5 by hand: C1 6x28x28x25, C3 16x10x10x150, C5 120x400, F6 120x84, output 84x10
    expected = 6 * 28 * 28 * 25 + 16 * 10 * 10 * 150 + 120 * 400 + 120 * 84 + 84 * 10
    assert bn.network_macs(models.get_model("lenet5", init=None)) == expected


def test_onnx_export_runs_in_onnxruntime_with_one_lrn_node():
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    import tempfile
    fc = models.get_model("alexnet", num_classes=10, seed=1, input_size=67)
    tm = torch_models.load_fastconv_weights(torch_models.build("alexnet", num_classes=10, input_size=67), fc)
    x = np.random.default_rng(0).standard_normal((3,) + fc.input_shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        path = torch_models.export_onnx(tm, os.path.join(d, "alexnet.onnx"), fc.input_shape)
        ops = [n.op_type for n in onnx.load(path).graph.node]
        got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert ops.count("LRN") == 2 and "Pad" not in ops
    assert got.shape == (3, 10)  # a batch other than the export's 1: the batch axis is dynamic
    assert max_relative_error(got, fc.eval().forward(x)) < 1e-4
    assert any(isinstance(m, torch.nn.LocalResponseNorm) for m in tm.modules())  # the model is given back as it was


# ------------------------------------------------------------------------------------------ fastconv bench

def _cli_parser():
    parser = argparse.ArgumentParser(prog="fastconv")
    sub = parser.add_subparsers(dest="command")
    benchcli.add_parser(sub)
    return parser


def test_bench_subcommand_hands_every_option_to_the_script():
    args = _cli_parser().parse_args(["bench", "--quick", "--nets", "lenet5", "--help"])
    assert args.command == "bench" and args.bench_args == ["--quick", "--nets", "lenet5", "--help"]


def test_bench_dir_is_found_in_a_checkout_and_missing_elsewhere(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTCONV_BENCH_DIR", raising=False)
    assert benchcli.find_bench_dir() == os.path.abspath(BENCH)
    assert benchcli.find_bench_dir(package_dir=str(tmp_path / "site" / "fastconv"), cwd=str(tmp_path)) is None
    monkeypatch.setenv("FASTCONV_BENCH_DIR", BENCH)
    assert benchcli.find_bench_dir(package_dir=str(tmp_path / "site" / "fastconv"), cwd=str(tmp_path)) == BENCH


def test_bench_without_a_checkout_explains_and_fails(monkeypatch, capsys):
    monkeypatch.setattr(benchcli, "find_bench_dir", lambda: None)
    assert benchcli.run(argparse.Namespace(bench_args=["--quick"])) == 2
    assert "source checkout" in capsys.readouterr().err


def test_bench_usage_error_is_an_exit_status(capsys):
    assert benchcli.run(argparse.Namespace(bench_args=["--nets", "no-such-net"])) == 2
    assert "no-such-net" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ report.py

def _synthetic_run(load):
    def rec(lib, mode, ips):
        return {"net": "alexnet", "mode": mode, "batch": 8, "threads": 1, "lib": lib, "median_ms": 8e3 / ips,
                "images_per_s": ips, "gflops": 1.0, "samples_ms": [8e3 / ips] * 3}
    return {"benchmark": "bench_networks",
            "environment": {"fastconv_arch": "avx512", "openmp": True, "versions": {"fastconv": "0.1.0"},
                            "machine": {"cpu": "Test CPU", "cpu_count": 2, "cpus_usable": 2, "date": "today",
                                        "load_average": [load, load, load]},
                            "load_average_end": [load, load, load]},
            "settings": {"budget_s": 1.0, "min_repeats": 3, "threads": [1], "quick": True, "check_tol": 1e-3},
            "networks": {"alexnet": {"params": 5, "macs_per_image": 1e9, "input_shape": [3, 227, 227],
                                     "dropout": True}},
            "records": [rec("fastconv", "infer", 100.0), rec("torch", "infer", 50.0),
                        rec("onnxruntime", "infer", 200.0), rec("fastconv", "train", 30.0),
                        rec("torch", "train", 20.0)],
            "checks": [{"net": "alexnet", "mode": "infer", "batch": 8, "threads": 1, "lib": "fastconv",
                        "error": 0.5}],
            "skipped": [], "layers": None}


def test_report_ratios_targets_and_load_label(tmp_path):
    import report
    text = report.render_markdown(_synthetic_run(load=3.0))
    row = next(line for line in text.splitlines() if line.startswith("| alexnet | inference"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[8:10] == ["2.00", "0.50"]  # fastconv / torch, fastconv / onnxruntime in images/s
    assert ">= ort **no**" in cells[10]
    train = next(line for line in text.splitlines() if line.startswith("| alexnet | training step"))
    assert "1.50" in train and ">= torch yes" in train
    assert "loaded, shared machine" in text and "MISMATCH" in text
    assert "loaded, shared machine" not in report.render_markdown(_synthetic_run(load=0.2))


def test_report_writes_markdown_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    import report
    data = _synthetic_run(load=0.2)
    png = report.write_png(data, str(tmp_path / "img" / "chart.png"))
    md = report.write_markdown(data, str(tmp_path / "report.md"), png=png)
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert "](img/chart.png)" in open(md).read()


def test_bench_json_keeps_a_summary_and_a_spread_of_the_samples():
    from bench_networks import MAX_SAMPLES_KEPT, sample_summary
    rng = np.random.default_rng(3)
    samples = list(rng.uniform(1e-5, 3e-5, 40_001))  # seconds, as a LeNet-5 cell times them
    got = sample_summary(samples)
    ms = np.array(samples) * 1e3
    assert got["calls"] == len(samples)
    assert got["min_ms"] == ms.min() and got["max_ms"] == ms.max()
    for key, q in (("q1_ms", 25), ("q3_ms", 75)):
        assert abs(got[key] - np.percentile(ms, q)) <= 1e-3 * np.percentile(ms, q)
    kept = got["samples_ms"]
    assert len(kept) <= MAX_SAMPLES_KEPT and len(kept) >= MAX_SAMPLES_KEPT // 2
    np.testing.assert_allclose(kept, ms[::-(-len(ms) // MAX_SAMPLES_KEPT)], rtol=1e-3)  # in call order
    few = sample_summary([2e-3, 1e-3, 3e-3])
    assert few["samples_ms"] == [2.0, 1.0, 3.0] and few["calls"] == 3 and (few["min_ms"], few["max_ms"]) == (1.0, 3.0)
