"""fastconv.compat.cs231n against naive NumPy layers written here the way the CS231n assignment's naive versions
are (plain loops over output positions, staged backprop through the batch-norm graph), and against central finite
differences in the assignment's ``eval_numerical_gradient_array`` style."""
import numpy as np
import pytest

from fastconv.compat import cs231n as L


# ---------------------------------------------------------------------------------------------- helpers

def rel_error(x, y):
    """The assignment's error measure: max over elements of |x - y| / max(1e-8, |x| + |y|)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert x.shape == y.shape, (x.shape, y.shape)
    return np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y))) if x.size else 0.0


def num_grad_array(f, x, dout, h=1e-5):
    """Central differences of sum(f(x) * dout) with respect to x (x is perturbed in place and restored)."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        pos = np.array(f(x), copy=True)
        x[i] = old - h
        neg = np.array(f(x), copy=True)
        x[i] = old
        grad[i] = np.sum((pos - neg) * dout) / (2 * h)
        it.iternext()
    return grad


def num_grad_scalar(f, x, h=1e-5):
    """Central differences of the scalar f() with respect to x (perturbed in place). The assignment's step 1e-5:
    a smaller one lets the rounding of f (~1e-16 * |f| / h) swamp the smallest gradient entries."""
    return num_grad_array(lambda _: np.array(f()), x, np.array(1.0), h)


def away_from_zero(rng, shape, gap=0.05):
    """Normal values with none closer than `gap` to 0 (keeps finite differences off the ReLU kink)."""
    v = rng.standard_normal(shape)
    return v + np.sign(v) * gap


def distinct_values(rng, shape):
    """A random permutation of well-separated values (finite differences never swap a window's maximum)."""
    return rng.permutation(np.arange(np.prod(shape), dtype=np.float64)).reshape(shape) * 0.1 - 1.0


# ---------------------------------------------------------------------------------------------- naive layers

def conv_naive(x, w, b, stride, pad):
    n, c, h, wd = x.shape
    f, _, hh, ww = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = 1 + (h + 2 * pad - hh) // stride, 1 + (wd + 2 * pad - ww) // stride
    out = np.zeros((n, f, ho, wo))
    for i in range(n):
        for k in range(f):
            for r in range(ho):
                for s in range(wo):
                    window = xp[i, :, r * stride:r * stride + hh, s * stride:s * stride + ww]
                    out[i, k, r, s] = np.sum(window * w[k]) + b[k]
    return out


def conv_backward_naive(dout, x, w, stride, pad):
    n, c, h, wd = x.shape
    f, _, hh, ww = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp, dw, db = np.zeros_like(xp), np.zeros_like(w), np.zeros(f)
    for i in range(n):
        for k in range(f):
            for r in range(dout.shape[2]):
                for s in range(dout.shape[3]):
                    rows, cols = slice(r * stride, r * stride + hh), slice(s * stride, s * stride + ww)
                    dxp[i, :, rows, cols] += w[k] * dout[i, k, r, s]
                    dw[k] += xp[i, :, rows, cols] * dout[i, k, r, s]
                    db[k] += dout[i, k, r, s]
    return dxp[:, :, pad:pad + h, pad:pad + wd], dw, db


def pool_naive(x, ph, pw, stride):
    n, c, h, w = x.shape
    ho, wo = 1 + (h - ph) // stride, 1 + (w - pw) // stride
    out = np.zeros((n, c, ho, wo))
    for i in range(n):
        for k in range(c):
            for r in range(ho):
                for s in range(wo):
                    out[i, k, r, s] = x[i, k, r * stride:r * stride + ph, s * stride:s * stride + pw].max()
    return out


def pool_backward_naive(dout, x, ph, pw, stride):
    dx = np.zeros_like(x)
    n, c, ho, wo = dout.shape
    for i in range(n):
        for k in range(c):
            for r in range(ho):
                for s in range(wo):
                    window = x[i, k, r * stride:r * stride + ph, s * stride:s * stride + pw]
                    a, bb = np.unravel_index(np.argmax(window), window.shape)
                    dx[i, k, r * stride + a, s * stride + bb] += dout[i, k, r, s]
    return dx


