"""fastconv.analyze: summary rows and totals against numbers worked out here from the architectures; the memory
estimate on a net small enough to count by hand; renderings; profile; the `fastconv summary` command."""
import csv
import io

import numpy as np
import pytest

from fastconv import _C, analyze, models, nn
from fastconv.cli import main

VGG16 = "64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M"


def test_alexnet_facts():
    s = analyze.summary(models.alexnet(init=None), (3, 227, 227))
    conv1 = s["features.conv1"]
    out = (227 - 11) // 4 + 1
    assert out == 55 and conv1.output_shape == (1, 96, 55, 55) and conv1.input_shape == (1, 3, 227, 227)
    assert 96 * 3 * 11 * 11 == 34_848 and conv1.params == 34_848 + 96
    assert conv1.macs == out * out * 96 * (3 * 11 * 11) == 105_415_200
    assert conv1.adds == out * out * 96  # the bias
    pool1 = s["features.pool1"]
    assert pool1.output_shape == (1, 96, 27, 27) and pool1.params == 0 and pool1.macs == 0
    assert pool1.comparisons == 27 * 27 * 96 * (3 * 3 - 1)
    norm1 = s["features.norm1"]
    assert norm1.macs == 27 * 27 * 96 * (5 + 2) and norm1.exponentials == 27 * 27 * 96
    assert s["features.relu1"].comparisons == 55 * 55 * 96 and s["features.relu1"].inplace
    fc6 = s["classifier.fc6"]
    assert fc6.macs == 6 * 6 * 256 * 4096 and fc6.params == 6 * 6 * 256 * 4096 + 4096
    assert s["classifier.flatten"].view and s["classifier.flatten"].activation_bytes == 0
    assert s.totals["params"] == 62_378_344 and not s.uncounted
    assert s.totals["flops"] == 2 * s.totals["macs"] + sum(s.totals[k] for k in
                                                           ("comparisons", "adds", "divisions", "exponentials"))
    two = analyze.summary(models.alexnet(groups=2, init=None), (3, 227, 227))
    assert two["features.conv2"].macs == 27 * 27 * 256 * (48 * 5 * 5)  # each tower sees half the channels
    assert two.totals["params"] == 60_965_224


def vgg16_walk(size=224):
    """(conv outputs, pool outputs, conv MACs) per image, from the layer list of configuration D."""
    c, convs, pools, macs = 3, [], [], 0
    for item in VGG16.split():
        if item == "M":
            size //= 2
            pools.append(c * size * size)
        else:
            macs += size * size * int(item) * c * 9
            c = int(item)
            convs.append(c * size * size)
    return convs, pools, macs


def test_vgg16_parameters_activations_and_macs():
    s = analyze.summary(models.vgg16(init=None), (3, 224, 224))
    assert s.totals["params"] == 138_357_544
    convs, pools, conv_macs = vgg16_walk()
    fcs = [4096, 4096, 1000]
    # every array the forward creates: conv + ReLU outputs, pools, fc6/relu6/drop6, fc7/relu7/drop7, fc8
    assert s.totals["activations"] == 2 * sum(convs) + sum(pools) + 3 * 4096 * 2 + 1000
    # with ReLU and dropout in place: conv, pool and FC outputs
    assert s.totals["activations_inplace"] == sum(convs) + sum(pools) + sum(fcs)
    assert s.totals["input_activations"] == 3 * 224 * 224
    assert round((s.totals["activations_inplace"] + s.totals["input_activations"]) / 1e6, 1) == 15.2
    assert s.totals["activation_bytes"] == 4 * s.totals["activations"]
    fc_macs = 7 * 7 * 512 * 4096 + 4096 * 4096 + 4096 * 1000
    assert s.totals["macs"] == conv_macs + fc_macs
    assert round(s.totals["macs"] / 1e9, 1) == 15.5


