"""Caffe import: prototxt and caffemodel files written here (with a small protobuf wire ENCODER of our own, written
independently of the decoder), loaded with load_caffe and compared with the same networks assembled by hand from
fastconv.nn, with NumPy transcriptions of Caffe's pooling / LRN / BatchNorm loops, with torch, and with finite
differences."""
import math

import numpy as np
import pytest

from fastconv import nn
from fastconv._caffe import Graph, decode_caffemodel, load_caffe, parse_prototxt

# ------------------------------------------------------------------------------------------ protobuf encoder


def varint(n):
    n &= (1 << 64) - 1  # negative int32/int64 values are ten-byte two's complement varints
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(field, wire):
    return varint(field << 3 | wire)


def ld(field, payload):
    """A length-delimited record."""
    return key(field, 2) + varint(len(payload)) + payload


def blob_bytes(array, legacy=False, double=False):
    array = np.asarray(array)
    if legacy:  # num/channels/height/width varints, shape right-aligned into four axes
        dims = (1,) * (4 - array.ndim) + array.shape
        head = b"".join(key(f, 0) + varint(d) for f, d in zip((1, 2, 3, 4), dims))
    else:
        head = ld(7, ld(1, b"".join(varint(d) for d in array.shape)))
    if double:
        return head + ld(8, array.astype("<f8").tobytes())
    return head + ld(5, array.astype("<f4").tobytes())


def layer_bytes(name, type_, blobs):
    return ld(1, name.encode()) + ld(2, type_.encode()) + b"".join(ld(7, blob_bytes(b)) for b in blobs)


def v1_layer_bytes(name, type_number, blobs):
    return ld(4, name.encode()) + key(5, 0) + varint(type_number) + \
        b"".join(ld(6, blob_bytes(b, legacy=True)) for b in blobs)


def caffemodel_bytes(weights, types=None):
    """A NetParameter holding one LayerParameter (field 100) per entry of `weights` {name: [arrays]}."""
    types = types or {}
    return ld(1, b"test") + b"".join(ld(100, layer_bytes(n, types.get(n, "Convolution"), bl))
                                     for n, bl in weights.items())


# ------------------------------------------------------------------------------------------ prototxt helpers

def L(name, type_, bottoms, tops=None, body=""):
    bottoms = [bottoms] if isinstance(bottoms, str) else bottoms
    tops = [name] if tops is None else [tops] if isinstance(tops, str) else tops
    links = "".join(f' bottom: "{b}"' for b in bottoms) + "".join(f' top: "{t}"' for t in tops)
    return f'layer {{ name: "{name}" type: "{type_}"{links} {body} }}\n'


def input_layer(shape, name="data"):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def write(tmp_path, text, weights=None, name="net", raw=None):
    proto = tmp_path / f"{name}.prototxt"
    proto.write_text(text)
    if weights is None and raw is None:
        return proto, None
    model = tmp_path / f"{name}.caffemodel"
    model.write_bytes(raw if raw is not None else caffemodel_bytes(weights))
    return proto, model


def randn(rng, *shape, scale=0.5):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def set_params(module, **arrays):
    for k, v in arrays.items():
        module.params[k][...] = v
    return module


def conv(w, b=None, **kw):
    m = nn.Conv2d(w.shape[1] * kw.get("groups", 1), w.shape[0], w.shape[2:], bias=b is not None, **kw)
    return set_params(m, weight=w, **({"bias": b} if b is not None else {}))


def linear(w, b):
    return set_params(nn.Linear(w.shape[1], w.shape[0]), weight=w, bias=b)


def assert_close(a, b, tol=1e-5):
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------ text format

def test_prototxt_parser_reads_the_text_format():
    msg = parse_prototxt('''
        name: "net" # trailing comment
        # a whole-line comment
        input_dim: 1 input_dim: 0x10;
        layer {
          name: 'a\\tb' "\\x41\\101\\n" type: "Conv"
          p: { f: 1e-4 g: .5 h: -3 i: 1.5f j: -inf k: MAX l: true }
          q < x: 1 >
          list: [1, 2, 3]
          msgs: [{ v: 1 }, { v: 2 }]
          empty: []
        }
        layer { name: "second" }
    ''', "t.prototxt")
    assert msg.fields["name"][0].value == "net"
    assert [v.value for v in msg.fields["input_dim"]] == [1, 16]
    first, second = msg.fields["layer"]
    assert first.fields["name"][0].value == "a\tbAA\n"  # escapes, adjacent strings joined
    p = first.fields["p"][0].fields
    assert (p["f"][0].value, p["g"][0].value, p["h"][0].value, p["i"][0].value) == (1e-4, 0.5, -3, 1.5)
    assert p["j"][0].value == -math.inf and p["k"][0].value == "MAX" and p["l"][0].kind == "ident"
    assert first.fields["q"][0].fields["x"][0].value == 1
    assert [v.value for v in first.fields["list"]] == [1, 2, 3]
    assert [m.fields["v"][0].value for m in first.fields["msgs"]] == [1, 2]
    assert "empty" not in first.fields
    assert second.fields["name"][0].value == "second" and second.line == 13


@pytest.mark.parametrize("text, line, message", [
    ('layer {\n  name: "a"\n', 3, "missing '}'.*line 1"),
    ('name: "a"\n}\n', 2, "expected a field name"),
    ('layer {\n  name "a"\n}', 2, "expected ':' or '{' after field name 'name'"),
    ('a: 1\nname: "abc\n', 2, "unterminated string"),
    ('a: 1\n\nname: @', 3, "unexpected character '@'"),
    ('name: "\\q"', 1, "unknown escape"),
    ('a {\n b: }\n', 2, "expected a value for 'b'"),
    ('a: [1 2]', 1, "expected ',' or ']'"),
    ('a: -foo', 1, "unexpected '-'"),
    ("a {" * 100 + "}" * 100, 1, "nested deeper"),
])
def test_prototxt_syntax_errors_name_the_line(text, line, message):
    with pytest.raises(ValueError, match=rf"^net\.prototxt:{line}:.*{message}"):
        parse_prototxt(text, "net.prototxt")


def test_syntax_error_through_load_caffe_names_the_file(tmp_path):
    proto, _ = write(tmp_path, input_layer((1, 1, 4, 4)) + 'layer { name: "r" type: "ReLU" bottom: "data" top }')
    with pytest.raises(ValueError, match=r"net\.prototxt:2:.*expected ':' or '\{'"):
        load_caffe(proto)


