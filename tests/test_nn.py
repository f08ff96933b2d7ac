"""fastconv.nn: module-level gradients against float64 central finite differences, shape inference against
forward, freezing, state_dict, train/eval switching."""
import contextlib
import numpy as np
import pytest

from fastconv import nn
from fastconv.models import PositionBias, SideBranch
from fastconv.testing import max_relative_error, numerical_gradient

TOL = 1e-6  # max relative error of an analytic gradient against finite differences, float64


def distinct(rng, shape, spacing=0.1):
    """Values pairwise >= `spacing` apart and >= spacing/2 from zero: no max/ReLU kink within a finite-difference
    step."""
    size = int(np.prod(shape))
    return (rng.permutation(size) - size / 2 + 0.5).reshape(shape) * spacing


def randomize_params(module, rng):
    for _, p, _, _, _ in module.named_parameters():
        p[...] = rng.standard_normal(p.shape)
    return module


def check_gradients(module, x, rng, before_forward=lambda: None):
    """Analytic input and parameter gradients of `module` at `x` against finite differences of sum(y * dy)."""
    def run(_=None):
        before_forward()
        return module.forward(x)

    y = run()
    assert y.shape == module.output_shape(x.shape), "output_shape disagrees with forward"
    dy = rng.standard_normal(y.shape)
    module.zero_grad()
    run()
    dx = module.backward(dy)
    assert dx.shape == x.shape
    assert max_relative_error(dx, numerical_gradient(run, x, dy)) < TOL
    checked = 0
    for name, p, g, _, _ in module.named_parameters():
        numeric = numerical_gradient(run, p, dy)
        assert max_relative_error(g, numeric) < TOL, name
        checked += 1
    return checked


# ------------------------------------------------------------------------------------------------ gradients

@pytest.mark.parametrize("kw", [
    dict(stride=1, padding=0, groups=1, bias=True),
    dict(stride=2, padding=1, groups=1, bias=True),
    dict(stride=(1, 2), padding=(2, 1), groups=2, bias=False),
])
def test_conv2d_gradients(rng, kw):
    m = randomize_params(nn.Conv2d(4, 6, (3, 2), dtype=np.float64, **kw), rng)
    assert check_gradients(m, rng.standard_normal((2, 4, 6, 5)), rng) == (2 if kw["bias"] else 1)


def test_linear_gradients(rng):
    m = randomize_params(nn.Linear(7, 5, dtype=np.float64), rng)
    assert check_gradients(m, rng.standard_normal((3, 7)), rng) == 2


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=3, stride=2, ceil_mode=True)])
def test_max_pool_gradients(rng, kw):
    check_gradients(nn.MaxPool2d(**kw), distinct(rng, (2, 3, 7, 6)), rng)


@pytest.mark.parametrize("kw", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
                                dict(kernel_size=3, stride=2, ceil_mode=True)])
def test_avg_pool_gradients(rng, kw):
    check_gradients(nn.AvgPool2d(**kw), rng.standard_normal((2, 3, 7, 6)), rng)


def test_global_avg_pool_gradients(rng):
    check_gradients(nn.GlobalAvgPool2d(), rng.standard_normal((2, 3, 4, 5)), rng)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm2d_gradients(rng, training):
    m = randomize_params(nn.BatchNorm2d(3, dtype=np.float64), rng)
    m.buffers["running_mean"][...] = rng.standard_normal(3)
    m.buffers["running_var"][...] = rng.uniform(0.5, 2, 3)
    m.train(training)
    assert check_gradients(m, rng.standard_normal((3, 3, 4, 2)), rng) == 2


def test_batch_norm1d_gradients(rng):
    m = randomize_params(nn.BatchNorm1d(4, dtype=np.float64), rng)
    assert check_gradients(m, rng.standard_normal((5, 4)), rng) == 2


def test_lrn_gradients(rng):
    check_gradients(nn.LocalResponseNorm(size=3, alpha=0.3, beta=0.75, k=2.0), rng.standard_normal((2, 6, 3, 3)),
                    rng)