def affine_naive(x, w, b):
    return x.reshape(x.shape[0], -1).dot(w) + b


def batchnorm_naive(x, gamma, beta, eps):
    """Training batch norm of (M, D) columns; returns out and the staged values for its backward."""
    mu = x.mean(axis=0)
    xc = x - mu
    var = (xc ** 2).mean(axis=0)
    std = np.sqrt(var + eps)
    xhat = xc / std
    return gamma * xhat + beta, (xc, std, xhat, gamma)


def batchnorm_backward_naive(dout, staged):
    """Backprop node by node through mu -> xc -> var -> std -> xhat -> out."""
    xc, std, xhat, gamma = staged
    m = dout.shape[0]
    dxhat = dout * gamma
    dstd = -np.sum(dxhat * xc, axis=0) / std ** 2
    dvar = dstd / (2 * std)
    dxc = dxhat / std + 2 * xc * dvar / m
    dx = dxc - np.sum(dxc, axis=0) / m
    return dx, np.sum(dout * xhat, axis=0), np.sum(dout, axis=0)


def to_columns(x):
    """(N, C, H, W) -> (N*H*W, C), the spatial batch norm's columns."""
    return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])


def from_columns(cols, shape):
    n, c, h, w = shape
    return cols.reshape(n, h, w, c).transpose(0, 3, 1, 2)


def layernorm_naive(x, gamma, beta, eps):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        row = x[i]
        out[i] = (row - row.mean()) / np.sqrt(row.var() + eps) * gamma + beta
    return out


def groupnorm_naive(x, gamma, beta, groups, eps):
    n, c, h, w = x.shape
    per = c // groups
    out = np.empty_like(x)
    for i in range(n):
        for g in range(groups):
            block = x[i, g * per:(g + 1) * per]
            out[i, g * per:(g + 1) * per] = (block - block.mean()) / np.sqrt(block.var() + eps)
    return out * gamma.reshape(1, c, 1, 1) + beta.reshape(1, c, 1, 1)


def softmax_loss_naive(x, y):
    loss, dx = 0.0, np.zeros_like(x)
    for i in range(x.shape[0]):
        shifted = x[i] - x[i].max()
        p = np.exp(shifted) / np.exp(shifted).sum()
        loss -= np.log(p[y[i]])
        dx[i] = p
        dx[i, y[i]] -= 1
    return loss / x.shape[0], dx / x.shape[0]


def svm_loss_naive(x, y):
    loss, dx = 0.0, np.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if j == y[i]:
                continue
            margin = x[i, j] - x[i, y[i]] + 1
            if margin > 0:
                loss += margin
                dx[i, j] += 1
                dx[i, y[i]] -= 1
    return loss / x.shape[0], dx / x.shape[0]


# ---------------------------------------------------------------------------------------------- convolution

CONV_CASES = [  # (N, C, H, W), (F, HH, WW), stride, pad
    ((2, 3, 7, 7), (4, 3, 3), 1, 1),
    ((2, 3, 9, 11), (3, 3, 5), 2, 1),   # non-square filter, stride 2
    ((1, 2, 8, 6), (2, 5, 2), 3, 2),    # window positions that do not tile the padded input
    ((3, 4, 5, 5), (5, 1, 1), 1, 0),
]


def test_aliases_are_the_fast_functions():
    for kind in ("naive", "im2col", "strides"):
        assert getattr(L, f"conv_forward_{kind}") is L.conv_forward_fast
        assert getattr(L, f"conv_backward_{kind}") is L.conv_backward_fast
    for kind in ("naive", "reshape", "im2col"):
        assert getattr(L, f"max_pool_forward_{kind}") is L.max_pool_forward_fast
        assert getattr(L, f"max_pool_backward_{kind}") is L.max_pool_backward_fast
    for name in L.__all__:
        assert callable(getattr(L, name)), name


