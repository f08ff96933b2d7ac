"""Pooling: max_pool2d (+ argmax), avg_pool2d, global_avg_pool2d and their backward passes.

Every result is compared with references written here independently of the C kernels (a loop over output
positions with NumPy over N and C, sliding_window_view sums, the transpose of the pooling matrix), with float64
central finite differences, and with torch.nn.functional when torch is installed.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

import fastconv
from fastconv import _C
from fastconv import functional as F

DTYPES = [np.float32, np.float64]


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture(params=["auto", "windows"])
def argmax_mode(request):
    """Max pooling with argmax on the separable kernel ("auto", horizontal strides 1 and 2) and on the
    window-by-window one ("windows"), restoring the previous mode after."""
    previous = _C.max_pool2d_argmax_mode(request.param)
    yield request.param
    _C.max_pool2d_argmax_mode(previous)


def tol(dtype):
    return dict(rtol=2e-6, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- independent references

def out_size(n, k, s, p, ceil_mode):
    """PyTorch's documented output size, written from the formula in its docs."""
    import math
    rounding = math.ceil if ceil_mode else math.floor
    o = int(rounding((n + 2 * p - k) / s)) + 1
    if ceil_mode and (o - 1) * s >= n + p:
        o -= 1
    return o


def window_bounds(o, k, s, p, n):
    """Input range [a, b) of output position o, clipped to the input."""
    start = o * s - p
    return max(start, 0), min(start + k, n)


def ref_max_pool(x, k, s, p, ceil_mode):
    """Loop over output positions, NumPy over (N, C): value and torch-style index of each window.

    Rules: NaN wins (the last one in row-major order), else the first maximum; a window of -inf gives its first
    in-range element."""
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    n, c, h, w = x.shape
    ho, wo = out_size(h, kh, sh, ph, ceil_mode), out_size(w, kw, sw, pw, ceil_mode)
    y = np.empty((n, c, ho, wo), x.dtype)
    am = np.empty((n, c, ho, wo), np.int64)
    for i in range(ho):
        h0, h1 = window_bounds(i, kh, sh, ph, h)
        for j in range(wo):
            w0, w1 = window_bounds(j, kw, sw, pw, w)
            win = x[:, :, h0:h1, w0:w1].reshape(n, c, (h1 - h0) * (w1 - w0))
            rows, cols = np.divmod(np.arange(win.shape[-1]), w1 - w0)
            flat = (rows + h0) * w + cols + w0
            isnan = np.isnan(win)
            last_nan = win.shape[-1] - 1 - np.argmax(isnan[..., ::-1], axis=-1)
            first_max = np.argmax(np.where(isnan, -np.inf, win), axis=-1)
            pick = np.where(isnan.any(-1), last_nan, first_max)
            am[:, :, i, j] = flat[pick]
            y[:, :, i, j] = np.take_along_axis(win, pick[..., None], -1)[..., 0]
    return y, am


def ref_avg_pool(x, k, s, p, ceil_mode, count_include_pad):
    """Window sums by sliding_window_view over a zero-padded copy; divisors by the same sums over arrays of ones
    marking the cells that count (the padded extent or the input only)."""
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    n, c, h, w = x.shape
    ho, wo = out_size(h, kh, sh, ph, ceil_mode), out_size(w, kw, sw, pw, ceil_mode)
    extra_h = max(0, (ho - 1) * sh + kh - (h + 2 * ph))  # ceil_mode windows may hang past the right padding
    extra_w = max(0, (wo - 1) * sw + kw - (w + 2 * pw))
    big = ((ph, ph + extra_h), (pw, pw + extra_w))
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0)) + big)
    inside = np.pad(np.ones((h, w)), big)
    padded = np.pad(np.ones((h + 2 * ph, w + 2 * pw)), ((0, extra_h), (0, extra_w)))

    def window_sums(a):
        return sliding_window_view(a, (kh, kw), axis=(-2, -1))[..., ::sh, ::sw, :, :].sum((-2, -1))[..., :ho, :wo]

    divisor = window_sums(padded if count_include_pad else inside)
    return (window_sums(xp) / divisor).astype(x.dtype)


def ref_avg_pool_backward(dy, shape, k, s, p, ceil_mode, count_include_pad):
    """dx = dy @ A, with A the (Ho*Wo, H*W) matrix of the linear map avg_pool2d on one plane, built column by
    column from the forward reference on unit planes."""
    n, c, h, w = shape
    basis = np.eye(h * w).reshape(h * w, 1, h, w)
    a = ref_avg_pool(basis, k, s, p, ceil_mode, count_include_pad).reshape(h * w, -1).T
    return (dy.reshape(n * c, a.shape[0]).astype(np.float64) @ a).reshape(shape).astype(dy.dtype)


def ref_max_pool_backward(dy, argmax, shape):
    n, c, h, w = shape
    dx = np.zeros((n * c, h * w))
    rows = np.repeat(np.arange(n * c), argmax.shape[2] * argmax.shape[3])
    np.add.at(dx, (rows, argmax.reshape(-1)), dy.reshape(-1))
    return dx.reshape(shape).astype(dy.dtype)


def numerical_gradient(f, x, eps=1e-6):
    """Central differences of the scalar f at x (float64)."""
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


def distinct_values(rng, shape):
    """Values 0.01 apart in random order: no ties, and a perturbation of 1e-6 never changes which one is largest."""
    return rng.permutation(np.arange(np.prod(shape))).reshape(shape) * 0.01 - 1.0


