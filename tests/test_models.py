"""fastconv.models: every builder; shapes and parameter counts against numbers worked out here from the papers'
tables; forward and backward at batch 2; and the same outputs and gradients as a PyTorch re-implementation
written in this file, loaded with the same weights."""
import numpy as np
import pytest

from fastconv import models, nn
from fastconv.testing import max_relative_error


# ------------------------------------------------------------------------------------ counts from the papers

def conv_params(c_in, c_out, k, groups=1, bias=True):
    return c_out * (c_in // groups) * k * k + (c_out if bias else 0)


def fc_params(n_in, n_out):
    return n_in * n_out + n_out


def lenet5_count(classes=10):
    return (conv_params(1, 6, 5) + conv_params(6, 16, 5) + conv_params(16, 120, 5) + fc_params(120, 84)
            + fc_params(84, classes))


def alexnet_count(groups):
    return (conv_params(3, 96, 11) + conv_params(96, 256, 5, groups) + conv_params(256, 384, 3)
            + conv_params(384, 384, 3, groups) + conv_params(384, 256, 3, groups)
            + fc_params(6 * 6 * 256, 4096) + fc_params(4096, 4096) + fc_params(4096, 1000))


def zfnet_count():
    return (conv_params(3, 96, 7) + conv_params(96, 256, 5) + conv_params(256, 512, 3) + conv_params(512, 1024, 3)
            + conv_params(1024, 512, 3) + fc_params(6 * 6 * 512, 4096) + fc_params(4096, 4096)
            + fc_params(4096, 1000))


# Table 1 of Simonyan & Zisserman: "conv3-64" is written 64, "conv1-256" 1x256, max pools M.
VGG_TABLE = {
    "A": "64 M 128 M 256 256 M 512 512 M 512 512 M",
    "A-LRN": "64 LRN M 128 M 256 256 M 512 512 M 512 512 M",
    "B": "64 64 M 128 128 M 256 256 M 512 512 M 512 512 M",
    "C": "64 64 M 128 128 M 256 256 1x256 M 512 512 1x512 M 512 512 1x512 M",
    "D": "64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M",
    "E": "64 64 M 128 128 M 256 256 256 256 M 512 512 512 512 M 512 512 512 512 M",
}


def vgg_layers(config):
    """[(kind, channels, kernel)] from the table string."""
    out = []
    for item in VGG_TABLE[config].split():
        if item in ("M", "LRN"):
            out.append((item, None, None))
        elif item.startswith("1x"):
            out.append(("conv", int(item[2:]), 1))
        else:
            out.append(("conv", int(item), 3))
    return out


def vgg_count(config):
    total, c = 0, 3
    for kind, channels, k in vgg_layers(config):
        if kind == "conv":
            total += conv_params(c, channels, k)
            c = channels
    return total + fc_params(7 * 7 * 512, 4096) + fc_params(4096, 4096) + fc_params(4096, 1000)


# Table 1 of Szegedy et al.: name, input channels, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj
GOOGLENET_TABLE = [
    ("3a", 192, 64, 96, 128, 16, 32, 32), ("3b", 256, 128, 128, 192, 32, 96, 64),
    ("4a", 480, 192, 96, 208, 16, 48, 64), ("4b", 512, 160, 112, 224, 24, 64, 64),
    ("4c", 512, 128, 128, 256, 24, 64, 64), ("4d", 512, 112, 144, 288, 32, 64, 64),
    ("4e", 528, 256, 160, 320, 32, 128, 128), ("5a", 832, 256, 160, 320, 32, 128, 128),
    ("5b", 832, 384, 192, 384, 48, 128, 128),
]


def googlenet_count(aux=False, classes=1000):
    total = conv_params(3, 64, 7) + conv_params(64, 64, 1) + conv_params(64, 192, 3)
    previous_output = 192
    for _, c, n1, r3, n3, r5, n5, pp in GOOGLENET_TABLE:
        assert c == previous_output  # the table's own consistency: a block sees its predecessor's concat
        previous_output = n1 + n3 + n5 + pp
        total += (conv_params(c, n1, 1) + conv_params(c, r3, 1) + conv_params(r3, n3, 3) + conv_params(c, r5, 1)
                  + conv_params(r5, n5, 5) + conv_params(c, pp, 1))
    total += fc_params(1024, classes)
    if aux:  # on 4a (512 channels) and 4d (528): 1x1 conv 128, FC 1024 on 4x4x128, classifier
        total += sum(conv_params(c, 128, 1) + fc_params(4 * 4 * 128, 1024) + fc_params(1024, classes)
                     for c in (512, 528))
    return total


RESNET_BLOCKS = {18: (False, [2, 2, 2, 2]), 34: (False, [3, 4, 6, 3]), 50: (True, [3, 4, 6, 3]),
                 101: (True, [3, 4, 23, 3]), 152: (True, [3, 8, 36, 3])}


def resnet_count(depth, classes=1000):
    bottleneck, counts = RESNET_BLOCKS[depth]
    bn = 2  # gamma and beta per channel

    total = conv_params(3, 64, 7, bias=False) + bn * 64
    c = 64
    for stage, (w, n) in enumerate(zip([64, 128, 256, 512], counts)):
        for i in range(n):
            stride = 2 if stage and not i else 1
            if bottleneck:
                out = 4 * w
                total += (conv_params(c, w, 1, bias=False) + conv_params(w, w, 3, bias=False)
                          + conv_params(w, out, 1, bias=False) + bn * (w + w + out))
            else:
                out = w
                total += conv_params(c, w, 3, bias=False) + conv_params(w, w, 3, bias=False) + bn * 2 * w
            if stride != 1 or c != out:
                total += conv_params(c, out, 1, bias=False) + bn * out
            c = out
    return total + fc_params(c, classes)


def alphago_count(k):
    return conv_params(48, k, 5) + 11 * conv_params(k, k, 3) + conv_params(k, 1, 1, bias=False) + 19 * 19


# ------------------------------------------------------------------------------------ construction

def test_every_model_builds_with_its_default_shape():
    for name, builder in models.MODELS.items():
        model = models.get_model(name, init=None)
        c, h, w = model.input_shape
        expected = (2, 361) if name == "alphago_policy" else (2, 10 if name == "lenet5" else 1000)
        assert model.output_shape((2, c, h, w)) == expected, name
        assert model.name and model.training, name


def test_parameter_counts():
    count = {name: models.get_model(name, init=None).num_parameters() for name in models.MODELS}
    assert count["lenet5"] == lenet5_count() == 61_706
    assert count["alexnet"] == alexnet_count(groups=1)
    assert models.alexnet(groups=2, init=None).num_parameters() == alexnet_count(groups=2) == 60_965_224
    assert count["zfnet"] == zfnet_count()
    for config in VGG_TABLE:
        assert count[f"vgg-{config.lower()}"] == vgg_count(config), config
    millions = {c: round(vgg_count(c) / 1e6) for c in VGG_TABLE}
    assert millions == {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}  # the paper's Table 2
    assert (count["vgg11"], count["vgg13"], count["vgg16"], count["vgg19"]) == \
        (count["vgg-a"], count["vgg-b"], count["vgg-d"], count["vgg-e"])
    assert count["vgg16"] == 138_357_544
    assert count["googlenet"] == googlenet_count()
    assert models.googlenet(aux_logits=True, init=None).num_parameters() == googlenet_count(aux=True)
    for depth in RESNET_BLOCKS:
        assert count[f"resnet{depth}"] == resnet_count(depth), depth
    assert count["resnet50"] == 25_557_032
    assert count["alphago_policy"] == alphago_count(192)
    assert models.alphago_policy(k=128, init=None).num_parameters() == alphago_count(128)


def trace(seq, shape):
    """name -> per-sample output shape of every child of Sequential `seq`, run from input `shape`."""
    out = {}
    for name, child in seq.children.items():
        shape = child.output_shape(shape)
        out[name] = shape[1:]
    return out, shape


def test_alexnet_and_zfnet_shapes():
    s, _ = trace(models.alexnet(init=None)["features"], (1, 3, 227, 227))
    assert s["conv1"] == (96, 55, 55) and s["pool1"] == (96, 27, 27) and s["norm1"] == (96, 27, 27)
    assert s["conv2"] == (256, 27, 27) and s["pool2"] == (256, 13, 13)
    assert s["conv3"] == (384, 13, 13) and s["conv4"] == (384, 13, 13) and s["conv5"] == (256, 13, 13)
    assert s["pool5"] == (256, 6, 6)
    c = models.alexnet(init=None)["classifier"]
    assert list(c.children) == ["flatten", "drop6", "fc6", "relu6", "drop7", "fc7", "relu7", "fc8"]
    assert c["drop6"].p == c["drop7"].p == 0.5
    s, _ = trace(models.zfnet(init=None)["features"], (1, 3, 224, 224))
    assert s["conv1"] == (96, 110, 110) and s["pool1"] == (96, 55, 55) and s["conv2"] == (256, 26, 26)
    assert s["pool2"] == (256, 13, 13) and s["conv3"][0] == 512 and s["conv4"][0] == 1024
    assert s["pool5"] == (512, 6, 6)
    assert models.zfnet(init=None)["features"]["conv1"].kernel_size == (7, 7)


def test_vgg_shapes_follow_the_table():
    for config in VGG_TABLE:
        features = models.vgg(config, init=None)["features"]
        convs = [(m.out_channels, m.kernel_size[0]) for m in features.children.values() if isinstance(m, nn.Conv2d)]
        assert convs == [(c, k) for kind, c, k in vgg_layers(config) if kind == "conv"], config
        assert all(m.padding == m.kernel_size[0] // 2 and m.stride == 1 for m in features.children.values()
                   if isinstance(m, nn.Conv2d))
        assert sum(isinstance(m, nn.LocalResponseNorm) for m in features.children.values()) == \
            (1 if config == "A-LRN" else 0)
    s, _ = trace(models.vgg16(init=None)["features"], (1, 3, 224, 224))
    assert [s[f"pool{i}"] for i in range(1, 6)] == [(64, 112, 112), (128, 56, 56), (256, 28, 28), (512, 14, 14),
                                                    (512, 7, 7)]
    with pytest.raises(ValueError, match="unknown VGG configuration"):
        models.vgg("F")


def test_googlenet_shapes_follow_table_1():
    s, _ = trace(models.googlenet(init=None), (1, 3, 224, 224))
    assert s["conv1"] == (64, 112, 112) and s["pool1"] == (64, 56, 56) and s["conv2"] == (192, 56, 56)
    assert s["pool2"] == (192, 28, 28) and s["pool3"][1:] == (14, 14) and s["pool4"][1:] == (7, 7)
    outputs = {name: n1 + n3 + n5 + pp for name, _, n1, _, n3, _, n5, pp in GOOGLENET_TABLE}
    for name, channels in outputs.items():
        size = {"3": 28, "4": 14, "5": 7}[name[0]]
        assert s[f"inception_{name}"] == (channels, size, size), name
    assert s["pool5"] == (1024, 1, 1) and s["dropout"] == (1024,) and s["fc"] == (1000,)
    model = models.googlenet(init=None)
    assert model["dropout"].p == 0.4 and model["pool5"].kernel_size == (7, 7)
    aux = models.googlenet(aux_logits=True, init=None)
    names = list(aux.children)
    assert names.index("aux1") == names.index("inception_4a") + 1
    assert names.index("aux2") == names.index("inception_4d") + 1


def test_resnet_shapes():
    model = models.resnet50(init=None)
    s, _ = trace(model, (1, 3, 224, 224))
    assert s["conv1"] == (64, 112, 112) and s["maxpool"] == (64, 56, 56)
    assert [s[f"layer{i}"] for i in range(1, 5)] == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
    assert s["fc"] == (1000,)
    projections = [n for n, m in model.named_modules() if n.endswith(".shortcut")]
    assert projections == [f"layer{i}.0.res.shortcut" for i in range(1, 5)]
    assert not any(isinstance(m, nn.Conv2d) and "bias" in m.params for _, m in model.named_modules())
    r18 = models.resnet18(init=None)
    assert [n for n, m in r18.named_modules() if n.endswith(".shortcut")] == \
        [f"layer{i}.0.res.shortcut" for i in range(2, 5)]
    assert r18["layer2"]["0"]["res"].children["body"]["conv1"].stride == 2
    v15 = models.resnet50(stride_in_1x1=False, init=None)
    body = v15["layer3"]["0"]["res"].children["body"]
    assert body["conv1"].stride == 1 and body["conv2"].stride == 2
    assert v15.num_parameters() == resnet_count(50)


def test_alphago_policy_shapes():
    model = models.alphago_policy(init=None)
    s, _ = trace(model, (1, 48, 19, 19))
    assert s["conv1"] == (192, 19, 19) and model["conv1"].kernel_size == (5, 5)
    assert all(s[f"conv{i}"] == (192, 19, 19) and model[f"conv{i}"].kernel_size == (3, 3) for i in range(2, 13))
    assert s["conv13"] == (1, 19, 19) and "bias" not in model["conv13"].params
    assert model["position_bias"].params["bias"].shape == (1, 19, 19)
    assert s["softmax"] == (361,)
    assert sum(isinstance(m, nn.ReLU) for m in model.children.values()) == 12


def test_builder_options():
    m = models.get_model("AlexNet", num_classes=7, in_channels=1, input_size=(99, 131), dtype=np.float64)
    assert m.output_shape((2, 1, 99, 131)) == (2, 7) and m.input_shape == (1, 99, 131)
    assert all(p.dtype == np.float64 for _, p, _ in m.parameters())
    a, b = models.lenet5(seed=3), models.lenet5(seed=3)
    for (n, p, _), (_, q, _) in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p, q)
    c = models.lenet5(rng=np.random.default_rng(4))
    assert not np.array_equal(a["features"]["c1"].params["weight"], c["features"]["c1"].params["weight"])
    assert not models.lenet5(init=None)["features"]["c1"].params["weight"].any()
    with pytest.raises(ValueError, match="unknown model"):
        models.get_model("lenet6")
    with pytest.raises(TypeError, match="does not take.*num_classes"):
        models.get_model("alphago_policy", num_classes=3)
    with pytest.raises(ValueError, match="pool5"):
        models.vgg16(input_size=16, init=None)
    with pytest.raises(ValueError, match="groups"):
        models.alexnet(groups=3)