def test_relu_gradients(rng):
    check_gradients(nn.ReLU(), distinct(rng, (2, 3, 4, 4)), rng)


def test_dropout_gradients_with_a_fixed_mask(rng):
    m = nn.Dropout(0.4)

    def same_mask():
        m.rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 50))
    check_gradients(m, x, rng, before_forward=same_mask)
    same_mask()
    y = m.forward(x)
    kept = y != 0
    assert 0.25 < 1 - kept.mean() < 0.55  # 200 units dropped with p = 0.4
    np.testing.assert_allclose(y[kept], x[kept] / 0.6, rtol=1e-12)


def test_flatten_and_softmax_gradients(rng):
    check_gradients(nn.Flatten(), rng.standard_normal((2, 3, 2, 2)), rng)
    check_gradients(nn.Softmax(), rng.standard_normal((3, 6)), rng)


def test_sequential_gradients(rng):
    m = randomize_params(nn.Sequential(
        conv=nn.Conv2d(2, 3, 3, padding=1, bias=False, dtype=np.float64), bn=nn.BatchNorm2d(3, dtype=np.float64),
        pool=nn.AvgPool2d(2), flatten=nn.Flatten(), fc=nn.Linear(12, 4, dtype=np.float64)),
        rng)
    assert check_gradients(m, rng.standard_normal((2, 2, 4, 4)), rng) == 5


def test_concat_gradients(rng):
    m = randomize_params(nn.Concat(
        a=nn.Conv2d(3, 2, 1, dtype=np.float64),
        b=nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, dtype=np.float64), nn.AvgPool2d(3, 1, padding=1)),
        c=nn.Conv2d(3, 1, 3, padding=1, bias=False, dtype=np.float64)), rng)
    assert m.output_shape((2, 3, 4, 4)) == (2, 7, 4, 4)
    assert check_gradients(m, rng.standard_normal((2, 3, 4, 4)), rng) == 5


@pytest.mark.parametrize("projection", [False, True])
def test_residual_gradients(rng, projection):
    c_out, stride = (5, 2) if projection else (3, 1)
    body = nn.Sequential(nn.Conv2d(3, c_out, 3, stride=stride, padding=1, bias=False, dtype=np.float64),
                         nn.BatchNorm2d(c_out, dtype=np.float64))
    shortcut = nn.Conv2d(3, c_out, 1, stride=stride, bias=False, dtype=np.float64) if projection else None
    m = randomize_params(nn.Residual(body, shortcut), rng)
    assert check_gradients(m, rng.standard_normal((2, 3, 4, 4)), rng) == (4 if projection else 3)
    assert ("shortcut" in m.children) == projection


def test_residual_identity_adds_the_input(rng):
    m = randomize_params(nn.Residual(nn.Conv2d(2, 2, 1, dtype=np.float64)), rng)
    x = rng.standard_normal((1, 2, 3, 3))
    w, b = m.children["body"].params["weight"][:, :, 0, 0], m.children["body"].params["bias"]
    np.testing.assert_allclose(m.forward(x), np.einsum("oc,nchw->nohw", w, x) + b[:, None, None] + x, rtol=1e-12)
    with pytest.raises(ValueError, match="shortcut"):
        nn.Residual(nn.Conv2d(2, 3, 1, dtype=np.float64)).forward(x)