# Geometries (kernel, stride, padding) on planes of 9 x 11 and 13 x 37: 1x1 to 4x4, strides 1-3, all paddings.
GEOMETRIES = [(k, s, p) for k in (1, 2, 3, 4) for s in (1, 2, 3) for p in range(k // 2 + 1)]


# ---------------------------------------------------------------- max pooling

@pytest.mark.parametrize("ceil_mode", [False, True])
def test_max_pool_matches_reference(arch, nthreads, dtype, ceil_mode, argmax_mode, rng):
    x = rng.standard_normal((2, 3, 9, 11)).astype(dtype)
    for k, s, p in GEOMETRIES:
        y, am = F.max_pool2d(x, k, s, p, ceil_mode)
        y_ref, am_ref = ref_max_pool(x, (k, k), (s, s), (p, p), ceil_mode)
        np.testing.assert_array_equal(y, y_ref, err_msg=f"k={k} s={s} p={p}")
        np.testing.assert_array_equal(am, am_ref, err_msg=f"k={k} s={s} p={p}")


@pytest.mark.parametrize("width", [7, 9, 10, 11, 17, 19, 37])
def test_max_pool_fast_paths(arch, nthreads, dtype, width, argmax_mode, rng):
    """The kernels with vectorized paths (3x3/2, 2x2/2, 3x3/1), on rows whose interior is shorter than, equal to and
    longer than one vector, with and without padding, with ties (small integers) and without."""
    x = rng.standard_normal((2, 2, 8, width)).astype(dtype)
    ties = rng.integers(0, 3, (2, 2, 8, width)).astype(dtype)
    for data in (x, ties):
        for k, s, p in [(3, 2, 0), (3, 2, 1), (2, 2, 0), (2, 2, 1), (3, 1, 0), (3, 1, 1), ((3, 2), (2, 1), 1)]:
            k2, s2, p2 = (F._int_pair(v, "") for v in (k, s, p))
            for ceil_mode in (False, True):
                y, am = F.max_pool2d(data, k, s, p, ceil_mode)
                y_ref, am_ref = ref_max_pool(data, k2, s2, p2, ceil_mode)
                np.testing.assert_array_equal(y, y_ref)
                np.testing.assert_array_equal(am, am_ref)


def test_max_pool_nan_and_infinities(arch, nthreads, dtype, argmax_mode, rng):
    x = rng.standard_normal((2, 3, 12, 21)).astype(dtype)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[0, 0, 2:5, 2:9] = np.nan                  # several NaN in one window: the last one wins
    x[0, 1] = -np.inf                           # all -inf: value -inf, index of the first in-range element
    x[1, 0, 3:6, 3:6] = np.inf
    x[1, 1, 6:9, 6:12] = -np.inf
    x[1, 1, 7, 8] = np.inf                      # +inf and -inf together (the sum check's fallback)
    for k, s, p in [(3, 2, 0), (3, 2, 1), (2, 2, 0), (3, 1, 1), (4, 3, 2)]:
        for ceil_mode in (False, True):
            y, am = F.max_pool2d(x, k, s, p, ceil_mode)
            y_ref, am_ref = ref_max_pool(x, (k, k), (s, s), (p, p), ceil_mode)
            np.testing.assert_array_equal(y, y_ref)
            np.testing.assert_array_equal(am, am_ref)
            plane = x.shape[2] * x.shape[3]
            assert am.min() >= 0 and am.max() < plane
    y, am = F.max_pool2d(np.full((1, 1, 5, 5), -np.inf, dtype), 3, 2, 1)
    np.testing.assert_array_equal(am[0, 0], [[0, 1, 3], [5, 6, 8], [15, 16, 18]])


@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (1, 2, 1, 5), (3, 2, 14, 14), (1, 1, 40, 37)])
def test_max_pool_values_only(arch, nthreads, dtype, shape, rng):
    """indices=False (the inference kernel) gives the reference's values, NaN and infinities included."""
    x = rng.standard_normal(shape).astype(dtype)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[rng.random(x.shape) < 0.05] = -np.inf
    x[rng.random(x.shape) < 0.02] = np.inf
    for k, s, p in GEOMETRIES + [((3, 2), (2, 1), (1, 0)), ((1, 4), (1, 3), (0, 2))]:
        k2, s2, p2 = (F._int_pair(v, "") for v in (k, s, p))
        for ceil_mode in (False, True):
            if k2[0] > shape[2] + 2 * p2[0] or k2[1] > shape[3] + 2 * p2[1]:
                continue
            y = F.max_pool2d(x, k, s, p, ceil_mode, indices=False)
            y_ref, _ = ref_max_pool(x, k2, s2, p2, ceil_mode)
            np.testing.assert_array_equal(y, y_ref, err_msg=f"k={k} s={s} p={p} ceil_mode={ceil_mode}")


# The values-only kernel (arch/pool_template.h) is separable: a horizontal pass at the output stride (stride 1:
# shifted loads, stride 2: even/odd lanes of two loads, other strides: scalar), masked loads wherever a vector reaches
# past either end of a row, a ring of kh + 7 rows of horizontal maxima filled 8 rows at a time, and a vertical pass
# with its own loops for 2 and 3 rows. Vectors hold 16 / 8 floats / doubles (AVX-512), 8 / 4 (AVX2), 4 / 2 (ref).
VALUES_WIDTHS = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 34, 47, 49]
VALUES_GEOMETRIES = [  # kernel, stride, padding
    (2, 2, 0), (2, 2, 1), (3, 2, 0), (3, 2, 1), (3, 1, 0), (3, 1, 1), (2, 1, 0), (2, 1, 1),
    (1, 1, 0), (1, 2, 0), (4, 2, 2), (5, 2, 1), (5, 1, 2), (3, 3, 1), (4, 3, 0),
    ((3, 2), (2, 1), (1, 0)), ((2, 3), (1, 2), (0, 1)), ((1, 3), (3, 2), (0, 1)), ((5, 1), (1, 3), (2, 0)),
]


def values_only_cases(x):
    """(kernel, stride, padding, ceil_mode) of VALUES_GEOMETRIES that fit x's planes."""
    for k, s, p in VALUES_GEOMETRIES:
        k2, s2, p2 = (F._int_pair(v, "") for v in (k, s, p))
        if k2[0] > x.shape[2] + 2 * p2[0] or k2[1] > x.shape[3] + 2 * p2[1]:
            continue
        for ceil_mode in (False, True):
            yield k, s, p, ceil_mode, (k2, s2, p2)