@pytest.mark.parametrize("xshape, wshape, stride, pad", CONV_CASES)
def test_conv_matches_naive(xshape, wshape, stride, pad, nthreads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xshape)
    w = rng.standard_normal((wshape[0], xshape[1]) + wshape[1:])
    b = rng.standard_normal(wshape[0])
    conv_param = {"stride": stride, "pad": pad}
    out, cache = L.conv_forward_fast(x, w, b, conv_param)
    assert out.dtype == np.float64
    assert rel_error(out, conv_naive(x, w, b, stride, pad)) < 1e-9
    dout = rng.standard_normal(out.shape)
    for got, want in zip(L.conv_backward_fast(dout, cache), conv_backward_naive(dout, x, w, stride, pad)):
        assert got.shape == want.shape
        assert rel_error(got, want) < 1e-9


def test_conv_numeric_gradients_non_square_filter():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((2, 2, 6, 7)), rng.standard_normal((3, 2, 3, 5)), rng.standard_normal(3)
    conv_param = {"stride": 2, "pad": 1}
    out, cache = L.conv_forward_fast(x, w, b, conv_param)
    assert out.shape == (2, 3, 3, 3)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = L.conv_backward_fast(dout, cache)
    assert rel_error(dx, num_grad_array(lambda v: L.conv_forward_fast(v, w, b, conv_param)[0], x, dout)) < 1e-6
    assert rel_error(dw, num_grad_array(lambda v: L.conv_forward_fast(x, v, b, conv_param)[0], w, dout)) < 1e-6
    assert rel_error(db, num_grad_array(lambda v: L.conv_forward_fast(x, w, v, conv_param)[0], b, dout)) < 1e-6


# ---------------------------------------------------------------------------------------------- pooling

POOL_CASES = [((2, 3, 8, 8), 2, 2, 2), ((2, 2, 9, 9), 3, 3, 2), ((1, 2, 7, 8), 3, 3, 2), ((2, 1, 6, 7), 2, 3, 1)]


@pytest.mark.parametrize("shape, ph, pw, stride", POOL_CASES)
def test_max_pool_matches_naive(shape, ph, pw, stride, nthreads):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape)
    pool_param = {"pool_height": ph, "pool_width": pw, "stride": stride}
    out, cache = L.max_pool_forward_fast(x, pool_param)
    assert rel_error(out, pool_naive(x, ph, pw, stride)) < 1e-12
    dout = rng.standard_normal(out.shape)
    assert rel_error(L.max_pool_backward_fast(dout, cache), pool_backward_naive(dout, x, ph, pw, stride)) < 1e-12


def test_overlapping_pool_numeric_gradient():
    rng = np.random.default_rng(3)
    x = distinct_values(rng, (2, 2, 7, 7))
    pool_param = {"pool_height": 3, "pool_width": 3, "stride": 2}
    out, cache = L.max_pool_forward_fast(x, pool_param)
    assert out.shape == (2, 2, 3, 3)
    dout = rng.standard_normal(out.shape)
    num = num_grad_array(lambda v: L.max_pool_forward_fast(v, pool_param)[0], x, dout)
    assert rel_error(L.max_pool_backward_fast(dout, cache), num) < 1e-8