# ------------------------------------------------------------------------------------------ whole networks

LENET = (input_layer((2, 1, 16, 16))
         + L("conv1", "Convolution", "data", body="convolution_param { num_output: 4 kernel_size: 5 }")
         + L("pool1", "Pooling", "conv1", body="pooling_param { pool: MAX kernel_size: 2 stride: 2 }")
         + L("conv2", "Convolution", "pool1", body="convolution_param { num_output: 6 kernel_size: 3 pad: 1 }")
         + L("pool2", "Pooling", "conv2", body="pooling_param { pool: AVE kernel_size: 3 stride: 2 }")
         + L("ip1", "InnerProduct", "pool2", body="inner_product_param { num_output: 12 }")
         + L("relu1", "ReLU", "ip1", "ip1")
         + L("ip2", "InnerProduct", "ip1", body="inner_product_param { num_output: 5 }")
         + L("prob", "Softmax", "ip2"))


def lenet_weights(rng):
    return {"conv1": [randn(rng, 4, 1, 5, 5), randn(rng, 4)], "conv2": [randn(rng, 6, 4, 3, 3), randn(rng, 6)],
            "ip1": [randn(rng, 12, 6 * 3 * 3, scale=0.2), randn(rng, 12)],
            "ip2": [randn(rng, 5, 12), randn(rng, 5)]}


def test_lenet_chain_matches_hand_built_modules(tmp_path, rng):
    weights = lenet_weights(rng)
    model = load_caffe(*write(tmp_path, LENET, weights))
    assert isinstance(model, nn.Sequential) and not model.training
    assert list(model.children) == ["conv1", "pool1", "conv2", "pool2", "ip1_flatten", "ip1", "relu1", "ip2", "prob"]
    assert model.input_shape == (1, 16, 16)
    w = weights
    # 16 -conv5-> 12 -pool2/2-> 6 -conv3 pad1-> 6 -pool3/2 (ceil: (6-3)/2 -> 2, +1)-> 3
    ref = nn.Sequential(conv(*w["conv1"]), nn.MaxPool2d(2, 2, ceil_mode=True), conv(*w["conv2"], padding=1),
                        nn.AvgPool2d(3, 2, ceil_mode=True), nn.Flatten(), linear(*w["ip1"]), nn.ReLU(),
                        linear(*w["ip2"]), nn.Softmax()).eval()
    x = randn(rng, 2, 1, 16, 16, scale=1.0)
    assert_close(model.forward(x), ref.forward(x))
    assert_close(model.state_dict()["ip1.weight"], w["ip1"][0], 0)


def test_lenet_matches_torch(tmp_path, rng):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    weights = lenet_weights(rng)
    model = load_caffe(*write(tmp_path, LENET, weights))
    x = randn(rng, 2, 1, 16, 16, scale=1.0)
    t = {k: [torch.from_numpy(a) for a in v] for k, v in weights.items()}
    y = tf.conv2d(torch.from_numpy(x), *t["conv1"])
    y = tf.max_pool2d(y, 2, 2, ceil_mode=True)
    y = tf.avg_pool2d(tf.conv2d(y, *t["conv2"], padding=1), 3, 2, ceil_mode=True)
    y = tf.linear(tf.relu(tf.linear(y.flatten(1), *t["ip1"])), *t["ip2"])
    assert_close(model.forward(x), tf.softmax(y, 1).numpy())


ALEXNET_BLOCK = (
    'name: "alexnet-block"\ninput: "data"\ninput_shape { dim: 2 dim: 3 dim: 19 dim: 19 }\n'
    + L("conv1", "Convolution", "data", body="convolution_param { num_output: 8 kernel_size: 3 stride: 2 }")
    + L("relu1", "ReLU", "conv1", "conv1")
    + L("pool1", "Pooling", "conv1", body="pooling_param { pool: MAX kernel_size: 3 stride: 2 }")
    + L("norm1", "LRN", "pool1", body="lrn_param { local_size: 5 alpha: 0.01 beta: 0.75 k: 2 }")
    + L("conv2", "Convolution", "norm1", body="convolution_param { num_output: 12 pad: 1 kernel_size: 3 group: 2 }")
    + L("relu2", "ReLU", "conv2", "conv2")
    + L("pool2", "Pooling", "conv2", body="pooling_param { pool: MAX kernel_size: 3 stride: 2 }")
    + L("fc6", "InnerProduct", "pool2", body="inner_product_param { num_output: 10 }")
    + L("drop6", "Dropout", "fc6", "fc6", body="dropout_param { dropout_ratio: 0.5 }")
    + L("fc7", "InnerProduct", "fc6", body="inner_product_param { num_output: 5 }"))


def alexnet_block_weights(rng):
    return {"conv1": [randn(rng, 8, 3, 3, 3), randn(rng, 8)], "conv2": [randn(rng, 12, 4, 3, 3), randn(rng, 12)],
            "fc6": [randn(rng, 10, 12 * 2 * 2), randn(rng, 10)], "fc7": [randn(rng, 5, 10), randn(rng, 5)]}