@pytest.mark.parametrize("width", VALUES_WIDTHS)
def test_max_pool_values_only_widths(arch, nthreads, dtype, width, rng):
    """Row widths below, at and above one vector and two (odd ones for stride 2's even/odd split), every geometry
    with padding, ceil_mode windows hanging past the edge, and kernels 1 to 5, square or not; NaN and infinities
    near the edges as well as inside."""
    x = rng.standard_normal((2, 3, 11, width)).astype(dtype)
    x[rng.random(x.shape) < 0.04] = np.nan
    x[rng.random(x.shape) < 0.04] = -np.inf
    x[rng.random(x.shape) < 0.02] = np.inf
    x[0, 1] = -np.inf  # a whole plane of -inf
    x[1, 2, :, -1] = np.nan  # the last column: reached only by the edge vectors
    for k, s, p, ceil_mode, (k2, s2, p2) in values_only_cases(x):
        y = F.max_pool2d(x, k, s, p, ceil_mode, indices=False)
        y_ref, _ = ref_max_pool(x, k2, s2, p2, ceil_mode)
        np.testing.assert_array_equal(y, y_ref, err_msg=f"width={width} k={k} s={s} p={p} ceil_mode={ceil_mode}")


@pytest.mark.parametrize("height, kernel, stride, padding", [
    (30, 3, 1, 1), (30, 3, 2, 1), (29, 2, 2, 0), (40, (11, 3), (1, 2), (5, 1)), (25, (9, 2), (4, 2), (4, 0)),
    (21, (2, 3), (5, 2), (1, 1)), (17, (17, 3), 1, (0, 1)), (9, (1, 2), (4, 1), 0),
])
def test_max_pool_values_only_ring(arch, nthreads, dtype, height, kernel, stride, padding, rng):
    """Tall planes: the ring of horizontal maxima wraps many times, kernels taller than a batch of 8 rows, vertical
    strides above the kernel height (input rows skipped), and a window as tall as the plane."""
    x = rng.standard_normal((2, 2, height, 19)).astype(dtype)
    x[rng.random(x.shape) < 0.03] = np.nan
    k2, s2, p2 = (F._int_pair(v, "") for v in (kernel, stride, padding))
    for ceil_mode in (False, True):
        y = F.max_pool2d(x, kernel, stride, padding, ceil_mode, indices=False)
        y_ref, _ = ref_max_pool(x, k2, s2, p2, ceil_mode)
        np.testing.assert_array_equal(y, y_ref, err_msg=f"ceil_mode={ceil_mode}")


def test_max_pool_values_only_same_bits_as_argmax_path(arch, nthreads, dtype, rng):
    """The separable kernel keeps the window's first maximum and its last NaN in row-major order, like the argmax
    path: the sign of a tied zero and the payload of a NaN are the same bit for bit."""
    itype = np.uint32 if dtype == np.float32 else np.uint64
    x = rng.integers(-1, 2, (2, 3, 13, 37)).astype(dtype)  # many ties
    x[x == 0] = np.where(rng.random(np.count_nonzero(x == 0)) < 0.5, 0.0, -0.0).astype(dtype)
    nan_bits = np.array([np.nan], dtype).view(itype)[0]
    nans = rng.random(x.shape) < 0.05
    bits = x.view(itype)
    bits[nans] = nan_bits | rng.integers(1, 1000, np.count_nonzero(nans)).astype(itype)  # distinct payloads
    x[1, 1, 4:7, 4:9] = np.nan
    for k, s, p, ceil_mode, _ in values_only_cases(x):
        y, _ = F.max_pool2d(x, k, s, p, ceil_mode)
        y_values = F.max_pool2d(x, k, s, p, ceil_mode, indices=False)
        np.testing.assert_array_equal(y_values.view(itype), y.view(itype),
                                      err_msg=f"k={k} s={s} p={p} ceil_mode={ceil_mode}")


@pytest.mark.parametrize("shape", [(3, 5, 7, 7), (2, 3, 14, 14), (1, 4, 5, 13), (2, 2, 28, 28), (1, 3, 1, 9),
                                   (1, 2, 11, 1), (1, 3, 32, 32), (2, 3, 16, 16), (1, 2, 17, 16)])
def test_max_pool_values_only_small_planes(arch, nthreads, dtype, shape, rng):
    """Small planes take a flat kernel under AVX-512 (3x3 windows at stride 1 or 2 centred inside the plane; one
    plane after another, so planes end inside vectors): the reference's values, and the argmax path's bits for
    ties, signed zeros and NaN payloads."""
    itype = np.uint32 if dtype == np.float32 else np.uint64
    x = rng.integers(-1, 2, shape).astype(dtype)
    x[x == 0] = np.where(rng.random(np.count_nonzero(x == 0)) < 0.5, 0.0, -0.0).astype(dtype)
    nans = rng.random(x.shape) < 0.05
    bits = x.view(itype)
    bits[nans] = np.array([np.nan], dtype).view(itype)[0] | rng.integers(1, 1000, np.count_nonzero(nans)).astype(itype)
    x[0, -1, :, -1] = -np.inf
    x[-1, 0, -1, :] = np.inf
    for k, s, p in [(3, 1, 1), (3, 1, 0), (3, 2, 0), (3, 2, 1)]:
        for ceil_mode in (False, True):
            if k > shape[2] + 2 * p or k > shape[3] + 2 * p:
                continue
            y_values = F.max_pool2d(x, k, s, p, ceil_mode, indices=False)
            y, _ = F.max_pool2d(x, k, s, p, ceil_mode)
            y_ref, _ = ref_max_pool(x, (k, k), (s, s), (p, p), ceil_mode)
            np.testing.assert_array_equal(y_values, y_ref, err_msg=f"k={k} s={s} p={p} ceil_mode={ceil_mode}")
            np.testing.assert_array_equal(y_values.view(itype), y.view(itype),
                                          err_msg=f"k={k} s={s} p={p} ceil_mode={ceil_mode}")