def test_pool_ties_go_to_first_maximum():
    x = np.zeros((1, 1, 2, 2))
    out, cache = L.max_pool_forward_fast(x, {"pool_height": 2, "pool_width": 2, "stride": 2})
    dx = L.max_pool_backward_fast(np.ones_like(out), cache)
    assert dx.ravel().tolist() == [1.0, 0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------- affine, relu

def test_affine_matches_naive_and_numeric():
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((3, 2, 3, 4)), rng.standard_normal((24, 5)), rng.standard_normal(5)
    out, cache = L.affine_forward(x, w, b)
    assert out.shape == (3, 5)
    assert rel_error(out, affine_naive(x, w, b)) < 1e-9
    dout = rng.standard_normal(out.shape)
    dx, dw, db = L.affine_backward(dout, cache)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    assert rel_error(dx, dout.dot(w.T).reshape(x.shape)) < 1e-9
    assert rel_error(dw, x.reshape(3, -1).T.dot(dout)) < 1e-9
    assert rel_error(dx, num_grad_array(lambda v: L.affine_forward(v, w, b)[0], x, dout)) < 1e-6
    assert rel_error(dw, num_grad_array(lambda v: L.affine_forward(x, v, b)[0], w, dout)) < 1e-6
    assert rel_error(db, num_grad_array(lambda v: L.affine_forward(x, w, v)[0], b, dout)) < 1e-6


def test_relu_matches_naive_and_numeric():
    rng = np.random.default_rng(5)
    x = away_from_zero(rng, (3, 4, 5))
    out, cache = L.relu_forward(x)
    assert np.array_equal(out, np.maximum(0, x))
    dout = rng.standard_normal(x.shape)
    dx = L.relu_backward(dout, cache)
    assert np.array_equal(dx, np.where(x > 0, dout, 0))
    assert rel_error(dx, num_grad_array(lambda v: L.relu_forward(v)[0], x, dout)) < 1e-8


# ---------------------------------------------------------------------------------------------- batch norm

@pytest.mark.parametrize("backward", ["batchnorm_backward", "batchnorm_backward_alt"])
def test_batchnorm_matches_naive_and_numeric(backward):
    rng = np.random.default_rng(6)
    x = 3 * rng.standard_normal((6, 4)) + 2
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    out, cache = L.batchnorm_forward(x, gamma, beta, {"mode": "train", "eps": 1e-5})
    want, staged = batchnorm_naive(x, gamma, beta, 1e-5)
    assert rel_error(out, want) < 1e-9
    dout = rng.standard_normal(x.shape)
    grads = getattr(L, backward)(dout, cache)
    for got, ref in zip(grads, batchnorm_backward_naive(dout, staged)):
        assert rel_error(got, ref) < 1e-9
    fwd = lambda xx, gg, bb: L.batchnorm_forward(xx, gg, bb, {"mode": "train"})[0]
    assert rel_error(grads[0], num_grad_array(lambda v: fwd(v, gamma, beta), x, dout)) < 1e-6
    assert rel_error(grads[1], num_grad_array(lambda v: fwd(x, v, beta), gamma, dout)) < 1e-6
    assert rel_error(grads[2], num_grad_array(lambda v: fwd(x, gamma, v), beta, dout)) < 1e-6


def test_batchnorm_running_stats_updated_in_dict_and_used_in_test_mode():
    rng = np.random.default_rng(7)
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    bn_param = {"mode": "train", "momentum": 0.8}
    mean_ref, var_ref = np.zeros(3), np.zeros(3)
    for step in range(4):
        x = rng.standard_normal((10, 3)) * [1, 2, 3] + [0, 5, -1]
        L.batchnorm_forward(x, gamma, beta, bn_param)
        mean_ref = 0.8 * mean_ref + 0.2 * x.mean(axis=0)
        var_ref = 0.8 * var_ref + 0.2 * x.var(axis=0)  # the biased variance, as the original
        assert rel_error(bn_param["running_mean"], mean_ref) < 1e-12
        assert rel_error(bn_param["running_var"], var_ref) < 1e-12
    bn_param["mode"] = "test"
    x = rng.standard_normal((5, 3))
    out, cache = L.batchnorm_forward(x, gamma, beta, bn_param)
    assert rel_error(out, (x - mean_ref) / np.sqrt(var_ref + 1e-5) * gamma + beta) < 1e-9
    assert rel_error(bn_param["running_var"], var_ref) < 1e-15  # test mode leaves them alone
    dout = rng.standard_normal(x.shape)
    assert rel_error(L.batchnorm_backward(dout, cache)[0], dout * gamma / np.sqrt(var_ref + 1e-5)) < 1e-9


def test_batchnorm_default_momentum_and_missing_stats():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((7, 2)) + 4
    bn_param = {"mode": "train"}
    L.batchnorm_forward(x, np.ones(2), np.zeros(2), bn_param)
    assert rel_error(bn_param["running_mean"], 0.1 * x.mean(axis=0)) < 1e-12
    assert rel_error(bn_param["running_var"], 0.1 * x.var(axis=0)) < 1e-12
    fresh = {"mode": "test"}
    out, _ = L.batchnorm_forward(x, np.ones(2), np.zeros(2), fresh)
    assert np.array_equal(fresh["running_mean"], np.zeros(2))
    assert rel_error(out, x / np.sqrt(1e-5)) < 1e-9
    with pytest.raises(ValueError, match="mode"):
        L.batchnorm_forward(x, np.ones(2), np.zeros(2), {"mode": "eval"})


def test_spatial_batchnorm_matches_naive_and_numeric():
    rng = np.random.default_rng(9)
    x = 2 * rng.standard_normal((2, 3, 4, 5)) + 1
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    bn_param = {"mode": "train", "momentum": 0.9, "eps": 1e-4}
    out, cache = L.spatial_batchnorm_forward(x, gamma, beta, bn_param)
    want, staged = batchnorm_naive(to_columns(x), gamma, beta, 1e-4)
    assert rel_error(out, from_columns(want, x.shape)) < 1e-9
    assert rel_error(bn_param["running_var"], 0.1 * to_columns(x).var(axis=0)) < 1e-12
    dout = rng.standard_normal(x.shape)
    dx, dgamma, dbeta = L.spatial_batchnorm_backward(dout, cache)
    rdx, rdgamma, rdbeta = batchnorm_backward_naive(to_columns(dout), staged)
    assert rel_error(dx, from_columns(rdx, x.shape)) < 1e-9
    assert rel_error(dgamma, rdgamma) < 1e-9 and rel_error(dbeta, rdbeta) < 1e-9
    fwd = lambda v: L.spatial_batchnorm_forward(v, gamma, beta, {"mode": "train", "eps": 1e-4})[0]
    assert rel_error(dx, num_grad_array(fwd, x, dout)) < 1e-6


def test_layernorm_and_groupnorm_match_naive_and_numeric():
    rng = np.random.default_rng(10)
    x = 2 * rng.standard_normal((4, 6)) - 1
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)
    out, cache = L.layernorm_forward(x, gamma, beta, {"eps": 1e-5})
    assert rel_error(out, layernorm_naive(x, gamma, beta, 1e-5)) < 1e-9
    dout = rng.standard_normal(x.shape)
    dx, dgamma, dbeta = L.layernorm_backward(dout, cache)
    fwd = lambda xx, gg, bb: L.layernorm_forward(xx, gg, bb, {})[0]
    assert rel_error(dx, num_grad_array(lambda v: fwd(v, gamma, beta), x, dout)) < 1e-6
    assert rel_error(dgamma, num_grad_array(lambda v: fwd(x, v, beta), gamma, dout)) < 1e-6
    assert rel_error(dbeta, num_grad_array(lambda v: fwd(x, gamma, v), beta, dout)) < 1e-6

    x = rng.standard_normal((2, 6, 3, 2)) + 1
    gamma, beta = rng.standard_normal((1, 6, 1, 1)), rng.standard_normal((1, 6, 1, 1))
    out, cache = L.spatial_groupnorm_forward(x, gamma, beta, 3, {"eps": 1e-5})
    assert rel_error(out, groupnorm_naive(x, gamma, beta, 3, 1e-5)) < 1e-9
    dout = rng.standard_normal(x.shape)
    dx, dgamma, dbeta = L.spatial_groupnorm_backward(dout, cache)
    assert dgamma.shape == gamma.shape and dbeta.shape == beta.shape
    fwd = lambda xx, gg, bb: L.spatial_groupnorm_forward(xx, gg, bb, 3, {})[0]
    assert rel_error(dx, num_grad_array(lambda v: fwd(v, gamma, beta), x, dout)) < 1e-6
    assert rel_error(dgamma, num_grad_array(lambda v: fwd(x, v, beta), gamma, dout)) < 1e-6
    assert rel_error(dbeta, num_grad_array(lambda v: fwd(x, gamma, v), beta, dout)) < 1e-6