def test_alexnet_block_with_groups_and_lrn(tmp_path, rng):
    weights = alexnet_block_weights(rng)
    model = load_caffe(*write(tmp_path, ALEXNET_BLOCK, weights))
    assert model.name == "alexnet-block" and model.input_shape == (3, 19, 19)
    assert model["conv2"].groups == 2
    norm = model["norm1"]
    assert (norm.size, norm.alpha, norm.beta, norm.k) == (5, 0.01, 0.75, 2.0)
    w = weights
    # 19 -conv3/2-> 9 -pool3/2-> 4 -conv3 pad1-> 4 -pool3/2 (ceil: (4-3)/2 -> 1, +1)-> 2
    ref = nn.Sequential(conv(*w["conv1"], stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                        nn.LocalResponseNorm(5, 0.01, 0.75, 2.0), conv(*w["conv2"], padding=1, groups=2), nn.ReLU(),
                        nn.MaxPool2d(3, 2, ceil_mode=True), nn.Flatten(), linear(*w["fc6"]), nn.Dropout(0.5),
                        linear(*w["fc7"])).eval()
    x = randn(rng, 2, 3, 19, 19, scale=2.0)
    assert_close(model.forward(x), ref.forward(x))


def test_alexnet_block_matches_torch(tmp_path, rng):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    weights = alexnet_block_weights(rng)
    model = load_caffe(*write(tmp_path, ALEXNET_BLOCK, weights))
    t = {k: [torch.from_numpy(a) for a in v] for k, v in weights.items()}
    x = randn(rng, 2, 3, 19, 19, scale=2.0)
    y = tf.max_pool2d(tf.relu(tf.conv2d(torch.from_numpy(x), *t["conv1"], stride=2)), 3, 2, ceil_mode=True)
    y = tf.local_response_norm(y, 5, alpha=0.01, beta=0.75, k=2.0)
    y = tf.max_pool2d(tf.relu(tf.conv2d(y, *t["conv2"], padding=1, groups=2)), 3, 2, ceil_mode=True)
    y = tf.linear(tf.linear(y.flatten(1), *t["fc6"]), *t["fc7"])
    assert_close(model.forward(x), y.numpy())


def caffe_lrn(x, size, alpha, beta, k):
    """Caffe's CrossChannelForward: scale = k + alpha/size * (sum of squares over (size-1)/2 channels each side)."""
    pre = (size - 1) // 2
    padded = np.pad(x.astype(np.float64) ** 2, ((0, 0), (pre, size - pre - 1), (0, 0), (0, 0)))
    scale = k + alpha / size * sum(padded[:, i:i + x.shape[1]] for i in range(size))
    return x * scale ** -beta


@pytest.mark.parametrize("size, alpha, beta, k", [(5, 1e-4, 0.75, 1.0), (3, 0.5, 0.75, 2.0), (1, 1.0, 0.5, 1.0)])
def test_lrn_follows_caffes_formula(tmp_path, rng, size, alpha, beta, k):
    text = input_layer((2, 7, 3, 3)) + L("norm", "LRN", "data",
                                          body=f"lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} }}")
    model = load_caffe(write(tmp_path, text)[0], dtype=np.float64)
    x = rng.standard_normal((2, 7, 3, 3)) * 3
    assert_close(model.forward(x), caffe_lrn(x, size, alpha, beta, k), 1e-12)


INCEPTION = (
    input_layer((2, 4, 8, 8))
    + L("stem", "Convolution", "data", body="convolution_param { num_output: 6 kernel_size: 1 }")
    + L("stem_relu", "ReLU", "stem", "stem")
    + L("b1", "Convolution", "stem", body="convolution_param { num_output: 3 kernel_size: 1 }")
    + L("b1_relu", "ReLU", "b1", "b1")
    + L("b2_reduce", "Convolution", "stem", body="convolution_param { num_output: 2 kernel_size: 1 }")
    + L("b2_relu", "ReLU", "b2_reduce", "b2_reduce")
    + L("b2", "Convolution", "b2_reduce", body="convolution_param { num_output: 4 kernel_size: 3 pad: 1 }")
    + L("b3_reduce", "Convolution", "stem", body="convolution_param { num_output: 2 kernel_size: 1 }")
    + L("b3", "Convolution", "b3_reduce", body="convolution_param { num_output: 3 kernel_size: 5 pad: 2 }")
    + L("b4_pool", "Pooling", "stem", body="pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 }")
    + L("b4", "Convolution", "b4_pool", body="convolution_param { num_output: 2 kernel_size: 1 }")
    + L("mixed", "Concat", ["b2", "b1", "b4", "b3"])  # not the order the branches leave "stem"
    + L("gap", "Pooling", "mixed", body="pooling_param { pool: AVE global_pooling: true }")
    + L("fc", "InnerProduct", "gap", body="inner_product_param { num_output: 5 }")
    + L("prob", "Softmax", "fc"))


def inception_weights(rng):
    shapes = {"stem": (6, 4, 1, 1), "b1": (3, 6, 1, 1), "b2_reduce": (2, 6, 1, 1), "b2": (4, 2, 3, 3),
              "b3_reduce": (2, 6, 1, 1), "b3": (3, 2, 5, 5), "b4": (2, 6, 1, 1), "fc": (5, 12)}
    return {n: [randn(rng, *s), randn(rng, s[0])] for n, s in shapes.items()}


def test_inception_block_becomes_concat(tmp_path, rng):
    w = inception_weights(rng)
    model = load_caffe(*write(tmp_path, INCEPTION, w))
    assert list(model.children) == ["stem", "stem_relu", "mixed", "gap", "fc_flatten", "fc", "prob"]
    mixed = model["mixed"]
    assert isinstance(mixed, nn.Concat) and list(mixed.children) == ["b2_reduce", "b1", "b4_pool", "b3_reduce"]
    assert list(mixed.children["b2_reduce"].children) == ["b2_reduce", "b2_relu", "b2"]
    ref = nn.Sequential(
        conv(*w["stem"]), nn.ReLU(),
        nn.Concat(nn.Sequential(conv(*w["b2_reduce"]), nn.ReLU(), conv(*w["b2"], padding=1)),
                  nn.Sequential(conv(*w["b1"]), nn.ReLU()),
                  nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv(*w["b4"])),
                  nn.Sequential(conv(*w["b3_reduce"]), conv(*w["b3"], padding=2))),
        nn.GlobalAvgPool2d(), nn.Flatten(), linear(*w["fc"]), nn.Softmax()).eval()
    x = randn(rng, 2, 4, 8, 8, scale=1.0)
    assert_close(model.forward(x), ref.forward(x))


def test_analyze_walks_an_imported_inception(tmp_path, rng):
    from fastconv import analyze
    model = load_caffe(*write(tmp_path, INCEPTION, inception_weights(rng)))
    summary = analyze.summary(model, model.input_shape)
    assert summary["mixed.b2_reduce.b2"].macs == 4 * 2 * 9 * 8 * 8


def params_and_grads(model):
    return {n: (p.copy(), g.copy()) for n, p, g, _, _ in model.named_parameters()}


def test_graph_and_containers_agree_forward_and_backward(tmp_path, rng):
    proto, weights = write(tmp_path, INCEPTION, inception_weights(rng))
    tree = load_caffe(proto, weights, dtype=np.float64)
    graph = load_caffe(proto, weights, dtype=np.float64, containers=False)
    assert isinstance(graph, Graph)
    x = rng.standard_normal((2, 4, 8, 8))
    dy = rng.standard_normal((2, 5))
    for m in (tree, graph):
        m.train()  # Dropout-free net: train mode only makes backward keep everything
    assert_close(graph.forward(x), tree.forward(x), 1e-12)
    assert_close(graph.backward(dy), tree.backward(dy), 1e-12)
    # the same parameters under the Graph's flat names and the tree's nested ones
    flat = {n.split(".")[-2] + "." + n.split(".")[-1]: g for n, (_, g) in params_and_grads(tree).items()}
    for name, (_, g) in params_and_grads(graph).items():
        assert_close(g, flat[name], 1e-12)
    assert graph.output_shape((3, 4, 8, 8)) == (3, 5)