def resnet50_conv_macs(stride_in_1x1=True):
    size = 112
    macs = size * size * 64 * 3 * 49
    size //= 2
    c = 64
    for stage, (w, n) in enumerate(zip([64, 128, 256, 512], [3, 4, 6, 3])):
        for i in range(n):
            s = 2 if stage and not i else 1
            out_size = size // s
            first = size if stride_in_1x1 is False else out_size  # where the 1x1 reduce runs
            macs += first * first * w * c  # 1x1 reduce
            macs += out_size * out_size * w * w * 9  # 3x3
            macs += out_size * out_size * 4 * w * w  # 1x1 expand
            if s != 1 or c != 4 * w:
                macs += out_size * out_size * 4 * w * c
            c, size = 4 * w, out_size
    return macs


@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_resnet50(stride_in_1x1):
    s = analyze.summary(models.resnet50(stride_in_1x1=stride_in_1x1, init=None), (3, 224, 224))
    assert s.totals["params"] == 25_557_032
    conv_macs = sum(r.macs for r in s.rows if r.type == "Conv2d")
    assert conv_macs == resnet50_conv_macs(stride_in_1x1)
    assert round(conv_macs / 1e9, 2) == (3.86 if stride_in_1x1 else 4.09)
    adds = [r for r in s.rows if r.type == "Residual add"]
    assert len(adds) == 16 and all(r.adds == int(np.prod(r.output_shape)) for r in adds)
    assert adds[0].name == "layer1.0.res" and adds[-1].output_shape == (1, 2048, 7, 7)
    bn = s["layer1.0.res.body.bn1"]
    assert bn.macs == 64 * 56 * 56 and bn.params == 128
    pool = s["avgpool"]
    assert pool.adds == 2048 * (7 * 7 - 1) and pool.divisions == 2048
    assert s.memory["buffers"] == 4 * 2 * sum(r.params // 2 for r in s.rows if r.type == "BatchNorm2d")


def test_googlenet_and_alphago_counts():
    s = analyze.summary(models.googlenet(init=None))
    concats = [r for r in s.rows if r.type == "Concat"]
    assert [r.name for r in concats] == [f"inception_{n}" for n in ("3a", "3b", "4a", "4b", "4c", "4d", "4e",
                                                                      "5a", "5b")]
    assert concats[-1].output_shape == (1, 1024, 7, 7)
    assert 1.45e9 < s.totals["macs"] < 1.6e9  # "a computational budget of 1.5 billion multiply-adds"
    pool5 = s["pool5"]
    assert pool5.adds == 1024 * 48 and pool5.divisions == 1024
    assert s["inception_3a.pool_proj.pool"].comparisons == 192 * 28 * 28 * 8

    aux = analyze.summary(models.googlenet(aux_logits=True, init=None))
    assert aux["aux1.head.fc"].input_shape == (1, 4 * 4 * 128) and aux["aux1"].view
    assert aux.totals["params"] == models.googlenet(aux_logits=True, init=None).num_parameters()

    a = analyze.summary(models.alphago_policy(init=None))
    sm = a["softmax"]
    assert (sm.comparisons, sm.adds, sm.divisions, sm.exponentials) == (360, 2 * 361 - 1, 361, 361)
    assert a["position_bias"].adds == 361 and a["position_bias"].params == 361
    assert a["conv2"].macs == 19 * 19 * 192 * 192 * 9


def test_batch_scales_counts_not_parameters():
    one = analyze.summary(models.lenet5(init=None))
    three = analyze.summary(models.lenet5(init=None), batch=3)
    assert three.totals["params"] == one.totals["params"] == 61_706
    for k in ("macs", "comparisons", "adds", "divisions", "activations", "input_activations"):
        assert three.totals[k] == 3 * one.totals[k], k
    s2 = one["features.s2"]
    assert s2.adds == 6 * 14 * 14 * 3 and s2.divisions == 6 * 14 * 14
    assert three.rows[0].input_shape == (3, 1, 32, 32)


def test_training_memory_of_a_small_net():
    net = nn.Sequential(conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU(), pool=nn.MaxPool2d(2),
                        bn=nn.BatchNorm2d(4), flatten=nn.Flatten(), drop=nn.Dropout(0.5), fc=nn.Linear(4 * 4 * 4, 5))
    net["conv"].freeze()
    s = analyze.summary(net, (3, 8, 8), batch=2, threads=1)
    f = 4
    x, conv_out, pool_out = 2 * 3 * 8 * 8, 2 * 4 * 8 * 8, 2 * 4 * 4 * 4
    kept = (f * x  # the conv keeps its input
            + f * conv_out  # the ReLU keeps its input
            + 8 * pool_out  # int64 argmax
            + f * pool_out + f * 2 * 4  # BatchNorm: its input and the batch mean and invstd
            + pool_out  # dropout's bool mask
            + f * pool_out)  # the linear keeps the dropout output (the BN output went through a view and dropout)
    assert s.memory["kept_activations"] == kept
    trainable = 8 + 64 * 5 + 5  # conv frozen
    assert s.memory["parameters"] == f * (3 * 4 * 9 + 4 + trainable)
    assert s.memory["gradients"] == s.memory["optimizer_state"] == f * trainable
    assert s.memory["buffers"] == f * 8
    workspace = _C.conv2d_workspace_bytes((2, 3, 8, 8), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), 1, 4)
    assert s.memory["conv_workspace"] == workspace > 0
    assert analyze.summary(net, (3, 8, 8), batch=2, threads=2).memory["conv_workspace"] == 2 * workspace
    assert s.memory["total"] == sum(s.memory[k] for k in ("kept_activations", "parameters", "gradients",
                                                          "optimizer_state", "buffers", "conv_workspace"))
    d = analyze.summary(net.astype(np.float64), (3, 8, 8), batch=2, threads=1)
    assert d.memory["parameters"] == 2 * s.memory["parameters"] and d.dtype == np.float64


