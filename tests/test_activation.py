"""Activations: relu (forward, and backward with the plain / guided / deconvnet rules) and inverted dropout.

References are NumPy expressions written from the definitions, float64 central finite differences, and torch
when it is installed.
"""
import numpy as np
import pytest

import fastconv
from fastconv import functional as F

DTYPES = [np.float32, np.float64]


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param


def away_from_zero(rng, shape):
    """Values with |v| >= 0.1, so a perturbation of 1e-6 never crosses relu's kink."""
    v = rng.uniform(0.1, 2.0, shape)
    return v * rng.choice([-1.0, 1.0], shape)


def numerical_gradient(f, x, eps=1e-6):
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f(x)
        flat[i] = old - eps
        fm = f(x)
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


def rel_error(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300)


# Sizes around the vector widths and the threading threshold (2^18 elements).
SIZES = [(0,), (1,), (3,), (17,), (5, 7), (2, 3, 4, 5), (300_001,)]


# ---------------------------------------------------------------- relu

@pytest.mark.parametrize("shape", SIZES, ids=str)
def test_relu_forward(arch, nthreads, dtype, shape, rng):
    x = rng.standard_normal(shape).astype(dtype)
    y = F.relu(x)
    assert y.shape == x.shape and y.dtype == dtype
    np.testing.assert_array_equal(y, np.where(x > 0, x, 0).astype(dtype))


@pytest.mark.parametrize("shape", SIZES, ids=str)
def test_relu_backward_rules(arch, nthreads, dtype, shape, rng):
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    zero = np.zeros((), dtype)
    expected = {"plain": np.where(x > 0, dy, zero),
                "guided": np.where((x > 0) & (dy > 0), dy, zero),
                "deconvnet": np.where(dy > 0, dy, zero)}
    for rule, want in expected.items():
        dx = F.relu_backward(dy, x, rule)
        assert dx.shape == shape and dx.dtype == dtype
        np.testing.assert_array_equal(dx, want, err_msg=rule)
    np.testing.assert_array_equal(F.relu_backward(dy, x), expected["plain"])


def test_relu_nan_and_signed_zero(arch, nthreads, dtype):
    x = np.array([np.nan, -0.0, 0.0, -np.inf, np.inf, -1.0, 2.0], dtype)
    y = F.relu(x)
    np.testing.assert_array_equal(y, [np.nan, 0.0, 0.0, 0.0, np.inf, 0.0, 2.0])
    assert np.isnan(y[0])
    # NaN gates are open: the gradient passes where x is NaN, and a NaN gradient passes where its gate is open.
    dy = np.array([1.0, 1.0, 1.0, 1.0, np.nan, np.nan, np.nan], dtype)
    np.testing.assert_array_equal(F.relu_backward(dy, x, "plain"), [1, 0, 0, 0, np.nan, 0, np.nan])
    np.testing.assert_array_equal(F.relu_backward(dy, x, "guided"), [1, 0, 0, 0, np.nan, 0, np.nan])
    np.testing.assert_array_equal(F.relu_backward(dy, x, "deconvnet"), [1, 1, 1, 1, np.nan, np.nan, np.nan])


def test_relu_backward_finite_differences(arch, nthreads, rng):
    x = away_from_zero(rng, (3, 4, 5))
    g = rng.standard_normal(x.shape)
    numeric = numerical_gradient(lambda v: np.sum(F.relu(v) * g), x.copy())
    assert rel_error(F.relu_backward(g, x, "plain"), numeric) < 1e-6


def test_relu_matches_torch(arch, nthreads, dtype, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((4, 5, 6, 7)).astype(dtype)
    x[0, 0, 0, :3] = [np.nan, -0.0, 0.0]
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.relu(xt)
    np.testing.assert_array_equal(F.relu(x), yt.detach().numpy())
    dy = rng.standard_normal(x.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(F.relu_backward(dy, x, "plain"), xt.grad.numpy())


def test_relu_layouts(dtype, rng):
    base = rng.standard_normal((6, 8, 10)).astype(dtype)
    view = base[::2, :, ::3].transpose(2, 0, 1)
    np.testing.assert_array_equal(F.relu(view), np.maximum(view, 0))
    np.testing.assert_array_equal(F.relu_backward(view, view, "guided"), np.where(view > 0, view, 0))
    ro = base.copy()
    ro.flags.writeable = False
    np.testing.assert_array_equal(F.relu(ro), np.maximum(base, 0))
    scalar = F.relu(np.array(-3.0, dtype))
    assert scalar.shape == () and scalar == 0
    assert F.relu([[1, -2]]).dtype == np.float64  # lists are converted as NumPy would


# ---------------------------------------------------------------- dropout

@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(1,), (7, 3), (2, 3, 5, 5), (300_001,)], ids=str)
def test_dropout_forward_backward(arch, nthreads, dtype, p, shape, rng):
    x = rng.standard_normal(shape).astype(dtype)
    y, mask = F.dropout(x, p, np.random.default_rng(7))
    expected_mask = np.random.default_rng(7).random(shape) >= p  # the documented draw
    np.testing.assert_array_equal(mask, expected_mask)
    assert mask.dtype == np.bool_ and y.dtype == dtype and y.shape == shape
    scale = 1.0 / (1.0 - p)
    np.testing.assert_allclose(y, np.where(expected_mask, x.astype(np.float64) * scale, 0), rtol=1e-6 if dtype ==
                               np.float32 else 1e-15, atol=0)
    dy = rng.standard_normal(shape).astype(dtype)
    dx = F.dropout_backward(dy, mask, p)
    np.testing.assert_allclose(dx, np.where(expected_mask, dy.astype(np.float64) * scale, 0),
                               rtol=1e-6 if dtype == np.float32 else 1e-15, atol=0)