RESNET = (
    input_layer((2, 3, 6, 6))
    + L("conv1", "Convolution", "data", body="convolution_param { num_output: 4 kernel_size: 3 pad: 1 "
                                              "bias_term: false }")
    + L("bn1", "BatchNorm", "conv1", "conv1", body="batch_norm_param { use_global_stats: true eps: 0.001 }")
    + L("scale1", "Scale", "conv1", "conv1", body="scale_param { bias_term: true }")
    + L("relu1", "ReLU", "conv1", "conv1")
    + L("res2a_branch1", "Convolution", "conv1", body="convolution_param { num_output: 6 kernel_size: 1 "
                                                       "bias_term: false }")
    + L("bn2a_branch1", "BatchNorm", "res2a_branch1", "res2a_branch1")
    + L("scale2a_branch1", "Scale", "res2a_branch1", "res2a_branch1", body="scale_param { bias_term: true }")
    + L("res2a_branch2a", "Convolution", "conv1", body="convolution_param { num_output: 4 kernel_size: 3 pad: 1 "
                                                        "bias_term: false }")
    + L("bn2a_branch2a", "BatchNorm", "res2a_branch2a", "res2a_branch2a")
    + L("scale2a_branch2a", "Scale", "res2a_branch2a", "res2a_branch2a", body="scale_param { bias_term: true }")
    + L("relu2a_branch2a", "ReLU", "res2a_branch2a", "res2a_branch2a")
    + L("res2a_branch2b", "Convolution", "res2a_branch2a", body="convolution_param { num_output: 6 kernel_size: 3 "
                                                                 "pad: 1 bias_term: false }")
    + L("bn2a_branch2b", "BatchNorm", "res2a_branch2b", "res2a_branch2b")
    + L("scale2a_branch2b", "Scale", "res2a_branch2b", "res2a_branch2b", body="scale_param { bias_term: true }")
    + L("res2a", "Eltwise", ["res2a_branch1", "res2a_branch2b"])
    + L("res2a_relu", "ReLU", "res2a", "res2a")
    + L("res2b_branch2a", "Convolution", "res2a", body="convolution_param { num_output: 6 kernel_size: 3 pad: 1 }")
    + L("res2b", "Eltwise", ["res2a", "res2b_branch2a"], body="eltwise_param { operation: SUM }")
    + L("res2b_relu", "ReLU", "res2b", "res2b")
    + L("pool", "Pooling", "res2b", body="pooling_param { pool: AVE global_pooling: true }")
    + L("fc", "InnerProduct", "pool", body="inner_product_param { num_output: 3 }"))


def bn_blobs(rng, c, factor):
    """Caffe's BatchNorm blobs: mean * s, var * s, [s]."""
    mean, var = randn(rng, c), rng.uniform(0.5, 2.0, c).astype(np.float32)
    return [mean * factor, var * factor, np.array([factor], np.float32)]


def resnet_weights(rng):
    w = {"conv1": [randn(rng, 4, 3, 3, 3)], "res2a_branch1": [randn(rng, 6, 4, 1, 1)],
         "res2a_branch2a": [randn(rng, 4, 4, 3, 3)], "res2a_branch2b": [randn(rng, 6, 4, 3, 3)],
         "res2b_branch2a": [randn(rng, 6, 6, 3, 3), randn(rng, 6)], "fc": [randn(rng, 3, 6), randn(rng, 3)]}
    for bn, scale, c, factor in (("bn1", "scale1", 4, 1.0), ("bn2a_branch1", "scale2a_branch1", 6, 999.5),
                                 ("bn2a_branch2a", "scale2a_branch2a", 4, 0.25),
                                 ("bn2a_branch2b", "scale2a_branch2b", 6, 7.0)):
        w[bn] = bn_blobs(rng, c, factor)
        w[scale] = [1 + randn(rng, c, scale=0.2), randn(rng, c)]
    return w


def hand_bn(w, bn, scale, eps=1e-5):
    m = nn.BatchNorm2d(w[bn][0].size, eps=eps)
    m.buffers["running_mean"][...] = w[bn][0] / w[bn][2][0]
    m.buffers["running_var"][...] = w[bn][1] / w[bn][2][0]
    return set_params(m, weight=w[scale][0], bias=w[scale][1])


def test_residual_block_with_batchnorm_scale(tmp_path, rng):
    w = resnet_weights(rng)
    model = load_caffe(*write(tmp_path, RESNET, w))
    assert list(model.children) == ["conv1", "bn1", "relu1", "res2a", "res2a_relu", "res2b", "res2b_relu", "pool",
                                    "fc_flatten", "fc"]
    res2a, res2b = model["res2a"], model["res2b"]
    assert isinstance(res2a, nn.Residual) and isinstance(res2b, nn.Residual)
    assert list(res2a.children["body"].children) == ["res2a_branch2a", "bn2a_branch2a", "relu2a_branch2a",
                                                     "res2a_branch2b", "bn2a_branch2b"]
    assert list(res2a.children["shortcut"].children) == ["res2a_branch1", "bn2a_branch1"]
    assert "shortcut" not in res2b.children
    assert model["bn1"].eps == 0.001 and model["bn1"].use_global_stats is True
    ref = nn.Sequential(
        conv(w["conv1"][0], padding=1), hand_bn(w, "bn1", "scale1", eps=1e-3), nn.ReLU(),
        nn.Residual(nn.Sequential(conv(w["res2a_branch2a"][0], padding=1), hand_bn(w, "bn2a_branch2a",
                                                                                      "scale2a_branch2a"),
                                  nn.ReLU(), conv(w["res2a_branch2b"][0], padding=1),
                                  hand_bn(w, "bn2a_branch2b", "scale2a_branch2b")),
                    nn.Sequential(conv(w["res2a_branch1"][0]), hand_bn(w, "bn2a_branch1", "scale2a_branch1"))),
        nn.ReLU(), nn.Residual(conv(*w["res2b_branch2a"], padding=1)), nn.ReLU(), nn.GlobalAvgPool2d(), nn.Flatten(),
        linear(*w["fc"])).eval()
    x = randn(rng, 2, 3, 6, 6, scale=1.0)
    assert_close(model.forward(x), ref.forward(x), 1e-4)
    # use_global_stats: true keeps the stored statistics even in training mode
    model.train()
    bn1 = model["bn1"]
    before = bn1.buffers["running_mean"].copy()
    model.forward(x)
    assert_close(bn1.buffers["running_mean"], before, 0)