def test_every_model_summarizes_consistently():
    for name in models.MODELS:
        model = models.get_model(name, init=None)
        s = analyze.summary(model)
        assert s.totals["params"] == model.num_parameters(), name
        assert s.rows[-1].output_shape == model.output_shape((1,) + model.input_shape), name
        assert not s.uncounted, name
        names = {n for n, m in model.named_modules() if not m.children}
        assert names <= {r.name for r in s.rows}, name


def test_renderings():
    s = analyze.summary(models.alexnet(init=None))
    text = s.to_text()
    assert str(s) == text and "features.conv1" in text and "105,415,200" in text and "96x55x55" in text
    assert "counted:" in text and "training memory estimate" in text and "62,378,344" in text
    lines = text.splitlines()
    header = next(i for i, l in enumerate(lines) if l.startswith("name"))
    assert lines[header + 1].startswith("----")
    # columns line up: every row of the table is as wide as its header's columns allow
    assert lines[header + 2].index("Conv2d") == lines[header].index("type")
    md = s.to_markdown()
    table = [l for l in md.splitlines() if l.startswith("|")]
    assert len(table) == 2 + len(s.rows) + 1 and table[1].startswith("|:---")
    assert all(l.count("|") == len(s.COLUMNS) + 1 for l in table)
    parsed = list(csv.DictReader(io.StringIO(s.to_csv())))
    records = s.records()
    assert len(parsed) == len(records) == len(s.rows)
    assert parsed[0]["name"] == records[0]["name"] == "features.conv1"
    assert int(parsed[0]["macs"]) == records[0]["macs"] == 105_415_200
    assert parsed[0]["output_shape"] == "1x96x55x55" and records[0]["output_shape"] == (1, 96, 55, 55)
    assert s.render("md") == md and s.render("csv") == s.to_csv()
    with pytest.raises(ValueError, match="format"):
        s.render("html")


def test_unknown_layers_and_containers():
    class Square(nn.Module):
        def forward(self, x):
            return x * x

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.add_child("a", nn.ReLU())

    s = analyze.summary(nn.Sequential(conv=nn.Conv2d(1, 2, 3), sq=Square()), (1, 5, 5))
    assert s.uncounted == {"Square"} and s["sq"].macs == 0
    assert "NOT counted" in s.to_text() and "Square" in s.to_text()
    with pytest.raises(TypeError, match="Pair"):
        analyze.summary(nn.Sequential(p=Pair()), (1, 5, 5))
    with pytest.raises(ValueError, match="input_shape"):
        analyze.summary(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="pool5"):
        analyze.summary(models.vgg16(init=None), (3, 16, 16))
    with pytest.raises(ValueError, match="batch"):
        analyze.summary(models.lenet5(init=None), batch=0)


