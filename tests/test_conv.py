"""conv2d and conv2d_backward against independent references.

Oracles: fastconv.testing's NumPy references (window views + einsum, computed in float64), float64 central
finite differences, and torch.nn.functional.conv2d + autograd when torch is installed. Results are compared
entry by entry against a rounding-error bound: a sum of K products computed in floating point (any order, with
or without FMA) is within K * eps/2 * sum|products| of the exact value, and the float64 reference is within the
same bound, so ``|ours - ref| <= (K + 2) * eps * bound`` where `bound` is the same operation applied to the
absolute values of the operands. Entries whose bound is 0 (input pixels no window reads) must be exactly 0.

The C engine has three ways to run a convolution, and the explicit cases below reach each of them:
  - large images (oh*ow >= 2048): one GEMM per image, batch-parallel when n >= threads, else GEMM-parallel;
  - small images: several images side by side in one GEMM (their count capped by a staging buffer);
  - pointwise (1x1, stride 1, no padding): the image is its own column matrix;
and the input gradient is computed one tile of 2**20 // (C/groups*kh*kw) columns (at least 16) at a time.
"""
import collections
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import _C
from fastconv.functional import conv2d, conv2d_backward
from fastconv.testing import (conv2d_backward_ref, conv2d_ref, conv2d_winograd_bound, conv2d_winograd_weight_grad_bound,
                              max_relative_error, numerical_gradient)

DTYPES = [np.float32, np.float64]
MIN_COLS = 2048          # FC_CONV_MIN_COLS: images with fewer output pixels are batched into one GEMM
TILE_ELEMS = 2 ** 20     # FC_CONV_TILE_ELEMS: kdim x columns of one input-gradient tile


# ---------------------------------------------------------------------------------------------------- helpers

def make_problem(rng, x_shape, w_shape, dtype, bias=True):
    """x, weight, bias (or None) with standard normal entries of `dtype`."""
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    return x, weight, b