def test_batchnorm_scale_follow_caffes_formula(tmp_path, rng):
    text = (input_layer((2, 3, 2, 2)) + L("bn", "BatchNorm", "data", "data", body="batch_norm_param { eps: 0.01 }")
            + L("sc", "Scale", "data", "data", body="scale_param { bias_term: true }"))
    mean, var, factor = rng.standard_normal(3), rng.uniform(0.5, 2, 3), 3.5
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    weights = {"bn": [mean * factor, var * factor, np.array([factor])], "sc": [gamma, beta]}
    proto, model_path = write(tmp_path, text, raw=caffemodel_bytes(weights))
    model = load_caffe(proto, model_path, dtype=np.float64)
    x = rng.standard_normal((2, 3, 2, 2))
    c = (1, 3, 1, 1)
    expected = (x - mean.reshape(c)) / np.sqrt(var.reshape(c) + 0.01) * gamma.reshape(c) + beta.reshape(c)
    assert_close(model.forward(x), expected, 1e-6)  # the blobs were stored as float32
    # a zero normalizer means zero statistics, as in Caffe
    weights["bn"][2] = np.zeros(1)
    model = load_caffe(*write(tmp_path, text, raw=caffemodel_bytes(weights), name="zero"), dtype=np.float64)
    assert_close(model.forward(x), x / np.sqrt(0.01) * gamma.reshape(c) + beta.reshape(c), 1e-6)


def test_scale_not_after_batchnorm_is_its_own_module(tmp_path, rng):
    text = input_layer((2, 3, 2, 2)) + L("sc", "Scale", "data", body="scale_param { bias_term: false }")
    gamma = randn(rng, 3)
    model = load_caffe(*write(tmp_path, text, {"sc": [gamma]}))
    x = randn(rng, 2, 3, 2, 2)
    assert_close(model.forward(x), x * gamma.reshape(1, 3, 1, 1))


def test_inner_product_transpose_and_scale_without_bias(tmp_path, rng):
    text = (input_layer((2, 3, 2, 2)) + L("bn", "BatchNorm", "data")
            + L("sc", "Scale", "bn", body="param { lr_mult: 0 } scale_param { bias_term: false }")
            + L("ip", "InnerProduct", "sc", body="inner_product_param { num_output: 5 transpose: true }"))
    gamma, w, b = randn(rng, 3), randn(rng, 12, 5), randn(rng, 5)
    weights = {"bn": [np.zeros(3), np.ones(3), np.ones(1)], "sc": [gamma], "ip": [w, b]}
    model = load_caffe(*write(tmp_path, text, raw=caffemodel_bytes(weights)), dtype=np.float64)
    assert list(model.children) == ["bn", "ip_flatten", "ip"]
    assert model["bn"].frozen == {"weight", "bias"}  # lr_mult 0 on the scale; no Caffe shift to learn
    x = rng.standard_normal((2, 3, 2, 2))
    expected = (x / np.sqrt(1 + 1e-5) * gamma.reshape(1, 3, 1, 1)).reshape(2, 12) @ w + b
    assert_close(model.forward(x), expected, 1e-6)


GRAPH_NET = (
    input_layer((2, 2, 5, 5))
    + L("a", "Convolution", "data", body="convolution_param { num_output: 3 kernel_size: 3 pad: 1 }")
    + L("a_relu", "ReLU", "a", "a")
    + L("b", "Convolution", "a", body="convolution_param { num_output: 3 kernel_size: 1 }")
    + L("c", "Convolution", "a", body="convolution_param { num_output: 3 kernel_size: 3 pad: 1 }")
    + L("sum", "Eltwise", ["b", "c"], body="eltwise_param { coeff: 1 coeff: -0.5 }")
    + L("join", "Concat", ["sum", "a"])
    + L("fc", "InnerProduct", "join", body="inner_product_param { num_output: 4 }"))


def test_graph_backward_matches_finite_differences(tmp_path, rng):
    shapes = {"a": (3, 2, 3, 3), "b": (3, 3, 1, 1), "c": (3, 3, 3, 3), "fc": (4, 6 * 25)}
    weights = {n: [randn(rng, *s), randn(rng, s[0])] for n, s in shapes.items()}
    model = load_caffe(*write(tmp_path, GRAPH_NET, weights), dtype=np.float64).train()
    assert isinstance(model, Graph)  # coefficients and a branch feeding two joins: no container fits
    x = rng.standard_normal((2, 2, 5, 5))
    dy = rng.standard_normal((2, 4))
    model.zero_grad()
    model.forward(x)
    dx = model.backward(dy)

    def loss():
        return float((model.forward(x) * dy).sum())

    h = 1e-6
    for index in [(0, 0, 0, 0), (1, 1, 2, 3), (0, 1, 4, 4)]:
        saved = x[index]
        x[index] = saved + h
        up = loss()
        x[index] = saved - h
        down = loss()
        x[index] = saved
        assert dx[index] == pytest.approx((up - down) / (2 * h), rel=1e-6, abs=1e-8)
    for name, param, grad, _, _ in model.named_parameters():
        for flat in (0, param.size - 1):
            idx = np.unravel_index(flat, param.shape)
            saved = param[idx]
            param[idx] = saved + h
            up = loss()
            param[idx] = saved - h
            down = loss()
            param[idx] = saved
            assert grad[idx] == pytest.approx((up - down) / (2 * h), rel=1e-6, abs=1e-8), name