def capture_output_shapes(model, x):
    """Run `model` on `x`, recording the output shape of every leaf module."""
    shapes = {}
    leaves = [(n, m) for n, m in model.named_modules() if not m.children]
    for n, m in leaves:
        def recorder(v, n=n, f=m.forward):
            y = f(v)
            shapes[n] = y.shape
            return y
        m.forward = recorder
    try:
        model.forward(x)
    finally:
        for _, m in leaves:
            del m.forward
    return shapes


@pytest.mark.parametrize("name,options,shape", [
    ("googlenet", dict(input_size=96, aux_logits=True, num_classes=10), (3, 96, 96)),
    ("resnet18", dict(input_size=48, num_classes=10), (3, 48, 48)),
    ("alexnet", dict(input_size=67, groups=2, num_classes=10), (3, 67, 67)),
])
def test_summary_shapes_agree_with_a_real_forward(name, options, shape, rng):
    model = models.get_model(name, seed=0, **options)
    x = rng.standard_normal((2,) + shape).astype(np.float32)
    actual = capture_output_shapes(model, x)
    rows = {r.name: r for r in analyze.summary(model, shape, batch=2).rows}
    assert set(actual) <= set(rows)
    for n, s in actual.items():
        assert rows[n].output_shape == s, n


def test_profile(rng):
    model = models.lenet5(seed=0)
    x = rng.standard_normal((2, 1, 32, 32)).astype(np.float32)
    p = analyze.profile(model, x, repeats=2, warmup=1)
    leaves = [n for n, m in model.named_modules() if not m.children]
    assert [r.name for r in p.rows] == leaves
    assert all(r.forward_ms > 0 for r in p.rows)
    assert all(r.backward_ms > 0 for r in p.rows if r.name != "features.flatten")
    assert p.forward_ms >= sum(r.forward_ms for r in p.rows) * 0.5
    conv = p["features.c3"]
    assert np.isfinite(conv.forward_gflops) and np.isfinite(conv.backward_gflops)
    assert not np.isfinite(p["features.relu1"].backward_gflops)
    assert all("forward" not in m.__dict__ and "backward" not in m.__dict__ for _, m in model.named_modules())
    assert not any(g.any() for _, _, g in model.parameters())
    assert "features.c1" in p.to_text() and "total" in p.to_text() and p.to_markdown().count("\n") > len(leaves)
    assert len(list(csv.DictReader(io.StringIO(p.to_csv())))) == len(leaves)
    aux = models.googlenet(input_size=96, aux_logits=True, num_classes=4, seed=0)
    q = analyze.profile(aux, rng.standard_normal((1, 3, 96, 96)).astype(np.float32), repeats=1, warmup=0)
    assert q["aux1.head.fc"].forward_ms > 0 and q["aux1.head.fc"].backward_ms > 0


def test_cli_summary(capsys):
    assert main(["summary", "alexnet", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    conv1 = next(r for r in rows if r["name"] == "features.conv1")
    assert int(conv1["macs"]) == 105_415_200 and conv1["output_shape"] == "1x96x55x55"
    assert main(["summary", "resnet18", "--input", "3x64x64", "--batch", "2", "--num-classes", "7"]) == 0
    out = capsys.readouterr().out
    assert "resnet18: input 3x64x64, batch 2" in out
    fc = next(line for line in out.splitlines() if line.startswith("fc "))
    assert fc.split()[:5] == ["fc", "Linear", "512", "7", f"{512 * 7 + 7:,}"]
    assert main(["summary", "vgg16", "--format", "md"]) == 0
    assert "| features.conv1_1 | Conv2d |" in capsys.readouterr().out
    for bad in (["summary", "alexnet", "--input", "3x64"], ["summary", "lenet6"],
                ["summary", "vgg16", "--input", "3x16x16"]):
        with pytest.raises(SystemExit) as e:
            main(bad)
        assert e.value.code == 2
    assert "pool5" in capsys.readouterr().err
