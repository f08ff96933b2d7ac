"""An inception block's pool branch as one call (F.conv2d_pooled: a 3x3 stride-1 max pool, then the convolution,
the pooled input kept in a per-thread buffer) and the inference step that uses it: bit for bit what max_pool2d
followed by conv2d gives, on every arch, thread count and dtype."""
import numpy as np
import pytest

import fastconv
import fastconv.functional as F
import fastconv.nn as nn
from fastconv import _C

# (x shape, filters, groups). 28x28 and 14x14 outputs run image after image, 7x7 batches images; 600 channels run
# more than one kc block; 9x5 is not square.
CASES = {
    "28x28": ((3, 24, 28, 28), 16, 1),
    "14x14": ((2, 40, 14, 14), 20, 1),
    "7x7_batched": ((5, 36, 7, 7), 24, 1),
    "deep": ((2, 600, 7, 7), 9, 1),
    "groups_non_square": ((3, 16, 9, 5), 8, 2),
    "one_image": ((1, 12, 20, 20), 5, 1),
    "no_image": ((0, 12, 6, 6), 5, 1),
}
DTYPES = [np.float32, np.float64]


def special_input(rng, shape, dtype):
    """Normal values with NaNs, -inf and signed zeros sprinkled in: the pool's rules for them must survive."""
    x = rng.standard_normal(shape).astype(dtype)
    if x.size:
        for value in (np.nan, -np.inf, -0.0, 0.0):
            x.flat[rng.integers(0, x.size, 4)] = value
    return x


def fused(x, w, groups):
    return _C.conv2d_pooled_input_fused(x.shape, w.shape, (1, 1), (0, 0), (1, 1), groups, x.dtype.itemsize)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pooled_convolution_equals_pool_then_conv(arch, nthreads, dtype, case, rng):
    xs, f, groups = CASES[case]
    x = special_input(rng, xs, dtype)
    w = rng.standard_normal((f, xs[1] // groups, 1, 1)).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    scale = rng.standard_normal(f).astype(dtype)
    assert fused(x, w, groups)  # the fused path is what this test checks
    pooled = F.max_pool2d(x, 3, 1, 1, indices=False)
    want = F.conv2d(pooled, w, b, groups=groups, scale=scale, relu=True)
    np.testing.assert_array_equal(F.conv2d_pooled(x, w, b, groups=groups, scale=scale, relu=True), want)
    prepared = F.conv2d_prepare_weights(w, x.shape, groups=groups)
    np.testing.assert_array_equal(
        F.conv2d_pooled(x, w, b, groups=groups, scale=scale, relu=True, prepared=prepared), want)
    # a residual, and no bias or ReLU
    res = rng.standard_normal(want.shape).astype(dtype)
    np.testing.assert_array_equal(F.conv2d_pooled(x, w, groups=groups, residual=res),
                                  F.conv2d(pooled, w, groups=groups, residual=res))
    # into a channel slice of a wider output (an inception block's concatenation)
    buf = np.full((xs[0], f + 7) + want.shape[2:], np.nan, dtype)
    y = F.conv2d_pooled(x, w, b, groups=groups, scale=scale, relu=True, out=buf[:, 3:3 + f])
    np.testing.assert_array_equal(y, want)
    assert np.isnan(buf[:, :3]).all() and np.isnan(buf[:, 3 + f:]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_off_the_fused_path_pool_then_convolve(dtype, rng):
    """A 3x3 kernel, a stride, padding or a 1x1 input: pooled first, then convolved; the same values."""
    x = special_input(rng, (2, 6, 9, 8), dtype)
    for w_shape, stride, padding in (((4, 6, 3, 3), 1, 1), ((4, 6, 1, 1), 2, 0), ((4, 6, 1, 1), 1, 1)):
        w = rng.standard_normal(w_shape).astype(dtype)
        assert not _C.conv2d_pooled_input_fused(x.shape, w.shape, (stride,) * 2, (padding,) * 2, (1, 1), 1,
                                                x.dtype.itemsize)
        want = F.conv2d(F.max_pool2d(x, 3, 1, 1, indices=False), w, None, stride, padding)
        np.testing.assert_array_equal(F.conv2d_pooled(x, w, None, stride, padding), want)
    one = rng.standard_normal((3, 5, 1, 1)).astype(dtype)
    w = rng.standard_normal((2, 5, 1, 1)).astype(dtype)
    assert not fused(one, w, 1)
    np.testing.assert_array_equal(F.conv2d_pooled(one, w), F.conv2d(one, w))


def test_pooled_convolution_names_bad_arguments(rng):
    x = rng.standard_normal((2, 6, 8, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"weight \(4, 5, 1, 1\) expects 5 input channels"):
        F.conv2d_pooled(x, np.ones((4, 5, 1, 1), np.float32))
    with pytest.raises(TypeError, match="weight dtype float64 differs from x dtype float32"):
        F.conv2d_pooled(x, np.ones((4, 6, 1, 1)))
    with pytest.raises(ValueError, match="x must be 4-D"):
        F.conv2d_pooled(x[0], np.ones((4, 6, 1, 1), np.float32))


def pool_branch(c, f):
    return nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(c, f, 1), nn.ReLU())


@pytest.mark.parametrize("prepared", [False, True])
def test_inference_runs_a_pool_branch_as_one_call(nthreads, prepared, rng, monkeypatch):
    """Under no_grad a Sequential's 3x3 stride-1 max pool and the 1x1 convolution after it go to F.conv2d_pooled
    (the pool is not run alone), inside an inception Concat too; the output is the training path's bit for bit."""
    calls = []
    real = F.conv2d_pooled
    monkeypatch.setattr(F, "conv2d_pooled", lambda *a, **k: calls.append(1) or real(*a, **k))
    block = nn.Concat(nn.Sequential(nn.Conv2d(12, 5, 1), nn.ReLU()), pool_branch(12, 7))
    x = special_input(rng, (3, 12, 10, 10), np.float32)
    want = block.forward(x)  # grad enabled: each layer on its own
    assert not calls
    block.eval()
    if prepared:
        block.prepare_inference()
    with fastconv.no_grad():
        got = block.forward(x)
    assert len(calls) == 1
    np.testing.assert_array_equal(got, want)


def test_pool_branch_shapes_that_do_not_fuse_run_as_layers(rng, monkeypatch):
    """A pool with another stride, kernel or padding, or a convolution that is not 1x1, keeps the separate calls."""
    calls = []
    monkeypatch.setattr(F, "conv2d_pooled", lambda *a, **k: calls.append(1))
    x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
    for pool, conv in ((nn.MaxPool2d(3), nn.Conv2d(4, 3, 1)), (nn.MaxPool2d(3, 1, 0), nn.Conv2d(4, 3, 1)),
                       (nn.MaxPool2d(2, 1, 1), nn.Conv2d(4, 3, 1)), (nn.MaxPool2d(3, 1, 1), nn.Conv2d(4, 3, 3))):
        model = nn.Sequential(pool, conv).eval()
        want = model.forward(x)
        with fastconv.no_grad():
            np.testing.assert_array_equal(model.forward(x), want)
    assert not calls


def test_binding_refuses_layers_it_cannot_pool_in_place(rng):
    """The C entry point takes only pointwise GEMM-path layers; any other gets an error, not a wrong result."""
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    y = np.empty((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="invalid argument"):
        _C.conv2d_forward(x, y, w, None, (1, 1), (0, 0), (1, 1), 1, None, False, None, None, True)