def test_alexnet_paper_init():
    m = models.alexnet(input_size=67)  # small input: the same convs, a small FC6
    f, c = m["features"], m["classifier"]
    for layer in (f["conv2"], f["conv4"], f["conv5"], c["fc6"], c["fc7"]):
        assert np.all(layer.params["bias"] == 1)
    for layer in (f["conv1"], f["conv3"], c["fc8"]):
        assert not layer.params["bias"].any()
    assert f["conv3"].params["weight"].std() == pytest.approx(0.01, rel=0.02)


# ------------------------------------------------------------------------------------ forward / backward

CASES = [
    ("lenet5", {}, (1, 32, 32)),
    ("alexnet", dict(input_size=67), (3, 67, 67)),
    ("alexnet", dict(input_size=67, groups=2), (3, 67, 67)),
    ("zfnet", dict(input_size=64), (3, 64, 64)),
    ("vgg-a-lrn", dict(input_size=32), (3, 32, 32)),
    ("vgg-c", dict(input_size=32), (3, 32, 32)),
    ("googlenet", dict(input_size=64), (3, 64, 64)),
    ("resnet18", dict(input_size=32), (3, 32, 32)),
    ("resnet50", dict(input_size=32), (3, 32, 32)),
    ("alphago_policy", dict(k=32), (48, 19, 19)),
]


