"""batch_norm and lrn, forward and backward: against plain NumPy references written here, float64 central finite
differences, and torch.nn.functional when torch is installed; every kernel set x 1/2 threads x float32/float64."""
import numpy as np
import pytest

import fastconv.functional as F

DTYPES = [np.float32, np.float64]
# float32 results are compared with float64 references.
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-11, atol=1e-11)}


@pytest.fixture(params=DTYPES, ids=["f32", "f64"])
def dtype(request):
    return request.param


def numeric_grad(f, arrays, dy, h=1e-6):
    """Central finite differences of sum(f(*arrays) * dy) with respect to each array (float64)."""
    grads = []
    for a in arrays:
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + h
            plus = np.sum(f(*arrays) * dy)
            a[i] = old - h
            minus = np.sum(f(*arrays) * dy)
            a[i] = old
            g[i] = (plus - minus) / (2 * h)
        grads.append(g)
    return grads


def rel_err(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(a)), np.max(np.abs(b)), 1e-300)


# ---------------------------------------------------------------------------------------------------- batch_norm

def bn_axes(x):
    return (0,) + tuple(range(2, x.ndim))


def bshape(x):
    """Shape that broadcasts a (C,) vector against x."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def ref_bn_train(x, gamma, beta, eps):
    """Training batch norm in float64, statistics by plain mean/var over every axis but the channel."""
    x = x.astype(np.float64)
    mean = x.mean(axis=bn_axes(x))
    var = ((x - mean.reshape(bshape(x))) ** 2).mean(axis=bn_axes(x))
    invstd = 1 / np.sqrt(var + eps)
    y = (x - mean.reshape(bshape(x))) * (invstd * gamma).reshape(bshape(x)) + beta.reshape(bshape(x))
    return y, mean, var, invstd


def ref_bn_backward_train(dy, x, gamma, eps):
    """Backward through the forward graph step by step: xc = x - mu, var = mean(xc^2), xhat = xc * invstd."""
    dy, x = dy.astype(np.float64), x.astype(np.float64)
    axes, s = bn_axes(x), bshape(x)
    m = x.size // x.shape[1]
    mu = x.mean(axis=axes).reshape(s)
    xc = x - mu
    var = (xc ** 2).mean(axis=axes).reshape(s)
    invstd = 1 / np.sqrt(var + eps)
    xhat = xc * invstd
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    dxhat = dy * gamma.reshape(s)
    dinvstd = (dxhat * xc).sum(axis=axes).reshape(s)
    dvar = dinvstd * -0.5 * (var + eps) ** -1.5
    dxc = dxhat * invstd + dvar * 2 * xc / m
    dmu = -dxc.sum(axis=axes).reshape(s)
    dx = dxc + dmu / m
    return dx, dgamma, dbeta


@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (2, 5, 1, 1), (16, 8, 20, 20), (7, 6), (512, 96), (3, 2, 4)])
def test_batch_norm_train_forward_matches_reference(arch, nthreads, dtype, rng, shape):
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    c = shape[1]
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    rm0, rv0 = rm.astype(np.float64), rv.astype(np.float64)
    y, (mean, invstd) = F.batch_norm(x, gamma, beta, rm, rv, training=True, momentum=0.3, eps=1e-3)
    ry, rmean, rvar, rinvstd = ref_bn_train(x, gamma.astype(np.float64), beta.astype(np.float64), 1e-3)
    assert y.dtype == dtype and y.shape == shape and y.flags.c_contiguous
    assert mean.dtype == dtype and invstd.dtype == dtype
    np.testing.assert_allclose(y, ry, **TOL[dtype])
    np.testing.assert_allclose(mean, rmean, **TOL[dtype])
    np.testing.assert_allclose(invstd, rinvstd, **TOL[dtype])
    m = x.size // c
    np.testing.assert_allclose(rm, 0.7 * rm0 + 0.3 * rmean, **TOL[dtype])
    np.testing.assert_allclose(rv, 0.7 * rv0 + 0.3 * rvar * m / (m - 1), **TOL[dtype])


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (64, 9), (8, 16, 16, 16)])
def test_batch_norm_inference_forward_and_backward(arch, nthreads, dtype, rng, shape):
    x = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    rm, rv = rng.standard_normal(c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)
    rm_before, rv_before = rm.copy(), rv.copy()
    y, (mean, invstd) = F.batch_norm(x, gamma, beta, rm, rv, training=False, eps=1e-4)
    s = bshape(x)
    rinv = 1 / np.sqrt(rv.astype(np.float64) + 1e-4)
    ry = (x - rm.reshape(s)) * (rinv * gamma).reshape(s) + beta.reshape(s)
    np.testing.assert_allclose(y, ry, **TOL[dtype])
    np.testing.assert_array_equal(mean, rm)
    np.testing.assert_allclose(invstd, rinv, **TOL[dtype])
    np.testing.assert_array_equal(rm, rm_before)
    np.testing.assert_array_equal(rv, rv_before)
    dy = rng.standard_normal(shape).astype(dtype)
    dx, dgamma, dbeta = F.batch_norm_backward(dy, x, gamma, (mean, invstd), training=False)
    axes = bn_axes(x)
    np.testing.assert_allclose(dx, dy * (gamma * rinv).reshape(s), **TOL[dtype])
    np.testing.assert_allclose(dbeta, dy.astype(np.float64).sum(axis=axes), **TOL[dtype])
    np.testing.assert_allclose(dgamma, (dy * (x - rm.reshape(s)) * rinv.reshape(s)).sum(axis=axes),
                               **TOL[dtype])


@pytest.mark.parametrize("shape", [(4, 3, 5, 7), (16, 8, 20, 20), (7, 6), (512, 96)])
def test_batch_norm_train_backward_matches_reference(arch, nthreads, dtype, rng, shape):
    x = (rng.standard_normal(shape) * 2 - 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[1]
    gamma, beta = rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype)
    _, saved = F.batch_norm(x, gamma, beta, eps=1e-3)
    dx, dgamma, dbeta = F.batch_norm_backward(dy, x, gamma, saved)
    rdx, rdgamma, rdbeta = ref_bn_backward_train(dy, x, gamma.astype(np.float64), 1e-3)
    assert dx.dtype == dtype and dgamma.dtype == dtype and dbeta.dtype == dtype
    scale = np.max(np.abs(rdx))
    np.testing.assert_allclose(dx / scale, rdx / scale, rtol=0, atol=TOL[dtype]["atol"] * 10)
    np.testing.assert_allclose(dgamma, rdgamma, rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)
    np.testing.assert_allclose(dbeta, rdbeta, rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)


@pytest.mark.parametrize("shape", [(3, 2, 3, 4), (5, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_backward_finite_differences(rng, shape, training):
    x = rng.standard_normal(shape)
    c = shape[1]
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c)
    rm, rv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    dy = rng.standard_normal(shape)

    def f(x, gamma, beta):
        return F.batch_norm(x, gamma, beta, rm.copy(), rv.copy(), training=training, eps=1e-2)[0]

    _, saved = F.batch_norm(x, gamma, beta, rm.copy(), rv.copy(), training=training, eps=1e-2)
    got = F.batch_norm_backward(dy, x, gamma, saved, training=training)
    for g, n in zip(got, numeric_grad(f, [x, gamma, beta], dy)):
        assert rel_err(g, n) < 1e-6


def test_batch_norm_large_mean_keeps_precision(nthreads, rng):
    """A channel mean 1e4 times its spread: the variance must not vanish in cancellation."""
    x = (1e4 + rng.standard_normal((8, 4, 16, 16))).astype(np.float32)
    y, (mean, invstd) = F.batch_norm(x, None, None, eps=1e-5)
    ry, rmean, _, rinvstd = ref_bn_train(x, np.ones(4), np.zeros(4), 1e-5)
    np.testing.assert_allclose(invstd, rinvstd, rtol=1e-5)
    np.testing.assert_allclose(y, ry, rtol=0, atol=1e-4)
    x64 = 1e8 + rng.standard_normal((6, 3, 8, 8))
    _, (_, invstd64) = F.batch_norm(x64, None, None, eps=1e-5)
    np.testing.assert_allclose(invstd64, ref_bn_train(x64, np.ones(3), np.zeros(3), 1e-5)[3], rtol=1e-7)


def test_batch_norm_matches_torch(nthreads, dtype, rng):
    torch = pytest.importorskip("torch")
    shape = (6, 5, 7, 9)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.standard_normal(5).astype(dtype), rng.standard_normal(5).astype(dtype)
    rm, rv = rng.standard_normal(5).astype(dtype), rng.uniform(0.5, 2, 5).astype(dtype)
    for training in (True, False):
        ours_rm, ours_rv = rm.copy(), rv.copy()
        y, saved = F.batch_norm(x, gamma, beta, ours_rm, ours_rv, training=training, momentum=0.2, eps=1e-4)
        dx, dgamma, dbeta = F.batch_norm_backward(dy, x, gamma, saved, training=training)
        tx = torch.tensor(x, requires_grad=True)
        tg, tb = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
        trm, trv = torch.tensor(rm), torch.tensor(rv)
        ty = torch.nn.functional.batch_norm(tx, trm, trv, tg, tb, training, 0.2, 1e-4)
        ty.backward(torch.tensor(dy))
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
        np.testing.assert_allclose(ours_rm, trm.numpy(), **tol)
        np.testing.assert_allclose(ours_rv, trv.numpy(), **tol)
        np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
        np.testing.assert_allclose(dgamma, tg.grad.numpy(), **tol)
        np.testing.assert_allclose(dbeta, tb.grad.numpy(), **tol)


def test_batch_norm_accepts_read_only_and_strided_inputs(rng):
    x = rng.standard_normal((4, 3, 6, 5))[:, :, ::2, :]
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    for a in (x, gamma, beta):
        a.flags.writeable = False
    y, saved = F.batch_norm(x, gamma, beta)
    np.testing.assert_allclose(y, ref_bn_train(x, gamma, beta, 1e-5)[0], rtol=1e-12, atol=1e-12)
    dy = np.ones_like(x)
    dy.flags.writeable = False
    for s in saved:
        s.flags.writeable = False
    F.batch_norm_backward(dy, x, gamma, saved)
    # a strided running_mean is updated in place through its view
    storage = np.zeros(6)
    F.batch_norm(x, gamma, beta, storage[::2], None, momentum=1.0)
    np.testing.assert_allclose(storage[::2], x.mean(axis=(0, 2, 3)), rtol=1e-12)
    assert np.all(storage[1::2] == 0)


def test_batch_norm_zero_size_rules():
    with pytest.raises(ValueError, match=r"N\*H\*W = 0"):
        F.batch_norm(np.zeros((0, 3, 4, 4)), None, None)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(np.zeros((1, 3, 1, 1)), None, None)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(np.zeros((1, 3)), None, None)
    # inference on an empty batch is fine, and so is a batch without channels
    y, (mean, invstd) = F.batch_norm(np.zeros((0, 3, 2, 2)), None, None, np.zeros(3), np.ones(3), training=False)
    assert y.shape == (0, 3, 2, 2)
    np.testing.assert_allclose(invstd, 1 / np.sqrt(1 + 1e-5))
    y, (mean, invstd) = F.batch_norm(np.zeros((4, 0, 2, 2)), None, None)
    assert y.shape == (4, 0, 2, 2) and mean.shape == (0,)
    dx, dgamma, dbeta = F.batch_norm_backward(np.zeros((0, 2, 3)), np.zeros((0, 2, 3)), None,
                                              (np.zeros(2), np.ones(2)))
    assert dx.shape == (0, 2, 3) and np.all(dgamma == 0) and np.all(dbeta == 0)


def test_batch_norm_bad_inputs():
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        F.batch_norm(np.zeros((2, 3), np.int32), None, None)
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\) or \(N, C\)"):
        F.batch_norm(np.zeros(5), None, None)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\)"):
        F.batch_norm(x, np.ones(4, np.float32), None)
    with pytest.raises(TypeError, match="beta has dtype float64 but x has float32"):
        F.batch_norm(x, None, np.zeros(3))
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\)"):
        F.batch_norm(x, None, None, np.zeros(3, np.float32), np.ones(2, np.float32))
    with pytest.raises(TypeError, match="running_mean has dtype float64"):
        F.batch_norm(x, None, None, np.zeros(3), None)
    with pytest.raises(TypeError, match="running_mean must be a numpy.ndarray"):
        F.batch_norm(x, None, None, [0.0, 0.0, 0.0], None)
    ro = np.zeros(3, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean is read-only"):
        F.batch_norm(x, None, None, ro, None)
    with pytest.raises(ValueError, match="needs running_mean and running_var"):
        F.batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match="momentum must be <= 1"):
        F.batch_norm(x, None, None, momentum=1.5)
    with pytest.raises(ValueError, match="momentum must be >= 0"):
        F.batch_norm(x, None, None, momentum=-0.1)
    with pytest.raises(ValueError, match="eps must be > 0"):
        F.batch_norm(x, None, None, eps=0)
    with pytest.raises(ValueError, match="eps must be finite"):
        F.batch_norm(x, None, None, eps=float("nan"))
    with pytest.raises(TypeError, match="momentum must be a real number"):
        F.batch_norm(x, None, None, momentum="0.1")
    with pytest.raises(ValueError, match=r"dy has shape \(2, 3, 4, 3\) but x has shape \(2, 3, 4, 4\)"):
        F.batch_norm_backward(np.zeros((2, 3, 4, 3), np.float32), x, None, (np.zeros(3, np.float32),) * 2)
    with pytest.raises(TypeError, match="dy has dtype float64 but x has float32"):
        F.batch_norm_backward(np.zeros((2, 3, 4, 4)), x, None, (np.zeros(3, np.float32),) * 2)
    with pytest.raises(ValueError, match=r"saved invstd must have shape \(3,\)"):
        F.batch_norm_backward(x, x, None, (np.zeros(3, np.float32), np.zeros(2, np.float32)))
    with pytest.raises(TypeError, match="saved must be the"):
        F.batch_norm_backward(x, x, None, np.zeros(3, np.float32))


# ---------------------------------------------------------------------------------------------------- lrn

def ref_lrn(x, size, alpha, beta, k):
    """Direct window sums in float64: channel c sums x[j]^2 for j in [c - size//2, c + (size-1)//2]."""
    x = x.astype(np.float64)
    c = x.shape[1]
    scale = np.empty_like(x)
    for ch in range(c):
        lo, hi = max(0, ch - size // 2), min(c - 1, ch + (size - 1) // 2)
        scale[:, ch] = k + alpha / size * np.sum(x[:, lo:hi + 1] ** 2, axis=1)
    return x * scale ** -beta, scale


def ref_lrn_backward(dy, x, size, alpha, beta, k):
    """Scatter form of the chain rule: each output channel c pushes its gradient to the inputs of its window."""
    dy, x = dy.astype(np.float64), x.astype(np.float64)
    y, scale = ref_lrn(x, size, alpha, beta, k)
    dx = dy * scale ** -beta
    for ch in range(x.shape[1]):
        lo, hi = max(0, ch - size // 2), min(x.shape[1] - 1, ch + (size - 1) // 2)
        dscale = dy[:, ch] * x[:, ch] * -beta * scale[:, ch] ** (-beta - 1)
        for j in range(lo, hi + 1):
            dx[:, j] += dscale * alpha / size * 2 * x[:, j]
    return dx


LRN_CASES = [  # shape, size, alpha, beta, k
    ((2, 7, 5, 6), 5, 1e-4, 0.75, 2.0),
    ((2, 7, 5, 6), 5, 2.0, 0.75, 1.0),
    ((3, 6, 4, 3), 4, 1.5, 0.6, 1.0),     # even window, generic exponent (pow path)
    ((2, 5, 3, 3), 1, 1.0, 0.5, 0.5),
    ((2, 3, 4, 4), 9, 1.0, 1.0, 1.0),     # window wider than the channels
    ((2, 8, 32, 32), 3, 3.0, 0.75, 1.0),  # several spatial blocks, enough work for two threads
    ((1, 4, 600), 2, 1.0, 0.75, 1.0),     # (N, C, L): a ragged last block
]


@pytest.mark.parametrize("shape,size,alpha,beta,k", LRN_CASES)
def test_lrn_matches_reference(arch, nthreads, dtype, rng, shape, size, alpha, beta, k):
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    y, scale = F.lrn(x, size, alpha, beta, k)
    ry, rscale = ref_lrn(x, size, alpha, beta, k)
    assert y.dtype == dtype and scale.dtype == dtype and y.shape == shape
    np.testing.assert_allclose(y, ry, **TOL[dtype])
    np.testing.assert_allclose(scale, rscale, **TOL[dtype])
    dx = F.lrn_backward(dy, x, y, scale, size, alpha, beta, k)
    np.testing.assert_allclose(dx, ref_lrn_backward(dy, x, size, alpha, beta, k), **TOL[dtype])


@pytest.mark.parametrize("shape,size,alpha,beta,k", [LRN_CASES[1], LRN_CASES[2], LRN_CASES[4]])
def test_lrn_backward_finite_differences(rng, shape, size, alpha, beta, k):
    x = rng.standard_normal(shape)[:, :, :3, :3].copy()
    dy = rng.standard_normal(x.shape)
    y, scale = F.lrn(x, size, alpha, beta, k)
    dx = F.lrn_backward(dy, x, y, scale, size, alpha, beta, k)
    (num,) = numeric_grad(lambda a: F.lrn(a, size, alpha, beta, k)[0], [x], dy)
    assert rel_err(dx, num) < 1e-6


@pytest.mark.parametrize("size", [1, 2, 4, 5, 6])
def test_lrn_matches_torch(nthreads, dtype, rng, size):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 7, 4, 5)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    y, scale = F.lrn(x, size, alpha=2.0, beta=0.75, k=1.0)
    dx = F.lrn_backward(dy, x, y, scale, size, alpha=2.0, beta=0.75, k=1.0)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.local_response_norm(tx, size, alpha=2.0, beta=0.75, k=1.0)
    ty.backward(torch.tensor(dy))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)


def test_lrn_alexnet_paper_convention(rng):
    """alpha is divided by size: the paper's k + 1e-4 * sum x^2 is alpha = 1e-4 * size here."""
    x = rng.standard_normal((1, 6, 2, 2)) * 30
    y, scale = F.lrn(x, 5, alpha=1e-4 * 5, beta=0.75, k=2.0)
    c = 2
    paper_scale = 2.0 + 1e-4 * np.sum(x[:, 0:5] ** 2, axis=1)  # window c-2 .. c+2
    np.testing.assert_allclose(scale[:, c], paper_scale, rtol=1e-13)


def test_lrn_zero_size_and_read_only(rng):
    y, scale = F.lrn(np.zeros((0, 3, 2, 2), np.float32))
    assert y.shape == scale.shape == (0, 3, 2, 2)
    x = rng.standard_normal((2, 3, 2, 2))
    x.flags.writeable = False
    y, scale = F.lrn(x, 3, 1.0, 0.75, 1.0)
    for a in (y, scale):
        a.flags.writeable = False
    F.lrn_backward(x, x, y, scale, 3, 1.0, 0.75, 1.0)


def test_lrn_bad_inputs():
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="size must be >= 1"):
        F.lrn(x, 0)
    with pytest.raises(TypeError, match="size must be an int"):
        F.lrn(x, 2.5)
    with pytest.raises(ValueError, match="k must be > 0"):
        F.lrn(x, k=0.0)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        F.lrn(x, alpha=-1.0)
    with pytest.raises(ValueError, match=r"lrn needs x of shape \(N, C, H, W\)"):
        F.lrn(np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        F.lrn(x.astype(np.int64))
    with pytest.raises(ValueError, match=r"scale has shape \(2, 3, 4\) but x has shape \(2, 3, 4, 4\)"):
        F.lrn_backward(x, x, x, np.zeros((2, 3, 4), np.float32))
    with pytest.raises(TypeError, match="y has dtype float64 but x has float32"):
        F.lrn_backward(x, x, x.astype(np.float64), x)


def test_batch_norm_first_sample_far_from_batch_mean(nthreads, dtype, rng):
    """Statistics are shifted by the first sample's mean; a first sample far from the batch mean must not cost
    precision (the kernel re-centres), and a channel whose first sample is typical must not either."""
    x = rng.standard_normal((8, 3, 6, 6))
    x[0, 0] += 1000.0   # sample 0 of channel 0 far off: re-centred pass
    x[:, 1] *= 1e-3     # tiny spread
    x[:, 2] += 5e3      # large common offset
    x = x.astype(dtype)
    y, (mean, invstd) = F.batch_norm(x, None, None, eps=1e-9)
    ry, rmean, _, rinvstd = ref_bn_train(x, np.ones(3), np.zeros(3), 1e-9)
    rtol = 2e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(invstd, rinvstd, rtol=rtol)
    np.testing.assert_allclose(mean, rmean, rtol=rtol)
    np.testing.assert_allclose(y, ry, rtol=0, atol=1e-4 if dtype == np.float32 else 1e-10)