# ---------------------------------------------------------------------------------------------- dropout

def test_dropout_keep_probability_and_seed():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((300, 200)) + 10
    for p in (0.25, 0.6, 1.0):
        out, (param, mask) = L.dropout_forward(x, {"mode": "train", "p": p, "seed": 123})
        assert abs(out.mean() - x.mean()) < 0.02 * x.mean()       # inverted dropout keeps the mean
        assert abs((out == 0).mean() - (1 - p)) < 0.01            # p is the KEEP probability
        np.random.seed(123)                                        # the original's mask stream
        original_mask = np.random.rand(*x.shape) < p
        assert np.array_equal(mask, original_mask)
        assert rel_error(out, x * original_mask / p) < 1e-12
        again, _ = L.dropout_forward(x, {"mode": "train", "p": p, "seed": 123})
        assert np.array_equal(out, again)
    other, _ = L.dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 124})
    same, _ = L.dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 123})
    assert not np.array_equal(other, same)
    out, (_, mask) = L.dropout_forward(x, {"mode": "test", "p": 0.3})
    assert out is x and mask is None
    assert L.dropout_backward(x, (_, mask)) is x


def test_dropout_unseeded_uses_global_generator():
    x = np.ones((50, 40))
    np.random.seed(5)
    first, _ = L.dropout_forward(x, {"mode": "train", "p": 0.5})
    np.random.seed(5)
    second, _ = L.dropout_forward(x, {"mode": "train", "p": 0.5})
    assert np.array_equal(first, second)