def test_dropout_keep_rate(rng):
    x = np.ones(200_000)
    for p in (0.2, 0.5, 0.8):
        _, mask = F.dropout(x, p, rng)
        assert abs(mask.mean() - (1 - p)) < 0.01


def test_dropout_identity_cases(dtype, rng):
    x = rng.standard_normal((3, 4)).astype(dtype)
    for y, mask in (F.dropout(x, 0.0, rng), F.dropout(x, 0.5, rng, training=False)):
        assert mask is None and y is not x
        np.testing.assert_array_equal(y, x)
    dy = rng.standard_normal((3, 4)).astype(dtype)
    np.testing.assert_array_equal(F.dropout_backward(dy, None, 0.5), dy)
    y, mask = F.dropout(x, 1.0, rng)  # everything dropped: zeros, not NaN
    assert not mask.any()
    np.testing.assert_array_equal(y, np.zeros_like(x))
    np.testing.assert_array_equal(F.dropout_backward(dy, mask, 1.0), np.zeros_like(dy))


def test_dropout_is_a_product(dtype):
    """y = x * mask * scale as in PyTorch: a dropped inf or NaN gives NaN, not 0."""
    x = np.array([np.inf, np.nan, 1.0, np.inf], dtype)
    mask = np.array([False, False, False, True])
    y = F.dropout_backward(x, mask, 0.5)
    assert np.isnan(y[0]) and np.isnan(y[1]) and y[2] == 0 and y[3] == np.inf


def test_dropout_finite_differences(arch, nthreads, rng):
    x = rng.standard_normal((2, 3, 4))
    g = rng.standard_normal(x.shape)
    _, mask = F.dropout(x, 0.3, np.random.default_rng(3))
    numeric = numerical_gradient(lambda v: np.sum(F.dropout(v, 0.3, np.random.default_rng(3))[0] * g), x.copy())
    assert rel_error(F.dropout_backward(g, mask, 0.3), numeric) < 1e-6


def test_dropout_threads_agree(dtype, rng):
    x = rng.standard_normal((300_001,)).astype(dtype)
    results = []
    for n in (1, 2):
        with fastconv.threads(n):
            results.append(F.dropout(x, 0.4, np.random.default_rng(11)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_dropout_layouts(dtype, rng):
    base = rng.standard_normal((6, 8)).astype(dtype)
    view = base.T[::2]
    y, mask = F.dropout(view, 0.5, np.random.default_rng(5))
    y2, mask2 = F.dropout(np.ascontiguousarray(view), 0.5, np.random.default_rng(5))
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(F.dropout_backward(view, mask[::-1][::-1], 0.5),
                                  F.dropout_backward(np.ascontiguousarray(view), mask2, 0.5))
    y, mask = F.dropout(np.zeros((0, 3), dtype), 0.5, rng)
    assert y.shape == (0, 3) and mask.shape == (0, 3)


# ---------------------------------------------------------------- bad input

X = np.zeros((2, 3), np.float32)


@pytest.mark.parametrize("call, error, match", [
    (lambda: F.relu(X.astype(np.int64)), TypeError, r"x must be float32 or float64, got dtype int64"),
    (lambda: F.relu_backward(X, X.astype(np.float64)), TypeError, r"same dtype, got float32 and float64"),
    (lambda: F.relu_backward(X, np.zeros((3, 2), np.float32)), ValueError, r"same shape, got \(2, 3\) and \(3, 2\)"),
    (lambda: F.relu_backward(X, X, "leaky"), ValueError, r"rule must be one of .*'deconvnet'.*'leaky'"),
    (lambda: F.relu_backward(X, X, None), ValueError, r"rule must be one of"),
    (lambda: F.dropout(X, 1.5, np.random.default_rng()), ValueError, r"p \(the drop probability\) must be in"),
    (lambda: F.dropout(X, -0.1, np.random.default_rng()), ValueError, r"must be in \[0, 1\], got -0.1"),
    (lambda: F.dropout(X, "0.5", np.random.default_rng()), TypeError, r"p must be a number"),
    (lambda: F.dropout(X, 0.5, np.random.RandomState(0)), TypeError, r"rng must be a numpy.random.Generator"),
    (lambda: F.dropout(X, 0.5, 42), TypeError, r"rng must be a numpy.random.Generator .*got int"),
    (lambda: F.dropout(X.astype(np.int8), 0.5, np.random.default_rng()), TypeError, r"float32 or float64"),
    (lambda: F.dropout_backward(X, np.ones((2, 3), np.uint8), 0.5), TypeError, r"mask must be a bool array"),
    (lambda: F.dropout_backward(X, np.ones((3, 2), bool), 0.5), ValueError, r"mask has shape \(3, 2\), expected"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