def test_position_bias_and_side_branch_gradients(rng):
    m = randomize_params(PositionBias(2, 3, 4, dtype=np.float64), rng)
    assert check_gradients(m, rng.standard_normal((2, 2, 3, 4)), rng) == 1

    head = randomize_params(nn.Sequential(nn.Flatten(), nn.Linear(12, 2, dtype=np.float64)), rng)
    branch = SideBranch(head)
    trunk = randomize_params(nn.Sequential(pre=nn.Conv2d(1, 3, 1, dtype=np.float64), side=branch,
                                           post=nn.Conv2d(3, 1, 1, dtype=np.float64)), rng)
    x = rng.standard_normal((2, 1, 2, 2))
    g_aux = rng.standard_normal((2, 2))
    dy = rng.standard_normal((2, 1, 2, 2))

    def loss_terms(_=None):  # sum(y * dy) + sum(aux * g_aux) as one scalar
        return np.sum(trunk.forward(x) * dy) + np.sum(branch.output * g_aux)
    trunk.zero_grad()
    trunk.forward(x)
    branch.output_grad = g_aux
    dx = trunk.backward(dy)
    assert max_relative_error(dx, numerical_gradient(loss_terms, x, 1.0)) < TOL
    for name, p, g, _, _ in trunk.named_parameters():
        assert max_relative_error(g, numerical_gradient(loss_terms, p, 1.0)) < TOL, name


def test_cross_entropy_loss_gradient(rng):
    logits = rng.standard_normal((4, 5))
    labels = np.array([0, 3, 4, 3])
    loss = nn.CrossEntropyLoss()
    value = loss(logits, labels)
    shifted = logits - logits.max(axis=1, keepdims=True)
    expected = np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(4), labels])
    assert value == pytest.approx(expected, rel=1e-12)
    numeric = numerical_gradient(lambda v: loss.forward(v, labels), logits, 1.0)
    assert max_relative_error(loss.backward(), numeric) < TOL


# ------------------------------------------------------------------------------------------------ freezing

def small_net(rng, dtype=np.float64):
    return randomize_params(nn.Sequential(
        conv1=nn.Conv2d(2, 3, 3, padding=1, dtype=dtype), relu1=nn.ReLU(),
        conv2=nn.Conv2d(3, 2, 3, padding=1, dtype=dtype), flatten=nn.Flatten(),
        fc=nn.Linear(2 * 4 * 4, 3, dtype=dtype)), rng)


def count_backward_calls(module):
    calls = []
    original = module.backward

    def counted(dy):
        calls.append(1)
        return original(dy)
    module.backward = counted
    return calls


def test_frozen_parameters_get_no_gradient_and_stay_frozen(rng):
    net = small_net(rng)
    net["conv2"].freeze()
    net["fc"].freeze("bias")
    x = rng.standard_normal((2, 2, 4, 4))
    y = net.forward(x)
    net.backward(np.ones_like(y))
    assert not net["conv2"].grads["weight"].any() and not net["conv2"].grads["bias"].any()
    assert not net["fc"].grads["bias"].any() and net["fc"].grads["weight"].any()
    assert net["conv1"].grads["weight"].any()  # the gradient still flows through the frozen conv2
    assert net.num_parameters(trainable_only=True) == net.num_parameters() - 3 * 2 * 9 - 2 - 3
    assert {n for n, _, _ in net.parameters()} == {"conv1.weight", "conv1.bias", "fc.weight"}
    with pytest.raises(KeyError, match="no parameter 'gamma'"):
        net["fc"].freeze("gamma")
    net.unfreeze()
    assert net.num_parameters(trainable_only=True) == net.num_parameters()


def test_sequential_skips_the_backward_of_a_frozen_prefix(rng):
    net = small_net(rng)
    net.need_input_grad = False  # training: nobody wants the image gradient
    net["conv1"].freeze()
    calls = {name: count_backward_calls(net[name]) for name in ("conv1", "relu1", "conv2")}
    y = net.forward(rng.standard_normal((2, 2, 4, 4)))
    assert net.backward(np.ones_like(y)) is None
    assert calls["conv2"] == [1] and calls["relu1"] == [] and calls["conv1"] == []
    assert net["conv2"].need_input_grad is False  # its input gradient would only feed the frozen prefix
    assert not net["conv1"].grads["weight"].any() and net["conv2"].grads["weight"].any()


def test_first_layer_skips_its_input_gradient_but_trains(rng):
    net = small_net(rng)
    net.need_input_grad = False
    y = net.forward(rng.standard_normal((2, 2, 4, 4)))
    assert net.backward(np.ones_like(y)) is None
    assert net["conv1"].grads["weight"].any() and net["conv1"].need_input_grad is False


