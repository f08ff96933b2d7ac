"""ONNX import and export, checked against onnxruntime on the same weights and inputs, against the outputs stored
next to the onnx package's converted PyTorch test models, and (backward) against central finite differences."""
import glob
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fastconv import models, nn  # noqa: E402
from fastconv._onnx import (GraphModule, OnnxImportError, Pad2d, Pool2d, export_onnx, load_onnx,  # noqa: E402
                            materialize_placeholders)
from fastconv.testing import max_relative_error  # noqa: E402

DATA = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
LIGHT = os.path.join(DATA, "light")
CONVERTED = os.path.join(DATA, "pytorch-converted")


def run_ort(model, *inputs):
    """All outputs of `model` (a ModelProto or a path) in onnxruntime."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = model if isinstance(model, str) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: x for i, x in zip(session.get_inputs(), inputs)})


def as_tuple(y):
    return y if isinstance(y, tuple) else (y,)


def assert_close(ours, ref, tol):
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert np.isfinite(ref).all()
    assert max_relative_error(ours, ref) < tol


def make_model(nodes, inputs, outputs, initializers=(), opset=17):
    """A one-graph model; inputs / outputs are (name, shape) pairs of float32 tensors (shape None: unknown)."""
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in dict(initializers).items()])
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    return model


def check_against_ort(model, x, tol=1e-5):
    fc = load_onnx(model, seed=0)
    ours = as_tuple(fc(x))
    refs = run_ort(model, x)
    assert len(ours) == len(refs)
    for a, b in zip(ours, refs):
        assert_close(a, b, tol)
    return fc


# ================================================================================== the onnx package's light models

def with_logits_output(proto):
    """Also output the input of a final Softmax: the logits show errors that a saturated softmax hides."""
    last = next(n for n in proto.graph.node if n.output[0] == proto.graph.output[0].name)
    if last.op_type == "Softmax":
        proto.graph.output.append(helper.make_tensor_value_info(last.input[0], TensorProto.FLOAT, None))
    return proto


LIGHT_MODELS = [
    "inception_v1", "resnet50", "squeezenet", "shufflenet",
    pytest.param("inception_v2", marks=pytest.mark.slow),
    pytest.param("densenet121", marks=pytest.mark.slow),
    pytest.param("bvlc_alexnet", marks=pytest.mark.slow),
    pytest.param("zfnet512", marks=pytest.mark.slow),
    pytest.param("vgg19", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_model_matches_onnxruntime(name):
    proto = with_logits_output(onnx.load(os.path.join(LIGHT, f"light_{name}.onnx")))
    model = load_onnx(proto, seed=0)
    assert model.onnx_placeholders  # architecture-only: every weight was a ConstantOfShape
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    ours = as_tuple(model(x))
    refs = run_ort(materialize_placeholders(proto, seed=0), x)
    assert len(ours) == len(refs) == len(proto.graph.output)
    for a, b in zip(ours, refs):
        assert_close(a, b, 1e-4)


def test_placeholders_are_seeded_and_scaled():
    path = os.path.join(LIGHT, "light_squeezenet.onnx")
    a, b, c = (load_onnx(path, seed=s) for s in (3, 3, 4))
    (name, wa), (_, wb), (_, wc) = [next((n, p) for n, p, _ in m.parameters() if p.ndim == 4) for m in (a, b, c)]
    assert np.array_equal(wa, wb) and not np.array_equal(wa, wc)
    fan_in = np.prod(wa.shape[1:])
    assert abs(wa.std() * np.sqrt(fan_in / 2) - 1) < 0.1  # He normal
    kept = load_onnx(path, fill_placeholders=False)
    assert kept.onnx_placeholders == []
    assert np.all(next(p for _, p, _ in kept.parameters() if p.ndim == 4) == np.float32(0.02))  # the generator's


@pytest.mark.slow
def test_light_chain_becomes_sequential():
    model = load_onnx(os.path.join(LIGHT, "light_vgg19.onnx"), seed=0)
    assert isinstance(model, nn.Sequential)
    assert model.input_shape == (3, 224, 224)


def directional_check(model, x, seed=0, eps=1e-6):
    """Backward of a float64 `model` against a central difference along random directions of the input and of
    every parameter at once."""
    rng = np.random.default_rng(seed)
    y = model(x)
    dy = rng.standard_normal(y.shape)
    model.zero_grad()
    model.need_input_grad = True
    dx = model.backward(dy)
    params = [(p, g.copy()) for _, p, g in model.parameters()]
    vx = rng.standard_normal(x.shape)
    vps = [rng.standard_normal(p.shape) for p, _ in params]
    predicted = np.sum(dx * vx) + sum(np.sum(g * v) for (_, g), v in zip(params, vps))
    originals = [p.copy() for p, _ in params]

    def loss(t):
        for (p, _), v, p0 in zip(params, vps, originals):
            p[...] = p0 + t * v
        return np.sum(model(x + t * vx) * dy)

    numeric = (loss(eps) - loss(-eps)) / (2 * eps)
    loss(0.0)
    assert abs(numeric - predicted) <= 1e-6 * max(1.0, abs(predicted)), (numeric, predicted)


def test_light_squeezenet_backward_matches_finite_differences():
    """A real branched graph (fire modules: fan-out, Concat) trains: its backward matches finite differences."""
    model = load_onnx(os.path.join(LIGHT, "light_squeezenet.onnx"), seed=0).astype(np.float64)
    assert isinstance(model, GraphModule)
    x = np.random.default_rng(2).standard_normal((2, 3, 47, 47))
    directional_check(model, x)


# ================================================================================== pytorch-converted single layers

CONVERTED_SUPPORTED = {
    "test_AvgPool1d", "test_AvgPool1d_stride", "test_AvgPool2d", "test_AvgPool2d_stride",
    "test_BatchNorm1d_3d_input_eval", "test_BatchNorm2d_eval", "test_BatchNorm2d_momentum_eval",
    "test_BatchNorm3d_eval", "test_BatchNorm3d_momentum_eval", "test_ConstantPad2d", "test_ZeroPad2d",
    "test_Conv1d", "test_Conv1d_dilated", "test_Conv1d_groups", "test_Conv1d_pad1", "test_Conv1d_pad1size1",
    "test_Conv1d_pad2", "test_Conv1d_pad2size1", "test_Conv1d_stride", "test_Conv2d", "test_Conv2d_depthwise",
    "test_Conv2d_depthwise_padded", "test_Conv2d_depthwise_strided", "test_Conv2d_depthwise_with_multiplier",
    "test_Conv2d_dilated", "test_Conv2d_groups", "test_Conv2d_groups_thnn", "test_Conv2d_no_bias",
    "test_Conv2d_padding", "test_Conv2d_strided", "test_Linear", "test_Linear_no_bias", "test_LogSoftmax",
    "test_MaxPool1d", "test_MaxPool1d_stride", "test_MaxPool2d", "test_PixelShuffle", "test_ReLU", "test_Softmax",
    "test_log_softmax_dim3", "test_log_softmax_lastdim", "test_softmax_functional_dim3", "test_softmax_lastdim",
}
CONVERTED_CASES = sorted(os.path.basename(d) for d in glob.glob(os.path.join(CONVERTED, "test_*")))


def test_converted_cases_present():
    assert CONVERTED_SUPPORTED <= set(CONVERTED_CASES)


@pytest.mark.parametrize("case", CONVERTED_CASES)
def test_pytorch_converted(case):
    folder = os.path.join(CONVERTED, case)
    if case not in CONVERTED_SUPPORTED:  # 3-D layers, other activations, dilated pooling, ...: a clear error
        with pytest.raises(OnnxImportError, match=r"node '.*' \(\w+\)"):
            load_onnx(os.path.join(folder, "model.onnx"))
        return
    model = load_onnx(os.path.join(folder, "model.onnx"))
    for data in sorted(glob.glob(os.path.join(folder, "test_data_set_*"))):
        x = numpy_helper.to_array(onnx.load_tensor(os.path.join(data, "input_0.pb")))
        expected = numpy_helper.to_array(onnx.load_tensor(os.path.join(data, "output_0.pb")))
        assert_close(model(x), expected, 1e-5)


# ================================================================================== operators, one graph each

def conv_graph(x_shape, w_shape, opset=17, **attrs):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)
    return make_model([node], [("x", x_shape)], [("y", None)], {"w": w, "b": b}, opset)


@pytest.mark.parametrize("attrs", [
    dict(pads=[1, 2, 1, 2], strides=[2, 1]),
    dict(pads=[0, 1, 2, 0]),  # per-side padding: an explicit Pad2d before the convolution
    dict(pads=[2, 0, 1, 3], strides=[2, 3], dilations=[2, 1]),
    dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(auto_pad="SAME_LOWER", strides=[2, 2]),
    dict(auto_pad="VALID", dilations=[1, 2]),
    dict(group=2, pads=[1, 1, 1, 1]),
])
def test_conv(attrs):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 9, 8)).astype(np.float32)
    model = conv_graph(x.shape, (6, 4 // attrs.get("group", 1), 3, 3), **attrs)
    fc = check_against_ort(model, x)
    if attrs.get("pads", [0])[0:2] != attrs.get("pads", [0])[2:4]:
        assert any(isinstance(m, Pad2d) for _, m in fc.named_modules())


def pool_graph(op, x_shape, **attrs):
    return make_model([helper.make_node(op, ["x"], ["y"], **attrs)], [("x", x_shape)], [("y", None)])


POOLS = [
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),  # AlexNet's last pool in the light model
    dict(kernel_shape=[3, 2], strides=[2, 2], pads=[0, 1, 2, 0], ceil_mode=1),
    dict(kernel_shape=[3, 3], strides=[1, 1], pads=[2, 2, 2, 2]),  # more than half the kernel
    dict(kernel_shape=[4, 4], strides=[3, 3], pads=[1, 2, 3, 0], ceil_mode=1),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(kernel_shape=[7, 7], strides=[1, 1], pads=[0, 0, 1, 1]),  # Inception v1's final average pool
]


@pytest.mark.parametrize("attrs", POOLS)
def test_max_pool(attrs):
    x = np.random.default_rng(2).standard_normal((2, 3, 9, 10)).astype(np.float32)
    check_against_ort(pool_graph("MaxPool", x.shape, **attrs), x)


@pytest.mark.parametrize("include", [0, 1])
@pytest.mark.parametrize("attrs", POOLS)
def test_average_pool(attrs, include):
    x = np.random.default_rng(3).standard_normal((2, 3, 9, 10)).astype(np.float32)
    check_against_ort(pool_graph("AveragePool", x.shape, count_include_pad=include, **attrs), x)


def test_pool_with_pads_is_differentiable():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 7, 6))
    for kind in ("max", "avg"):
        for include in (False, True):
            pool = Pool2d(kind, (3, 2), (2, 2), (0, 1, 2, 0), ceil_mode=True, count_include_pad=include)
            graph = GraphModule(["x"], ["y"], [("pool", pool, ["x"], "y")])
            directional_check(graph, x)


@pytest.mark.parametrize("size", [3, 4, 5])
def test_lrn(size):
    """ONNX divides alpha by size, as our LRN does; an even window reaches one channel further forward."""
    x = np.random.default_rng(5).standard_normal((2, 7, 3, 4)).astype(np.float32)
    alpha, beta, bias = 0.4, 0.75, 1.5
    model = make_model([helper.make_node("LRN", ["x"], ["y"], size=size, alpha=alpha, beta=beta, bias=bias)],
                       [("x", x.shape)], [("y", None)])
    if size % 2:
        check_against_ort(model, x)  # onnxruntime refuses even sizes
    # the ONNX specification, written out: channels c - floor((size-1)/2) .. c + ceil((size-1)/2)
    x64 = x.astype(np.float64)
    square = np.zeros_like(x64)
    for c in range(x.shape[1]):
        lo, hi = max(0, c - (size - 1) // 2), min(x.shape[1] - 1, c + -(-(size - 1) // 2))
        square[:, c] = (x64[:, lo:hi + 1] ** 2).sum(axis=1)
    expected = x64 / (bias + alpha / size * square) ** beta
    assert_close(load_onnx(model)(x), expected, 1e-6)


@pytest.mark.parametrize("attrs,c_shape", [
    (dict(transB=1), (5,)), (dict(), (1, 5)), (dict(transA=1, alpha=0.5, beta=2.0), (3, 5)),
    (dict(transB=1, beta=0.0), (5,)), (dict(alpha=1.5), None), (dict(transB=1), ()),
])
def test_gemm(attrs, c_shape):
    rng = np.random.default_rng(6)
    a = rng.standard_normal((4, 3) if attrs.get("transA") else (3, 4)).astype(np.float32)
    b = rng.standard_normal((5, 4) if attrs.get("transB") else (4, 5)).astype(np.float32)
    inits = {"b": b}
    inputs = ["a", "b"]
    if c_shape is not None:
        inits["c"] = rng.standard_normal(c_shape).astype(np.float32)
        inputs.append("c")
    model = make_model([helper.make_node("Gemm", inputs, ["y"], **attrs)], [("a", a.shape)], [("y", None)], inits)
    check_against_ort(model, a)


def test_matmul_reshape_transpose_flatten():
    """A chain of shape operators with 0 / -1 in Reshape, a Transpose, Flatten at axis 2, MatMul on a 3-D input,
    and shapes and weights computed by constant nodes at load time."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 6, 4, 3)).astype(np.float32)
    w = rng.standard_normal((12, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([0, 3, -1], np.int64))),
        helper.make_node("Reshape", ["x", "shape"], ["r"]),                 # (2, 3, 24)
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),         # (2, 24, 3)
        helper.make_node("Unsqueeze", ["t", "axes"], ["u"]),                 # (2, 24, 1, 3)
        helper.make_node("Flatten", ["u"], ["f"], axis=2),                   # (48, 3)
        helper.make_node("Reshape", ["f", "shape2"], ["g"]),                 # (2, 6, 12)
        helper.make_node("Transpose", ["w_t"], ["w"], perm=[1, 0]),          # a weight folded at load time
        helper.make_node("MatMul", ["g", "w"], ["y"]),                       # (2, 6, 5)
    ]
    model = make_model(nodes, [("x", x.shape)], [("y", None)],
                       {"axes": np.array([2], np.int64), "shape2": np.array([2, -1, 12], np.int64),
                        "w_t": np.ascontiguousarray(w.T)})
    fc = check_against_ort(model, x)
    assert isinstance(fc, nn.Sequential)
    directional_check(fc.astype(np.float64), x.astype(np.float64))


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [1, 2, -1])
def test_softmax_axis_conventions(op, axis, opset):
    """Before opset 13 the input is seen as a matrix split at `axis`; from 13 on the softmax runs along `axis`."""
    x = np.random.default_rng(8).standard_normal((2, 3, 4, 5)).astype(np.float32)
    model = make_model([helper.make_node(op, ["x"], ["y"], axis=axis)], [("x", x.shape)], [("y", None)],
                       opset=opset)
    fc = check_against_ort(model, x)
    assert_close(run_ort(export_onnx(fc, None, x.shape, opset=17), x)[0], fc(x), 1e-5)  # either convention
    directional_check(fc.astype(np.float64), x.astype(np.float64))