def test_max_pool_values_only_threads_split_planes(arch, dtype, rng):
    """An odd number of planes, large enough for the parallel region: each thread takes a contiguous run."""
    x = rng.standard_normal((3, 7, 57, 59)).astype(dtype)
    x[rng.random(x.shape) < 0.01] = np.nan
    for k, s, p, ceil_mode in [(3, 2, 0, True), (3, 1, 1, False), (2, 2, 0, False), (3, 3, 1, True)]:
        y_ref, _ = ref_max_pool(x, (k, k), (s, s), (p, p), ceil_mode)
        for n in (1, 2):
            with fastconv.threads(n):
                y = F.max_pool2d(x, k, s, p, ceil_mode, indices=False)
            np.testing.assert_array_equal(y, y_ref, err_msg=f"threads={n} k={k} s={s} p={p}")


def test_max_pool_threads_agree_on_large_input(arch, dtype, argmax_mode, rng):
    """A batch large enough for the parallel region: 1 and 2 threads give the reference result."""
    x = rng.standard_normal((4, 16, 33, 35)).astype(dtype)
    y_ref, am_ref = ref_max_pool(x, (3, 3), (2, 2), (1, 1), True)
    for n in (1, 2):
        with fastconv.threads(n):
            y, am = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(am, am_ref)


# ---------------------------------------------------------------- max pooling with argmax: the separable kernel
# arch/pool_template.h's max_pool_argmax: the values kernel's horizontal and vertical passes (see above) carrying the
# flat index of each winner, int32 lanes for float and int64 for double, widened to int64 on store; each edge lane
# starts at its first tap inside the row. Compared bit for bit with the window-by-window kernel and with the
# reference.


def pooled_both_ways(x, k, s, p, ceil_mode):
    """(y, argmax) of the separable kernel, then of the window-by-window one; checks which kernel each call ran."""
    k2, s2, p2 = (F._int_pair(v, "") for v in (k, s, p))
    out = []
    for mode in ("auto", "windows"):
        previous = _C.max_pool2d_argmax_mode(mode)
        try:
            y, am = F.max_pool2d(x, k, s, p, ceil_mode)
            kernel = _C.max_pool2d_argmax_kernel(x.shape, y.shape, k2, s2, p2, ceil_mode, x.itemsize)
        finally:
            _C.max_pool2d_argmax_mode(previous)
        assert kernel == ("separable" if mode == "auto" and s2[1] in (1, 2) else "windows")
        out.append((y, am))
    return out


def assert_same_bits(a, b, err_msg=""):
    itype = np.uint32 if a.dtype == np.float32 else np.uint64
    np.testing.assert_array_equal(a.view(itype), b.view(itype), err_msg=err_msg)


@pytest.mark.parametrize("width", VALUES_WIDTHS)
def test_max_pool_argmax_separable_widths(arch, nthreads, dtype, width, rng):
    """Row widths below, at and above one and two vectors, every geometry with padding, ceil_mode windows hanging
    past the edge, kernels 1 to 5 square or not; ties, NaN and infinities inside and at the edges, planes and
    windows holding only -inf (argmax must point at the window's first element inside the input)."""
    x = rng.integers(-2, 3, (2, 3, 11, width)).astype(dtype)  # ties
    x[rng.random(x.shape) < 0.04] = np.nan
    x[rng.random(x.shape) < 0.08] = -np.inf
    x[rng.random(x.shape) < 0.02] = np.inf
    x[0, 1] = -np.inf  # a whole plane of -inf
    x[0, 2, 3:8] = -np.inf  # rows of -inf: windows of -inf away from the top
    x[0, 2, 5, -1] = np.nan
    x[1, 2, :, -1] = np.nan  # the last column: reached only by the edge vectors
    x[1, 0, :, 0] = np.nan  # the first column
    for k, s, p, ceil_mode, (k2, s2, p2) in values_only_cases(x):
        msg = f"width={width} k={k} s={s} p={p} ceil_mode={ceil_mode}"
        (y, am), (y_old, am_old) = pooled_both_ways(x, k, s, p, ceil_mode)
        assert_same_bits(y, y_old, msg)
        np.testing.assert_array_equal(am, am_old, err_msg=msg)
        y_ref, am_ref = ref_max_pool(x, k2, s2, p2, ceil_mode)
        np.testing.assert_array_equal(y, y_ref, err_msg=msg)
        np.testing.assert_array_equal(am, am_ref, err_msg=msg)