def test_dropout_backward_numeric():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((6, 7))
    param = {"mode": "train", "p": 0.4, "seed": 7}
    out, cache = L.dropout_forward(x, param)
    dout = rng.standard_normal(x.shape)
    dx = L.dropout_backward(dout, cache)
    assert rel_error(dx, dout * cache[1] / 0.4) < 1e-12
    assert rel_error(dx, num_grad_array(lambda v: L.dropout_forward(v, param)[0], x, dout)) < 1e-8


# ---------------------------------------------------------------------------------------------- losses

@pytest.mark.parametrize("name, naive", [("softmax_loss", softmax_loss_naive), ("svm_loss", svm_loss_naive)])
def test_losses_match_naive_and_numeric(name, naive):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((8, 5))
    y = rng.integers(0, 5, size=8)
    loss, dx = getattr(L, name)(x, y)
    want_loss, want_dx = naive(x, y)
    assert rel_error(loss, want_loss) < 1e-12
    assert rel_error(dx, want_dx) < 1e-12
    assert rel_error(dx, num_grad_scalar(lambda: getattr(L, name)(x, y)[0], x)) < 1e-6


def test_softmax_loss_large_scores_stay_finite():
    loss, dx = L.softmax_loss(np.array([[1000.0, 0.0], [0.0, 1000.0]]), np.array([0, 0]))
    assert np.isclose(loss, 500.0) and np.all(np.isfinite(dx))


# ---------------------------------------------------------------------------------------------- sandwich layers