@pytest.mark.parametrize("opset", [9, 13])
def test_squeeze_unsqueeze_dropout_batchnorm_across_opsets(opset):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 5)).astype(np.float32)
    c = 3
    bn = {"s": rng.uniform(0.5, 2, c), "bb": rng.standard_normal(c), "m": rng.standard_normal(c),
          "v": rng.uniform(0.5, 2, c)}
    bn = {k: v.astype(np.float32) for k, v in bn.items()}
    axes = {"axes": np.array([3], np.int64)}
    if opset >= 13:
        unsq = helper.make_node("Unsqueeze", ["x", "axes"], ["u"])
        sq = helper.make_node("Squeeze", ["n", "axes"], ["y"])
        drop = helper.make_node("Dropout", ["u", "ratio"], ["d"])
        extra = dict(axes, ratio=np.array(0.3, np.float32))
    else:
        unsq = helper.make_node("Unsqueeze", ["x"], ["u"], axes=[3])
        sq = helper.make_node("Squeeze", ["n"], ["y"], axes=[3])
        drop = helper.make_node("Dropout", ["u"], ["d"], ratio=0.3)
        extra = {}
    norm = helper.make_node("BatchNormalization", ["d", "s", "bb", "m", "v"], ["n"], epsilon=1e-3, momentum=0.8)
    model = make_model([unsq, drop, norm, sq], [("x", x.shape)], [("y", None)], dict(bn, **extra), opset)
    fc = check_against_ort(model, x)
    drop_layer = next(m for _, m in fc.named_modules() if isinstance(m, nn.Dropout))
    norm_layer = next(m for _, m in fc.named_modules() if isinstance(m, nn.BatchNorm2d))
    assert drop_layer.p == pytest.approx(0.3) and norm_layer.momentum == pytest.approx(0.2)