@pytest.mark.parametrize("height, kernel, stride, padding", [
    (30, 3, 1, 1), (30, 3, 2, 1), (29, 2, 2, 0), (40, (11, 3), (1, 2), (5, 1)), (25, (9, 2), (4, 2), (4, 0)),
    (21, (2, 3), (5, 2), (1, 1)), (17, (17, 3), 1, (0, 1)), (9, (1, 2), (4, 1), 0),
])
def test_max_pool_argmax_separable_ring(arch, nthreads, dtype, height, kernel, stride, padding, rng):
    """Tall planes: the rings of maxima and indices wrap many times, kernels taller than a batch of 8 rows, vertical
    strides above the kernel height, a window as tall as the plane; indices of rows far down the plane."""
    x = rng.integers(-3, 4, (2, 2, height, 19)).astype(dtype)
    x[rng.random(x.shape) < 0.03] = np.nan
    x[rng.random(x.shape) < 0.05] = -np.inf
    x[1, 0, height // 2:] = -np.inf
    k2, s2, p2 = (F._int_pair(v, "") for v in (kernel, stride, padding))
    for ceil_mode in (False, True):
        (y, am), (y_old, am_old) = pooled_both_ways(x, kernel, stride, padding, ceil_mode)
        assert_same_bits(y, y_old, f"ceil_mode={ceil_mode}")
        np.testing.assert_array_equal(am, am_old, err_msg=f"ceil_mode={ceil_mode}")
        y_ref, am_ref = ref_max_pool(x, k2, s2, p2, ceil_mode)
        np.testing.assert_array_equal(am, am_ref, err_msg=f"ceil_mode={ceil_mode}")


def test_max_pool_argmax_separable_same_bits(arch, nthreads, dtype, rng):
    """Tied zeros of both signs and NaN of distinct payloads: the separable kernel keeps the same element as the
    window-by-window one (the first maximum, the last NaN in row-major order), sign and payload included."""
    itype = np.uint32 if dtype == np.float32 else np.uint64
    x = rng.integers(-1, 2, (2, 3, 13, 37)).astype(dtype)
    x[x == 0] = np.where(rng.random(np.count_nonzero(x == 0)) < 0.5, 0.0, -0.0).astype(dtype)
    nan_bits = np.array([np.nan], dtype).view(itype)[0]
    nans = rng.random(x.shape) < 0.05
    bits = x.view(itype)
    bits[nans] = nan_bits | rng.integers(1, 1000, np.count_nonzero(nans)).astype(itype)
    x[1, 1, 4:7, 4:9] = np.nan
    for k, s, p, ceil_mode, _ in values_only_cases(x):
        msg = f"k={k} s={s} p={p} ceil_mode={ceil_mode}"
        (y, am), (y_old, am_old) = pooled_both_ways(x, k, s, p, ceil_mode)
        assert_same_bits(y, y_old, msg)
        np.testing.assert_array_equal(am, am_old, err_msg=msg)


def test_max_pool_argmax_separable_network_shapes(arch, dtype, rng):
    """The shapes it is for (AlexNet 3x3/2 at 55 and 27, GoogLeNet 3x3/1 pad 1 at 28 and 14 and 3x3/2 ceil_mode at
    56, 28 and 14, VGG 2x2/2 at 28), enough planes for both threads, the two kernels equal bit for bit."""
    for shape, k, s, p, ceil_mode in [((2, 5, 55, 55), 3, 2, 0, False), ((2, 5, 27, 27), 3, 2, 0, False),
                                      ((2, 6, 28, 28), 3, 1, 1, False), ((2, 9, 14, 14), 3, 1, 1, False),
                                      ((2, 3, 56, 56), 3, 2, 0, True), ((2, 6, 28, 28), 3, 2, 0, True),
                                      ((2, 9, 14, 14), 3, 2, 0, True), ((2, 6, 28, 28), 2, 2, 0, False)]:
        x = rng.standard_normal(shape).astype(dtype)
        x[rng.random(x.shape) < 0.002] = np.nan
        for n in (1, 2):
            with fastconv.threads(n):
                (y, am), (y_old, am_old) = pooled_both_ways(x, k, s, p, ceil_mode)
            msg = f"shape={shape} k={k} s={s} p={p} ceil_mode={ceil_mode} threads={n}"
            assert_same_bits(y, y_old, msg)
            np.testing.assert_array_equal(am, am_old, err_msg=msg)


def test_max_pool_argmax_separable_threads_split_planes(arch, dtype, rng):
    """An odd number of planes, large enough for the parallel region: each thread takes a contiguous run."""
    x = rng.standard_normal((3, 7, 57, 59)).astype(dtype)
    x[rng.random(x.shape) < 0.01] = np.nan
    for k, s, p, ceil_mode in [(3, 2, 0, True), (3, 1, 1, False), (2, 2, 0, False), (3, 2, 1, False)]:
        y_ref, am_ref = ref_max_pool(x, (k, k), (s, s), (p, p), ceil_mode)
        for n in (1, 2):
            with fastconv.threads(n):
                (y, am), _ = pooled_both_ways(x, k, s, p, ceil_mode)
            np.testing.assert_array_equal(y, y_ref, err_msg=f"threads={n} k={k} s={s} p={p}")
            np.testing.assert_array_equal(am, am_ref, err_msg=f"threads={n} k={k} s={s} p={p}")


def test_max_pool_argmax_huge_kernel_takes_windows_kernel(dtype):
    """A kernel 2^58 rows tall over a 1x1 plane (valid: the padding is half of it): the separable kernel's ring
    would have 2^58 rows, a size that overflows int64 in bytes, so the window-by-window kernel runs instead of an
    error."""
    x = np.full((1, 1, 1, 1), 3.0, dtype)
    k, p = (2 ** 58, 1), (2 ** 57, 0)
    previous = _C.max_pool2d_argmax_mode("auto")
    try:
        y, am = F.max_pool2d(x, k, 1, p)
        assert _C.max_pool2d_argmax_kernel(x.shape, y.shape, k, (1, 1), p, False, x.itemsize) == "windows"
    finally:
        _C.max_pool2d_argmax_mode(previous)
    np.testing.assert_array_equal(y, np.full((1, 1, 2, 1), 3.0, dtype))
    np.testing.assert_array_equal(am, np.zeros((1, 1, 2, 1), np.int64))


def test_max_pool_argmax_mode():
    previous = _C.max_pool2d_argmax_mode()
    assert previous in ("auto", "windows")
    try:
        assert _C.max_pool2d_argmax_mode("windows") == previous
        assert _C.max_pool2d_argmax_mode() == "windows"
        assert _C.max_pool2d_argmax_kernel((1, 1, 8, 8), (1, 1, 3, 3), (3, 3), (2, 2), (0, 0), False, 4) == "windows"
        _C.max_pool2d_argmax_mode("auto")
        assert _C.max_pool2d_argmax_kernel((1, 1, 8, 8), (1, 1, 3, 3), (3, 3), (2, 2), (0, 0), False, 4) == "separable"
        assert _C.max_pool2d_argmax_kernel((1, 1, 8, 8), (1, 1, 2, 2), (3, 3), (3, 3), (0, 0), False, 4) == "windows"
        with pytest.raises(ValueError):
            _C.max_pool2d_argmax_mode("fast")
        with pytest.raises(ValueError):  # an output size that does not match the geometry
            _C.max_pool2d_argmax_kernel((1, 1, 8, 8), (1, 1, 4, 3), (3, 3), (2, 2), (0, 0), False, 4)
    finally:
        _C.max_pool2d_argmax_mode(previous)


def test_max_pool_backward(arch, nthreads, dtype, argmax_mode, rng):
    x = distinct_values(rng, (2, 3, 8, 9)).astype(dtype)
    for k, s, p, ceil_mode in [(3, 2, 1, False), (2, 1, 0, True), (3, 3, 1, True), (2, 2, 0, False)]:
        y, am = F.max_pool2d(x, k, s, p, ceil_mode)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = F.max_pool2d_backward(dy, am, x.shape)
        assert dx.dtype == dtype and dx.shape == x.shape
        np.testing.assert_allclose(dx, ref_max_pool_backward(dy, am, x.shape), **tol(dtype))


def test_max_pool_backward_finite_differences(arch, nthreads, rng):
    x = distinct_values(rng, (2, 2, 7, 8))
    for k, s, p, ceil_mode in [(3, 2, 1, True), (2, 1, 0, False), (3, 1, 1, False)]:
        y, am = F.max_pool2d(x, k, s, p, ceil_mode)
        g = rng.standard_normal(y.shape)
        numeric = numerical_gradient(lambda v: np.sum(F.max_pool2d(v, k, s, p, ceil_mode)[0] * g), x.copy())
        assert rel_error(F.max_pool2d_backward(g, am, x.shape), numeric) < 1e-6


def test_max_pool_matches_torch(arch, nthreads, dtype, argmax_mode, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((3, 4, 23, 27)).astype(dtype)
    x[rng.random(x.shape) < 0.01] = np.nan
    for k, s, p in [(3, 2, 0), (3, 2, 1), (2, 2, 0), (3, 1, 1), (5, 3, 2), ((2, 4), (1, 3), (1, 2))]:
        for ceil_mode in (False, True):
            xt = torch.tensor(x, requires_grad=True)
            yt, it = torch.nn.functional.max_pool2d(xt, k, s, p, ceil_mode=ceil_mode, return_indices=True)
            y, am = F.max_pool2d(x, k, s, p, ceil_mode)
            np.testing.assert_array_equal(y, yt.detach().numpy())
            np.testing.assert_array_equal(am, it.numpy())
            dy = rng.standard_normal(y.shape).astype(dtype)
            yt.backward(torch.tensor(dy))
            np.testing.assert_allclose(F.max_pool2d_backward(dy, am, x.shape), xt.grad.numpy(), **tol(dtype))


# ---------------------------------------------------------------- average pooling

@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_matches_reference(arch, nthreads, dtype, ceil_mode, count_include_pad, rng):
    x = rng.standard_normal((2, 3, 9, 11)).astype(dtype)
    for k, s, p in GEOMETRIES + [((2, 4), (3, 1), (1, 2))]:
        k2, s2, p2 = (F._int_pair(v, "") for v in (k, s, p))
        y = F.avg_pool2d(x, k, s, p, ceil_mode, count_include_pad)
        y_ref = ref_avg_pool(x, k2, s2, p2, ceil_mode, count_include_pad)
        np.testing.assert_allclose(y, y_ref, **tol(dtype), err_msg=f"k={k} s={s} p={p}")


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_backward_matches_transpose(arch, nthreads, dtype, ceil_mode, count_include_pad, rng):
    shape = (2, 3, 8, 9)
    # (2, 2, 0): the non-overlapping fast path; width 9 leaves a column no window covers in floor mode
    for k, s, p in [(3, 2, 1), (2, 1, 0), (4, 3, 2), (3, 1, 1), ((2, 3), (2, 1), (1, 0)), (2, 2, 0)]:
        k2, s2, p2 = (F._int_pair(v, "") for v in (k, s, p))
        y = F.avg_pool2d(np.zeros(shape, dtype), k, s, p, ceil_mode, count_include_pad)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = F.avg_pool2d_backward(dy, shape, k, s, p, ceil_mode, count_include_pad)
        assert dx.dtype == dtype and dx.shape == shape
        np.testing.assert_allclose(dx, ref_avg_pool_backward(dy, shape, k2, s2, p2, ceil_mode, count_include_pad),
                                   **tol(dtype))


def test_avg_pool_backward_finite_differences(arch, nthreads, rng):
    x = rng.standard_normal((1, 2, 7, 8))
    for k, s, p, ceil_mode, cip in [(3, 2, 1, True, True), (3, 2, 1, True, False), (2, 1, 0, False, True)]:
        g = rng.standard_normal(F.avg_pool2d(x, k, s, p, ceil_mode, cip).shape)
        numeric = numerical_gradient(lambda v: np.sum(F.avg_pool2d(v, k, s, p, ceil_mode, cip) * g), x.copy())
        assert rel_error(F.avg_pool2d_backward(g, x.shape, k, s, p, ceil_mode, cip), numeric) < 1e-6


def test_avg_pool_large_input_threads(arch, dtype, rng):
    x = rng.standard_normal((4, 16, 33, 35)).astype(dtype)
    y_ref = ref_avg_pool(x, (3, 3), (2, 2), (1, 1), True, False)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    for n in (1, 2):
        with fastconv.threads(n):
            np.testing.assert_allclose(F.avg_pool2d(x, 3, 2, 1, True, False), y_ref, **tol(dtype))
            dx = F.avg_pool2d_backward(dy, x.shape, 3, 2, 1, True, False)
        if n == 1:
            dx1 = dx
    np.testing.assert_array_equal(dx, dx1)  # planes are independent: no reduction order depends on threads


def test_avg_pool_matches_torch(arch, nthreads, dtype, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 13, 17)).astype(dtype)
    for k, s, p in [(3, 2, 1), (2, 2, 0), (5, 3, 2), ((2, 4), (1, 3), (1, 2))]:
        for ceil_mode in (False, True):
            for cip in (False, True):
                xt = torch.tensor(x, requires_grad=True)
                yt = torch.nn.functional.avg_pool2d(xt, k, s, p, ceil_mode=ceil_mode, count_include_pad=cip)
                y = F.avg_pool2d(x, k, s, p, ceil_mode, cip)
                np.testing.assert_allclose(y, yt.detach().numpy(), **tol(dtype))
                dy = rng.standard_normal(y.shape).astype(dtype)
                yt.backward(torch.tensor(dy))
                np.testing.assert_allclose(F.avg_pool2d_backward(dy, x.shape, k, s, p, ceil_mode, cip),
                                           xt.grad.numpy(), **tol(dtype))


# ---------------------------------------------------------------- global average pooling

def test_global_avg_pool(arch, nthreads, dtype, rng):
    for shape in [(2, 3, 1, 1), (3, 5, 7, 9), (4, 64, 17, 17)]:
        x = rng.standard_normal(shape).astype(dtype)
        y = F.global_avg_pool2d(x)
        assert y.shape == shape[:2] + (1, 1) and y.dtype == dtype
        np.testing.assert_allclose(y, x.astype(np.float64).mean(axis=(2, 3), keepdims=True), **tol(dtype))
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx = F.global_avg_pool2d_backward(dy, shape)
        np.testing.assert_allclose(dx, np.broadcast_to(dy.astype(np.float64) / (shape[2] * shape[3]), shape),
                                   **tol(dtype))


def test_global_avg_pool_finite_differences(arch, nthreads, rng):
    x = rng.standard_normal((2, 3, 4, 5))
    g = rng.standard_normal((2, 3, 1, 1))
    numeric = numerical_gradient(lambda v: np.sum(F.global_avg_pool2d(v) * g), x.copy())
    assert rel_error(F.global_avg_pool2d_backward(g, x.shape), numeric) < 1e-6


def test_global_avg_pool_matches_torch(dtype, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((3, 4, 6, 7)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, 1)
    np.testing.assert_allclose(F.global_avg_pool2d(x), yt.detach().numpy(), **tol(dtype))
    dy = rng.standard_normal((3, 4, 1, 1)).astype(dtype)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(F.global_avg_pool2d_backward(dy, x.shape), xt.grad.numpy(), **tol(dtype))


# ---------------------------------------------------------------- layouts, empty batches, output sizes

def test_non_contiguous_and_read_only_inputs(dtype, rng):
    base = rng.standard_normal((3, 4, 20, 22)).astype(dtype)
    views = [base[:, :, ::2, 1::2], base.transpose(0, 1, 3, 2), np.asfortranarray(base)]
    for v in views:
        c = np.ascontiguousarray(v)
        np.testing.assert_array_equal(F.max_pool2d(v, 3, 2, 1)[0], F.max_pool2d(c, 3, 2, 1)[0])
        np.testing.assert_array_equal(F.max_pool2d(v, 3, 2, 1)[1], F.max_pool2d(c, 3, 2, 1)[1])
        np.testing.assert_array_equal(F.avg_pool2d(v, 3, 2, 1), F.avg_pool2d(c, 3, 2, 1))
        np.testing.assert_array_equal(F.global_avg_pool2d(v), F.global_avg_pool2d(c))
    ro = base.copy()
    ro.flags.writeable = False
    y, am = F.max_pool2d(ro, 2)
    ro_dy, ro_am = y.copy(), am.copy()
    ro_dy.flags.writeable = ro_am.flags.writeable = False
    np.testing.assert_array_equal(F.max_pool2d_backward(ro_dy, ro_am, ro.shape),
                                  F.max_pool2d_backward(y, am, ro.shape))
    np.testing.assert_array_equal(F.avg_pool2d_backward(ro_dy, ro.shape, 2), F.avg_pool2d_backward(y, ro.shape, 2))
    # argmax as a strided view of another integer type
    wide = np.zeros(am.shape[:-1] + (2 * am.shape[-1],), np.int32)
    wide[..., ::2] = am
    np.testing.assert_array_equal(F.max_pool2d_backward(y, wide[..., ::2], ro.shape),
                                  F.max_pool2d_backward(y, am, ro.shape))


def test_empty_batch_and_channels(dtype):
    for shape in [(0, 3, 8, 8), (2, 0, 8, 8)]:
        x = np.zeros(shape, dtype)
        y, am = F.max_pool2d(x, 3, 2, 1)
        assert y.shape == shape[:2] + (4, 4) and am.shape == y.shape and am.dtype == np.int64
        assert F.max_pool2d_backward(y, am, shape).shape == shape
        assert F.avg_pool2d(x, 3, 2, 1).shape == y.shape
        assert F.avg_pool2d_backward(y, shape, 3, 2, 1).shape == shape
        assert F.global_avg_pool2d(x).shape == shape[:2] + (1, 1)
        assert F.global_avg_pool2d_backward(np.zeros(shape[:2] + (1, 1), dtype), shape).shape == shape


def test_output_size_agrees_with_c_and_torch():
    """The Python helper, the C engine's check and the documented formula give the same sizes."""
    for n in range(1, 12):
        for k in range(1, 6):
            for s in range(1, 4):
                for p in range(k // 2 + 1):
                    if k > n + 2 * p:
                        assert _C.pool2d_output_size(n, k, s, p, False) is None
                        continue
                    for ceil_mode in (False, True):
                        expected = out_size(n, k, s, p, ceil_mode)
                        assert F._pool_output_size(n, k, s, p, ceil_mode) == expected
                        assert _C.pool2d_output_size(n, k, s, p, ceil_mode) == expected


# ---------------------------------------------------------------- bad input

X = np.zeros((2, 3, 8, 8), np.float32)


@pytest.mark.parametrize("call, error, match", [
    (lambda: F.max_pool2d(X.astype(np.int32), 2), TypeError, r"x must be float32 or float64.*int32"),
    (lambda: F.max_pool2d(X[0], 2), ValueError, r"x must be 4-D.*\(3, 8, 8\)"),
    (lambda: F.max_pool2d(X, 0), ValueError, r"kernel_size must be positive.*\(0, 0\).*\(2, 3, 8, 8\)"),
    (lambda: F.max_pool2d(X, 2, stride=0), ValueError, r"stride must be positive"),
    (lambda: F.max_pool2d(X, 2, stride=(1, -1)), ValueError, r"stride must be positive.*\(1, -1\)"),
    (lambda: F.max_pool2d(X, 3, padding=-1), ValueError, r"padding must be non-negative"),
    (lambda: F.max_pool2d(X, 3, padding=2), ValueError, r"padding \(2, 2\) must be at most half of kernel_size"),
    (lambda: F.max_pool2d(X, 9), ValueError, r"kernel_size \(9, 9\) is larger than the padded input \(8, 8\)"),
    (lambda: F.max_pool2d(X, (2, 11), padding=(0, 1)), ValueError, r"larger than the padded input \(8, 10\)"),
    (lambda: F.max_pool2d(X, 2.0), TypeError, r"kernel_size must be an int or a pair"),
    (lambda: F.max_pool2d(X, (2, 2, 2)), TypeError, r"kernel_size must be an int or a pair"),
    (lambda: F.max_pool2d(X, True), TypeError, r"kernel_size"),
    (lambda: F.max_pool2d(np.zeros((1, 1, 0, 4), np.float32), 1), ValueError, r"non-empty planes"),
    (lambda: F.avg_pool2d(X, 3, padding=2), ValueError, r"padding \(2, 2\) must be at most half"),
    (lambda: F.avg_pool2d(X.astype(np.float16), 2), TypeError, r"float32 or float64"),
    (lambda: F.avg_pool2d_backward(np.zeros((2, 3, 3, 3), np.float32), X.shape, 2), ValueError,
     r"dy has shape \(2, 3, 3, 3\), expected \(2, 3, 4, 4\)"),
    (lambda: F.avg_pool2d_backward(np.zeros((2, 3, 4, 4), np.float32), (2, 3, 8), 2), ValueError,
     r"input_shape must be 4 non-negative ints"),
    (lambda: F.max_pool2d_backward(np.zeros((2, 3, 4, 4), np.float32), np.zeros((2, 3, 4, 5), np.int64),
                                   X.shape), ValueError, r"argmax has shape \(2, 3, 4, 5\), expected dy's shape"),
    (lambda: F.max_pool2d_backward(np.zeros((2, 3, 4, 4), np.float32), np.zeros((2, 3, 4, 4), np.float32),
                                   X.shape), TypeError, r"argmax must be an integer array"),
    (lambda: F.max_pool2d_backward(np.zeros((2, 3, 4, 4), np.float32), np.full((2, 3, 4, 4), 64), X.shape),
     ValueError, r"argmax entries must lie in \[0, 64\)"),
    (lambda: F.max_pool2d_backward(np.zeros((2, 3, 4, 4), np.float32), np.full((2, 3, 4, 4), -1), X.shape),
     ValueError, r"argmax entries must lie in"),
    (lambda: F.max_pool2d_backward(np.zeros((2, 3, 4, 4), np.float32), np.zeros((2, 3, 4, 4), np.int64),
                                   (2, 4, 8, 8)), ValueError, r"does not match input_shape"),
    (lambda: F.global_avg_pool2d(X[0]), ValueError, r"x must be 4-D"),
    (lambda: F.global_avg_pool2d_backward(np.zeros((2, 3), np.float32), X.shape), ValueError, r"dy must be 4-D"),
    (lambda: F.global_avg_pool2d_backward(np.zeros((2, 3, 2, 1), np.float32), X.shape), ValueError,
     r"dy has shape \(2, 3, 2, 1\), expected \(2, 3, 1, 1\)"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- random geometries

@st.composite
def geometries(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 12))
    w = draw(st.integers(max(1, kw - 2 * pw), 12))
    return dict(shape=(draw(st.integers(0, 3)), draw(st.integers(1, 3)), h, w), kernel=(kh, kw),
                stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))), padding=(ph, pw),
                ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()),
                dtype=draw(st.sampled_from(DTYPES)), threads=draw(st.sampled_from([1, 2])),
                seed=draw(st.integers(0, 99)))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(geometries())
def test_random_geometries(g):
    rng = np.random.default_rng(g["seed"])
    x = rng.integers(-3, 4, g["shape"]).astype(g["dtype"])  # small integers: many ties
    k, s, p, ceil_mode, cip = g["kernel"], g["stride"], g["padding"], g["ceil_mode"], g["count_include_pad"]
    with fastconv.threads(g["threads"]):
        y, am = F.max_pool2d(x, k, s, p, ceil_mode)
        yv = F.max_pool2d(x, k, s, p, ceil_mode, indices=False)
        ya = F.avg_pool2d(x, k, s, p, ceil_mode, cip)
        dy = rng.standard_normal(y.shape).astype(g["dtype"])
        dx = F.max_pool2d_backward(dy, am, x.shape)
        dxa = F.avg_pool2d_backward(dy, x.shape, k, s, p, ceil_mode, cip)
    y_ref, am_ref = ref_max_pool(x, k, s, p, ceil_mode)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(am, am_ref)
    np.testing.assert_array_equal(yv, y_ref)
    np.testing.assert_allclose(ya, ref_avg_pool(x, k, s, p, ceil_mode, cip), **tol(g["dtype"]))
    np.testing.assert_allclose(dx, ref_max_pool_backward(dy, am_ref, x.shape), **tol(g["dtype"]))
    np.testing.assert_allclose(dxa, ref_avg_pool_backward(dy, x.shape, k, s, p, ceil_mode, cip), **tol(g["dtype"]))