def test_sandwich_layers_match_their_parts():
    rng = np.random.default_rng(14)
    x, w, b = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    conv_param, pool_param = {"stride": 1, "pad": 1}, {"pool_height": 3, "pool_width": 3, "stride": 2}
    a = conv_naive(x, w, b, 1, 1)

    out, cache = L.conv_relu_pool_forward(x, w, b, conv_param, pool_param)
    assert rel_error(out, pool_naive(np.maximum(a, 0), 3, 3, 2)) < 1e-9
    dout = rng.standard_normal(out.shape)
    ds = pool_backward_naive(dout, np.maximum(a, 0), 3, 3, 2)
    for got, want in zip(L.conv_relu_pool_backward(dout, cache), conv_backward_naive(ds * (a > 0), x, w, 1, 1)):
        assert rel_error(got, want) < 1e-9

    out, cache = L.conv_relu_forward(x, w, b, conv_param)
    assert rel_error(out, np.maximum(a, 0)) < 1e-9
    dout = rng.standard_normal(out.shape)
    for got, want in zip(L.conv_relu_backward(dout, cache), conv_backward_naive(dout * (a > 0), x, w, 1, 1)):
        assert rel_error(got, want) < 1e-9

    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    bn_param = {"mode": "train"}
    out, cache = L.conv_bn_relu_forward(x, w, b, gamma, beta, conv_param, bn_param)
    an, staged = batchnorm_naive(to_columns(a), gamma, beta, 1e-5)
    an = from_columns(an, a.shape)
    assert rel_error(out, np.maximum(an, 0)) < 1e-9
    assert "running_mean" in bn_param and "running_var" in bn_param
    dout = rng.standard_normal(out.shape)
    dan, dgamma, dbeta = batchnorm_backward_naive(to_columns(dout * (an > 0)), staged)
    dx, dw, db, *dgb = L.conv_bn_relu_backward(dout, cache)
    rdx, rdw, _ = conv_backward_naive(from_columns(dan, a.shape), x, w, 1, 1)
    for got, ref in zip([dx, dw] + dgb, [rdx, rdw, dgamma, dbeta]):
        assert rel_error(got, ref) < 1e-9
    assert np.abs(db).max() < 1e-12  # batch norm removes any per-channel shift: the conv bias has no gradient

    x2, w2, b2 = rng.standard_normal((5, 2, 3)), rng.standard_normal((6, 4)), rng.standard_normal(4)
    a2 = affine_naive(x2, w2, b2)
    out, cache = L.affine_relu_forward(x2, w2, b2)
    assert rel_error(out, np.maximum(a2, 0)) < 1e-9
    dout = rng.standard_normal(out.shape)
    da = dout * (a2 > 0)
    want = (da.dot(w2.T).reshape(x2.shape), x2.reshape(5, -1).T.dot(da), da.sum(0))
    for got, ref in zip(L.affine_relu_backward(dout, cache), want):
        assert rel_error(got, ref) < 1e-9

    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    out, cache = L.affine_bn_relu_forward(x2, w2, b2, gamma, beta, {"mode": "train"})
    an, staged = batchnorm_naive(a2, gamma, beta, 1e-5)
    assert rel_error(out, np.maximum(an, 0)) < 1e-9
    dout = rng.standard_normal(out.shape)
    da, dgamma, dbeta = batchnorm_backward_naive(dout * (an > 0), staged)
    dx, dw, db, *dgb = L.affine_bn_relu_backward(dout, cache)
    for got, ref in zip([dx, dw] + dgb, [da.dot(w2.T).reshape(x2.shape), x2.reshape(5, -1).T.dot(da), dgamma, dbeta]):
        assert rel_error(got, ref) < 1e-9
    assert np.abs(db).max() < 1e-12


# ---------------------------------------------------------------------------------------------- float32

def test_float32_in_float32_out():
    rng = np.random.default_rng(15)
    x = rng.standard_normal((2, 3, 8, 8))
    w, b = rng.standard_normal((4, 3, 3, 5)), rng.standard_normal(4)
    f32 = lambda *arrays: [a.astype(np.float32) for a in arrays]
    x32, w32, b32 = f32(x, w, b)
    out, cache = L.conv_forward_fast(x32, w32, b32, {"stride": 1, "pad": 1})
    assert out.dtype == np.float32
    assert np.allclose(out, conv_naive(x32.astype(np.float64), w32, b32, 1, 1), rtol=1e-4, atol=1e-4)
    assert all(g.dtype == np.float32 for g in L.conv_backward_fast(np.ones_like(out), cache))

    out, cache = L.max_pool_forward_fast(x32, {"pool_height": 3, "pool_width": 3, "stride": 2})
    assert out.dtype == np.float32 and L.max_pool_backward_fast(out, cache).dtype == np.float32

    h32, wa32, ba32 = f32(rng.standard_normal((2, 6)), rng.standard_normal((6, 3)), rng.standard_normal(3))
    out, cache = L.affine_relu_forward(h32, wa32, ba32)
    assert out.dtype == np.float32
    assert np.allclose(out, np.maximum(affine_naive(h32.astype(np.float64), wa32, ba32), 0), rtol=1e-5, atol=1e-5)
    assert all(g.dtype == np.float32 for g in L.affine_relu_backward(out, cache))

    g32, be32 = f32(np.ones(3), np.zeros(3))
    bn_param = {"mode": "train"}
    out, cache = L.spatial_batchnorm_forward(x32, g32, be32, bn_param)
    assert out.dtype == np.float32 and bn_param["running_var"].dtype == np.float32
    assert np.allclose(out, from_columns(batchnorm_naive(to_columns(x32.astype(np.float64)), 1, 0, 1e-5)[0],
                                         x.shape), rtol=1e-4, atol=1e-4)
    assert all(g.dtype == np.float32 for g in L.spatial_batchnorm_backward(out, cache))

    out, cache = L.dropout_forward(x32, {"mode": "train", "p": 0.5, "seed": 1})
    assert out.dtype == np.float32 and L.dropout_backward(out, cache).dtype == np.float32
    loss, dx = L.softmax_loss(h32, np.array([0, 5]))
    assert dx.dtype == np.float32 and np.isclose(loss, softmax_loss_naive(h32.astype(np.float64), [0, 5])[0],
                                                 rtol=1e-5)