# ------------------------------------------------------------------------------------------------ state_dict

def test_state_dict_round_trip(rng):
    a = nn.Sequential(conv=nn.Conv2d(2, 3, 3, rng=np.random.default_rng(1)), bn=nn.BatchNorm2d(3),
                      flatten=nn.Flatten(), fc=nn.Linear(12, 2, rng=np.random.default_rng(2)))
    b = nn.Sequential(conv=nn.Conv2d(2, 3, 3, rng=np.random.default_rng(3)), bn=nn.BatchNorm2d(3),
                      flatten=nn.Flatten(), fc=nn.Linear(12, 2, rng=np.random.default_rng(4)))
    a.children["bn"].buffers["running_mean"][...] = [1, 2, 3]
    state = a.state_dict()
    assert set(state) == {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                          "fc.weight", "fc.bias"}
    state["conv.weight"][...] = 0  # a copy: the model is untouched
    assert a.children["conv"].params["weight"].any()
    state = a.state_dict()
    b.load_state_dict(state)
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, state[k])
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    a.eval(), b.eval()
    np.testing.assert_array_equal(a.forward(x), b.forward(x))


def test_state_dict_errors():
    net = nn.Sequential(conv=nn.Conv2d(2, 3, 3), fc=nn.Linear(4, 2))
    state = net.state_dict()
    missing = {k: v for k, v in state.items() if k != "fc.bias"}
    with pytest.raises(KeyError, match="missing.*fc.bias"):
        net.load_state_dict(missing)
    with pytest.raises(KeyError, match="unexpected.*extra.weight"):
        net.load_state_dict(dict(state, **{"extra.weight": np.zeros(3)}))
    with pytest.raises(ValueError, match=r"conv.weight.*\(3, 2, 2, 2\).*\(3, 2, 3, 3\)"):
        net.load_state_dict(dict(state, **{"conv.weight": np.zeros((3, 2, 2, 2))}))
    net.load_state_dict(dict(missing, **{"extra": np.zeros(1)}), strict=False)  # partial load is allowed


# ------------------------------------------------------------------------------------------------ train / eval

def test_dropout_is_the_identity_in_eval(rng):
    net = nn.Sequential(drop=nn.Dropout(0.5, rng=3), fc=nn.Linear(10, 2))
    x = rng.standard_normal((8, 10)).astype(np.float32)
    assert (net.forward(x) is not None) and net["drop"].training
    net.eval()
    assert not net["drop"].training and not net["fc"].training
    np.testing.assert_array_equal(net["drop"].forward(x), x)
    np.testing.assert_array_equal(net["drop"].backward(x), x)
    net.train()
    y = net["drop"].forward(x)
    assert (y == 0).any() and not np.array_equal(y, x)


def test_batch_norm_running_statistics(rng):
    bn = nn.BatchNorm2d(3, momentum=0.25, dtype=np.float64)
    x = rng.standard_normal((4, 3, 2, 3)) * 2 + 5
    bn.forward(x)
    mean = x.mean(axis=(0, 2, 3))
    var_unbiased = x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(bn.buffers["running_mean"], 0.75 * 0 + 0.25 * mean, rtol=1e-12)
    np.testing.assert_allclose(bn.buffers["running_var"], 0.75 * 1 + 0.25 * var_unbiased, rtol=1e-12)
    bn.eval()
    before = bn.buffers["running_mean"].copy()
    y = bn.forward(x)
    np.testing.assert_array_equal(bn.buffers["running_mean"], before)  # eval leaves them alone
    rm, rv = bn.buffers["running_mean"], bn.buffers["running_var"]
    expected = (x - rm[:, None, None]) / np.sqrt(rv[:, None, None] + bn.eps)
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------ misc

def test_dtype_mismatch_and_astype(rng):
    net = small_net(rng, dtype=np.float32)
    x = rng.standard_normal((1, 2, 4, 4))
    with pytest.raises(TypeError, match="float64.*float32"):
        net.forward(x)
    net.astype(np.float64)
    assert net.forward(x).dtype == np.float64
    assert all(g.dtype == np.float64 for _, _, g in net.parameters())
    with pytest.raises(TypeError):
        net.astype(np.int32)