def test_legacy_v1_layers_and_v1_caffemodel(tmp_path, rng):
    v1 = '''name: "v1"
input: "data"
input_dim: 2 input_dim: 1 input_dim: 16 input_dim: 16
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" blobs_lr: 1 blobs_lr: 2
         convolution_param { num_output: 4 kernel_size: 5 } }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "conv2" type: CONVOLUTION bottom: "pool1" top: "conv2"
         convolution_param { num_output: 6 kernel_size: 3 pad: 1 } }
layers { name: "pool2" type: POOLING bottom: "conv2" top: "pool2" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layers { name: "ip1" type: INNER_PRODUCT bottom: "pool2" top: "ip1" inner_product_param { num_output: 12 } }
layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" }
layers { name: "ip2" type: INNER_PRODUCT bottom: "ip1" top: "ip2" inner_product_param { num_output: 5 } }
layers { name: "prob" type: SOFTMAX bottom: "ip2" top: "prob" }
'''
    weights = lenet_weights(rng)
    # V1 NetParameter: field 2, names in field 4, enum types in field 5, blobs in field 6 with legacy 4-D dims
    types = {"conv1": 4, "conv2": 4, "ip1": 14, "ip2": 14}
    raw = b"".join(ld(2, v1_layer_bytes(n, types[n], b)) for n, b in weights.items()) + \
        ld(2, v1_layer_bytes("relu1", 18, []))
    legacy = load_caffe(*write(tmp_path, v1, raw=raw, name="v1"))
    modern = load_caffe(*write(tmp_path, LENET, weights, name="v2"))
    assert list(legacy.children) == list(modern.children)
    x = randn(rng, 2, 1, 16, 16, scale=1.0)
    assert_close(legacy.forward(x), modern.forward(x), 0)
    # a V1 caffemodel also serves a new-style prototxt (weights are matched by layer name)
    assert_close(load_caffe(tmp_path / "v2.prototxt", tmp_path / "v1.caffemodel").forward(x), modern.forward(x), 0)


def test_double_data_blobs(tmp_path, rng):
    weights = lenet_weights(rng)
    raw = b"".join(ld(100, ld(1, n.encode()) + b"".join(ld(7, blob_bytes(a, double=True)) for a in b))
                   for n, b in weights.items())
    model = load_caffe(*write(tmp_path, LENET, raw=raw), dtype=np.float64)
    assert_close(model.state_dict()["conv2.weight"], weights["conv2"][0], 0)


# ------------------------------------------------------------------------------------------ pooling geometry