def test_mixed_dtypes_compute_in_the_common_dtype():
    rng = np.random.default_rng(16)
    x32 = rng.standard_normal((2, 4)).astype(np.float32)
    w, b = rng.standard_normal((4, 3)), rng.standard_normal(3)
    out, _ = L.affine_forward(x32, w, b)
    assert out.dtype == np.float64
    assert rel_error(out, affine_naive(x32.astype(np.float64), w, b)) < 1e-9


# ---------------------------------------------------------------------------------------------- a small convnet

def three_layer_convnet_loss(params, x, y):
    """conv 3x3 pad 1 - relu - 2x2 max pool - affine - relu - affine - softmax, from the compat layers only."""
    out1, cache1 = L.conv_relu_pool_forward(x, params["W1"], params["b1"], {"stride": 1, "pad": 1},
                                            {"pool_height": 2, "pool_width": 2, "stride": 2})
    out2, cache2 = L.affine_relu_forward(out1, params["W2"], params["b2"])
    scores, cache3 = L.affine_forward(out2, params["W3"], params["b3"])
    loss, dscores = L.softmax_loss(scores, y)
    grads = {}
    dout2, grads["W3"], grads["b3"] = L.affine_backward(dscores, cache3)
    dout1, grads["W2"], grads["b2"] = L.affine_relu_backward(dout2, cache2)
    _, grads["W1"], grads["b1"] = L.conv_relu_pool_backward(dout1, cache1)
    return loss, grads


def make_convnet(rng, channels=3, size=8, filters=4, hidden=10, classes=5):
    return {"W1": 0.3 * rng.standard_normal((filters, channels, 3, 3)), "b1": 0.1 * rng.standard_normal(filters),
            "W2": 0.3 * rng.standard_normal((filters * (size // 2) ** 2, hidden)),
            "b2": 0.1 * rng.standard_normal(hidden),
            "W3": 0.3 * rng.standard_normal((hidden, classes)), "b3": 0.1 * rng.standard_normal(classes)}


def test_three_layer_convnet_gradients_match_numeric():
    rng = np.random.default_rng(17)
    params = make_convnet(rng)
    x, y = rng.standard_normal((2, 3, 8, 8)), np.array([1, 3])
    _, grads = three_layer_convnet_loss(params, x, y)
    for name in params:
        # Some entries of dW2 are ~1e-5: a step of 1e-4 keeps the loss's rounding (~1e-16 / h) far below them,
        # while the truncation error (~h**2) stays ~1e-7 relative on the large entries.
        num = num_grad_scalar(lambda: three_layer_convnet_loss(params, x, y)[0], params[name], h=1e-4)
        assert rel_error(grads[name], num) < 1e-6, name


def test_three_layer_convnet_learns_with_sgd():
    rng = np.random.default_rng(18)
    params = make_convnet(rng)
    x, y = rng.standard_normal((10, 3, 8, 8)), rng.integers(0, 5, size=10)
    losses = []
    for _ in range(15):
        loss, grads = three_layer_convnet_loss(params, x, y)
        losses.append(loss)
        for name in params:
            params[name] -= 0.05 * grads[name]
    assert losses[-1] < 0.5 * losses[0], losses