def test_output_shape_errors_name_the_layer():
    net = nn.Sequential(features=nn.Sequential(conv=nn.Conv2d(3, 4, 3), pool=nn.MaxPool2d(4)))
    assert net.output_shape((2, 3, 10, 10)) == (2, 4, 2, 2)
    with pytest.raises(ValueError, match="features: pool:"):
        net.output_shape((2, 3, 5, 5))
    with pytest.raises(ValueError, match="conv:.*got 1 input channels"):
        net.output_shape((2, 1, 10, 10))


def test_repr_is_readable():
    net = nn.Sequential(conv1=nn.Conv2d(3, 8, 3, padding=1), pool=nn.MaxPool2d(2),
                        res=nn.Residual(nn.Sequential(nn.Conv2d(8, 8, 1, bias=False))))
    text = repr(net)
    assert "(conv1): Conv2d(3, 8, kernel_size=(3, 3), stride=1, padding=1)" in text
    assert "(pool): MaxPool2d(kernel_size=2, stride=2, padding=0)" in text
    assert "(body): Sequential(" in text and "bias=False" in text


# ------------------------------------------------------------------------------------------------- no_grad

def small_resnet(rng, dtype=np.float32):
    """Conv-BN-ReLU stem, a residual block with a projection, an identity block, then pooling and a classifier:
    every pattern the fused inference path rewrites, with BatchNorm statistics that are not the identity."""
    def conv_bn(cin, cout, stride=1):
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, rng=rng, dtype=dtype),
                nn.BatchNorm2d(cout, dtype=dtype)]
    block = nn.Residual(nn.Sequential(*conv_bn(6, 8, 2), nn.ReLU(), *conv_bn(8, 8)),
                        nn.Sequential(nn.Conv2d(6, 8, 1, stride=2, rng=rng, dtype=dtype), nn.BatchNorm2d(8, dtype=dtype)))
    identity = nn.Residual(nn.Sequential(*conv_bn(8, 8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, rng=rng,
                                                                              dtype=dtype)))
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, rng=rng, dtype=dtype), nn.BatchNorm2d(6, dtype=dtype),
                          nn.ReLU(), block, nn.ReLU(), identity, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 5, rng=rng, dtype=dtype))
    for _, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.params["weight"][:] = rng.uniform(0.5, 2, c)
            m.params["bias"][:] = rng.standard_normal(c)
            m.buffers["running_mean"][:] = rng.standard_normal(c)
            m.buffers["running_var"][:] = rng.uniform(0.5, 2, c)
    return model


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_grad_inference_matches_plain_forward(rng, dtype, monkeypatch):
    import fastconv
    model = small_resnet(rng, dtype).eval()
    x = rng.standard_normal((3, 3, 16, 16)).astype(dtype)
    x_before = x.copy()
    plain = model.forward(x)
    with monkeypatch.context() as patch, fastconv.no_grad():
        assert not nn.is_grad_enabled()

        def unfolded(self, x):
            raise AssertionError("a BatchNorm2d after a Conv2d ran on its own")
        patch.setattr(nn.BatchNorm2d, "forward", unfolded)  # every one here follows a convolution
        fused = model.forward(x)
    assert nn.is_grad_enabled()
    np.testing.assert_array_equal(x, x_before)  # nothing ran in place on the caller's array
    tol = 1e-5 if dtype == np.float32 else 1e-13
    assert max_relative_error(fused, plain) < tol
    # training mode: batch statistics, no folding, same result either way
    model.train()
    with fastconv.no_grad():
        fused_train = model.forward(x)
    assert max_relative_error(fused_train, model.forward(x)) < tol