def branched_graph():
    """Inception- and ResNet-like: one tensor read by four nodes, per-side pooling pads, a Concat, a Caffe-style
    Scale (Mul and Add by unsqueezed constants), a Sum with the shortcut, Gemm and Softmax; Dropout's mask
    output unused."""
    rng = np.random.default_rng(10)
    f = np.float32
    w = {"w1": rng.standard_normal((4, 3, 3, 3)) * 0.4, "b1": rng.standard_normal(4) * 0.1,
         "w2": rng.standard_normal((2, 4, 1, 1)) * 0.5, "w3": rng.standard_normal((2, 4, 3, 3)) * 0.3,
         "scale": rng.uniform(0.5, 1.5, 8), "shift": rng.standard_normal(8) * 0.1,
         "wp": rng.standard_normal((8, 4, 1, 1)) * 0.5,
         "fc": rng.standard_normal((5, 8 * 3 * 3)) * 0.2, "fcb": rng.standard_normal(5) * 0.1,
         "axes": np.array([1, 2], np.int64)}
    w = {k: v.astype(f) if v.dtype.kind == "f" else v for k, v in w.items()}
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), n("Relu", ["c1"], ["r1"]),
        n("Conv", ["r1", "w2"], ["a"]),
        n("Conv", ["r1", "w3"], ["b"], pads=[1, 1, 1, 1]),
        n("MaxPool", ["r1"], ["p"], kernel_shape=[3, 3], strides=[1, 1], pads=[0, 0, 2, 2]),
        n("AveragePool", ["p"], ["q"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        n("Identity", ["q"], ["q_alias"]),
        n("Conv", ["q_alias", "wp"], ["qp"]),
        n("Concat", ["a", "b", "r1"], ["cat"], axis=1),
        n("Sum", ["cat", "qp", "qp"], ["s"]),  # the same tensor twice
        n("Unsqueeze", ["scale", "axes"], ["scale3"]), n("Unsqueeze", ["shift", "axes"], ["shift3"]),
        n("Mul", ["s", "scale3"], ["m"]), n("Add", ["m", "shift3"], ["mm"]), n("Relu", ["mm"], ["r2"]),
        n("MaxPool", ["r2"], ["p2"], kernel_shape=[3, 3], strides=[3, 3], ceil_mode=1),
        n("Dropout", ["p2"], ["d", "mask"]),
        n("Flatten", ["d"], ["flat"]), n("Gemm", ["flat", "fc", "fcb"], ["logits"], transB=1),
        n("Softmax", ["logits"], ["prob"], axis=1),
    ]
    return make_model(nodes, [("x", (2, 3, 8, 9))], [("prob", None), ("logits", None)], w)


def test_branched_graph_matches_onnxruntime_and_trains():
    model = branched_graph()
    x = np.random.default_rng(11).standard_normal((2, 3, 8, 9)).astype(np.float32)
    fc = check_against_ort(model, x)
    assert isinstance(fc, GraphModule)
    # training: the float64 copy's backward (both outputs get a gradient) against finite differences
    fc64 = load_onnx(model).astype(np.float64)
    x64 = x.astype(np.float64)
    rng = np.random.default_rng(12)
    prob, logits = fc64(x64)
    dprob, dlogits = rng.standard_normal(prob.shape), rng.standard_normal(logits.shape)
    fc64.zero_grad()
    dx = fc64.backward((dprob, dlogits))
    scale = dict(fc64.named_modules())["m"].params["c1"]
    vx, vs = rng.standard_normal(x.shape), rng.standard_normal(scale.shape)

    def loss(t):
        s0 = scale.copy()
        scale[...] = s0 + t * vs
        p, lg = fc64(x64 + t * vx)
        scale[...] = s0
        return np.sum(p * dprob) + np.sum(lg * dlogits)

    numeric = (loss(1e-6) - loss(-1e-6)) / 2e-6
    predicted = np.sum(dx * vx) + np.sum(dict(fc64.named_modules())["m"].grads["c1"] * vs)
    assert abs(numeric - predicted) < 1e-6 * max(1, abs(predicted))


def test_graph_backward_skips_what_is_not_needed():
    fc = load_onnx(branched_graph()).astype(np.float64)
    x = np.random.default_rng(13).standard_normal((2, 3, 8, 9))
    fc.need_input_grad = False
    prob, logits = fc(x)
    assert fc.backward((None, np.ones_like(logits))) is None
    assert np.any(fc.children["c1"].grads["weight"])
    fc.zero_grad()
    fc.freeze()
    fc(x)
    assert fc.backward((np.ones_like(prob), None)) is None
    assert not np.any(fc.children["c1"].grads["weight"])


def test_graph_module_output_shape():
    fc = load_onnx(branched_graph())
    assert fc.output_shape((2, 3, 8, 9)) == ((2, 5), (2, 5))


def test_pad_operator_and_value():
    x = np.random.default_rng(14).standard_normal((1, 2, 3, 4)).astype(np.float32)
    nodes = [helper.make_node("Pad", ["x", "pads", "v"], ["y"], mode="constant")]
    model = make_model(nodes, [("x", x.shape)], [("y", None)],
                       {"pads": np.array([0, 0, 2, 0, 0, 0, 1, 3], np.int64), "v": np.array(-1.5, np.float32)})
    check_against_ort(model, x)


# ================================================================================== errors

def test_unsupported_operator_names_op_and_node():
    model = make_model([helper.make_node("Relu", ["x"], ["r"], name="first"),
                        helper.make_node("Tanh", ["r"], ["y"], name="squash")], [("x", (1, 2))], [("y", None)])
    with pytest.raises(OnnxImportError, match=r"'squash' \(Tanh\).*'Tanh' is not supported"):
        load_onnx(model)


def test_unsupported_attribute_is_a_clear_error():
    model = pool_graph("MaxPool", (1, 1, 9, 9), kernel_shape=[3, 3], dilations=[2, 2])
    with pytest.raises(OnnxImportError, match="dilations"):
        load_onnx(model)


def test_malformed_file(tmp_path):
    path = tmp_path / "truncated.onnx"
    data = export_onnx(models.lenet5(), None, (1, 1, 32, 32)).SerializeToString()
    for cut in (len(data) // 2, len(data) - 7, 3):
        path.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated.onnx"):
            load_onnx(path)
    path.write_bytes(b"definitely not a protobuf \xff\xff\xff")
    with pytest.raises(ValueError, match="truncated.onnx"):
        load_onnx(str(path))


def test_reading_a_secondary_output_is_an_error():
    nodes = [helper.make_node("Dropout", ["x"], ["d", "mask"]), helper.make_node("Add", ["d", "mask"], ["y"])]
    with pytest.raises(OnnxImportError, match="mask"):
        load_onnx(make_model(nodes, [("x", (2, 3))], [("y", None)], opset=9))


# ================================================================================== export

def randomize_batchnorm(model, seed=0):
    rng = np.random.default_rng(seed)
    for _, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.buffers["running_mean"][...] = rng.normal(0, 0.2, m.num_features)
            m.buffers["running_var"][...] = rng.uniform(0.5, 2, m.num_features)
            m.params["weight"][...] = rng.uniform(0.5, 1.5, m.num_features)
    return model


@pytest.mark.parametrize("name,options,shape", [
    ("lenet5", {}, (3, 1, 32, 32)),
    ("alexnet", dict(input_size=67, num_classes=10, groups=2), (2, 3, 67, 67)),
    ("googlenet", dict(input_size=96, num_classes=10, aux_logits=True, lrn=True), (2, 3, 96, 96)),
    ("resnet18", dict(input_size=32, num_classes=10), (2, 3, 32, 32)),
    ("alphago_policy", dict(k=8, board_size=9, in_channels=4), (2, 4, 9, 9)),
])
def test_export_round_trip(tmp_path, name, options, shape):
    model = randomize_batchnorm(models.get_model(name, **options)).eval()
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, path, shape)
    x = np.random.default_rng(15).standard_normal(shape).astype(np.float32)
    ours = model(x)
    assert_close(run_ort(str(path), x)[0], ours, 1e-5)
    back = load_onnx(path)
    assert_close(back(x), ours, 1e-5)
    assert back.num_parameters() == model.num_parameters() - sum(  # GoogLeNet's auxiliary heads are not exported
        m.num_parameters() for _, m in model.named_modules() if isinstance(m, models.SideBranch))


def test_export_with_batch_not_fixed_and_opset_11(tmp_path):
    model = models.lenet5().eval()
    proto = export_onnx(model, None, (1, 1, 32, 32), opset=11)
    x = np.random.default_rng(16).standard_normal((5, 1, 32, 32)).astype(np.float32)
    assert_close(run_ort(proto, x)[0], model(x), 1e-5)


def test_export_imported_graph_round_trip():
    """An imported branched graph (per-side pads, Pad2d, Arithmetic, Concatenate; two outputs, one of them also
    read inside the graph) exports back to the same function."""
    fc = load_onnx(branched_graph())
    x = np.random.default_rng(17).standard_normal((2, 3, 8, 9)).astype(np.float32)
    proto = export_onnx(fc, None, x.shape)
    assert [o.name for o in proto.graph.output] == ["output_0", "output_1"]
    for a, b in zip(run_ort(proto, x), fc(x)):
        assert_close(a, b, 1e-5)
    conv = conv_graph((1, 2, 7, 7), (3, 2, 3, 3), auto_pad="SAME_UPPER", strides=[2, 2])
    fc = load_onnx(conv)
    x = np.random.default_rng(18).standard_normal((1, 2, 7, 7)).astype(np.float32)
    assert_close(run_ort(export_onnx(fc, None, x.shape), x)[0], fc(x), 1e-5)


def test_export_errors():
    class Mystery(nn.Module):
        def forward(self, x):
            return x
    with pytest.raises(ValueError, match=r"odd.*Mystery|Mystery"):
        export_onnx(nn.Sequential(relu=nn.ReLU(), odd=Mystery()), None, (1, 2))
    with pytest.raises(ValueError, match="even window"):
        export_onnx(nn.Sequential(norm=nn.LocalResponseNorm(4)), None, (1, 6, 2, 2))
    with pytest.raises(ValueError, match="opset"):
        export_onnx(models.lenet5(), None, (1, 1, 32, 32), opset=7)
    with pytest.raises(ValueError, match="does not take input"):
        export_onnx(models.lenet5(), None, (1, 1, 8, 8))


def test_export_float64_model_gives_a_double_graph():
    model = models.lenet5(dtype=np.float64).eval()
    proto = export_onnx(model, None, (2, 1, 32, 32))
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.DOUBLE
    back = load_onnx(proto)
    x = np.random.default_rng(19).standard_normal((2, 1, 32, 32))
    assert list(back.children)[:2] == ["features_c1", "features_relu1"]  # node names are the module paths
    assert {p.dtype for _, p, _ in back.parameters()} == {np.dtype(np.float64)}
    assert_close(back(x), model(x), 1e-12)
