"""The references of fastconv.testing are themselves checked: against torch.nn.functional (when installed), against
float64 central finite differences, and through invariants that need neither."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastconv import testing as T

TOL = 1e-6  # max relative error of an analytic gradient against finite differences, float64


def distinct(rng, shape, spacing=0.1):
    """Values that are pairwise at least `spacing` apart and at least spacing/2 from zero (no max/ReLU kinks
    within a finite-difference step)."""
    size = int(np.prod(shape))
    return (rng.permutation(size) - size / 2 + 0.5).reshape(shape) * spacing


def torch_tensor(torch, a, grad=False):
    t = torch.from_numpy(np.array(a, dtype=np.float64))
    return t.requires_grad_(grad)


def assert_close(actual, expected, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------------------- helpers

def test_conv_output_size_by_hand():
    assert T.conv_output_size(7, 3) == 5
    assert T.conv_output_size(7, 3, stride=2, padding=1) == 4
    assert T.conv_output_size(10, 3, stride=1, padding=0, dilation=2) == 6
    assert T.conv_output_size(5, 2, stride=2) == 2
    assert T.conv_output_size(5, 2, stride=2, ceil_mode=True) == 3
    # ceil_mode would open a window at 6 >= size + padding = 5 (wholly in the right padding): dropped
    assert T.conv_output_size(4, 2, stride=3, padding=1, ceil_mode=True) == 2
    assert T.conv_output_size(2, 3) <= 0


def test_numerical_gradient_of_a_cube_and_restores_x(rng):
    x = rng.standard_normal((3, 4))
    dy = rng.standard_normal((3, 4))
    before = x.copy()
    g = T.numerical_gradient(lambda v: v ** 3, x, dy)
    assert np.array_equal(x, before)
    assert T.max_relative_error(g, 3 * x ** 2 * dy) < 1e-9


def test_numerical_gradient_restores_x_when_f_raises():
    x = np.array([1.0, 2.0])

    def boom(v):
        raise RuntimeError("no")
    with pytest.raises(RuntimeError):
        T.numerical_gradient(boom, x, 1.0)
    assert np.array_equal(x, [1.0, 2.0])


def test_numerical_gradient_needs_float64():
    with pytest.raises(TypeError):
        T.numerical_gradient(lambda v: v, np.ones(3, np.float32), 1.0)


def test_max_relative_error():
    assert T.max_relative_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert T.max_relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert T.max_relative_error(np.zeros(0), np.zeros(0)) == 0.0
    assert T.max_relative_error([1e-9, 4.0], [2e-9, 4.0]) == pytest.approx(1e-9 / 4.0)
    assert T.max_relative_error([1.0, 3.0], [1.0, 2.0]) == pytest.approx(1 / 3)
    assert np.isnan(T.max_relative_error([np.nan], [1.0]))
    with pytest.raises(ValueError):
        T.max_relative_error(np.zeros(2), np.zeros(3))


def test_module_imports_only_numpy():
    """Loaded by path (without the package __init__), the module pulls in numpy and nothing of fastconv."""
    path = Path(T.__file__)
    code = (
        "import importlib.util, sys\n"
        "before = set(sys.modules)\n"
        f"spec = importlib.util.spec_from_file_location('refs_alone', {str(path)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before} - {'refs_alone'}\n"
        "assert not any(m.startswith('fastconv') for m in sys.modules), sorted(sys.modules)\n"
        "assert new <= {'numpy'} | set(sys.stdlib_module_names), sorted(new)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_ref_against_matmul(rng, trans_a, trans_b):
    a = rng.standard_normal((5, 7))
    b = rng.standard_normal((7, 3))
    c = rng.standard_normal((5, 3))
    op_a = a.T.copy() if trans_a else a
    op_b = b.T.copy() if trans_b else b
    got = T.gemm_ref(op_a, op_b, trans_a, trans_b, alpha=0.5, beta=-2.0, c=c)
    assert_close(got, 0.5 * a @ b - 2.0 * c)
    nan_c = np.full((5, 3), np.nan)
    assert_close(T.gemm_ref(op_a, op_b, trans_a, trans_b, c=nan_c), a @ b)
    assert T.gemm_ref(a.astype(np.float32), b.astype(np.float32)).dtype == np.float32
    assert np.array_equal(T.gemm_ref(np.zeros((2, 0)), np.zeros((0, 3))), np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------------------- conv

# (N, C, H, W, F, kh, kw, stride, padding, dilation, groups, bias)
CONV_CASES = [
    (2, 3, 7, 7, 4, 3, 3, 1, 0, 1, 1, True),
    (1, 4, 9, 8, 6, 3, 2, (2, 3), (1, 0), (2, 1), 2, True),
    (2, 4, 10, 11, 8, 5, 3, 3, 2, (1, 2), 4, True),
    (1, 6, 6, 5, 6, 1, 1, 1, 0, 1, 6, False),
    (0, 2, 5, 5, 3, 3, 3, 1, 1, 1, 1, True),
    (1, 1, 1, 1, 2, 1, 1, 1, 0, 1, 1, True),
    (1, 2, 4, 5, 3, 2, 3, 2, 1, 2, 1, False),
]


def conv_case(rng, case):
    n, c, h, w, f, kh, kw, stride, padding, dilation, groups, with_bias = case
    x = rng.standard_normal((n, c, h, w))
    weight = rng.standard_normal((f, c // groups, kh, kw))
    bias = rng.standard_normal(f) if with_bias else None
    return x, weight, bias, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_ref_against_torch(rng, case):
    torch = pytest.importorskip("torch")
    x, weight, bias, geometry = conv_case(rng, case)
    y = T.conv2d_ref(x, weight, bias, **geometry)
    expected = torch.nn.functional.conv2d(torch_tensor(torch, x), torch_tensor(torch, weight),
                                          None if bias is None else torch_tensor(torch, bias), **geometry)
    assert y.shape == tuple(expected.shape)
    assert_close(y, expected.numpy())


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_backward_ref_against_torch(rng, case):
    torch = pytest.importorskip("torch")
    x, weight, bias, geometry = conv_case(rng, case)
    xt, wt = torch_tensor(torch, x, True), torch_tensor(torch, weight, True)
    bt = torch_tensor(torch, rng.standard_normal(weight.shape[0]), True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, **geometry)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))
    dx, dw, db = T.conv2d_backward_ref(dy, x, weight, **geometry)
    assert_close(dx, xt.grad.numpy())
    assert_close(dw, wt.grad.numpy())
    assert_close(db, bt.grad.numpy())


@pytest.mark.parametrize("case", [CONV_CASES[1], CONV_CASES[2], CONV_CASES[6]])
def test_conv2d_backward_ref_against_finite_differences(rng, case):
    x, weight, bias, geometry = conv_case(rng, case)
    bias = rng.standard_normal(weight.shape[0])
    dy = rng.standard_normal(T.conv2d_ref(x, weight, bias, **geometry).shape)
    dx, dw, db = T.conv2d_backward_ref(dy, x, weight, **geometry)
    assert T.max_relative_error(dx, T.numerical_gradient(lambda v: T.conv2d_ref(v, weight, bias, **geometry),
                                                         x, dy)) < TOL
    assert T.max_relative_error(dw, T.numerical_gradient(lambda v: T.conv2d_ref(x, v, bias, **geometry),
                                                         weight, dy)) < TOL
    assert T.max_relative_error(db, T.numerical_gradient(lambda v: T.conv2d_ref(x, weight, v, **geometry),
                                                         bias, dy)) < TOL


def test_conv2d_backward_ref_need_flags(rng):
    x, weight, _, geometry = conv_case(rng, CONV_CASES[1])
    dy = rng.standard_normal(T.conv2d_ref(x, weight, **geometry).shape)
    full = T.conv2d_backward_ref(dy, x, weight, **geometry)
    for flags in [(True, False, False), (False, True, False), (False, False, True), (False, False, False)]:
        got = T.conv2d_backward_ref(dy, x, weight, **geometry, need_input_grad=flags[0],
                                    need_weight_grad=flags[1], need_bias_grad=flags[2])
        for wanted, part, reference in zip(flags, got, full):
            if wanted:
                assert np.array_equal(part, reference)
            else:
                assert part is None


def test_conv2d_ref_identity_kernels(rng):
    x = rng.standard_normal((2, 3, 5, 4))
    assert_close(T.conv2d_ref(x, np.eye(3).reshape(3, 3, 1, 1)), x)
    delta = np.zeros((3, 1, 3, 3))
    delta[:, 0, 1, 1] = 1.0
    assert_close(T.conv2d_ref(x, delta, padding=1, groups=3), x)
    # a shifted delta moves the image by one column (zero filled)
    shifted = np.zeros((3, 1, 1, 2))
    shifted[:, 0, 0, 0] = 1.0
    assert_close(T.conv2d_ref(x, shifted, padding=(0, 1), groups=3)[..., 1:], x)


def test_conv2d_ref_groups_are_separate_convolutions(rng):
    x, weight, bias, geometry = conv_case(rng, CONV_CASES[2])
    groups = geometry.pop("groups")
    y = T.conv2d_ref(x, weight, bias, groups=groups, **geometry)
    cg, fg = x.shape[1] // groups, weight.shape[0] // groups
    for g in range(groups):
        alone = T.conv2d_ref(x[:, g * cg:(g + 1) * cg], weight[g * fg:(g + 1) * fg], bias[g * fg:(g + 1) * fg],
                             **geometry)
        assert_close(y[:, g * fg:(g + 1) * fg], alone)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_backward_ref_is_the_adjoint(rng, case):
    """<conv(x, w), dy> = <x, dx> = <w, dw>: the backward is the transpose of the (bilinear) forward."""
    x, weight, _, geometry = conv_case(rng, case)
    y = T.conv2d_ref(x, weight, **geometry)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = T.conv2d_backward_ref(dy, x, weight, **geometry)
    inner = np.sum(y * dy)
    assert np.sum(x * dx) == pytest.approx(inner, rel=1e-12, abs=1e-12)
    assert np.sum(weight * dw) == pytest.approx(inner, rel=1e-12, abs=1e-12)
    assert_close(db, dy.sum(axis=(0, 2, 3)))


def test_conv2d_ref_keeps_float32(rng):
    x, weight, bias, geometry = conv_case(rng, CONV_CASES[1])
    x32, w32, b32 = x.astype(np.float32), weight.astype(np.float32), bias.astype(np.float32)
    y = T.conv2d_ref(x32, w32, b32, **geometry)
    assert y.dtype == np.float32 and y.flags.c_contiguous
    assert_close(y, T.conv2d_ref(x32.astype(np.float64), w32.astype(np.float64), b32.astype(np.float64),
                                 **geometry), rtol=1e-6, atol=1e-6)
    dy = np.ones(y.shape, np.float32)
    assert all(g.dtype == np.float32 for g in T.conv2d_backward_ref(dy, x32, w32, **geometry))


# ---------------------------------------------------------------------------------------------------- pooling

# (N, C, H, W, kernel_size, stride, padding, ceil_mode)
POOL_CASES = [
    (2, 3, 6, 6, 2, None, 0, False),
    (1, 2, 7, 8, 3, 2, 1, False),
    (2, 2, 6, 6, 3, 2, 1, True),        # ceil_mode: the last window runs past the padded input
    (1, 3, 8, 7, (3, 2), (2, 1), (1, 0), True),
    (1, 1, 7, 7, 3, 3, 0, True),
    (1, 2, 4, 4, 2, 3, 1, True),        # ceil_mode window that would start in the padding is dropped
    (0, 2, 5, 5, 3, 2, 1, False),
    (1, 1, 1, 1, 1, None, 0, False),
    (2, 2, 9, 5, (4, 2), (3, 2), (2, 1), True),
]


def pool_kwargs(case):
    return dict(kernel_size=case[4], stride=case[5], padding=case[6], ceil_mode=case[7])


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_ref_against_torch(rng, case):
    torch = pytest.importorskip("torch")
    x = distinct(rng, case[:4])
    kwargs = pool_kwargs(case)
    y, argmax = T.max_pool2d_ref(x, **kwargs)
    expected, indices = torch.nn.functional.max_pool2d(torch_tensor(torch, x), return_indices=True, **kwargs)
    assert y.shape == tuple(expected.shape)
    assert np.array_equal(y, expected.numpy())
    assert argmax.dtype == np.int64 and np.array_equal(argmax, indices.numpy())


@pytest.mark.parametrize("case", POOL_CASES[:5])
def test_max_pool2d_ref_ties_pick_first_like_torch(rng, case):
    torch = pytest.importorskip("torch")
    x = rng.integers(0, 3, size=case[:4]).astype(np.float64)  # many ties
    kwargs = pool_kwargs(case)
    y, argmax = T.max_pool2d_ref(x, **kwargs)
    expected, indices = torch.nn.functional.max_pool2d(torch_tensor(torch, x), return_indices=True, **kwargs)
    assert np.array_equal(y, expected.numpy())
    assert np.array_equal(argmax, indices.numpy())


def test_max_pool2d_ref_ties_pick_first_in_row_major_order():
    x = np.array([[[[1.0, 5.0, 5.0],
                    [5.0, 2.0, 0.0],
                    [0.0, 0.0, 0.0]]]])
    y, argmax = T.max_pool2d_ref(x, 2, stride=1)
    assert np.array_equal(y[0, 0], [[5.0, 5.0], [5.0, 2.0]])
    assert np.array_equal(argmax[0, 0], [[1, 1], [3, 4]])


def test_max_pool2d_ref_nan_propagates(rng):
    x = distinct(rng, (1, 2, 6, 6))
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 4, 5] = np.nan
    x[0, 1, 5, 4] = np.nan
    y, argmax = T.max_pool2d_ref(x, 3, stride=2, padding=1)
    planes = x.reshape(2, 36)
    for c in range(2):
        picked = planes[c][argmax[0, c]]
        assert np.array_equal(np.isnan(y[0, c]), np.isnan(picked))
        assert np.array_equal(y[0, c][~np.isnan(picked)], picked[~np.isnan(picked)])
    assert np.isnan(y[0, 0, :2, :2]).all() and np.isnan(y[0, 0]).sum() == 4
    assert np.isnan(y[0, 1, 2, 2]) and np.isnan(y[0, 1]).sum() == 1  # two NaNs, one window
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.max_pool2d(torch_tensor(torch, x), 3, 2, 1)
    assert np.array_equal(y, expected.numpy(), equal_nan=True)


def test_max_pool2d_ref_all_minus_inf_windows_give_valid_indices():
    x = np.full((1, 1, 5, 5), -np.inf)
    y, argmax = T.max_pool2d_ref(x, 3, stride=2, padding=1, ceil_mode=True)
    assert np.all(y == -np.inf)
    assert np.all((argmax >= 0) & (argmax < 25))
    # the first real position of each window, as torch
    assert np.array_equal(argmax[0, 0], [[0, 1, 3], [5, 6, 8], [15, 16, 18]])


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_ref_argmax_is_a_maximum_of_its_window(rng, case):
    x = distinct(rng, case[:4])
    kwargs = pool_kwargs(case)
    y, argmax = T.max_pool2d_ref(x, **kwargs)
    n, c, h, w = x.shape
    kh, kw = T._pair(kwargs["kernel_size"], "k")
    sh, sw = T._pair(kwargs["stride"] or kwargs["kernel_size"], "s")
    ph, pw = T._pair(kwargs["padding"], "p")
    rows, cols = argmax // w, argmax % w
    oh = np.arange(y.shape[2])[:, None]
    ow = np.arange(y.shape[3])[None, :]
    assert np.all((rows >= oh * sh - ph) & (rows < oh * sh - ph + kh) & (rows < h))
    assert np.all((cols >= ow * sw - pw) & (cols < ow * sw - pw + kw) & (cols < w))
    outputs = y.shape[2] * y.shape[3]
    assert np.array_equal(np.take_along_axis(x.reshape(n, c, h * w), argmax.reshape(n, c, outputs), axis=2),
                          y.reshape(n, c, outputs))


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_backward_ref_against_torch(rng, case):
    torch = pytest.importorskip("torch")
    x = distinct(rng, case[:4])
    kwargs = pool_kwargs(case)
    xt = torch_tensor(torch, x, True)
    yt = torch.nn.functional.max_pool2d(xt, **kwargs)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))
    _, argmax = T.max_pool2d_ref(x, **kwargs)
    assert_close(T.max_pool2d_backward_ref(dy, argmax, x.shape), xt.grad.numpy())


@pytest.mark.parametrize("case", [POOL_CASES[1], POOL_CASES[3], POOL_CASES[8]])
def test_max_pool2d_backward_ref_against_finite_differences(rng, case):
    x = distinct(rng, case[:4])
    kwargs = pool_kwargs(case)
    y, argmax = T.max_pool2d_ref(x, **kwargs)
    dy = rng.standard_normal(y.shape)
    numeric = T.numerical_gradient(lambda v: T.max_pool2d_ref(v, **kwargs)[0], x, dy)
    assert T.max_relative_error(T.max_pool2d_backward_ref(dy, argmax, x.shape), numeric) < TOL


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("case", POOL_CASES)
def test_avg_pool2d_ref_against_torch(rng, case, count_include_pad):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(case[:4])
    kwargs = dict(pool_kwargs(case), count_include_pad=count_include_pad)
    y = T.avg_pool2d_ref(x, **kwargs)
    expected = torch.nn.functional.avg_pool2d(torch_tensor(torch, x), **kwargs)
    assert y.shape == tuple(expected.shape)
    assert_close(y, expected.numpy())


def test_avg_pool2d_ref_divisor_by_hand():
    """Ones in, so each output is (real positions in the window) / divisor."""
    x = np.ones((1, 1, 6, 6))
    # kernel 3, stride 2, padding 1, ceil_mode: windows start at -1, 1, 3, 5; the last spans rows 5..7, of which
    # row 7 lies beyond the padded input (-1..6): its divisor counts rows 5..6 only.
    with_pad = T.avg_pool2d_ref(x, 3, 2, 1, ceil_mode=True, count_include_pad=True)[0, 0]
    per_axis_real = np.array([2, 3, 3, 1])
    per_axis_padded = np.array([3, 3, 3, 2])
    assert_close(with_pad, np.outer(per_axis_real, per_axis_real) / np.outer(per_axis_padded, per_axis_padded))
    without_pad = T.avg_pool2d_ref(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    assert_close(without_pad, np.ones((1, 1, 4, 4)))


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("case", POOL_CASES)
def test_avg_pool2d_backward_ref_against_torch(rng, case, count_include_pad):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(case[:4])
    kwargs = dict(pool_kwargs(case), count_include_pad=count_include_pad)
    xt = torch_tensor(torch, x, True)
    yt = torch.nn.functional.avg_pool2d(xt, **kwargs)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))
    assert_close(T.avg_pool2d_backward_ref(dy, x.shape, **kwargs), xt.grad.numpy())


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("case", [POOL_CASES[2], POOL_CASES[3], POOL_CASES[8]])
def test_avg_pool2d_backward_ref_against_finite_differences(rng, case, count_include_pad):
    x = rng.standard_normal(case[:4])
    kwargs = dict(pool_kwargs(case), count_include_pad=count_include_pad)
    dy = rng.standard_normal(T.avg_pool2d_ref(x, **kwargs).shape)
    numeric = T.numerical_gradient(lambda v: T.avg_pool2d_ref(v, **kwargs), x, dy)
    assert T.max_relative_error(T.avg_pool2d_backward_ref(dy, x.shape, **kwargs), numeric) < TOL


def test_avg_pool2d_ref_kernel_one_is_identity(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    assert_close(T.avg_pool2d_ref(x, 1), x)
    assert_close(T.avg_pool2d_backward_ref(x, x.shape, 1), x)


def test_pool_refs_keep_float32(rng):
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    y, argmax = T.max_pool2d_ref(x, 2)
    assert y.dtype == np.float32 and T.max_pool2d_backward_ref(y, argmax, x.shape).dtype == np.float32
    y = T.avg_pool2d_ref(x, 3, 2, 1)
    assert y.dtype == np.float32 and T.avg_pool2d_backward_ref(y, x.shape, 3, 2, 1).dtype == np.float32
    y = T.global_avg_pool2d_ref(x)
    assert y.dtype == np.float32 and T.global_avg_pool2d_backward_ref(y, x.shape).dtype == np.float32


def test_pool_refs_reject_padding_over_half_the_kernel():
    with pytest.raises(ValueError, match="padding"):
        T.max_pool2d_ref(np.zeros((1, 1, 5, 5)), 2, padding=2)
    with pytest.raises(ValueError, match="padding"):
        T.avg_pool2d_ref(np.zeros((1, 1, 5, 5)), (3, 2), padding=(1, 2))


def test_global_avg_pool2d_ref(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    y = T.global_avg_pool2d_ref(x)
    assert y.shape == (2, 3, 1, 1)
    torch = pytest.importorskip("torch")
    assert_close(y, torch.nn.functional.adaptive_avg_pool2d(torch_tensor(torch, x), 1).numpy())


def test_global_avg_pool2d_backward_ref_against_finite_differences(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    dy = rng.standard_normal((2, 3, 1, 1))
    numeric = T.numerical_gradient(T.global_avg_pool2d_ref, x, dy)
    assert T.max_relative_error(T.global_avg_pool2d_backward_ref(dy, x.shape), numeric) < TOL


# ---------------------------------------------------------------------------------------------------- batch norm

BN_SHAPES = [(4, 3, 5, 6), (6, 5), (1, 2, 3, 3), (2, 1, 1, 1)]


def bn_inputs(rng, shape):
    c = shape[1]
    x = rng.standard_normal(shape) * 2.0 + 0.5
    return x, rng.standard_normal(c), rng.standard_normal(c), rng.standard_normal(c), rng.uniform(0.5, 2.0, c)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_ref_against_torch(rng, shape, training):
    torch = pytest.importorskip("torch")
    x, gamma, beta, running_mean, running_var = bn_inputs(rng, shape)
    rm_t, rv_t = torch_tensor(torch, running_mean), torch_tensor(torch, running_var)
    expected = torch.nn.functional.batch_norm(torch_tensor(torch, x), rm_t, rv_t, torch_tensor(torch, gamma),
                                              torch_tensor(torch, beta), training=training, momentum=0.3, eps=1e-3)
    y, (mean, invstd) = T.batch_norm_ref(x, gamma, beta, running_mean, running_var, training=training,
                                         momentum=0.3, eps=1e-3)
    assert_close(y, expected.numpy())
    assert_close(running_mean, rm_t.numpy())
    assert_close(running_var, rv_t.numpy())
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    if training:
        assert_close(mean, x.mean(axis=axes))
        assert_close(invstd, 1 / np.sqrt(x.var(axis=axes) + 1e-3))
    else:
        assert_close(mean, running_mean)
        assert_close(invstd, 1 / np.sqrt(running_var + 1e-3))


def test_batch_norm_ref_running_update_by_hand():
    x = np.array([[1.0], [2.0], [6.0]])  # one channel: mean 3, biased var 14/3, unbiased var 7
    running_mean, running_var = np.array([1.0]), np.array([2.0])
    y, (mean, invstd) = T.batch_norm_ref(x, np.ones(1), np.zeros(1), running_mean, running_var, momentum=0.25,
                                         eps=0.0)
    assert_close(mean, [3.0])
    assert_close(invstd, [np.sqrt(3 / 14)])
    assert_close(running_mean, [0.75 * 1 + 0.25 * 3])
    assert_close(running_var, [0.75 * 2 + 0.25 * 7])
    assert_close(y[:, 0], (x[:, 0] - 3) * np.sqrt(3 / 14))


def test_batch_norm_ref_training_normalizes_each_channel(rng):
    x = rng.standard_normal((5, 4, 3, 3)) * rng.uniform(0.5, 3, (1, 4, 1, 1)) + rng.standard_normal((1, 4, 1, 1))
    y, _ = T.batch_norm_ref(x, np.ones(4), np.zeros(4), eps=0.0)
    assert_close(y.mean(axis=(0, 2, 3)), np.zeros(4), atol=1e-12)
    assert_close(y.var(axis=(0, 2, 3)), np.ones(4))


def test_batch_norm_ref_training_refuses_one_value_per_channel():
    with pytest.raises(ValueError, match="more than one value"):
        T.batch_norm_ref(np.ones((1, 3)), np.ones(3), np.zeros(3))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_backward_ref_against_torch(rng, shape, training):
    torch = pytest.importorskip("torch")
    x, gamma, beta, running_mean, running_var = bn_inputs(rng, shape)
    xt, gt, bt = (torch_tensor(torch, a, True) for a in (x, gamma, beta))
    yt = torch.nn.functional.batch_norm(xt, torch_tensor(torch, running_mean), torch_tensor(torch, running_var),
                                        gt, bt, training=training, eps=1e-3)
    dy = rng.standard_normal(shape)
    yt.backward(torch.from_numpy(dy))
    _, saved = T.batch_norm_ref(x, gamma, beta, running_mean, running_var, training=training, eps=1e-3)
    dx, dgamma, dbeta = T.batch_norm_backward_ref(dy, x, gamma, saved, training=training)
    assert_close(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    assert_close(dgamma, gt.grad.numpy())
    assert_close(dbeta, bt.grad.numpy())


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", BN_SHAPES[:3])
def test_batch_norm_backward_ref_against_finite_differences(rng, shape, training):
    x, gamma, beta, running_mean, running_var = bn_inputs(rng, shape)

    def forward(x_, gamma_, beta_):
        return T.batch_norm_ref(x_, gamma_, beta_, running_mean.copy(), running_var.copy(), training=training,
                                eps=1e-3)[0]
    dy = rng.standard_normal(shape)
    _, saved = T.batch_norm_ref(x, gamma, beta, running_mean.copy(), running_var.copy(), training=training,
                                eps=1e-3)
    dx, dgamma, dbeta = T.batch_norm_backward_ref(dy, x, gamma, saved, training=training)
    assert T.max_relative_error(dx, T.numerical_gradient(lambda v: forward(v, gamma, beta), x, dy)) < TOL
    assert T.max_relative_error(dgamma, T.numerical_gradient(lambda v: forward(x, v, beta), gamma, dy)) < TOL
    assert T.max_relative_error(dbeta, T.numerical_gradient(lambda v: forward(x, gamma, v), beta, dy)) < TOL


def test_batch_norm_refs_keep_float32(rng):
    x, gamma, beta, running_mean, running_var = (a.astype(np.float32) for a in bn_inputs(rng, (3, 2, 2, 2)))
    y, saved = T.batch_norm_ref(x, gamma, beta, running_mean, running_var)
    assert y.dtype == np.float32 and all(s.dtype == np.float32 for s in saved)
    assert running_mean.dtype == np.float32 and running_var.dtype == np.float32
    assert all(g.dtype == np.float32 for g in T.batch_norm_backward_ref(y, x, gamma, saved))


# ---------------------------------------------------------------------------------------------------- LRN

# (shape, size, alpha, beta, k)
LRN_CASES = [
    ((2, 7, 3, 4), 5, 1e-4, 0.75, 2.0),
    ((2, 7, 3, 4), 5, 0.5, 0.75, 2.0),
    ((1, 2, 3, 3), 5, 0.7, 0.6, 1.0),     # C < size
    ((2, 6, 2, 3), 3, 0.4, 0.75, 1.5),
    ((1, 2, 2, 2), 3, 0.9, 0.5, 1.0),     # C < size
    ((2, 5, 2, 2), 4, 0.3, 0.75, 2.0),    # even size: one more channel before than after
    ((0, 3, 2, 2), 3, 0.3, 0.75, 2.0),
]


@pytest.mark.parametrize("shape, size, alpha, beta, k", LRN_CASES)
def test_lrn_ref_against_torch(rng, shape, size, alpha, beta, k):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape) * 2
    y, scale = T.lrn_ref(x, size, alpha, beta, k)
    expected = torch.nn.functional.local_response_norm(torch_tensor(torch, x), size, alpha, beta, k)
    assert_close(y, expected.numpy())
    assert_close(y, x * scale ** -beta)


@pytest.mark.parametrize("shape, size, alpha, beta, k", LRN_CASES)
def test_lrn_backward_ref_against_torch(rng, shape, size, alpha, beta, k):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape) * 2
    xt = torch_tensor(torch, x, True)
    yt = torch.nn.functional.local_response_norm(xt, size, alpha, beta, k)
    dy = rng.standard_normal(shape)
    yt.backward(torch.from_numpy(dy))
    y, scale = T.lrn_ref(x, size, alpha, beta, k)
    assert_close(T.lrn_backward_ref(dy, x, y, scale, size, alpha, beta, k), xt.grad.numpy())


@pytest.mark.parametrize("shape, size, alpha, beta, k", LRN_CASES[1:6])
def test_lrn_backward_ref_against_finite_differences(rng, shape, size, alpha, beta, k):
    x = rng.standard_normal(shape) * 2
    dy = rng.standard_normal(shape)
    y, scale = T.lrn_ref(x, size, alpha, beta, k)
    numeric = T.numerical_gradient(lambda v: T.lrn_ref(v, size, alpha, beta, k)[0], x, dy)
    assert T.max_relative_error(T.lrn_backward_ref(dy, x, y, scale, size, alpha, beta, k), numeric) < TOL


def test_lrn_ref_scale_by_hand():
    x = np.arange(1.0, 5.0).reshape(1, 4, 1, 1)  # channels 1, 2, 3, 4; squares 1, 4, 9, 16
    _, scale = T.lrn_ref(x, size=3, alpha=3.0, beta=1.0, k=1.0)
    assert_close(scale.ravel(), 1.0 + np.array([1 + 4, 1 + 4 + 9, 4 + 9 + 16, 9 + 16]))
    _, scale = T.lrn_ref(x, size=4, alpha=4.0, beta=1.0, k=0.0)  # 2 channels before, 1 after
    assert_close(scale.ravel(), [1 + 4, 1 + 4 + 9, 1 + 4 + 9 + 16, 4 + 9 + 16])
    _, scale = T.lrn_ref(x, size=1, alpha=1.0, beta=1.0, k=2.0)
    assert_close(scale.ravel(), 2.0 + x.ravel() ** 2)


def test_lrn_refs_keep_float32(rng):
    x = rng.standard_normal((1, 4, 2, 2)).astype(np.float32)
    y, scale = T.lrn_ref(x, 3)
    assert y.dtype == np.float32 and scale.dtype == np.float32
    assert T.lrn_backward_ref(y, x, y, scale, 3).dtype == np.float32


# ---------------------------------------------------------------------------------------------------- activations

def test_relu_ref(rng):
    x = distinct(rng, (2, 3, 4, 5))
    y = T.relu_ref(x)
    assert_close(y, np.where(x > 0, x, 0.0))
    assert np.isnan(T.relu_ref(np.array([np.nan]))[0])
    torch = pytest.importorskip("torch")
    assert_close(y, torch.relu(torch_tensor(torch, x)).numpy())


def test_relu_backward_ref_plain_against_torch_and_finite_differences(rng):
    x = distinct(rng, (2, 3, 4, 5))
    dy = rng.standard_normal(x.shape)
    dx = T.relu_backward_ref(dy, x)
    assert T.max_relative_error(dx, T.numerical_gradient(T.relu_ref, x, dy)) < TOL
    torch = pytest.importorskip("torch")
    xt = torch_tensor(torch, x, True)
    torch.relu(xt).backward(torch.from_numpy(dy))
    assert_close(dx, xt.grad.numpy())


def test_relu_backward_ref_rules_by_hand():
    x = np.array([-1.0, -1.0, 2.0, 2.0, 0.0])
    dy = np.array([-3.0, 4.0, -5.0, 6.0, 7.0])
    assert np.array_equal(T.relu_backward_ref(dy, x, "plain"), [0, 0, -5, 6, 0])
    assert np.array_equal(T.relu_backward_ref(dy, x, "guided"), [0, 0, 0, 6, 0])
    assert np.array_equal(T.relu_backward_ref(dy, x, "deconvnet"), [0, 4, 0, 6, 7])
    with pytest.raises(ValueError, match="rule"):
        T.relu_backward_ref(dy, x, "leaky")
    assert T.relu_backward_ref(dy.astype(np.float32), x.astype(np.float32), "guided").dtype == np.float32


def test_dropout_backward_ref_against_finite_differences(rng):
    x = rng.standard_normal((3, 4, 2, 2))
    mask = rng.random(x.shape) > 0.3
    dy = rng.standard_normal(x.shape)
    numeric = T.numerical_gradient(lambda v: v * mask / (1 - 0.3), x, dy)
    assert T.max_relative_error(T.dropout_backward_ref(dy, mask, 0.3), numeric) < TOL
    assert T.dropout_backward_ref(dy.astype(np.float32), mask, 0.3).dtype == np.float32


# ---------------------------------------------------------------------------------------------------- linear, losses

@pytest.mark.parametrize("n", [0, 1, 5])
def test_linear_refs_against_torch(rng, n):
    torch = pytest.importorskip("torch")
    x, weight, bias = rng.standard_normal((n, 7)), rng.standard_normal((4, 7)), rng.standard_normal(4)
    xt, wt, bt = (torch_tensor(torch, a, True) for a in (x, weight, bias))
    yt = torch.nn.functional.linear(xt, wt, bt)
    assert_close(T.linear_ref(x, weight, bias), yt.detach().numpy())
    assert_close(T.linear_ref(x, weight), torch.nn.functional.linear(xt, wt).detach().numpy())
    dy = rng.standard_normal((n, 4))
    yt.backward(torch.from_numpy(dy))
    dx, dw, db = T.linear_backward_ref(dy, x, weight)
    assert_close(dx, xt.grad.numpy())
    assert_close(dw, wt.grad.numpy())
    assert_close(db, bt.grad.numpy())


def test_linear_backward_ref_against_finite_differences(rng):
    x, weight, bias = rng.standard_normal((3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    dy = rng.standard_normal((3, 4))
    dx, dw, db = T.linear_backward_ref(dy, x, weight)
    assert T.max_relative_error(dx, T.numerical_gradient(lambda v: T.linear_ref(v, weight, bias), x, dy)) < TOL
    assert T.max_relative_error(dw, T.numerical_gradient(lambda v: T.linear_ref(x, v, bias), weight, dy)) < TOL
    assert T.max_relative_error(db, T.numerical_gradient(lambda v: T.linear_ref(x, weight, v), bias, dy)) < TOL
    no_dx, dw_again, _ = T.linear_backward_ref(dy, x, weight, need_input_grad=False)
    assert no_dx is None and np.array_equal(dw_again, dw)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_refs(rng, axis):
    x = rng.standard_normal((3, 5, 4)) * 3
    x[0, 0, 0] = 1000.0  # stability: no overflow
    p = T.softmax_ref(x, axis=axis)
    log_p = T.log_softmax_ref(x, axis=axis)
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(log_p))
    assert_close(p.sum(axis=axis), np.ones(np.delete(x.shape, axis)))
    assert_close(np.exp(log_p), p)
    assert_close(T.softmax_ref(x + 7.0, axis=axis), p)
    torch = pytest.importorskip("torch")
    assert_close(p, torch.softmax(torch_tensor(torch, x), dim=axis).numpy())
    assert_close(log_p, torch.log_softmax(torch_tensor(torch, x), dim=axis).numpy())


def test_softmax_cross_entropy_ref(rng):
    logits = rng.standard_normal((6, 5)) * 3
    logits[2] += 1000.0
    labels = rng.integers(0, 5, 6)
    loss, probs = T.softmax_cross_entropy_ref(logits, labels)
    assert np.isfinite(loss)
    assert_close(probs, T.softmax_ref(logits, axis=1))
    uniform_loss, _ = T.softmax_cross_entropy_ref(np.zeros((3, 7)), [0, 3, 6])
    assert uniform_loss == pytest.approx(np.log(7))
    loss32, probs32 = T.softmax_cross_entropy_ref(logits.astype(np.float32), labels)
    assert loss32.dtype == np.float32 and probs32.dtype == np.float32
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.cross_entropy(torch_tensor(torch, logits), torch.from_numpy(labels))
    assert loss == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("dloss", [1.0, -2.5])
def test_softmax_cross_entropy_backward_ref(rng, dloss):
    logits = rng.standard_normal((4, 6)) * 2
    labels = rng.integers(0, 6, 4)
    _, probs = T.softmax_cross_entropy_ref(logits, labels)
    dlogits = T.softmax_cross_entropy_backward_ref(probs, labels, dloss)
    numeric = T.numerical_gradient(lambda v: T.softmax_cross_entropy_ref(v, labels)[0], logits, dloss)
    assert T.max_relative_error(dlogits, numeric) < TOL
    torch = pytest.importorskip("torch")
    lt = torch_tensor(torch, logits, True)
    (torch.nn.functional.cross_entropy(lt, torch.from_numpy(labels)) * dloss).backward()
    assert_close(dlogits, lt.grad.numpy())


def test_winograd_bounds_dominate_the_direct_sums():
    """The Winograd error bounds run the same sums with more (absolute) terms: never below sum |x| |w|, and equal
    to it nowhere in general (the transforms mix neighbouring pixels in)."""
    from fastconv.testing import (conv2d_backward_ref, conv2d_ref, conv2d_winograd_bound,
                                  conv2d_winograd_weight_grad_bound)
    rng = np.random.default_rng(0)
    for n, c, f, h, w, padding, groups in [(2, 4, 6, 7, 9, 1, 2), (1, 3, 2, 3, 3, 0, 1), (2, 2, 2, 5, 4, (2, 0), 1)]:
        x = rng.standard_normal((n, c, h, w))
        weight = rng.standard_normal((f, c // groups, 3, 3))
        bound = conv2d_winograd_bound(x, weight, padding=padding, groups=groups)
        direct = conv2d_ref(np.abs(x), np.abs(weight), padding=padding, groups=groups)
        assert bound.shape == direct.shape
        assert np.all(bound >= direct * (1 - 1e-12)) and np.any(bound > 1.5 * direct)
        dy = rng.standard_normal(direct.shape)
        _, dw_direct, _ = conv2d_backward_ref(np.abs(dy), np.abs(x), np.abs(weight), padding=padding, groups=groups)
        dw_bound = conv2d_winograd_weight_grad_bound(dy, x, padding=padding, groups=groups)
        assert dw_bound.shape == weight.shape
        assert np.all(dw_bound >= dw_direct * (1 - 1e-12)) and np.any(dw_bound > 1.5 * dw_direct)
    with pytest.raises(ValueError, match="3x3"):
        conv2d_winograd_bound(np.ones((1, 2, 5, 5)), np.ones((2, 2, 5, 5)))