def assert_within_rounding(actual, expected, bound, terms, dtype, what):
    """|actual - expected| <= (terms + 2) * eps * bound, entry by entry (see the module docstring)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {np.dtype(dtype)}"
    err = np.abs(actual.astype(np.float64) - expected)
    tol = (terms + 2) * np.finfo(dtype).eps * bound
    bad = ~(err <= tol)  # NaN counts as bad
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, err - tol, -np.inf)), err.shape)
        raise AssertionError(f"{what}: {int(bad.sum())} of {err.size} entries outside the rounding bound; at "
                             f"{tuple(int(i) for i in worst)} got {actual[worst]!r}, expected {expected[worst]!r} "
                             f"(tolerance {tol[worst]:.3g})")


def check_conv(x, weight, b, dtype, geometry, rng):
    """Forward and all three gradients of fastconv against the float64 reference, within rounding bounds."""
    stride, padding, dilation, groups = (geometry.get(k, d) for k, d in
                                         (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)))
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    x64, w64 = x.astype(np.float64), weight.astype(np.float64)
    b64 = None if b is None else b.astype(np.float64)
    f, cg, kh, kw = weight.shape
    originals = [None if a is None else a.copy() for a in (x, weight, b)]
    y = conv2d(x, weight, b, **kwargs)
    y_ref = conv2d_ref(x64, w64, b64, **kwargs)
    y_bound = conv2d_ref(np.abs(x64), np.abs(w64), None if b is None else np.abs(b64), **kwargs)
    assert_within_rounding(y, y_ref, y_bound, cg * kh * kw, dtype, "y")

    dy = rng.standard_normal(y.shape).astype(dtype)
    dy64 = dy.astype(np.float64)
    originals.append(dy.copy())
    dx, dw, db = conv2d_backward(dy, x, weight, **kwargs)
    dx_ref, dw_ref, db_ref = conv2d_backward_ref(dy64, x64, w64, **kwargs)
    dx_bound, dw_bound, db_bound = conv2d_backward_ref(np.abs(dy64), np.abs(x64), np.abs(w64), **kwargs)
    n, _, oh, ow = y.shape
    assert_within_rounding(dx, dx_ref, dx_bound, f // groups * kh * kw, dtype, "dx")
    assert_within_rounding(dw, dw_ref, dw_bound, n * oh * ow, dtype, "dw")
    assert_within_rounding(db, db_ref, db_bound, n * oh * ow, dtype, "db")
    for what, out in (("y", y), ("dx", dx), ("dw", dw), ("db", db)):
        assert out.flags.c_contiguous and out.flags.owndata, f"{what} is not a new C-contiguous array"
    for what, before, after in zip(("x", "weight", "bias", "dy"), originals, (x, weight, b, dy)):
        assert before is None or np.array_equal(before, after), f"{what} was modified"


def run_case(x_shape, w_shape, geometry, seed=0):
    """check_conv for float32 and float64 (with bias)."""
    for dtype in DTYPES:
        rng = np.random.default_rng(seed)
        x, weight, b = make_problem(rng, x_shape, w_shape, dtype)
        check_conv(x, weight, b, dtype, geometry, rng)


def output_pixels(x_shape, w_shape, stride=1, padding=0, dilation=1, **_):
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    oh = (x_shape[2] + 2 * ph - dh * (w_shape[2] - 1) - 1) // sh + 1
    ow = (x_shape[3] + 2 * pw - dw * (w_shape[3] - 1) - 1) // sw + 1
    return oh * ow


# ---------------------------------------------------------------------------------------------------- 1. property

@st.composite
def conv_problems(draw):
    groups = draw(st.integers(1, 3))
    cg, fg = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    n = draw(st.integers(0, 3))
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    stride = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    dilation = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    # smallest input the (dilated) kernel fits in once padded, up to 9 more
    h_min = max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0])
    w_min = max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1])
    h, w = draw(st.integers(h_min, h_min + 9)), draw(st.integers(w_min, w_min + 9))

    def as_arg(pair):  # an int when both sides agree, sometimes
        return pair[0] if pair[0] == pair[1] and draw(st.booleans()) else pair
    geometry = dict(stride=as_arg(stride), padding=as_arg(padding), dilation=as_arg(dilation), groups=groups)
    return dict(x_shape=(n, groups * cg, h, w), w_shape=(groups * fg, cg, kh, kw), geometry=geometry,
                dtype=draw(st.sampled_from(DTYPES)), bias=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 32 - 1)))


@pytest.fixture(params=["never", "always"])
def direct_mode(request):
    """Run layers on the GEMM path, then on the direct kernels (the default picks per layer)."""
    previous = _C.conv2d_direct_mode(request.param)
    yield request.param
    _C.conv2d_direct_mode(previous)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problem=conv_problems())
def test_conv_matches_reference_property(arch, nthreads, direct_mode, problem):
    rng = np.random.default_rng(problem["seed"])
    x, weight, b = make_problem(rng, problem["x_shape"], problem["w_shape"], problem["dtype"], problem["bias"])
    check_conv(x, weight, b, problem["dtype"], problem["geometry"], rng)


# ---------------------------------------------------------------------------------------------------- 2. modes

# (x shape, weight shape, geometry): each reaches a mode or a tiling boundary the property test rarely does.
MODE_CASES = {
    # large images, one GEMM each: n=1 < 2 threads (GEMM-parallel), n=3 >= threads (batch-parallel)
    "large_n1": ((1, 2, 48, 48), (3, 2, 3, 3), dict(padding=1)),
    "large_n3": ((3, 2, 46, 46), (3, 2, 3, 3), dict(padding=1)),
    "large_n2_groups_stride_dilation": ((2, 4, 100, 100), (4, 2, 3, 3),
                                        dict(stride=2, padding=2, dilation=2, groups=2)),
    # more columns than the float32 GEMM's nc (4096) in one image
    "large_wider_than_nc": ((1, 2, 66, 66), (3, 2, 3, 3), dict(padding=1)),
    # small images: 21 images per GEMM wanted, run as 3 equal batches of 15 (one per thread with 2 threads);
    # F=40 makes the output scatter multi-threaded when a batch runs on every thread
    "batched_uneven": ((45, 3, 10, 10), (40, 3, 3, 3), dict(padding=1)),
    "batched_groups3": ((7, 6, 9, 9), (6, 2, 3, 2), dict(stride=(2, 1), padding=(1, 0), groups=3)),
    # the staging buffer caps images per GEMM: 2100 x 16 columns each -> 124 of 128 wanted; 130 = 65 + 65
    "batched_capped": ((130, 1, 8, 8), (2100, 1, 1, 1), dict(stride=2)),
    # pointwise: large and small images, groups 2, and dilation (meaningless for 1x1) still pointwise
    "pointwise_large": ((2, 4, 48, 48), (6, 2, 1, 1), dict(groups=2)),
    "pointwise_large_n1": ((1, 4, 48, 48), (6, 2, 1, 1), dict(groups=2, dilation=2)),
    "pointwise_small": ((7, 4, 10, 10), (6, 2, 1, 1), dict(groups=2)),
    # not pointwise though 1x1: stride 2, padding 1
    "one_by_one_strided": ((3, 4, 11, 11), (5, 4, 1, 1), dict(stride=2)),
    "one_by_one_padded": ((3, 4, 11, 11), (5, 4, 1, 1), dict(padding=1)),
    # strided 1x1 with >= 192 output pixels: image after image, the input sampled at the stride first
    "one_by_one_strided_large": ((2, 6, 40, 41), (5, 6, 1, 1), dict(stride=2)),
    "one_by_one_strided_large_groups": ((1, 6, 45, 41), (4, 3, 1, 1), dict(stride=(2, 3), groups=2)),
    # one image with 2^16 sampled values per group: the sampling itself runs over the threads (batch 1)
    "one_by_one_strided_n1_sampled_in_parallel": ((1, 32, 64, 130), (6, 32, 1, 1), dict(stride=2)),
    # deep kernels: the input gradient's tile has fewer columns than the GEMM. kdim = 64*49 = 3136 gives 334-column
    # tiles (oh*ow = 2116 in large mode; 3*144 batched, tiles crossing image boundaries); kdim = 16*49 = 784
    # gives 1337 (two tiles per image, batch-parallel with 2 threads)
    "deep_large_n1": ((1, 64, 46, 46), (2, 64, 7, 7), dict(padding=3)),
    "deep_large_n2": ((2, 16, 46, 46), (3, 16, 7, 7), dict(padding=3)),
    "deep_batched": ((3, 64, 12, 12), (3, 64, 7, 7), dict(padding=3)),
    # kdim = 257*16*16 = 65792 > 2**20/16: the tile is clamped to 16 columns (3 images x 9 columns)
    "deepest_tile_16": ((3, 257, 18, 18), (2, 257, 16, 16), dict()),
    # input gradient as a forward convolution of dy with the flipped weights (c/groups >= 32, stride 1): groups,
    # dilation, non-square kernel with unequal padding; then padding beyond the kernel's extent (col2im instead)
    "flipped_groups_dilation": ((2, 64, 20, 20), (48, 32, 3, 3), dict(padding=2, dilation=2, groups=2)),
    "flipped_large_nonsquare": ((3, 32, 30, 30), (16, 32, 5, 3), dict(padding=(2, 0))),
    "padding_beyond_kernel": ((2, 32, 10, 10), (8, 32, 3, 3), dict(padding=3)),
    # dense: the kernel covers the whole unpadded input (LeNet's C5), run as a fully connected layer; non-square,
    # deeper than kc (30 x 4 x 4 = 480), a stride that changes nothing; with groups it is not dense
    "dense_lenet_c5": ((5, 16, 5, 5), (12, 16, 5, 5), dict()),
    "dense_nonsquare": ((3, 4, 3, 7), (9, 4, 3, 7), dict()),
    "dense_deep": ((3, 30, 4, 4), (10, 30, 4, 4), dict()),
    "dense_strided": ((3, 4, 5, 5), (7, 4, 5, 5), dict(stride=2)),
    "dense_one_image": ((1, 4, 5, 5), (7, 4, 5, 5), dict()),
    "whole_input_groups": ((3, 4, 5, 5), (6, 2, 5, 5), dict(groups=2)),
}


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_conv_modes(arch, nthreads, direct_mode, case):
    x_shape, w_shape, geometry = MODE_CASES[case]
    run_case(x_shape, w_shape, geometry)


@pytest.fixture(params=["col2im", "flipped"])
def input_grad_method(request):
    """Pin each input-gradient method in turn (the default picks one per layer)."""
    previous = _C.conv2d_input_grad_method(request.param)
    yield request.param
    _C.conv2d_input_grad_method(previous)


@pytest.mark.parametrize("case", list(MODE_CASES))
def test_conv_modes_each_input_grad_method(arch, nthreads, input_grad_method, case):
    x_shape, w_shape, geometry = MODE_CASES[case]
    run_case(x_shape, w_shape, geometry)


# Direct kernels: tiles of filters (6 on AVX-512/AVX2, 4 portable) x pixel vectors, and of filters x taps for the
# weight gradient; these cover partial filter blocks, every vector count of the last pixel block, taps not a
# multiple of the tile, groups, dilation, padding, and staged batches of several images across threads.
DIRECT_CASES = {
    "lenet_conv1": ((5, 1, 32, 32), (6, 1, 5, 5), dict()),
    "lenet_conv2": ((9, 6, 14, 14), (16, 6, 5, 5), dict()),
    "filters_7_taps_odd": ((3, 3, 11, 13), (7, 3, 3, 2), dict(padding=(1, 2))),
    "groups_dilation": ((4, 6, 15, 12), (10, 3, 3, 3), dict(padding=2, dilation=2, groups=2)),
    "single_pixel_rows": ((3, 2, 5, 1), (5, 2, 3, 1), dict(padding=(1, 0))),
    "many_images_staged": ((70, 4, 20, 20), (12, 4, 3, 3), dict(padding=1)),
    # strided layers on their phase planes: rows of one full vector and a partial one (ow = 23), strides and
    # dilations that differ per axis, groups, and single images whose rows (long rows: ow = 70) or filter blocks
    # (rows shorter than a kernel's tile on AVX-512: ow = 35) are split over the threads
    "strided_first_layer": ((3, 3, 23, 45), (20, 3, 7, 7), dict(stride=2, padding=3)),
    "strided_unequal_dilated": ((2, 2, 19, 40), (7, 2, 3, 4), dict(stride=(3, 2), padding=(1, 2), dilation=(2, 1))),
    "strided_groups": ((2, 4, 17, 35), (6, 2, 5, 3), dict(stride=(2, 3), padding=(2, 1), groups=2)),
    "strided_one_image": ((1, 3, 30, 70), (12, 3, 7, 7), dict(stride=2, padding=3)),
    "strided_one_image_long_rows": ((1, 3, 12, 140), (12, 3, 7, 7), dict(stride=2, padding=3)),
    "strided_many_filters": ((3, 3, 23, 21), (64, 3, 7, 7), dict(stride=2, padding=3)),
    "strided_odd_filters_unequal_strides": ((2, 2, 11, 13), (37, 2, 3, 5), dict(stride=(2, 3), padding=(1, 2))),
}


@pytest.mark.parametrize("case", list(DIRECT_CASES))
def test_direct_kernels(arch, nthreads, direct_mode, case):
    x_shape, w_shape, geometry = DIRECT_CASES[case]
    g = {**dict(stride=1, padding=0, dilation=1, groups=1), **geometry}
    pair = lambda v: v if isinstance(v, tuple) else (v, v)
    path = _C.conv2d_forward_path(x_shape, w_shape, pair(g["stride"]), pair(g["padding"]), pair(g["dilation"]),
                                  g["groups"], 4)
    assert path == ("gemm" if direct_mode == "never" else "direct")
    run_case(x_shape, w_shape, geometry)


def test_strided_direct_auto_choice():
    """Auto takes strided layers to the direct kernels only with a first layer's few channels and a kernel of at
    least 3x3."""
    path = lambda x, w, s=(2, 2), p=(3, 3), g=1: _C.conv2d_forward_path(x, w, s, p, (1, 1), g, 4)
    assert path((8, 3, 224, 224), (64, 3, 7, 7)) == "direct"
    assert path((8, 64, 56, 56), (128, 64, 3, 3), p=(1, 1)) == "gemm"  # many channels
    assert path((8, 3, 56, 56), (64, 3, 1, 1), p=(0, 0)) == "gemm"     # 1x1
    assert path((8, 3, 224, 224), (200, 3, 7, 7)) != "direct"          # more filters than the direct kernels take


@pytest.fixture(params=["wide", "lanes"])
def direct_layout(request):
    """The direct forward on each pixel layout: padded rows of one image, or one image per vector lane."""
    previous = _C.conv2d_direct_layout(request.param)
    yield request.param
    _C.conv2d_direct_layout(previous)


@pytest.mark.parametrize("case", list(DIRECT_CASES) + ["lanes_partial_group"])
def test_direct_kernels_each_layout(arch, nthreads, direct_layout, case):
    """Forward, input gradient (a flipped forward on the same kernels) and weight gradient on both layouts; the
    lanes layout with batches that fill no, one or several groups of vector-length images (70 = 4 x 16 + 6)."""
    x_shape, w_shape, geometry = DIRECT_CASES.get(case) or ((19, 4, 7, 6), (10, 2, 2, 3), dict(padding=(1, 0),
                                                                                             groups=2))
    previous = _C.conv2d_direct_mode("always")
    try:
        run_case(x_shape, w_shape, geometry)
    finally:
        _C.conv2d_direct_mode(previous)


# Winograd F(2x2, 3x3) (3x3, stride 1, no dilation): blocks of 96 tiles in micro-panels of nr tiles (48 on AVX-512
# float32, 16 on AVX2, 4 portable), runs of a tile row shorter than a vector, the GEMM's kc slices of the channels
# (kc = 192 to 384: 400 channels need two or three), filters not a multiple of the micro-kernel's rows, odd
# output sizes (half tiles), padding 0 and 2, groups, a 1x1 output, a single block shared by 2 threads (each
# takes half of the filter panels), and blocks too unequal to hand out whole (128 tiles: 96 + 32 on AVX-512),
# where each of 2 threads takes half of the filter panels of every block.
WINOGRAD_CASES = {
    "odd_sizes_pad1": ((3, 5, 9, 7), (7, 5, 3, 3), dict(padding=1)),
    "pad0_pad2": ((2, 4, 11, 6), (9, 4, 3, 3), dict(padding=(0, 2))),
    "groups": ((2, 6, 8, 8), (15, 2, 3, 3), dict(padding=1, groups=3)),
    "one_output": ((4, 3, 3, 3), (5, 3, 3, 3), dict()),
    "many_blocks": ((3, 2, 30, 26), (3, 2, 3, 3), dict(padding=1)),
    "channels_over_kc": ((2, 400, 6, 6), (10, 400, 3, 3), dict(padding=1)),
    "one_block_many_filters": ((1, 8, 10, 10), (70, 8, 3, 3), dict(padding=1)),
    "long_rows": ((1, 3, 5, 150), (4, 3, 3, 3), dict(padding=1)),
    "unequal_blocks_filter_shares": ((8, 16, 7, 7), (40, 16, 3, 3), dict(padding=1)),
}


WinogradSetting = collections.namedtuple("WinogradSetting", "mode tile")


@pytest.fixture(params=[WinogradSetting("never", 2), WinogradSetting("always", 2), WinogradSetting("always", 4)],
                ids=["never", "always-F2x2", "always-F4x4"])
def winograd_mode(request):
    """Run 3x3 stride-1 layers on the other paths, then on Winograd F(2x2, 3x3), then F(4x4, 3x3) (the default
    picks per layer)."""
    previous = _C.conv2d_winograd_mode(request.param.mode), _C.conv2d_winograd_tile(request.param.tile)
    yield request.param
    _C.conv2d_winograd_mode(previous[0])
    _C.conv2d_winograd_tile(previous[1])


def winograd_tolerance(direct_bound, terms, winograd_bound, channels, dtype, tile=2):
    """The larger of the direct sum's rounding bound and Winograd's (testing.conv2d_winograd_bound): beyond the
    channel sum, F(2x2, 3x3) rounds at most 16 times along a path, F(4x4, 3x3) 32 (its transforms sum up to 6
    terms, times 5 or 1/6, each way)."""
    eps = np.finfo(dtype).eps
    steps = 16 if tile == 2 else 32
    return np.maximum((terms + 2) * eps * direct_bound, (channels + steps) * eps * winograd_bound)


def assert_within(got, expected, tol, what):
    err = np.abs(got - expected)
    assert (err <= tol).all(), f"{what}: worst error / tolerance {np.max(err / tol):.3g}"


def flipped_weights(w, groups):
    """The input gradient's forward weights: flipped in space, channels in <-> out within each group."""
    f, cg, kh, kw = w.shape
    flipped = w[:, :, ::-1, ::-1].reshape(groups, f // groups, cg, kh, kw).transpose(0, 2, 1, 3, 4)
    return flipped.reshape(groups * cg, f // groups, kh, kw)


def backward_with_refs(x, weight, y, geometry, rng):
    """dy, fastconv's (dx, dw, db), the float64 references and their bounds (the same sums on |operands|)."""
    dy = rng.standard_normal(y.shape).astype(y.dtype)
    got = conv2d_backward(dy, x, weight, **geometry)
    dy64, x64, w64 = (a.astype(np.float64) for a in (dy, x, weight))
    return (dy64, got, conv2d_backward_ref(dy64, x64, w64, **geometry),
            conv2d_backward_ref(np.abs(dy64), np.abs(x64), np.abs(w64), **geometry))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(WINOGRAD_CASES))
def test_winograd(arch, nthreads, winograd_mode, dtype, case):
    x_shape, w_shape, geometry = WINOGRAD_CASES[case]
    padding, groups = geometry.get("padding", 0), geometry.get("groups", 1)
    padding2 = tuple(int(p) for p in np.broadcast_to(padding, 2))
    path = _C.conv2d_forward_path(x_shape, w_shape, (1, 1), padding2, (1, 1), groups, np.dtype(dtype).itemsize)
    assert (path == "winograd") == (winograd_mode.mode == "always"), path
    rng = np.random.default_rng(7)
    x, weight, b = make_problem(rng, x_shape, w_shape, dtype)
    y = conv2d(x, weight, b, **geometry)
    x64, w64, b64 = (a.astype(np.float64) for a in (x, weight, b))
    f, cg = w_shape[:2]
    tile = winograd_mode.tile
    tol = winograd_tolerance(conv2d_ref(np.abs(x64), np.abs(w64), np.abs(b64), **geometry), cg * 9,
                             conv2d_winograd_bound(x64, w64, b64, **geometry, tile=tile), cg, dtype, tile)
    assert_within(y, conv2d_ref(x64, w64, b64, **geometry), tol, "y")

    # dx: the forward convolution of dy (padded by 2 - padding) with the flipped, channel-transposed weights
    dy64, (dx, dw, db), (dx_ref, dw_ref, db_ref), (dx_bound, dw_bound, db_bound) = backward_with_refs(
        x, weight, y, geometry, rng)
    flipped = flipped_weights(w64, groups)
    flip_padding = tuple(2 - p for p in padding2)
    tol = winograd_tolerance(dx_bound, f // groups * 9,
                             conv2d_winograd_bound(dy64, flipped, padding=flip_padding, groups=groups, tile=tile),
                             f // groups, dtype, tile)
    assert_within(dx, dx_ref, tol, "dx")
    n, _, oh, ow = y.shape
    tiles = n * -(-oh // tile) * -(-ow // tile)
    tol = winograd_tolerance(dw_bound, n * oh * ow,
                             conv2d_winograd_weight_grad_bound(dy64, x64, padding=padding, groups=groups, tile=tile),
                             tiles, dtype, tile)
    assert_within(dw, dw_ref, tol, "dw")
    assert_within_rounding(db, db_ref, db_bound, n * oh * ow, dtype, "db")


# Layers that run as 3x3 stride-1 ones on their input rearranged into phases (conv.c) when that lands on
# Winograd: strided ones (space to depth: AlexNet's conv1 shape, 11x11 stride 4 -> 3x3 on 48 channels; 5x5 stride 2
# with padding; 9x9 stride 3 with odd sizes; 6x6 stride 2 with groups, in "always" mode only: 8 channels per group;
# a padding wider than the stride) and 5x5/6x6 stride-1 ones (four shifted 3x3 kernels).
STRIDED_CASES = {
    "alexnet_conv1": ((2, 3, 39, 39), (96, 3, 11, 11), dict(stride=4)),
    "k5_s2_pad": ((2, 4, 17, 15), (32, 4, 5, 5), dict(stride=2, padding=1)),
    "k9_s3": ((3, 2, 20, 22), (33, 2, 9, 9), dict(stride=3, padding=1)),
    "k6_s2_groups": ((1, 4, 12, 13), (40, 2, 6, 6), dict(stride=2, padding=2, groups=2)),
    "k7_s3_pad3": ((2, 5, 9, 9), (32, 5, 7, 7), dict(stride=3, padding=3)),
    # stride 1, 5x5 and 6x6: four 3x3 kernels on shifted copies (auto from 32 channels and > 128 filters)
    "k5_shifts": ((2, 32, 9, 8), (130, 32, 5, 5), dict(stride=1, padding=2)),
    "k6_shifts_groups": ((1, 8, 10, 11), (34, 4, 6, 6), dict(stride=1, padding=(1, 3), groups=2)),
    "k5_shifts_pad0": ((2, 3, 7, 9), (33, 3, 5, 5), dict(stride=1)),
}


def phases(a, s, hh, ww):
    """The rearrangement, in numpy: (n, c, H, W) -> (n, c P^2, hh, ww) with channel c P^2 + a P + b holding
    pixels (i s + a t, j s + b t): P = s, t = 1 for a stride s > 1 (H, W = hh s, ww s), P = 2, t = 3 for
    stride 1."""
    n, c = a.shape[:2]
    if s > 1:
        return a.reshape(n, c, hh, s, ww, s).transpose(0, 1, 3, 5, 2, 4).reshape(n, c * s * s, hh, ww)
    return np.stack([a[:, :, 3 * i:3 * i + hh, 3 * j:3 * j + ww] for i in (0, 1) for j in (0, 1)],
                    axis=2).reshape(n, c * 4, hh, ww)


def unphase_sum(a, s, n, c):
    """The adjoint of phases for an (n, c P^2, hh, ww) array: every phase put back where it was read from and
    the overlaps summed, (n, c, H, W) as phases read it."""
    hh, ww = a.shape[2:]
    if s > 1:
        return a.reshape(n, c, s, s, hh, ww).transpose(0, 1, 4, 2, 5, 3).reshape(n, c, hh * s, ww * s)
    out = np.zeros((n, c, hh + 3, ww + 3))
    q = a.reshape(n, c, 4, hh, ww)
    for k, (i, j) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[:, :, 3 * i:3 * i + hh, 3 * j:3 * j + ww] += q[:, :, k]
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(STRIDED_CASES))
def test_strided_layers_as_stride1(arch, nthreads, winograd_mode, dtype, case):
    x_shape, w_shape, geometry = STRIDED_CASES[case]
    s, groups = geometry["stride"], geometry.get("groups", 1)
    ph, pw = np.broadcast_to(geometry.get("padding", 0), 2)
    n, c, h, w = x_shape
    f, cg, k, _ = w_shape
    k2 = -(-k // s) if s > 1 else 3
    rng = np.random.default_rng(11)
    x, weight, b = make_problem(rng, x_shape, w_shape, dtype)
    y = conv2d(x, weight, b, **geometry)
    oh, ow = y.shape[2:]
    path = _C.conv2d_forward_path(x_shape, w_shape, (s, s), (int(ph), int(pw)), (1, 1), groups,
                                  np.dtype(dtype).itemsize)
    assert (path == "winograd") == (winograd_mode.mode == "always"), path

    # the same layer by hand: stride 1, kernel k2, input and weights rearranged (numpy), for Winograd's bounds
    h2, w2 = oh + k2 - 1, ow + k2 - 1
    span_h, span_w = (h2 * s, w2 * s) if s > 1 else (h2 + 3, w2 + 3)  # the padded input the phases read
    x64, w64, b64 = (a.astype(np.float64) for a in (x, weight, b))
    xpad = np.zeros((n, c, span_h, span_w))
    rows, cols = min(h, span_h - ph), min(w, span_w - pw)
    xpad[:, :, ph:ph + rows, pw:pw + cols] = x64[:, :, :rows, :cols]
    ksize = k2 * s if s > 1 else 6  # the kernel the phases tile
    wpad = np.zeros((f, cg, ksize, ksize))
    wpad[:, :, :k, :k] = w64
    x2, wt2 = phases(xpad, s, h2, w2), phases(wpad, s, k2, k2)
    np.testing.assert_allclose(conv2d_ref(x2, wt2, b64, groups=groups), conv2d_ref(x64, w64, b64, **geometry),
                               rtol=1e-12, atol=1e-12)

    tile = winograd_mode.tile
    tol = winograd_tolerance(conv2d_ref(np.abs(x64), np.abs(w64), np.abs(b64), **geometry), cg * k * k,
                             conv2d_winograd_bound(x2, wt2, b64, groups=groups, tile=tile), wt2.shape[1], dtype,
                             tile)
    assert_within(y, conv2d_ref(x64, w64, b64, **geometry), tol, "y")

    dy64, (dx, dw, db), (dx_ref, dw_ref, db_ref), (dx_bound, dw_bound, db_bound) = backward_with_refs(
        x, weight, y, geometry, rng)
    # dx2 = the flipped convolution of dy with wt2, mapped back onto x's pixels
    dx2_bound = conv2d_winograd_bound(dy64, flipped_weights(wt2, groups), padding=k2 - 1, groups=groups, tile=tile)
    back = unphase_sum(dx2_bound, s, n, c)  # the shifts add up to 4 values per pixel: 3 more roundings
    tol = winograd_tolerance(dx_bound, f // groups * k * k, back[:, :, ph:ph + h, pw:pw + w], f // groups + 3, dtype,
                             tile)
    assert_within(dx, dx_ref, tol, "dx")
    dw2_bound = conv2d_winograd_weight_grad_bound(dy64, x2, groups=groups, tile=tile)
    back = unphase_sum(dw2_bound, s, f, cg)  # for stride 1 the phases tile the 6x6 kernel: no sums
    tiles = n * -(-oh // tile) * -(-ow // tile)
    tol = winograd_tolerance(dw_bound, n * oh * ow, back[:, :, :k, :k], tiles, dtype, tile)
    assert_within(dw, dw_ref, tol, "dw")
    assert_within_rounding(db, db_ref, db_bound, n * oh * ow, dtype, "db")


def test_winograd_auto_tiles():
    """F(4x4, 3x3) forward from 24 output columns, or from 32 tiles of 4x4, or from 16 where its 36 transformed
    weight matrices hold at most 2^22 values; its weight gradient from 96 tiles of 4x4 per thread."""
    tiles = _C.conv2d_winograd_tiles
    assert _C.conv2d_winograd_tile() == "auto"
    with fastconv.threads(1):
        assert tiles((4, 128, 56, 56), (256, 128, 3, 3), (1, 1), 1) == (4, 4)   # VGG conv3_1: 4 * 196 tiles
        assert tiles((4, 512, 14, 14), (512, 512, 3, 3), (1, 1), 1) == (4, 2)   # VGG conv5_1: 64 tiles of 4x4
        assert tiles((1, 512, 14, 14), (512, 512, 3, 3), (1, 1), 1) == (2, 2)   # 16 tiles, 9.4M weights
        assert tiles((1, 256, 14, 14), (256, 256, 3, 3), (1, 1), 1) == (4, 2)   # 16 tiles, 2.4M weights
        assert tiles((1, 256, 13, 13), (384, 256, 3, 3), (1, 1), 1) == (4, 2)   # 16 tiles, 3.5M weights
        assert tiles((4, 512, 7, 7), (512, 512, 3, 3), (1, 1), 1) == (2, 2)     # 16 tiles, 9.4M weights
        assert tiles((8, 512, 7, 7), (512, 512, 3, 3), (1, 1), 1) == (4, 2)     # 32 tiles
        assert tiles((1, 160, 7, 7), (320, 160, 3, 3), (1, 1), 1) == (2, 2)     # 4 tiles
        assert tiles((8, 256, 14, 14), (256, 256, 3, 3), (1, 1), 1) == (4, 4)   # 128 tiles of 4x4
        assert tiles((1, 16, 3, 24), (32, 16, 3, 3), (1, 1), 1) == (4, 2)       # exactly 24 columns, 6 tiles
        assert tiles((1, 16, 3, 23), (32, 16, 3, 3), (1, 1), 1) == (2, 2)       # 23 columns, 6 tiles
        assert tiles((2, 16, 6, 23), (32, 16, 3, 3), (1, 1), 1) == (4, 2)       # 24 tiles, few weights
        assert tiles((1, 16, 12, 20), (32, 16, 3, 3), (1, 1), 1) == (2, 2)      # 15 tiles
        assert tiles((1, 16, 16, 16), (32, 16, 3, 3), (1, 1), 1) == (4, 2)      # 16 tiles
    with fastconv.threads(2):
        assert tiles((8, 256, 14, 14), (256, 256, 3, 3), (1, 1), 1) == (4, 2)   # 64 tiles per thread
        assert tiles((16, 256, 13, 13), (384, 256, 3, 3), (1, 1), 1) == (4, 4)  # AlexNet conv3: 128 per thread
    previous = _C.conv2d_winograd_tile(2)
    try:
        assert tiles((4, 128, 56, 56), (256, 128, 3, 3), (1, 1), 1) == (2, 2)
        _C.conv2d_winograd_tile(4)
        assert tiles((4, 512, 14, 14), (512, 512, 3, 3), (1, 1), 1) == (4, 4)
    finally:
        _C.conv2d_winograd_tile(previous)
    for bad in (3, 0, "4", True):
        with pytest.raises(ValueError, match="tile must be 'auto', 2 or 4"):
            _C.conv2d_winograd_tile(bad)


def test_winograd_auto_choice():
    """By default: 3x3 stride-1 undilated layers with >= 16 channels and >= 32 filters per group (the weight
    gradient: >= 64 of each and >= 96 tiles; checked through the results' rounding in test_winograd)."""
    def path(x_shape, w_shape, stride=1, dilation=1, groups=1):
        return _C.conv2d_forward_path(x_shape, w_shape, (stride, stride), (1, 1), (dilation, dilation), groups, 4)
    assert path((2, 64, 56, 56), (64, 64, 3, 3)) == "winograd"
    assert path((2, 512, 7, 7), (512, 512, 3, 3)) == "winograd"
    assert path((2, 16, 28, 28), (32, 16, 3, 3)) == "winograd"
    assert path((2, 8, 28, 28), (32, 8, 3, 3)) != "winograd"       # few channels
    assert path((2, 32, 28, 28), (16, 32, 3, 3)) != "winograd"     # few filters
    assert path((2, 64, 56, 56), (64, 64, 3, 3), stride=2) != "winograd"
    assert path((2, 64, 56, 56), (64, 64, 3, 3), dilation=2) != "winograd"
    assert path((2, 64, 56, 56), (64, 32, 3, 3), groups=2) == "winograd"
    assert path((2, 64, 56, 56), (64, 4, 3, 3), groups=16) != "winograd"
    assert path((2, 64, 56, 56), (64, 64, 5, 5)) != "winograd"
    # strided, rearranged to stride 1: AlexNet's conv1 (3x3 on 48 channels) yes; ResNet's stem (7x7 stride 2 ->
    # 4x4) and 3 channels at stride 2 (12 channels) no
    assert path((2, 3, 227, 227), (96, 3, 11, 11), stride=4) == "winograd"
    assert path((2, 3, 224, 224), (64, 3, 7, 7), stride=2) != "winograd"
    assert path((2, 3, 32, 32), (64, 3, 5, 5), stride=2) != "winograd"
    # 5x5 stride 1 as four shifted 3x3 kernels: AlexNet's conv2 with 256 filters yes; its grouped form (128 per
    # group, on the direct kernels) and GoogLeNet's 5x5 branches (16-48 channels) no
    assert _C.conv2d_forward_path((2, 96, 27, 27), (256, 96, 5, 5), (1, 1), (2, 2), (1, 1), 1, 4) == "winograd"
    assert _C.conv2d_forward_path((2, 96, 27, 27), (256, 48, 5, 5), (1, 1), (2, 2), (1, 1), 2, 4) != "winograd"
    assert _C.conv2d_forward_path((2, 16, 28, 28), (32, 16, 5, 5), (1, 1), (2, 2), (1, 1), 1, 4) != "winograd"


@pytest.mark.parametrize("setting, value, bad, message", [
    (_C.conv2d_direct_mode, "always", "sometimes", "mode must be one of"),
    (_C.conv2d_input_grad_method, "flipped", "winograd", "method must be one of"),
    (_C.conv2d_winograd_mode, "never", True, "mode must be one of"),
    (_C.conv2d_direct_layout, "lanes", "rows", "layout must be one of"),
], ids=["direct_mode", "input_grad_method", "winograd_mode", "direct_layout"])
def test_path_settings(setting, value, bad, message):
    """Each process-wide path setting: "auto" by default, returns the previous value, rejects others."""
    previous = setting()
    assert previous == "auto"
    try:
        assert setting(value) == "auto"
        assert setting() == value
        with pytest.raises(ValueError, match=message):
            setting(bad)
        assert setting() == value
    finally:
        setting(previous)


def test_mode_cases_reach_their_modes():
    """The geometry arithmetic behind MODE_CASES' comments (so a renamed case cannot silently drift)."""
    large = [c for c in MODE_CASES if c.startswith(("large", "deep_large", "pointwise_large"))]
    for c in large:
        assert output_pixels(*MODE_CASES[c][:2], **MODE_CASES[c][2]) >= MIN_COLS, c
    for c in ("batched_uneven", "batched_groups3", "batched_capped", "pointwise_small", "deep_batched"):
        assert output_pixels(*MODE_CASES[c][:2], **MODE_CASES[c][2]) < MIN_COLS, c
    for c, tile in (("deep_large_n1", 334), ("deep_large_n2", 1337), ("deep_batched", 334),
                    ("deepest_tile_16", 15)):
        x_shape, w_shape, geometry = MODE_CASES[c]
        kdim = w_shape[1] * w_shape[2] * w_shape[3]
        assert TILE_ELEMS // kdim == tile, c
        assert max(tile, 16) < x_shape[0] * output_pixels(x_shape, w_shape, **geometry), c


def gemm_tiles():
    """(arch, dtype, mr, nr, mc, kc, nc) for every micro-kernel set this CPU runs."""
    usable = set(fastconv.available_archs())
    for a in _C.archs():
        if a["name"] in usable:
            for dtype, prefix in ((np.float32, "s"), (np.float64, "d")):
                mr, nr = a[prefix + "gemm_tile"]
                blocking = a[prefix + "gemm_blocking"]
                yield a["name"], dtype, mr, nr, blocking["mc"], blocking["kc"], blocking["nc"]


def test_gemm_tile_edges(arch, nthreads):
    """F, kdim and the column count one below and above the micro-tile of the selected kernel set.

    A 1x1 kernel with stride (2, 1) on one-row images is not pointwise (so it goes through im2col) and makes
    kdim = C and the columns = W exactly. GEMM shapes: forward fg x cols x kdim, weight gradient fg x kdim x
    cols, input gradient kdim x cols x fg.
    """
    for name, dtype, mr, nr, mc, kc, nc in gemm_tiles():
        if name != arch:
            continue
        rng = np.random.default_rng(mr * 100 + nr)
        for f in sorted({max(1, mr - 1), mr, mr + 1}):
            for c in sorted({max(1, mr - 1), mr + 1, max(1, nr - 1), nr + 1}):
                for cols in sorted({max(1, nr - 1), nr + 1}):
                    for n in (1, 3):
                        x, weight, b = make_problem(rng, (n, c, 1, cols), (f, c, 1, 1), dtype)
                        check_conv(x, weight, b, dtype, dict(stride=(2, 1)), rng)
        # one past each cache block: fg = mc + 1, kdim = kc + 1, columns = nc + 1 (one at a time: cheap)
        for x_shape, w_shape in (((2, 3, 1, 5), (mc + 1, 3, 1, 1)), ((2, kc + 1, 1, 5), (3, kc + 1, 1, 1)),
                                 ((1, 2, 1, nc + 1), (3, 2, 1, 1))):
            x, weight, b = make_problem(rng, x_shape, w_shape, dtype)
            check_conv(x, weight, b, dtype, dict(stride=(2, 1)), rng)


# ---------------------------------------------------------------------------------------------------- 3. gradients

FD_CASES = {
    "stride2": ((2, 3, 7, 7), (4, 3, 3, 3), dict(stride=2, padding=1)),
    "dilation2": ((1, 2, 8, 8), (3, 2, 3, 3), dict(dilation=2, padding=2)),
    "groups2": ((2, 4, 6, 6), (4, 2, 3, 3), dict(groups=2, padding=1)),
    "asymmetric": ((1, 2, 6, 7), (3, 2, 3, 2), dict(stride=(2, 1), padding=(2, 0), dilation=(1, 2))),
    "pointwise_groups2": ((2, 4, 3, 3), (6, 2, 1, 1), dict(groups=2)),
}


@pytest.mark.parametrize("case", list(FD_CASES))
def test_gradients_match_finite_differences(arch, nthreads, case):
    x_shape, w_shape, geometry = FD_CASES[case]
    rng = np.random.default_rng(7)
    x, weight, b = make_problem(rng, x_shape, w_shape, np.float64)
    y = conv2d(x, weight, b, **geometry)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = conv2d_backward(dy, x, weight, **geometry)
    dx_num = numerical_gradient(lambda v: conv2d(v, weight, b, **geometry), x, dy)
    dw_num = numerical_gradient(lambda v: conv2d(x, v, b, **geometry), weight, dy)
    db_num = numerical_gradient(lambda v: conv2d(x, weight, v, **geometry), b, dy)
    assert max_relative_error(dx, dx_num) < 1e-6
    assert max_relative_error(dw, dw_num) < 1e-6
    assert max_relative_error(db, db_num) < 1e-6


# ---------------------------------------------------------------------------------------------------- 4. torch

# (name, Cin, Cout, kernel, stride, padding, groups, H=W), every distinct conv layer shape of the networks
NETWORK_LAYERS = [
    ("lenet5_c1", 1, 6, 5, 1, 0, 1, 32),
    ("lenet5_c3", 6, 16, 5, 1, 0, 1, 14),
    ("alexnet_conv1", 3, 96, 11, 4, 0, 1, 227),
    ("alexnet_conv2", 96, 256, 5, 1, 2, 1, 27),
    ("alexnet_conv2_groups2", 96, 256, 5, 1, 2, 2, 27),
    ("alexnet_conv3", 256, 384, 3, 1, 1, 1, 13),
    ("alexnet_conv4_groups2", 384, 384, 3, 1, 1, 2, 13),
    ("alexnet_conv5", 384, 256, 3, 1, 1, 1, 13),
    ("vgg16_3_64_224", 3, 64, 3, 1, 1, 1, 224),
    ("vgg16_64_64_224", 64, 64, 3, 1, 1, 1, 224),
    ("vgg16_64_128_112", 64, 128, 3, 1, 1, 1, 112),
    ("vgg16_128_128_112", 128, 128, 3, 1, 1, 1, 112),
    ("vgg16_128_256_56", 128, 256, 3, 1, 1, 1, 56),
    ("vgg16_256_256_56", 256, 256, 3, 1, 1, 1, 56),
    ("vgg16_256_512_28", 256, 512, 3, 1, 1, 1, 28),
    ("vgg16_512_512_28", 512, 512, 3, 1, 1, 1, 28),
    ("vgg16_512_512_14", 512, 512, 3, 1, 1, 1, 14),
    ("googlenet_stem_7x7", 3, 64, 7, 2, 3, 1, 224),
    ("googlenet_1x1_64", 64, 64, 1, 1, 0, 1, 56),
    ("googlenet_3x3_192", 64, 192, 3, 1, 1, 1, 56),
    ("googlenet_3a_1x1_64", 192, 64, 1, 1, 0, 1, 28),
    ("googlenet_3a_1x1_96", 192, 96, 1, 1, 0, 1, 28),
    ("googlenet_3a_1x1_16", 192, 16, 1, 1, 0, 1, 28),
    ("googlenet_3a_1x1_32", 192, 32, 1, 1, 0, 1, 28),
    ("googlenet_3a_3x3_128", 96, 128, 3, 1, 1, 1, 28),
    ("googlenet_3a_5x5_32", 16, 32, 5, 1, 2, 1, 28),
    ("resnet50_stem_7x7", 3, 64, 7, 2, 3, 1, 224),
    ("resnet50_1x1_64", 64, 64, 1, 1, 0, 1, 56),
    ("resnet50_3x3_64", 64, 64, 3, 1, 1, 1, 56),
    ("resnet50_1x1_256", 64, 256, 1, 1, 0, 1, 56),
    ("resnet50_projection_s2", 256, 512, 1, 2, 0, 1, 56),
    ("resnet50_3x3_s2", 128, 128, 3, 2, 1, 1, 56),
    ("resnet50_3x3_512_7", 512, 512, 3, 1, 1, 1, 7),
]


@pytest.fixture
def best_arch_one_thread():
    """The best kernel set on one thread (network shapes are too big for the full arch x thread grid)."""
    previous = fastconv.set_arch(fastconv.available_archs()[-1])
    with fastconv.threads(1):
        yield
    fastconv.set_arch(previous)


@pytest.mark.parametrize("layer", NETWORK_LAYERS, ids=[layer[0] for layer in NETWORK_LAYERS])
def test_network_layers_match_torch(best_arch_one_thread, layer):
    torch = pytest.importorskip("torch")
    _, cin, cout, k, stride, padding, groups, size = layer
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, cin, size, size), dtype=np.float32)
    weight = (rng.standard_normal((cout, cin // groups, k, k)) / np.sqrt(cin // groups * k * k)).astype(np.float32)
    b = rng.standard_normal(cout, dtype=np.float32)
    geometry = dict(stride=stride, padding=padding, groups=groups)
    y = conv2d(x, weight, b, **geometry)
    dy = rng.standard_normal(y.shape, dtype=np.float32)
    dx, dw, db = conv2d_backward(dy, x, weight, **geometry)

    # torch in float64 on the same float32 values: the error measured is ours alone
    xt, wt, bt = (torch.from_numpy(a.astype(np.float64)).requires_grad_() for a in (x, weight, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, **geometry)
    yt.backward(torch.from_numpy(dy.astype(np.float64)))
    for name, ours, theirs in (("y", y, yt.detach()), ("dx", dx, xt.grad), ("dw", dw, wt.grad), ("db", db, bt.grad)):
        assert ours.dtype == np.float32, name
        error = max_relative_error(ours, theirs.numpy())
        assert error < 1e-4, f"{name}: max relative error {error:.3g}"


# ---------------------------------------------------------------------------------------------------- 5. layouts

def assert_same_up_to_order(got, want, dtype, what):
    """Equal but for summation order: with 2 threads the weight gradient's per-thread partial sums (images
    handed out dynamically) may add up in another order from one call to the next."""
    np.testing.assert_allclose(got, want, rtol=0, atol=64 * np.finfo(dtype).eps * np.abs(want).max(), err_msg=what)


def all_results(x, weight, b, dy, geometry):
    y = conv2d(x, weight, b, **geometry)
    return (y,) + conv2d_backward(dy, x, weight, **geometry)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("large", [False, True], ids=["small_images", "large_images"])
def test_non_contiguous_inputs_give_the_same_result(dtype, large):
    """Transposed views, stepped slices, Fortran order, negative strides and misaligned buffers give exactly
    what the C-ordered copies give."""
    rng = np.random.default_rng(11)
    n, c, h, w, f = (2, 4, 48, 96, 6) if large else (3, 4, 9, 8, 6)  # 48 x 48 outputs: large mode
    geometry = dict(stride=(1, 2), padding=1, groups=2)
    x, weight, b = make_problem(rng, (n, c, h, w), (f, 2, 3, 3), dtype)
    dy = rng.standard_normal((n, f, h, (w + 2 - 3) // 2 + 1)).astype(dtype)
    with fastconv.threads(1):  # one thread: bit-for-bit reproducible
        expected = all_results(x, weight, b, dy, geometry)

        def nhwc(a):  # same values, channels-last memory: a transposed view
            return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)

        def stepped(a):  # same values, inside a bigger array at steps of 2 and 3 (and reversed bias)
            big = np.zeros(tuple(2 * s + 1 for s in a.shape[:-1]) + (3 * a.shape[-1],), a.dtype)
            view = big[(slice(1, None, 2),) * (a.ndim - 1) + (slice(None, None, 3),)]
            view[...] = a
            return view

        def reversed_bias(a):
            r = a[::-1].copy()[::-1]
            assert r.strides[0] < 0
            return r

        def misaligned(a):  # C-contiguous, but the data pointer is not a multiple of the item size
            buffer = np.zeros(a.nbytes + 1, np.uint8)
            view = np.frombuffer(buffer.data, a.dtype, a.size, offset=1).reshape(a.shape)
            view[...] = a
            assert view.ctypes.data % a.itemsize
            return view

        variants = {
            "transposed": (nhwc(x), nhwc(weight), b, nhwc(dy)),
            "stepped": (stepped(x), stepped(weight), stepped(b), stepped(dy)),
            "fortran": (np.asfortranarray(x), np.asfortranarray(weight), b, np.asfortranarray(dy)),
            "negative_strides": (x[:, :, ::-1].copy()[:, :, ::-1], weight, reversed_bias(b), dy),
            "misaligned": (misaligned(x), misaligned(weight), misaligned(b), misaligned(dy)),
        }
        for name, (xv, wv, bv, dyv) in variants.items():
            for what, got, want in zip(("y", "dx", "dw", "db"), all_results(xv, wv, bv, dyv, geometry), expected):
                assert np.array_equal(got, want), f"{name}: {what} differs"


def test_read_only_and_broadcast_inputs(arch, nthreads):
    rng = np.random.default_rng(5)
    for dtype in DTYPES:
        x, weight, b = make_problem(rng, (3, 4, 10, 10), (6, 2, 3, 3), dtype)
        geometry = dict(padding=1, groups=2)
        dy = rng.standard_normal((3, 6, 10, 10)).astype(dtype)
        expected = all_results(x, weight, b, dy, geometry)
        frozen = [a.copy() for a in (x, weight, b, dy)]
        for a in frozen:
            a.setflags(write=False)
        for what, got, want in zip(("y", "dx", "dw", "db"), all_results(*frozen, geometry), expected):
            assert_same_up_to_order(got, want, dtype, what)
        # zero-stride (read-only) views: every filter the same, one image repeated
        x_b = np.broadcast_to(x[:1], x.shape)
        w_b = np.broadcast_to(weight[:1], weight.shape)
        check_conv(x_b, w_b, np.broadcast_to(b[:1], b.shape), dtype, geometry, rng)


def test_need_flags_select_outputs(arch, nthreads):
    rng = np.random.default_rng(9)
    for dtype in DTYPES:
        for x_shape in ((3, 4, 9, 9), (2, 4, 48, 48)):  # small (batched) and large images
            x, weight, _ = make_problem(rng, x_shape, (6, 2, 3, 3), dtype, bias=False)
            geometry = dict(padding=1, stride=1, groups=2)
            dy = rng.standard_normal((x_shape[0], 6) + x_shape[2:]).astype(dtype)
            full = conv2d_backward(dy, x, weight, **geometry)
            for flags in np.ndindex(2, 2, 2):
                need = dict(zip(("need_input_grad", "need_weight_grad", "need_bias_grad"), map(bool, flags)))
                got = conv2d_backward(dy, x, weight, **geometry, **need)
                for asked, g, want, what in zip(need.values(), got, full, ("dx", "dw", "db")):
                    if not asked:
                        assert g is None, f"{what} returned though not asked ({need})"
                    else:
                        assert_same_up_to_order(g, want, dtype, f"{what} {need}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", [((16, 5, 5), (120, 16, 5, 5)), ((3, 2, 9), (5, 3, 2, 9))], ids=["c5", "flat"])
def test_dense_layer_does_not_depend_on_the_batch(arch, nthreads, dtype, shapes):
    """A dense layer (kernel = input, LeNet's C5) gives each image the bits it gets alone, in batches of every
    size (feature extraction must not depend on how images are batched) and within rounding of the reference; it
    reports the GEMM path, reads its weights packed once (prepared) with the same bits, and takes the empty
    batch."""
    (c, h, w), w_shape = shapes
    rng = np.random.default_rng(11)
    x = rng.standard_normal((17, c, h, w)).astype(dtype)
    weight = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    assert _C.conv2d_forward_path(x.shape, w_shape, (1, 1), (0, 0), (1, 1), 1, x.itemsize) == "gemm"
    whole = conv2d(x, weight, b, relu=True)
    ref = conv2d_ref(x.astype(np.float64), weight.astype(np.float64), b.astype(np.float64))
    bound = conv2d_ref(np.abs(x.astype(np.float64)), np.abs(weight.astype(np.float64)), np.abs(b.astype(np.float64)))
    assert_within_rounding(whole, np.maximum(ref, 0), bound, c * h * w, dtype, "y")
    for size in (1, 2, 7, 16):
        for i0 in range(0, 17 - size + 1, size):
            np.testing.assert_array_equal(conv2d(x[i0:i0 + size], weight, b, relu=True), whole[i0:i0 + size])
    prepared = fastconv.functional.conv2d_prepare_weights(weight, x.shape)
    assert prepared is not None
    for size in (1, 17):
        np.testing.assert_array_equal(conv2d(x[:size], weight, b, relu=True, prepared=prepared), whole[:size])
    empty = conv2d(x[:0], weight, b)
    assert empty.shape == (0, w_shape[0], 1, 1)
    dx0, dw0, db0 = conv2d_backward(np.zeros(empty.shape, dtype), x[:0], weight)
    assert dx0.shape == (0, c, h, w) and dw0.shape == weight.shape and not dw0.any() and not db0.any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_size_batch(arch, nthreads, dtype):
    x = np.zeros((0, 4, 7, 6), dtype)
    weight = np.ones((6, 2, 3, 2), dtype)
    b = np.ones(6, dtype)
    geometry = dict(stride=(2, 1), padding=(1, 0), groups=2)
    y = conv2d(x, weight, b, **geometry)
    assert y.shape == (0, 6, 4, 5) and y.dtype == dtype
    dy = np.zeros(y.shape, dtype)
    dx, dw, db = conv2d_backward(dy, x, weight, **geometry)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert dw.shape == weight.shape and dw.dtype == dtype and not dw.any()
    assert db.shape == (6,) and db.dtype == dtype and not db.any()
    _, dw_only, db_only = conv2d_backward(dy, x, weight, **geometry, need_input_grad=False, need_weight_grad=False)
    assert dw_only is None and db_only.shape == (6,) and not db_only.any()


# ---------------------------------------------------------------------------------------------------- fused epilogue

# (x, w, geometry, the forward path it must take). The epilogue lives in a different place on each: the GEMM's
# tile (per image, im2col or pointwise), the scatter of batched small images, the direct kernels' copy-out, the
# Winograd output transform (and the rearranged layers that run on it).
FUSED_CASES = {
    "gemm_large_im2col": ((2, 8, 50, 50), (150, 8, 3, 3), dict(stride=1, padding=1), "gemm"),
    "gemm_large_im2col_n1": ((1, 8, 50, 50), (150, 8, 3, 3), dict(stride=1, padding=1), "gemm"),
    "gemm_large_pointwise_groups": ((3, 8, 48, 48), (6, 4, 1, 1), dict(groups=2), "gemm"),
    "gemm_pointwise_edge_tiles": ((1, 70, 47, 45), (37, 70, 1, 1), dict(), "gemm"),
    # deeper than every kernel set's kc (256 or 384): the tile's last depth block adds to C, then the epilogue
    "gemm_pointwise_deep": ((2, 400, 24, 24), (20, 400, 1, 1), dict(), "gemm"),
    "gemm_batched_small": ((9, 5, 9, 9), (20, 5, 3, 2), dict(stride=(2, 1), padding=(1, 0)), "gemm"),
    "gemm_pointwise_strided": ((2, 8, 40, 40), (20, 8, 1, 1), dict(stride=2), "gemm"),
    "direct": ((4, 6, 14, 14), (16, 6, 5, 5), dict(), "direct"),
    "direct_strided": ((2, 3, 30, 37), (20, 3, 7, 7), dict(stride=2, padding=3), "direct"),
    "direct_strided_n1": ((1, 3, 30, 37), (20, 3, 7, 7), dict(stride=2, padding=3), "direct"),
    "winograd": ((3, 16, 11, 9), (40, 16, 3, 3), dict(padding=1), "winograd"),
    # wide enough for F(4x4, 3x3) by default, 6 rows: a tile row of 4 and one of 2
    "winograd_tile4": ((2, 16, 6, 30), (40, 16, 3, 3), dict(padding=1), "winograd"),
    "rearranged_strided": ((2, 3, 39, 39), (96, 3, 11, 11), dict(stride=4), "winograd"),
    "rearranged_shifts": ((2, 32, 9, 8), (130, 32, 5, 5), dict(padding=2), "winograd"),
    # dense (kernel = input): the GEMM's epilogue on filters x images, transposed, the shortcut joining after
    "dense": ((6, 16, 5, 5), (20, 16, 5, 5), dict(), "gemm"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_fused_residual_and_relu(arch, nthreads, dtype, case):
    """conv2d(..., scale=s, residual=r, relu=True) == max(conv2d(...) * s + b + r, 0) on every forward path, NaN
    kept by the ReLU, and the residual never modified."""
    x_shape, w_shape, geometry, path = FUSED_CASES[case]
    rng = np.random.default_rng(7)
    x, weight, b = make_problem(rng, x_shape, w_shape, dtype)
    g = {**dict(stride=1, padding=0, dilation=1, groups=1), **geometry}
    pair = lambda v: v if isinstance(v, tuple) else (v, v)
    assert _C.conv2d_forward_path(x_shape, w_shape, pair(g["stride"]), pair(g["padding"]), pair(g["dilation"]),
                                  g["groups"], np.dtype(dtype).itemsize) == path
    plain = conv2d(x, weight, None, **geometry)
    r = rng.standard_normal(plain.shape).astype(dtype)
    r.flat[5] = np.nan
    r_before = r.copy()
    s = rng.uniform(0.5, 2, w_shape[0]).astype(dtype)
    eps = np.finfo(dtype).eps
    for scale, residual, relu in ((None, None, True), (None, r, False), (None, r, True), (s, None, False),
                                  (s, r, True)):
        want = plain * (1 if scale is None else scale.reshape(-1, 1, 1)) + b.reshape(-1, 1, 1)
        want = want + (0 if residual is None else residual)
        if relu:
            want = np.where(want < 0, 0, want)
        got = conv2d(x, weight, b, **geometry, scale=scale, residual=residual, relu=relu)
        assert got.dtype == dtype and got.shape == plain.shape
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        np.testing.assert_allclose(got[ok], want[ok], rtol=0, atol=4 * eps * np.abs(want[ok]).max())
        if relu:
            assert (got[ok] == 0).sum() >= ok.sum() // 4  # the ReLU did clamp: about half are negative
    np.testing.assert_array_equal(r, r_before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_fused_relu_keeps_nan_from_the_input(arch, nthreads, dtype, case):
    """A NaN in x reaches the outputs whose window holds it, and the fused ReLU keeps it NaN (it does not clamp
    it to 0) on every forward path; the other outputs are max(conv + b, 0)."""
    x_shape, w_shape, geometry, _ = FUSED_CASES[case]
    x, weight, b = make_problem(np.random.default_rng(11), x_shape, w_shape, dtype)
    x[0, 0, x_shape[2] // 2, x_shape[3] // 2] = np.nan
    plain = conv2d(x, weight, b, **geometry)
    assert np.isnan(plain).any()
    got = conv2d(x, weight, b, **geometry, relu=True)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(plain))
    ok = ~np.isnan(plain)
    np.testing.assert_array_equal(got[ok], np.where(plain[ok] < 0, 0, plain[ok]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_output_into_a_channel_slice(arch, nthreads, dtype, case):
    """out=buf[:, c0:c1] (an inception block's share of its concatenation): the same values as a fresh output on
    every forward path, nothing written outside the slice, the slice returned."""
    x_shape, w_shape, geometry, _ = FUSED_CASES[case]
    x, weight, b = make_problem(np.random.default_rng(3), x_shape, w_shape, dtype)
    want = conv2d(x, weight, b, **geometry, relu=True)
    n, f = want.shape[:2]
    buf = np.full((n, f + 5) + want.shape[2:], -7.0, dtype)
    got = conv2d(x, weight, b, **geometry, relu=True, out=buf[:, 2:2 + f])
    assert np.shares_memory(got, buf) and got.shape == want.shape
    np.testing.assert_array_equal(buf[:, 2:2 + f], want)
    assert (buf[:, :2] == -7).all() and (buf[:, 2 + f:] == -7).all()


def test_output_argument_bad_input():
    x, w = np.zeros((2, 4, 5, 5), np.float32), np.zeros((6, 4, 3, 3), np.float32)
    buf = np.zeros((2, 8, 3, 3), np.float32)
    with pytest.raises(TypeError, match=r"out must be a NumPy array, got list"):
        conv2d(x, w, out=[0.0])
    with pytest.raises(TypeError, match=r"out dtype float64 differs from x dtype float32"):
        conv2d(x, w, out=np.zeros((2, 6, 3, 3)))
    with pytest.raises(ValueError, match=r"out has shape \(2, 6, 3, 4\), expected \(2, 6, 3, 3\)"):
        conv2d(x, w, out=np.zeros((2, 6, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"strides .* must hold each image as one contiguous block"):
        conv2d(x, w, out=np.zeros((2, 6, 3, 6), np.float32)[..., ::2])
    with pytest.raises(ValueError, match=r"strides .* must hold each image as one contiguous block"):
        conv2d(x, w, out=np.zeros((6, 2, 3, 3), np.float32).transpose(1, 0, 2, 3))
    with pytest.raises(ValueError, match=r"C-contiguous \(with a residual\)"):
        conv2d(x, w, residual=np.zeros((2, 6, 3, 3), np.float32), out=buf[:, 1:7])
    read_only = np.zeros((2, 6, 3, 3), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"out is read-only"):
        conv2d(x, w, out=read_only)
    np.testing.assert_array_equal(buf, 0)


def test_fused_residual_bad_input():
    x, w = np.zeros((1, 4, 5, 5), np.float32), np.zeros((6, 4, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"residual has shape \(1, 6, 3, 4\), expected the output's \(1, 6, 3, 3\)"):
        conv2d(x, w, residual=np.zeros((1, 6, 3, 4), np.float32))
    with pytest.raises(TypeError, match=r"residual dtype float64 differs from x dtype float32"):
        conv2d(x, w, residual=np.zeros((1, 6, 3, 3)))
    with pytest.raises(TypeError, match=r"residual must be float32 or float64, got dtype int64"):
        conv2d(x, w, residual=np.zeros((1, 6, 3, 3), np.int64))
    with pytest.raises(ValueError, match=r"scale must have shape \(6,\) for weight \(6, 4, 3, 3\), got \(4,\)"):
        conv2d(x, w, scale=np.ones(4, np.float32))
    with pytest.raises(TypeError, match=r"scale dtype float64 differs from x dtype float32"):
        conv2d(x, w, scale=np.ones(6))


# ---------------------------------------------------------------------------------------------------- 6. bad input

X = np.zeros((1, 4, 5, 5), np.float32)
W = np.zeros((6, 4, 3, 3), np.float32)
DY = np.zeros((1, 6, 3, 3), np.float32)


@pytest.mark.parametrize("call, error, message", [
    (lambda: conv2d(X.astype(np.int32), W), TypeError, r"x must be float32 or float64, got dtype int32"),
    (lambda: conv2d(X.astype(np.float16), W), TypeError, r"x must be float32 or float64, got dtype float16"),
    (lambda: conv2d(X, W.astype(np.int64)), TypeError, r"weight must be float32 or float64, got dtype int64"),
    (lambda: conv2d(X, W.astype(np.float16)), TypeError, r"weight must be float32 .*float16"),
    (lambda: conv2d(X, W, np.zeros(6, np.float16)), TypeError, r"bias must be float32 .*float16"),
    (lambda: conv2d(X.astype(bool), W), TypeError, r"x must be float32 or float64, got dtype bool"),
    (lambda: conv2d(X, W.astype(np.float64)), TypeError, r"weight dtype float64 differs from x dtype float32"),
    (lambda: conv2d(X.astype(np.float64), W), TypeError, r"weight dtype float32 differs from x dtype float64"),
    (lambda: conv2d(X, W, np.zeros(6)), TypeError, r"bias dtype float64 differs from x dtype float32"),
    (lambda: conv2d_backward(DY.astype(np.float64), X, W), TypeError, r"dy dtype float64 differs"),
    (lambda: conv2d_backward(DY.astype(np.float16), X, W), TypeError, r"dy must be float32 .*float16"),
    (lambda: conv2d(X[0], W), ValueError, r"x must be 4-D .*\(4, 5, 5\)"),
    (lambda: conv2d(X[..., None], W), ValueError, r"x must be 4-D .*\(1, 4, 5, 5, 1\)"),
    (lambda: conv2d(X, W[0]), ValueError, r"weight must be 4-D .*\(4, 3, 3\)"),
    (lambda: conv2d(X, W[:, :3]), ValueError, r"weight \(6, 3, 3, 3\) expects 3 input channels .*x \(1, 4, 5, 5\)"),
    (lambda: conv2d(X, W[:, :2], groups=1), ValueError, r"weight \(6, 2, 3, 3\) expects 2 input channels"),
    (lambda: conv2d(X, W[:, :2], groups=3), ValueError, r"groups=3 must divide .*\(4, x \(1, 4, 5, 5\)"),
    (lambda: conv2d(X, W[:5, :2], groups=2), ValueError, r"groups=2 must divide .*\(5, weight \(5, 2, 3, 3\)"),
    (lambda: conv2d(X, W, groups=0), ValueError, r"groups must be a positive int, got 0"),
    (lambda: conv2d(X, W, groups=1.0), ValueError, r"groups must be a positive int, got 1.0"),
    (lambda: conv2d(X, W[:0]), ValueError, r"empty .*weight \(0, 4, 3, 3\)"),
    (lambda: conv2d(X[:, :, :0], W), ValueError, r"empty .*x \(1, 4, 0, 5\)"),
    (lambda: conv2d(X, np.zeros((6, 4, 6, 3), np.float32)), ValueError,
     r"kernel \(6, 3\) with dilation \(1, 1\) spans \(6, 3\), larger than the padded input \(5, 5\)"),
    (lambda: conv2d(X, W, dilation=3), ValueError, r"spans \(7, 7\), larger than the padded input \(5, 5\)"),
    (lambda: conv2d(X, np.zeros((6, 4, 9, 3), np.float32), padding=(1, 0)), ValueError,
     r"kernel \(9, 3\) .* larger than the padded input \(7, 5\)"),
    (lambda: conv2d(X, W, stride=0), ValueError, r"stride must be >= 1, got 0"),
    (lambda: conv2d(X, W, stride=(1, -2)), ValueError, r"stride must be >= 1, got \(1, -2\)"),
    (lambda: conv2d(X, W, dilation=0), ValueError, r"dilation must be >= 1, got 0"),
    (lambda: conv2d(X, W, dilation=(-1, 1)), ValueError, r"dilation must be >= 1"),
    (lambda: conv2d(X, W, padding=-1), ValueError, r"padding must be >= 0, got -1"),
    (lambda: conv2d(X, W, padding=(0, -1)), ValueError, r"padding must be >= 0"),
    (lambda: conv2d(X, W, stride=1.5), TypeError, r"stride must be an int or a pair of ints \(h, w\), got 1.5"),
    (lambda: conv2d(X, W, stride=(1, 2, 3)), TypeError, r"stride must be an int or a pair"),
    (lambda: conv2d(X, W, padding="1"), TypeError, r"padding must be an int or a pair"),
    (lambda: conv2d(X, W, dilation=True), TypeError, r"dilation must be an int or a pair"),
    (lambda: conv2d(X, W, np.zeros(5, np.float32)), ValueError, r"bias must have shape \(6,\) .*got \(5,\)"),
    (lambda: conv2d(X, W, np.zeros((6, 1), np.float32)), ValueError, r"bias must have shape \(6,\) .*\(6, 1\)"),
    (lambda: conv2d_backward(DY[:, :5], X, W), ValueError,
     r"dy has shape \(1, 5, 3, 3\), expected \(1, 6, 3, 3\)"),
    (lambda: conv2d_backward(DY, X, W, padding=1), ValueError,
     r"dy has shape \(1, 6, 3, 3\), expected \(1, 6, 5, 5\)"),
    (lambda: conv2d_backward(DY[0], X, W), ValueError, r"dy has shape \(6, 3, 3\)"),
    (lambda: conv2d_backward(DY, X, W, groups=4), ValueError, r"groups=4"),
])
def test_bad_input_raises(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("geometry", [dict(stride=2 ** 63), dict(stride=(1, 2 ** 64)), dict(dilation=2 ** 63)],
                         ids=["stride", "stride_pair", "dilation_1x1"])
def test_geometry_beyond_int64_raises_value_error(geometry):
    weight = W if "stride" in geometry else W[:, :, :1, :1]
    with pytest.raises(ValueError, match="stride" if "stride" in geometry else "dilation"):
        conv2d(X, weight, **geometry)


OVERFLOW_SCRIPT = textwrap.dedent("""
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    import numpy as np
    from fastconv.functional import conv2d, conv2d_backward

    def huge(shape):
        return np.broadcast_to(np.float32(1), shape)  # a zero-stride view: no memory behind it

    w3 = np.ones((1, 1, 3, 3), np.float32)
    cases = {
        "huge_x": lambda: conv2d(huge((1 << 20, 1, 1 << 12, 1 << 12)), w3),
        "x_elements_overflow": lambda: conv2d(huge((1 << 40, 1 << 10, 1 << 6, 1 << 6)),
                                              np.ones((1, 1 << 10, 3, 3), np.float32)),
        "huge_weight": lambda: conv2d(np.ones((1, 1, 4, 4), np.float32), huge((1 << 40, 1, 3, 3))),
        "huge_channels": lambda: conv2d(huge((1, 1 << 31, 4, 4)), huge((2, 1 << 31, 3, 3))),
        "huge_backward": lambda: conv2d_backward(huge((1 << 20, 1, 1 << 12, 1 << 12)),
                                                 huge((1 << 20, 1, (1 << 12) + 2, (1 << 12) + 2)), w3),
        "padding_overflows_int64": lambda: conv2d(np.ones((1, 1, 4, 4), np.float32), w3, padding=1 << 62,
                                                  stride=1 << 62),
        "huge_padding": lambda: conv2d(np.ones((1, 1, 4, 4), np.float32), w3, padding=1 << 40),
    }
    for name, call in cases.items():
        try:
            call()
        except (ValueError, MemoryError) as e:
            print(name, "raised", type(e).__name__, flush=True)
        else:
            print(name, "returned", flush=True)
""")


def test_huge_sizes_raise_cleanly(tmp_path):
    """Sizes whose buffers or int64 index arithmetic would overflow raise ValueError/MemoryError, never crash.

    Run in a child process limited to 4 GiB of address space, so a missing check cannot take the machine's
    memory, and with a timeout, so it cannot hang the suite.
    """
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    # cwd outside the checkout: `python -c` puts the cwd first on sys.path, and an unbuilt source tree there
    # would shadow the installed package
    result = subprocess.run([sys.executable, "-c", OVERFLOW_SCRIPT], capture_output=True, text=True, timeout=120,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, f"child died (return code {result.returncode}):\n{result.stdout}\n{result.stderr}"
    lines = result.stdout.split("\n")
    for name in ("huge_x", "x_elements_overflow", "huge_weight", "huge_channels", "huge_backward",
                 "padding_overflows_int64", "huge_padding"):
        assert any(line.startswith(name + " raised") for line in lines), f"{name}:\n{result.stdout}"