def test_no_grad_fuses_shortcut_and_relu_into_the_last_convolution(rng, monkeypatch):
    """Which convolutions receive the shortcut and the ReLU (the routing; equality is checked above)."""
    import fastconv
    model = small_resnet(rng).eval()
    calls = []
    original = nn.Conv2d.forward_inference

    def recording(self, x, bn=None, residual=None, relu=False, out=None):
        calls.append((self.out_channels, self.kernel_size, bn is not None, residual is not None, relu))
        return original(self, x, bn, residual, relu, out)
    monkeypatch.setattr(nn.Conv2d, "forward_inference", recording)
    with fastconv.no_grad():
        model.forward(rng.standard_normal((2, 3, 16, 16)).astype(np.float32))
    assert calls == [(6, (3, 3), True, False, True),                            # stem: conv + BN + ReLU
                     (8, (1, 1), True, False, False),                           # projection shortcut first
                     (8, (3, 3), True, False, True), (8, (3, 3), True, True, True),  # body; + shortcut, ReLU
                     (8, (3, 3), True, False, True), (8, (3, 3), False, True, True)]  # identity block


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_grad_residual_patterns_match_plain_forward(rng, dtype):
    """Shortcuts that cannot join the last convolution: a body ending in a ReLU (the add comes after it), a
    body that is not a Sequential, one ending in another layer, a Residual with no ReLU after it."""
    import fastconv

    def conv(c=4):
        return nn.Conv2d(4, c, 3, padding=1, rng=rng, dtype=dtype)
    model = nn.Sequential(
        nn.Residual(nn.Sequential(conv(), nn.ReLU())), nn.ReLU(),
        nn.Residual(conv()), nn.ReLU(),
        nn.Residual(nn.Sequential(conv(), nn.Dropout(0.5))), nn.ReLU(),
        nn.Residual(nn.Sequential(conv(), nn.BatchNorm2d(4, dtype=dtype))),
        nn.Residual(nn.Sequential(nn.ReLU(), conv())), nn.ReLU()).eval()
    x = rng.standard_normal((2, 4, 7, 7)).astype(dtype)
    x_before = x.copy()
    plain = model.forward(x)
    with fastconv.no_grad():
        fused = model.forward(x)
    np.testing.assert_array_equal(x, x_before)
    assert max_relative_error(fused, plain) < (1e-5 if dtype == np.float32 else 1e-13)
    assert (fused == 0).any()  # the ReLUs clamped something


@pytest.mark.parametrize("body", ["sequential", "module"])
def test_no_grad_residual_shape_mismatch_raises(rng, body):
    import fastconv
    c = nn.Conv2d(4, 4, 3, stride=2, padding=1, rng=rng)
    block = nn.Residual(nn.Sequential(c) if body == "sequential" else c)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    for ctx in (fastconv.no_grad, contextlib.nullcontext):
        with ctx(), pytest.raises(ValueError, match=r"Residual: body output \(2, 4, 4, 4\) and shortcut "
                                                   r"\(2, 4, 8, 8\) differ"):
            nn.Sequential(block, nn.ReLU()).forward(x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_grad_concat_writes_branches_in_place(rng, dtype, monkeypatch):
    """Inception branches under no_grad: the same output as the plain forward; branches ending in a convolution
    write their slice directly (no np.concatenate), the others are copied in."""
    import fastconv

    def conv(cin, cout, k=1, **kw):
        return nn.Conv2d(cin, cout, k, padding=k // 2, rng=rng, dtype=dtype, **kw)
    block = nn.Concat(nn.Sequential(conv(5, 3), nn.ReLU()),
                      nn.Sequential(conv(5, 4), conv(4, 6, 3)),
                      nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(5, 2), nn.ReLU()),
                      nn.Sequential(conv(5, 2), nn.ReLU(), nn.Dropout(0.5)),
                      conv(5, 3, 5))
    model = nn.Sequential(conv(3, 5, 3), nn.ReLU(), block, nn.ReLU()).eval()
    x = rng.standard_normal((3, 3, 9, 8)).astype(dtype)
    plain = model.forward(x)
    outs = []
    original = nn.Conv2d.forward_inference

    def recording(self, x, bn=None, residual=None, relu=False, out=None, **kw):
        outs.append(out is not None)
        return original(self, x, bn, residual, relu, out, **kw)
    monkeypatch.setattr(nn.Conv2d, "forward_inference", recording)
    monkeypatch.setattr(np, "concatenate", None)  # must not be needed
    with fastconv.no_grad():
        fused = model.forward(x)
    assert fused.shape == plain.shape == (3, 16, 9, 8)
    assert max_relative_error(fused, plain) < (1e-5 if dtype == np.float32 else 1e-13)
    # stem, branch 1, branch 2 (reduce, then into the slice), branch 3, branch 4 (copied: ends in Dropout)
    assert outs == [False, True, False, True, True, False]


def test_no_grad_relu_first_leaves_the_input_alone(rng):
    import fastconv
    model = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.ReLU())
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    x_before = x.copy()
    with fastconv.no_grad():
        y = model.forward(x)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, np.maximum(x_before, 0).reshape(2, -1))