def caffe_pool(x, kernel, stride, pad, method, ceil):
    """Caffe's PoolingLayer Reshape + Forward_cpu, transcribed."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    n, c, h, w = x.shape

    def pooled(size, k, s, p):
        out = int((math.ceil if ceil else math.floor)((size + 2 * p - k) / s)) + 1
        if (ph or pw) and (out - 1) * s >= size + p:
            out -= 1
        return out

    oh, ow = pooled(h, kh, sh, ph), pooled(w, kw, sw, pw)
    y = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            if method == "MAX":
                he, we = min(hs + kh, h), min(ws + kw, w)
                hs, ws = max(hs, 0), max(ws, 0)
                y[:, :, i, j] = x[:, :, hs:he, ws:we].max(axis=(2, 3))
            else:
                he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
                count = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                y[:, :, i, j] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / count
    return y


POOL_CASES = [  # (H, W), kernel, stride, pad
    ((7, 7), (3, 3), (2, 2), (0, 0)),    # exact fit
    ((8, 6), (3, 3), (2, 2), (0, 0)),    # ceil adds a partial last window on H
    ((13, 13), (3, 3), (2, 2), (1, 1)),
    ((5, 5), (2, 2), (2, 2), (1, 1)),    # ceil would start a window at H + pad: clipped
    ((6, 7), (2, 2), (2, 2), (1, 1)),
    ((7, 4), (3, 3), (3, 3), (1, 1)),
    ((9, 5), (3, 2), (2, 1), (1, 0)),    # kernel_h/kernel_w, stride_h/stride_w, pad_h/pad_w
    ((4, 4), (3, 3), (1, 1), (1, 1)),
    ((6, 6), (2, 2), (3, 3), (1, 1)),    # kernel < stride with padding: the rules agree
]


def pool_layer(kernel, stride, pad, method, round_mode):
    body = (f"pool: {method} kernel_h: {kernel[0]} kernel_w: {kernel[1]} stride_h: {stride[0]} "
            f"stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]} round_mode: {round_mode}")
    return L("pool", "Pooling", "data", body=f"pooling_param {{ {body} }}")


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("round_mode", ["CEIL", "FLOOR"])
@pytest.mark.parametrize("size, kernel, stride, pad", POOL_CASES)
def test_pooling_matches_caffes_loops(tmp_path, rng, size, kernel, stride, pad, method, round_mode):
    text = input_layer((2, 3) + size) + pool_layer(kernel, stride, pad, method, round_mode)
    model = load_caffe(write(tmp_path, text)[0], dtype=np.float64)
    x = rng.standard_normal((2, 3) + size)
    expected = caffe_pool(x, kernel, stride, pad, method, round_mode == "CEIL")
    assert model.output_shape((2, 3) + size) == expected.shape
    assert_close(model.forward(x), expected, 1e-12)


def test_pooling_kernel_below_stride_without_padding(tmp_path):
    # Caffe's last CEIL window starts past the input here (5 = 1 + 2 * 2; windows at 0, 3, 6): refused
    proto, _ = write(tmp_path, input_layer((1, 1, 5, 5)) + pool_layer((1, 1), (3, 3), (0, 0), "MAX", "CEIL"))
    with pytest.raises(ValueError, match=r"layer 'pool' \(Pooling\).*kernel 1 < stride 3.*FLOOR"):
        load_caffe(proto)
    proto, _ = write(tmp_path, input_layer((1, 1, 5, 5)) + pool_layer((1, 1), (3, 3), (0, 0), "MAX", "FLOOR"),
                     name="floor")
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    assert_close(load_caffe(proto, dtype=np.float64).forward(x), caffe_pool(x, (1, 1), (3, 3), (0, 0), "MAX", False))


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling(tmp_path, rng, method):
    text = input_layer((2, 3, 5, 4)) + L("pool", "Pooling", "data",
                                         body=f"pooling_param {{ pool: {method} global_pooling: true }}")
    model = load_caffe(write(tmp_path, text)[0], dtype=np.float64)
    x = rng.standard_normal((2, 3, 5, 4))
    assert_close(model.forward(x), caffe_pool(x, (5, 4), (1, 1), (0, 0), method, True), 1e-12)


def test_pooling_padding_beyond_half_kernel_is_refused(tmp_path):
    proto, _ = write(tmp_path, input_layer((1, 1, 6, 6)) + pool_layer((3, 3), (2, 2), (2, 2), "MAX", "CEIL"))
    with pytest.raises(ValueError, match="pad_h 2 must be smaller than kernel_h 3|more than half"):
        load_caffe(proto)


# ------------------------------------------------------------------------------------------ inputs, options

def test_input_forms_phase_rules_and_options(tmp_path, rng):
    body = (L("ip", "InnerProduct", "data", body="inner_product_param { num_output: 3 }")
            + 'layer { name: "trainonly" type: "Dropout" bottom: "ip" top: "ip" include { phase: TRAIN } }\n'
            + 'layer { name: "testonly" type: "ReLU" bottom: "ip" top: "ip" include { phase: TEST } }\n'
            + 'layer { name: "notest" type: "Sigmoid" bottom: "ip" top: "ip" exclude { phase: TEST } }\n')
    for i, head in enumerate(['input: "data" input_dim: 2 input_dim: 6 input_dim: 1 input_dim: 1\n',
                              'input: "data" input_shape { dim: 2 dim: 6 }\n', input_layer((2, 6))]):
        model = load_caffe(write(tmp_path, head + body, name=f"n{i}")[0])
        assert model["ip"].in_features == 6 and model.input_shape == ((6, 1, 1) if i == 0 else (6,))
        assert list(model.children)[-2:] == ["ip", "testonly"]
    # no declared shape: input_shape= supplies it; it also overrides a declared one
    with pytest.raises(ValueError, match="no declared shape; pass input_shape"):
        load_caffe(write(tmp_path, 'input: "data"\n' + body, name="noshape")[0])
    model = load_caffe(tmp_path / "noshape.prototxt", input_shape=(10,))
    assert model["ip"].in_features == 10
    # without a caffemodel: He-initialized from the seed, reproducibly
    a, b = (load_caffe(tmp_path / "n0.prototxt", seed=s).state_dict()["ip.weight"] for s in (3, 3))
    assert np.abs(a).sum() > 0 and np.array_equal(a, b)
    assert not np.array_equal(a, load_caffe(tmp_path / "n0.prototxt", seed=4).state_dict()["ip.weight"])


def test_output_choice_pruning_and_frozen_params(tmp_path, rng):
    text = ('input: "data" input_shape { dim: 2 dim: 6 }\ninput: "label" input_shape { dim: 2 dim: 1 }\n'
            + L("ip", "InnerProduct", "data", body="param { lr_mult: 0 } param { lr_mult: 2 } "
                                                   "inner_product_param { num_output: 3 }")
            + L("prob", "Softmax", "ip")
            + L("loss", "SoftmaxWithLoss", ["ip", "label"]))
    proto, _ = write(tmp_path, text)
    with pytest.raises(ValueError, match=r"2 output blobs \['prob', 'loss'\]; pass output="):
        load_caffe(proto)
    with pytest.raises(ValueError, match=r"layer 'loss' \(SoftmaxWithLoss\).*cannot be imported"):
        load_caffe(proto, output="loss")
    model = load_caffe(proto, output="prob")  # the loss layer is not built
    assert list(model.children) == ["ip", "prob"]
    assert model["ip"].frozen == {"weight"}
    with pytest.raises(ValueError, match="no blob named 'nothing'"):
        load_caffe(proto, output="nothing")


def test_missing_weights_strict_and_lenient(tmp_path, rng):
    weights = lenet_weights(rng)
    del weights["conv2"]
    proto, model_path = write(tmp_path, LENET, weights)
    with pytest.raises(ValueError, match=r"net\.caffemodel: no weights for layer 'conv2' \(Convolution\)"):
        load_caffe(proto, model_path)
    model = load_caffe(proto, model_path, strict=False)
    assert np.abs(model.state_dict()["conv2.weight"]).sum() > 0  # initialized
    assert_close(model.state_dict()["conv1.weight"], lenet_weights(np.random.default_rng(1234))["conv1"][0], 0)


@pytest.mark.parametrize("layer, message", [
    (L("s", "Sigmoid", "data"), r"layer 's' \(Sigmoid\).*type 'Sigmoid' cannot be imported"),
    (L("r", "ReLU", "data", body="relu_param { negative_slope: 0.1 }"), r"'r' \(ReLU\).*negative_slope"),
    (L("n", "LRN", "data", body="lrn_param { norm_region: WITHIN_CHANNEL }"), "ACROSS_CHANNELS"),
    (L("n", "LRN", "data", body="lrn_param { local_size: 4 }"), "local_size must be odd"),
    (L("p", "Pooling", "data", body="pooling_param { pool: STOCHASTIC kernel_size: 2 }"), "STOCHASTIC"),
    (L("e", "Eltwise", ["data", "data"], body="eltwise_param { operation: PROD }"), r"'e' \(Eltwise\).*PROD"),
    (L("e", "Eltwise", ["data", "data"], body="eltwise_param { operation: MAX }"), "MAX is not supported"),
    (L("c", "Concat", ["data", "data"], body="concat_param { axis: 2 }"), "axis 1"),
    (L("c", "Convolution", "data", body="convolution_param { num_output: 3 kernel_size: 1 group: 2 }"),
     "group 2 must divide"),
    (L("c", "Convolution", "data", body="convolution_param { kernel_size: 1 }"), "num_output must be given"),
    (L("c", "Convolution", "data", body="convolution_param { num_output: 2 kernel_size: 9 }"), r"'c'.*does not fit"),
    (L("c", "Convolution", "data", body="convolution_param { num_output: 2 kernel_size: 1 kernel_h: 1 }"),
     "not both"),
    (L("p", "Pooling", "data", body="pooling_param { pool: 7 kernel_size: 2 }"), "must be one of MAX, AVE"),
    (L("p", "Pooling", "data", body="pooling_param { kernel_size: 2.5 }"), "must be an integer"),
    (L("p", "Pooling", "data", body='pooling_param { kernel_size: 2 kernel_size: 2 kernel_size: 2 }'),
     "3 values"),
    (L("x", "ReLU", "nowhere"), r"bottom blob\(s\) \['nowhere'\]"),
    ('layers { name: "x" type: RELU bottom: "data" top: "x" }', "mixes 'layer' and legacy 'layers'"),
    (L("d", "Dropout", "data", body="dropout_param { dropout_ratio: 1 }"), r"dropout_ratio must be in \[0, 1\)"),
    (L("c", "Convolution", "data", body="convolution_param { num_output: 5000000000 kernel_size: 1 }"),
     "must be in \\[0, 4294967296\\)"),
    (L("c", "Convolution", "data", body="convolution_param { num_output: 4000000 kernel_size: 3000 }"),
     "would need .* parameters"),
    (L("f", "InnerProduct", "data", body="inner_product_param { num_output: 4000000000 }"), "would need"),
])
def test_unsupported_or_invalid_layers_are_named(tmp_path, layer, message):
    proto, _ = write(tmp_path, input_layer((1, 4, 6, 6)) + layer)
    with pytest.raises(ValueError, match=r"net\.prototxt:\d+: .*" + message):
        load_caffe(proto)


# ------------------------------------------------------------------------------------------ malformed weights

def lenet_files(tmp_path, rng):
    return write(tmp_path, LENET, lenet_weights(rng))


def test_truncated_caffemodel_at_any_offset(tmp_path, rng):
    proto, model_path = lenet_files(tmp_path, rng)
    data = model_path.read_bytes()
    cut_path = tmp_path / "cut.caffemodel"
    offsets = sorted({0, 1, 2, 5, 7, len(data) // 2, len(data) - 1} |
                     set(np.random.default_rng(0).integers(1, len(data), 25).tolist()))
    for cut in offsets:
        cut_path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"cut\.caffemodel: "):
            load_caffe(proto, cut_path)


def conv1_model(blob_records):
    """A caffemodel whose only layer is conv1, with the given raw BlobProto payloads."""
    return ld(100, ld(1, b"conv1") + b"".join(ld(7, b) for b in blob_records))


GOOD_BIAS = blob_bytes(np.zeros(4, np.float32))


@pytest.mark.parametrize("raw, message", [
    (key(100, 2) + b"\xff" * 11, "varint is longer than 10 bytes"),
    (key(100, 2) + b"\xff" * 9 + b"\x7f", "varint exceeds 64 bits"),
    (key(100, 2) + varint(50) + b"\x00" * 10, "declares 50 bytes but only 10 remain"),
    (b"\x80", "varint runs past the end"),
    (key(100, 3), "wire type 3"),
    (key(9, 7), "wire type 7"),
    (key(0, 0) + b"\x00", "invalid field number 0"),
    (key(100, 0) + varint(5), r"field 100\) has wire type 0"),
    (b"name: 'text'\n", "is this a text file"),
    (conv1_model([ld(7, ld(1, varint(2) + varint(3))) + ld(5, b"\x00" * 20), GOOD_BIAS]), "holds 6 values but 5"),
    (conv1_model([ld(5, b"\x00" * 7), GOOD_BIAS]), "7 bytes of packed float32"),
    (conv1_model([key(5, 0) + varint(1), GOOD_BIAS]), r"BlobProto\.data \(field 5\) has wire type 0"),
    (conv1_model([ld(7, ld(1, varint(-4) + varint(1))), GOOD_BIAS]), "negative dimension"),
    (conv1_model([ld(7, key(1, 2) + varint(9) + b"\x01"), GOOD_BIAS]), "declares 9 bytes"),
    (conv1_model([blob_bytes(np.zeros((5, 1, 5, 5))), GOOD_BIAS]), r"blob 0 has shape \(5, 1, 5, 5\), the prototxt "
                                                                   r"needs \(4, 1, 5, 5\)"),
    (conv1_model([blob_bytes(np.zeros((4, 1, 5, 5)))]), "has 1 blobs, the prototxt needs 2"),
    (ld(100, ld(1, b"\xff\xfe")), "not valid UTF-8"),
])
def test_malformed_caffemodel_is_a_clear_error(tmp_path, raw, message):
    proto, model_path = write(tmp_path, input_layer((1, 1, 8, 8)) + L(
        "conv1", "Convolution", "data", body="convolution_param { num_output: 4 kernel_size: 5 }"), raw=raw)
    with pytest.raises(ValueError, match=r"net\.caffemodel: .*" + message):
        load_caffe(proto, model_path)


def test_unpacked_repeated_fields_and_legacy_shapes_decode():
    # one float per fixed32 record, dims as separate varints, int32 num/channels/height/width
    unpacked = ld(7, key(1, 0) + varint(2) + key(1, 0) + varint(2)) + \
        b"".join(key(5, 5) + np.float32(v).tobytes() for v in (1, 2, 3, 4))
    legacy = key(1, 0) + varint(1) + key(2, 0) + varint(1) + key(3, 0) + varint(1) + key(4, 0) + varint(2) + \
        ld(5, np.float32([5, 6]).tobytes())
    layers = decode_caffemodel(ld(100, ld(1, b"a") + ld(7, unpacked) + ld(7, legacy) + key(99, 1) + b"\x00" * 8))
    a, b = layers["a"]
    assert_close(a, np.float32([[1, 2], [3, 4]]), 0)
    assert b.shape == (1, 1, 1, 2) and b.tolist() == [[[[5, 6]]]]
    # a V1 layer whose name and blobs live in a nested V0 layer (field 1: name 1, blobs 50)
    v0 = ld(1, b"old") + ld(2, b"conv") + ld(50, blob_bytes(np.float32([7, 8])))
    assert decode_caffemodel(ld(2, key(5, 0) + varint(4) + ld(1, v0)))["old"][0].tolist() == [7, 8]


def test_fuzzed_caffemodels_load_or_raise_value_error(tmp_path, rng):
    proto, model_path = lenet_files(tmp_path, rng)
    data = bytearray(model_path.read_bytes())
    fuzz = np.random.default_rng(7)
    outcomes = []
    for trial in range(150):
        mutated = bytearray(data)
        for _ in range(int(fuzz.integers(1, 4))):
            mutated[int(fuzz.integers(len(mutated)))] = int(fuzz.integers(256))
        if trial % 3 == 0:
            mutated = mutated[:int(fuzz.integers(len(mutated)))] + bytes(fuzz.integers(0, 256, 8, dtype=np.uint8))
        try:
            layers = decode_caffemodel(bytes(mutated), "fuzz")
        except ValueError as e:
            assert str(e).startswith("fuzz: malformed caffemodel at byte ")
            outcomes.append("decode")
            continue
        path = tmp_path / "fuzz.caffemodel"
        path.write_bytes(bytes(mutated))
        try:
            load_caffe(proto, path)
            outcomes.append("ok")
        except ValueError as e:
            assert "fuzz.caffemodel" in str(e)
            outcomes.append("load")
    assert outcomes.count("decode") > 10  # the fuzzing reached the decoder's checks


def test_binary_file_as_prototxt_and_missing_files(tmp_path):
    path = tmp_path / "weights.caffemodel"
    path.write_bytes(b"\x0a\x04net\xff\xfe")
    with pytest.raises(ValueError, match=r"weights\.caffemodel: not a text prototxt"):
        load_caffe(path)
    with pytest.raises(ValueError, match="cannot read the prototxt"):
        load_caffe(tmp_path / "absent.prototxt")
    proto, _ = write(tmp_path, LENET)
    with pytest.raises(ValueError, match="cannot read the caffemodel"):
        load_caffe(proto, tmp_path / "absent.caffemodel")