def run_forward_backward(model, shape, rng, batch=2):
    x = rng.standard_normal((batch,) + shape).astype(np.float32)
    y = model.forward(x)
    assert y.shape == model.output_shape(x.shape) and y.dtype == np.float32
    assert np.isfinite(y).all()
    model.zero_grad()
    dx = model.backward(rng.standard_normal(y.shape).astype(np.float32))
    assert dx.shape == x.shape and np.isfinite(dx).all()
    for name, p, g in model.parameters():
        assert g.shape == p.shape and g.dtype == p.dtype and np.isfinite(g).all(), name
        if name.endswith("weight"):
            assert g.any(), f"{name} got no gradient"
    return y


@pytest.mark.parametrize("name,options,shape", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_forward_backward_batch_2(name, options, shape, rng):
    num_classes = {} if name == "alphago_policy" else dict(num_classes=10)
    model = models.get_model(name, seed=1, **num_classes, **options)
    y = run_forward_backward(model, shape, rng)
    if name == "alphago_policy":
        np.testing.assert_allclose(y.sum(axis=1), 1, rtol=1e-5)


@pytest.mark.parametrize("name", ["alexnet", "googlenet"])
def test_full_size_forward_backward_representatives(name, rng):
    """Full-size runs at batch 2 cheap enough for every test run (AlexNet 227x227, GoogLeNet 224x224)."""
    model = models.get_model(name, seed=2, **({"init": "he"} if name == "alexnet" else {}))
    run_forward_backward(model, model.input_shape, rng)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zfnet", "vgg16", "resnet50", "alphago_policy"])
def test_full_size_forward_backward(name, rng):
    model = models.get_model(name, seed=2)
    run_forward_backward(model, model.input_shape, rng)


def test_googlenet_auxiliary_outputs(rng):
    model = models.googlenet(input_size=96, aux_logits=True, num_classes=5, seed=1)
    x = rng.standard_normal((2, 3, 96, 96)).astype(np.float32)
    out = model.forward(x)
    assert isinstance(out, tuple) and [o.shape for o in out] == [(2, 5)] * 3
    model.zero_grad()
    model.backward((np.ones((2, 5), np.float32), None, np.ones((2, 5), np.float32)))
    aux1 = model["aux1"].children["head"]
    assert not aux1["fc"].grads["weight"].any()  # no gradient given for aux1
    assert model["aux2"].children["head"]["fc"].grads["weight"].any()
    with pytest.raises(ValueError, match="expects 3 gradients"):
        model.backward((np.ones((2, 5), np.float32),) * 2)
    model.eval()
    assert model.forward(x).shape == (2, 5)


# ------------------------------------------------------------------------------------ against PyTorch

def torch_params(torch, model):
    """Our parameters and buffers as float64 torch tensors (parameters requiring grad), by dotted name."""
    out = {}
    trainable = {n for n, _, _ in model.parameters()}
    for k, v in model.state_dict().items():
        out[k] = torch.from_numpy(np.array(v, dtype=np.float64)).requires_grad_(k in trainable)
    return out


def compare_with_torch(model, torch_forward, x, rng, tol=1e-9, grads=True):
    """Forward (and, with `grads`, the input and parameter gradients of sum(y * dy)) of our model against
    `torch_forward(P, x)` on the same weights, in float64."""
    torch = pytest.importorskip("torch")
    model.astype(np.float64)
    P = torch_params(torch, model)
    xt = torch.from_numpy(x).requires_grad_(grads)
    y = model.forward(x)
    if grads:
        yt = torch_forward(P, xt)
    else:
        with torch.no_grad():
            yt = torch_forward(P, xt)
    assert y.shape == tuple(yt.shape)
    assert max_relative_error(y, yt.detach().numpy()) < tol
    if not grads:
        return P
    dy = rng.standard_normal(y.shape)
    model.zero_grad()
    dx = model.backward(dy)
    (yt * torch.from_numpy(dy)).sum().backward()
    assert max_relative_error(dx, xt.grad.numpy()) < tol
    for name, _, g in model.parameters():
        assert max_relative_error(g, P[name].grad.numpy()) < tol, name
    return P


def _t():
    torch = pytest.importorskip("torch")
    return torch, torch.nn.functional


def t_conv(tf, P, x, name, **kw):
    return tf.conv2d(x, P[f"{name}.weight"], P.get(f"{name}.bias"), **kw)


def t_fc(tf, P, x, name):
    return tf.linear(x, P[f"{name}.weight"], P[f"{name}.bias"])


def torch_lenet5(P, x):
    torch, tf = _t()
    for name in ("c1", "c3"):
        x = tf.avg_pool2d(tf.relu(t_conv(tf, P, x, f"features.{name}")), 2)
    x = tf.relu(t_conv(tf, P, x, "features.c5")).flatten(1)
    return t_fc(tf, P, tf.relu(t_fc(tf, P, x, "classifier.f6")), "classifier.output")


def torch_alexnet(P, x, groups):
    """Eval mode (dropout is the identity)."""
    torch, tf = _t()
    lrn = dict(size=5, alpha=1e-4 * 5, beta=0.75, k=2.0)  # the paper's alpha (sum not divided by n) in torch's form
    f = "features."
    x = tf.relu(t_conv(tf, P, x, f + "conv1", stride=4))
    x = tf.local_response_norm(tf.max_pool2d(x, 3, 2), **lrn)
    x = tf.relu(t_conv(tf, P, x, f + "conv2", padding=2, groups=groups))
    x = tf.local_response_norm(tf.max_pool2d(x, 3, 2), **lrn)
    x = tf.relu(t_conv(tf, P, x, f + "conv3", padding=1))
    x = tf.relu(t_conv(tf, P, x, f + "conv4", padding=1, groups=groups))
    x = tf.relu(t_conv(tf, P, x, f + "conv5", padding=1, groups=groups))
    x = tf.max_pool2d(x, 3, 2).flatten(1)
    x = tf.relu(t_fc(tf, P, x, "classifier.fc6"))
    x = tf.relu(t_fc(tf, P, x, "classifier.fc7"))
    return t_fc(tf, P, x, "classifier.fc8")


def torch_vgg(P, x, config):
    torch, tf = _t()
    block, i = 1, 0
    for kind, _, k in vgg_layers(config):
        if kind == "M":
            x = tf.max_pool2d(x, 2, 2)
            block, i = block + 1, 0
        elif kind == "LRN":
            x = tf.local_response_norm(x, 5, alpha=5e-4, beta=0.75, k=2.0)
        else:
            i += 1
            x = tf.relu(t_conv(tf, P, x, f"features.conv{block}_{i}", padding=k // 2))
    x = x.flatten(1)
    x = tf.relu(t_fc(tf, P, x, "classifier.fc6"))
    x = tf.relu(t_fc(tf, P, x, "classifier.fc7"))
    return t_fc(tf, P, x, "classifier.fc8")


def torch_googlenet(P, x, aux=False):
    """Returns the logits, or (logits, aux1, aux2) with `aux` (dropout p = 0 or eval: identity)."""
    torch, tf = _t()

    def inception(x, name):
        b1 = tf.relu(t_conv(tf, P, x, f"{name}.1x1.conv"))
        b3 = tf.relu(t_conv(tf, P, tf.relu(t_conv(tf, P, x, f"{name}.3x3.reduce")), f"{name}.3x3.conv", padding=1))
        b5 = tf.relu(t_conv(tf, P, tf.relu(t_conv(tf, P, x, f"{name}.5x5.reduce")), f"{name}.5x5.conv", padding=2))
        bp = tf.relu(t_conv(tf, P, tf.max_pool2d(x, 3, 1, 1), f"{name}.pool_proj.conv"))
        return torch.cat([b1, b3, b5, bp], dim=1)

    def aux_head(x, name):
        x = tf.relu(t_conv(tf, P, tf.avg_pool2d(x, 5, 3), f"{name}.head.conv")).flatten(1)
        return t_fc(tf, P, tf.relu(t_fc(tf, P, x, f"{name}.head.fc")), f"{name}.head.classifier")

    x = tf.max_pool2d(tf.relu(t_conv(tf, P, x, "conv1", stride=2, padding=3)), 3, 2, ceil_mode=True)
    x = tf.relu(t_conv(tf, P, tf.relu(t_conv(tf, P, x, "conv2_reduce")), "conv2", padding=1))
    x = tf.max_pool2d(x, 3, 2, ceil_mode=True)
    side = []
    for name, *_ in GOOGLENET_TABLE:
        if name in ("4a", "5a"):
            x = tf.max_pool2d(x, 3, 2, ceil_mode=True)
        x = inception(x, f"inception_{name}")
        if aux and name in ("4a", "4d"):
            side.append(aux_head(x, "aux1" if name == "4a" else "aux2"))
    x = tf.adaptive_avg_pool2d(x, 1).flatten(1)  # the 7x7 average pool at 224x224: the whole map
    y = t_fc(tf, P, x, "fc")
    return (y, *side) if aux else y


def torch_resnet(P, x, depth, training, stride_in_1x1=True):
    torch, tf = _t()
    bottleneck, counts = RESNET_BLOCKS[depth]

    def bn(x, name):
        return tf.batch_norm(x, P[f"{name}.running_mean"], P[f"{name}.running_var"], P[f"{name}.weight"],
                             P[f"{name}.bias"], training=training, momentum=0.1, eps=1e-5)
    x = tf.relu(bn(t_conv(tf, P, x, "conv1", stride=2, padding=3), "bn1"))
    x = tf.max_pool2d(x, 3, 2, 1)
    c = 64
    for stage, (w, n) in enumerate(zip([64, 128, 256, 512], counts)):
        for i in range(n):
            s = 2 if stage and not i else 1
            pre = f"layer{stage + 1}.{i}.res"
            if bottleneck:
                out_c = 4 * w
                s1, s3 = (s, 1) if stride_in_1x1 else (1, s)
                y = tf.relu(bn(t_conv(tf, P, x, f"{pre}.body.conv1", stride=s1), f"{pre}.body.bn1"))
                y = tf.relu(bn(t_conv(tf, P, y, f"{pre}.body.conv2", stride=s3, padding=1), f"{pre}.body.bn2"))
                y = bn(t_conv(tf, P, y, f"{pre}.body.conv3"), f"{pre}.body.bn3")
            else:
                out_c = w
                y = tf.relu(bn(t_conv(tf, P, x, f"{pre}.body.conv1", stride=s, padding=1), f"{pre}.body.bn1"))
                y = bn(t_conv(tf, P, y, f"{pre}.body.conv2", padding=1), f"{pre}.body.bn2")
            shortcut = x
            if s != 1 or c != out_c:
                shortcut = bn(t_conv(tf, P, x, f"{pre}.shortcut.conv", stride=s), f"{pre}.shortcut.bn")
            x = tf.relu(y + shortcut)
            c = out_c
    return t_fc(tf, P, tf.adaptive_avg_pool2d(x, 1).flatten(1), "fc")


def torch_alphago(P, x):
    torch, tf = _t()
    x = tf.relu(t_conv(tf, P, x, "conv1", padding=2))
    for i in range(2, 13):
        x = tf.relu(t_conv(tf, P, x, f"conv{i}", padding=1))
    x = t_conv(tf, P, x, "conv13") + P["position_bias.bias"]
    return tf.softmax(x.flatten(1), dim=1)


def randomize_bn(model, rng):
    """Non-trivial BatchNorm parameters and running statistics (fresh ones are 1 and 0)."""
    for _, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.params["weight"][...] = rng.uniform(0.5, 1.5, m.num_features)
            m.params["bias"][...] = rng.standard_normal(m.num_features) * 0.1
            m.buffers["running_mean"][...] = rng.standard_normal(m.num_features) * 0.1
            m.buffers["running_var"][...] = rng.uniform(0.5, 1.5, m.num_features)


def test_lenet5_matches_torch(rng):
    model = models.lenet5(seed=1, dtype=np.float64)
    compare_with_torch(model, torch_lenet5, rng.standard_normal((2, 1, 32, 32)), rng)


@pytest.mark.parametrize("groups", [1, 2])
def test_alexnet_matches_torch(rng, groups):
    model = models.alexnet(groups=groups, input_size=99, num_classes=10, init="he", seed=1,
                           dtype=np.float64).eval()
    compare_with_torch(model, lambda P, x: torch_alexnet(P, x, groups), rng.standard_normal((2, 3, 99, 99)), rng)


def test_vgg16_small_input_matches_torch(rng):
    model = models.vgg16(input_size=32, num_classes=10, seed=1, dtype=np.float64).eval()
    compare_with_torch(model, lambda P, x: torch_vgg(P, x, "D"), rng.standard_normal((2, 3, 32, 32)), rng)


def test_vgg_a_lrn_and_c_match_torch(rng):
    for config in ("A-LRN", "C"):
        model = models.vgg(config, input_size=32, num_classes=10, seed=1, dtype=np.float64).eval()
        compare_with_torch(model, lambda P, x: torch_vgg(P, x, config), rng.standard_normal((1, 3, 32, 32)), rng,
                           grads=False)


def test_googlenet_matches_torch(rng):
    model = models.googlenet(input_size=64, num_classes=10, seed=1, dtype=np.float64).eval()
    compare_with_torch(model, torch_googlenet, rng.standard_normal((2, 3, 64, 64)), rng)


def test_googlenet_with_auxiliary_classifiers_matches_torch(rng):
    torch = pytest.importorskip("torch")
    model = models.googlenet(input_size=96, num_classes=4, aux_logits=True, seed=1, dtype=np.float64)
    for _, m in model.named_modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # deterministic training-mode pass
    P = torch_params(torch, model)
    x = rng.standard_normal((2, 3, 96, 96))
    outs = model.forward(x)
    touts = torch_googlenet(P, torch.from_numpy(x), aux=True)
    for o, t in zip(outs, touts):
        assert max_relative_error(o, t.detach().numpy()) < 1e-9
    grads = tuple(rng.standard_normal(o.shape) for o in outs)
    weights = (1.0, 0.3, 0.3)  # the paper's discount of the auxiliary losses
    model.zero_grad()
    model.backward(tuple(w * g for w, g in zip(weights, grads)))
    sum((w * t * torch.from_numpy(g)).sum() for w, t, g in zip(weights, touts, grads)).backward()
    for name, _, g in model.parameters():
        assert max_relative_error(g, P[name].grad.numpy()) < 1e-9, name


def test_resnet18_training_mode_matches_torch(rng):
    """Batch statistics in the forward, their gradient in the backward, and the running averages."""
    model = models.resnet18(input_size=32, num_classes=10, seed=1, dtype=np.float64)
    randomize_bn(model, rng)
    P = compare_with_torch(model, lambda P, x: torch_resnet(P, x, 18, training=True),
                           rng.standard_normal((2, 3, 32, 32)), rng)
    for k, v in model.state_dict().items():
        if k.endswith("running_mean") or k.endswith("running_var"):
            assert max_relative_error(v, P[k].detach().numpy()) < 1e-9, k


@pytest.mark.parametrize("stride_in_1x1", [True, False])
def test_resnet50_small_input_matches_torch(rng, stride_in_1x1):
    model = models.resnet50(input_size=32, num_classes=10, stride_in_1x1=stride_in_1x1, seed=1,
                            dtype=np.float64).eval()
    randomize_bn(model, rng)
    compare_with_torch(model, lambda P, x: torch_resnet(P, x, 50, training=False, stride_in_1x1=stride_in_1x1),
                       rng.standard_normal((2, 3, 32, 32)), rng, grads=stride_in_1x1)


def test_alphago_policy_matches_torch(rng):
    model = models.alphago_policy(k=16, seed=1, dtype=np.float64)
    model["position_bias"].params["bias"][...] = rng.standard_normal((1, 19, 19))
    compare_with_torch(model, torch_alphago, rng.standard_normal((2, 48, 19, 19)), rng)


def compare_full_size_float32(model, torch_forward, rng, tol=1e-4):
    torch = pytest.importorskip("torch")
    model.eval()
    x = rng.standard_normal((2,) + model.input_shape).astype(np.float32)
    P = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = torch_forward(P, torch.from_numpy(x)).numpy()
    assert max_relative_error(model.forward(x), expected) < tol


@pytest.mark.slow
def test_full_size_models_match_torch_float32(rng):
    compare_full_size_float32(models.vgg16(seed=1), lambda P, x: torch_vgg(P, x, "D"), rng)
    compare_full_size_float32(models.googlenet(seed=1), torch_googlenet, rng)
    resnet = models.resnet50(seed=1)
    randomize_bn(resnet, rng)
    compare_full_size_float32(resnet, lambda P, x: torch_resnet(P, x, 50, training=False), rng)
    compare_full_size_float32(models.alexnet(seed=1, init="he"), lambda P, x: torch_alexnet(P, x, 1), rng)
    compare_full_size_float32(models.alphago_policy(seed=1), torch_alphago, rng)