def test_backward_after_no_grad_forward_raises(rng):
    import fastconv
    model = small_resnet(rng).eval()
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    with fastconv.no_grad():
        y = model.forward(x)
    with pytest.raises(RuntimeError, match="no_grad"):
        model.backward(np.ones_like(y))
    y = model.forward(x)  # a plain forward makes backward possible again
    assert model.backward(np.ones_like(y)).shape == x.shape


def test_no_grad_restores_on_error_and_nests():
    import fastconv
    with pytest.raises(ZeroDivisionError):
        with fastconv.no_grad():
            1 / 0
    assert nn.is_grad_enabled()
    with fastconv.no_grad():
        with fastconv.no_grad():
            pass
        assert not nn.is_grad_enabled()
    assert nn.is_grad_enabled()


@pytest.mark.parametrize("rule", ["plain", "guided", "deconvnet"])
def test_training_forward_fuses_conv_and_relu_with_the_same_bits(rng, rule):
    """A Sequential runs a Conv2d and the ReLU after it as one convolution with the ReLU in its epilogue, the ReLU
    keeping the output for its backward: forward, input gradient and parameter gradients are bit for bit those of
    the layers run one by one, for every backward rule of the ReLU."""
    def net():
        r = np.random.default_rng(5)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, rng=r), nn.ReLU(rule), nn.Conv2d(8, 4, 3, rng=r),
                             nn.ReLU(rule), nn.Flatten(), nn.Linear(4 * 6 * 6, 5, rng=r))
    fused, separate = net(), net()
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    y = fused.forward(x)
    assert fused[1]._x is fused[2]._x  # the fused output: kept by the ReLU and the next convolution's input
    y_sep = x
    for layer in separate.children.values():
        y_sep = layer.forward(y_sep)
    np.testing.assert_array_equal(y, y_sep)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = fused.backward(dy)
    dx_sep = dy
    for layer in reversed(list(separate.children.values())):
        dx_sep = layer.backward(dx_sep)
    np.testing.assert_array_equal(dx, dx_sep)
    for (name, _, g), (_, _, g_sep) in zip(fused.parameters(), separate.parameters()):
        np.testing.assert_array_equal(g, g_sep, err_msg=name)


def test_sequential_with_fused_conv_relu_gradients(rng):
    m = randomize_params(nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, dtype=np.float64), nn.ReLU(), nn.Conv2d(3, 2, 3, dtype=np.float64),
        nn.ReLU(), nn.Flatten(), nn.Linear(8, 3, dtype=np.float64)), rng)
    assert check_gradients(m, rng.standard_normal((2, 2, 4, 4)), rng) == 6


def test_conv2d_forward_with_relu_under_prepare_inference(rng):
    conv = nn.Conv2d(3, 4, 3, padding=1, rng=rng).prepare_inference()
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    with nn.no_grad():
        fused, plain = conv.forward(x, relu=True), conv.forward(x)
    np.testing.assert_array_equal(fused, np.maximum(plain, 0))
    assert (plain < 0).any()  # the ReLU had something to do
