"""fastconv.gemm against a float64 NumPy oracle, for every kernel set, 1 and 2 threads, float32 and float64.

Tolerance. A length-K dot product evaluated in floating point with unit roundoff u, in any order and with or
without FMA, where every term passes through at most n roundings, satisfies
    |computed - exact| <= gamma_n * sum_i |term_i|,   gamma_n = n u / (1 - n u)
(Higham, Accuracy and Stability of Numerical Algorithms, sec. 3.1). In ``alpha * A @ B + beta * C`` a product
term meets at most K roundings in the sum over k (fewer when the sum is split over KC blocks, since each block
boundary replaces one addition), plus the scaling by alpha, the addition of beta * C, and the store of an edge
tile through a buffer: n = K + 4 covers them all. The float64 oracle obeys the same bound with u = 2^-53, so we
assert, elementwise,
    |got - oracle| <= (gamma_{K+4}(u_dtype) + gamma_{K+4}(2^-53)) * (|alpha| |A| @ |B| + |beta| |C|).
The bound is rigorous (it cannot fail on a correct GEMM) and grows with K and with the dtype's u.

Indexing bugs at blocking edges can hide inside a loose bound, so the edge tests use small-integer data with
power-of-two alpha/beta: then every product and partial sum is an integer below 2^24, exact in float32 in any
order, and the result must equal the oracle bit for bit.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv import _C

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # only the random-shape test needs it
    given = None

UNIT_ROUNDOFF = {np.dtype(np.float32): 2.0 ** -24, np.dtype(np.float64): 2.0 ** -53}
TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]
TRANSPOSE_IDS = ["NN", "NT", "TN", "TT"]
LAYOUTS = ["C", "F", "padded", "strided", "negative"]
SENTINEL = 7777.0  # fills the memory around strided views: reading it or overwriting it shows up


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return np.dtype(request.param)


def kernel_geometry(arch, dtype):
    """(mr, nr, mc, kc, nc) of `arch`'s micro-kernel and cache blocking for `dtype`, as the build reports them."""
    row = next(a for a in _C.archs() if a["name"] == arch)
    prefix = "sgemm" if dtype == np.float32 else "dgemm"
    mr, nr = row[prefix + "_tile"]
    blocking = row[prefix + "_blocking"]
    return mr, nr, blocking["mc"], blocking["kc"], blocking["nc"]


def gamma(n, u):
    return n * u / (1 - n * u)


def integer_matrix(rng, shape, dtype):
    """Entries in -3..3: products and sums stay exact integers in float32 for K up to ~10^5."""
    return rng.integers(-3, 4, size=shape).astype(dtype)


def normal_matrix(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def operands(rng, m, n, k, trans_a, trans_b, dtype, make=normal_matrix):
    """a, b stored so that op(a) is (m, k) and op(b) is (k, n)."""
    a = make(rng, (k, m) if trans_a else (m, k), dtype)
    b = make(rng, (n, k) if trans_b else (k, n), dtype)
    return a, b


def assert_gemm_result(got, a, b, c0=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, exact=False):
    """Check got == alpha * op(a) @ op(b) + beta * c0 within the rounding bound above (or exactly).

    c0 is the content of `out` before the call; it is ignored when beta == 0 (BLAS: out is then never read).
    alpha and beta are rounded to the operands' dtype first, as the kernel receives them.
    """
    dtype = got.dtype
    A = (a.T if trans_a else a).astype(np.float64)
    B = (b.T if trans_b else b).astype(np.float64)
    alpha = float(dtype.type(alpha))
    beta = float(dtype.type(beta))
    expected = alpha * (A @ B)
    scale = abs(alpha) * (np.abs(A) @ np.abs(B))
    if beta != 0:
        c0 = np.asarray(c0, dtype=np.float64)
        expected = expected + beta * c0
        scale = scale + abs(beta) * np.abs(c0)
    assert got.shape == expected.shape
    if exact:
        bound = np.zeros_like(scale)
    else:
        n = A.shape[1] + 4
        bound = (gamma(n, UNIT_ROUNDOFF[dtype]) + gamma(n, 2.0 ** -53)) * scale
    err = np.abs(got.astype(np.float64) - expected)
    bad = ~(err <= bound)  # NaN in got counts as bad
    if bad.any():
        i = tuple(int(x) for x in np.argwhere(bad)[0])
        raise AssertionError(
            f"{bad.sum()} of {bad.size} entries off (M, N, K = {A.shape[0]}, {B.shape[1]}, {A.shape[1]}; "
            f"{dtype}, trans_a={trans_a}, trans_b={trans_b}, alpha={alpha}, beta={beta}, arch "
            f"{fastconv.get_arch()}, {fastconv.get_num_threads()} threads); first at {i}: got {got[i]!r}, "
            f"expected {expected[i]!r}, allowed error {bound[i]!r}")


def in_layout(x, layout):
    """A copy of matrix `x` stored as `layout`, and (buffer, mask of the buffer around the view), or None for the
    C and F copies, which have no surrounding memory.

    "padded": a block inside a larger C-ordered buffer (row stride > columns, as a BLAS lda > K);
    "strided": every 2nd row and 3rd column of a larger buffer; "negative": rows reversed and every 2nd column
    reversed (both strides negative). The buffer around the view holds SENTINEL.
    """
    r, c = x.shape
    if layout in ("C", "F"):
        return np.array(x, order=layout), None
    if layout == "padded":
        buf = np.full((r + 2, c + 5), SENTINEL, dtype=x.dtype)
        region = (slice(1, r + 1), slice(2, c + 2))
    elif layout == "strided":
        buf = np.full((2 * r + 1, 3 * c + 2), SENTINEL, dtype=x.dtype)
        region = (slice(1, None, 2), slice(2, None, 3))
    elif layout == "negative":
        buf = np.full((r, 2 * c), SENTINEL, dtype=x.dtype)
        region = (slice(None, None, -1), slice(None, None, -2))
    else:
        raise AssertionError(layout)
    view = buf[region]
    view[...] = x
    outside = np.ones(buf.shape, bool)
    outside[region] = False
    return view, (buf, outside)


# ------------------------------------------------------------------------------------------ blocking edges

@pytest.mark.parametrize("trans_a, trans_b", TRANSPOSES, ids=TRANSPOSE_IDS)
def test_micro_tile_edges_exact(arch, nthreads, dtype, trans_a, trans_b, rng):
    mr, nr, _, _, _ = kernel_geometry(arch, dtype)
    for m in sorted({0, 1, mr - 1, mr, mr + 1, 2 * mr + 1}):
        for n in sorted({0, 1, nr - 1, nr, nr + 1, 2 * nr + 1}):
            for k in (0, 1, 5):
                a, b = operands(rng, m, n, k, trans_a, trans_b, dtype, integer_matrix)
                got = fastconv.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
                assert got.dtype == dtype and got.shape == (m, n) and got.flags.c_contiguous
                assert_gemm_result(got, a, b, trans_a=trans_a, trans_b=trans_b, exact=True)


def test_few_rows_against_contiguous_columns(arch, nthreads, dtype, rng):
    """Up to 8 rows of A times a B whose columns are contiguous (x @ W.T, a fully connected layer with a small
    batch) with B of at least 2**16 elements (one or two rows) or 2**18 (more) run as the arch's dot kernel, B's
    columns 4 at a time, each vector of them loaded once for up to 4 rows: 1 to 3 leftover columns, a second block
    of rows, every leftover depth past the vectors, exactly on integers, and within the rounding bound on normal
    data with alpha/beta."""
    for m in (1, 2, 7, 8, 9):  # 9: the packed path again
        for n, k in ((1, 2 ** 20), (3, 2 ** 18 + 15), (4, 2 ** 18 + 16), (5, 2 ** 18 + 17), (67, 15651),
                     (2 ** 20 + 1, 1), (2 ** 16 + 3, 17), (301, 300), (70, 100)):
            # (301, 300): dot products for 1-2 rows, packed for more; (70, 100) below both sizes: packed
            a = integer_matrix(rng, (m, k), dtype)
            w = integer_matrix(rng, (n, k), dtype)
            assert_gemm_result(fastconv.gemm(a, w, trans_b=True), a, w, trans_b=True, exact=True)
    a, w = normal_matrix(rng, (3, 15001), dtype), normal_matrix(rng, (70, 15001), dtype)
    c0 = normal_matrix(rng, (3, 70), dtype)
    for alpha, beta in ((1.0, 0.0), (-0.5, 1.0), (2.0, -3.0)):
        out = c0.copy()
        fastconv.gemm(a, w, trans_b=True, alpha=alpha, beta=beta, out=out)
        assert_gemm_result(out, a, w, c0, trans_b=True, alpha=alpha, beta=beta)
    out, _ = in_layout(np.zeros((3, 70), dtype), "strided")  # a strided C
    fastconv.gemm(a, w, trans_b=True, out=out)
    assert_gemm_result(out, a, w, trans_b=True)


def test_few_rows_against_contiguous_rows(arch, nthreads, dtype, rng):
    """Up to 8 rows of A times a row-major B of at least 2**20 elements (dy @ W, a fully connected layer's input
    gradient at a small batch) run on the arch's rows kernel, B read in place 32 rows at a time: more rows than
    the kernel's mr (a second row group), a column tail shorter than a vector (read through a copy, never past B's
    end), a depth that is not a multiple of 32, A in either order, B a view with a longer row stride; exactly on
    integers, and within the rounding bound with alpha/beta and NaN in a beta=0 C."""
    mr, _, _, _, _ = kernel_geometry(arch, dtype)
    for m in sorted({1, 2, mr, min(mr + 1, 8), 8}):
        for k, n in ((1037, 1013), (64, 2 ** 14 + 5), (2 ** 11 + 1, 512)):
            a = integer_matrix(rng, (m, k), dtype)
            b = integer_matrix(rng, (k, n), dtype)
            assert_gemm_result(fastconv.gemm(a, b), a, b, exact=True)
            at = np.asfortranarray(a)
            assert_gemm_result(fastconv.gemm(at, b), at, b, exact=True)
    a = normal_matrix(rng, (5, 1100), dtype)
    wide = normal_matrix(rng, (1100, 1030), dtype)
    b = wide[:, 3:1003]  # rows 1030 apart
    c0 = normal_matrix(rng, (5, 1000), dtype)
    for alpha, beta in ((1.0, 0.0), (-0.5, 1.0), (2.0, -3.0)):
        out = c0.copy()
        fastconv.gemm(a, b, alpha=alpha, beta=beta, out=out)
        assert_gemm_result(out, a, b, c0, alpha=alpha, beta=beta)
    out = np.full((5, 1000), np.nan, dtype)
    fastconv.gemm(a, b, out=out)
    assert_gemm_result(out, a, b)


def test_shallow_product_into_a_large_c(arch, nthreads, dtype, rng):
    """A depth of at most 64 into a C beyond L2 (a fully connected layer's weight gradient added to the gradient:
    dy^T x, beta = 1) walks C row panel by row panel: edge tiles on both sides, accumulation into C, exact on
    integers."""
    m, n = 560, 530  # C of 1.19 MB in float32: past the 1 MiB threshold
    for k in (1, 8, 64, 65):  # 65: the usual order again
        a = integer_matrix(rng, (k, m), dtype)
        b = integer_matrix(rng, (k, n), dtype)
        c0 = integer_matrix(rng, (m, n), dtype)
        out = c0.copy()
        fastconv.gemm(a, b, out=out, trans_a=True, beta=1.0)
        assert_gemm_result(out, a, b, c0, trans_a=True, beta=1.0, exact=True)


def test_every_partial_tile_width_and_height_exact(arch, nthreads, dtype, rng):
    """Each width 1..NR+1 of the last column panel (narrow kernel variants, zero padding) and each height
    1..MR+1 of the last row panel, with out prefilled with NaN and beta=0 (edge tiles must overwrite)."""
    mr, nr, _, _, _ = kernel_geometry(arch, dtype)
    shapes = [(mr + 1, n) for n in range(1, nr + 2)] + [(m, nr + 1) for m in range(1, mr + 2)]
    for m, n in shapes:
        a, b = operands(rng, m, n, 3, False, False, dtype, integer_matrix)
        out = np.full((m, n), np.nan, dtype=dtype)
        assert fastconv.gemm(a, b, out, alpha=2.0) is out
        assert_gemm_result(out, a, b, alpha=2.0, exact=True)


def few_columns_case(rng, dtype, n):
    """a (75 x 400: groups of 4 row panels and a rest, two depth blocks), b (400 x n+16), c0 (75 x n+16)."""
    m, k = 75, 400
    return (rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n + 16)).astype(dtype),
            rng.standard_normal((m, n + 16)).astype(dtype))


def assert_first_columns_of_the_wide_product(few, a, b, c0):
    """few (the product 2 a b[:, :n] - c0[:, :n] computed alone) equals bit for bit the same columns of the whole
    product, and lies within rounding of float64."""
    n, k, dtype = few.shape[1], a.shape[1], a.dtype
    wide = c0.copy()
    fastconv.gemm(a, b, wide, alpha=2.0, beta=-1.0)
    np.testing.assert_array_equal(few, wide[:, :n])
    want = 2.0 * (a.astype(np.float64) @ b[:, :n].astype(np.float64)) - c0[:, :n]
    bound = 2.0 * (np.abs(a.astype(np.float64)) @ np.abs(b[:, :n].astype(np.float64))) + np.abs(c0[:, :n])
    assert np.all(np.abs(few - want) <= 4 * k * np.finfo(dtype).eps * bound)


@pytest.mark.parametrize("n", [49, 52, 196, 53])
def test_few_last_columns_match_the_wide_kernels_bit_for_bit(arch, nthreads, dtype, n, rng):
    """A last column panel of 1-4 columns (a 7x7 image's 49 pixels, 14x14's 196) runs a narrow kernel on some
    archs: over many row panels (75 rows: groups of 4 panels and a rest) and two depth blocks (k = 400, beta
    accumulating between them), with alpha and beta, every column equals bit for bit the same column computed
    inside a wider product (where the full-width kernels take it), and both are within rounding of float64."""
    a, b, c0 = few_columns_case(rng, dtype, n)
    narrow = c0[:, :n].copy()
    assert fastconv.gemm(a, b[:, :n], narrow, alpha=2.0, beta=-1.0) is narrow
    assert_first_columns_of_the_wide_product(narrow, a, b, c0)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("layout", ["view", "contiguous", "transposed"])
def test_products_of_one_to_four_columns_match_the_wide_kernels_bit_for_bit(arch, nthreads, dtype, n, layout, rng):
    """A whole product of 1-4 columns (a dense layer at batch 1-4: B is the images, read in place or packed
    compactly for the narrow kernel on some archs), two depth blocks with beta accumulating between them: each
    column equals bit for bit the same column inside a wide product, and is within rounding of float64."""
    a, b, c0 = few_columns_case(rng, dtype, n)
    few = c0[:, :n].copy()
    if layout == "transposed":  # B^T's rows contiguous: a dense layer's images
        fastconv.gemm(a, np.ascontiguousarray(b[:, :n].T), few, trans_b=True, alpha=2.0, beta=-1.0)
    else:
        fastconv.gemm(a, b[:, :n] if layout == "view" else np.ascontiguousarray(b[:, :n]), few, alpha=2.0,
                      beta=-1.0)
    assert_first_columns_of_the_wide_product(few, a, b, c0)


@pytest.mark.parametrize("dim", ["m", "k", "n"])
def test_cache_block_edges_exact(arch, nthreads, dtype, dim, rng):
    """MC-1, MC, MC+1, 2MC+1 rows; KC-1 .. 2KC+1 depth (more than one K block: the second accumulates into C);
    NC-1, NC, NC+1 columns. Sizes are large enough that 2 threads split the work."""
    mr, nr, mc, kc, nc = kernel_geometry(arch, dtype)
    if dim == "m":
        shapes = [(m, nr + 1, kc + 1) for m in (mc - 1, mc, mc + 1, 2 * mc + 1)]
    elif dim == "k":
        shapes = [(mc + 1, nr + 1, k) for k in (kc - 1, kc, kc + 1, 2 * kc + 1)]
    else:
        shapes = [(mr + 1, n, kc + 1) for n in (nc - 1, nc, nc + 1)]
    for (m, n, k), (trans_a, trans_b) in zip(shapes, TRANSPOSES):
        a, b = operands(rng, m, n, k, trans_a, trans_b, dtype, integer_matrix)
        c0 = integer_matrix(rng, (m, n), dtype)
        out = c0.copy()
        fastconv.gemm(a, b, out, trans_a=trans_a, trans_b=trans_b, alpha=-0.5, beta=2.0)
        assert_gemm_result(out, a, b, c0, trans_a=trans_a, trans_b=trans_b, alpha=-0.5, beta=2.0, exact=True)


@pytest.mark.parametrize("trans_a, trans_b", TRANSPOSES, ids=TRANSPOSE_IDS)
def test_prime_shapes(arch, nthreads, dtype, trans_a, trans_b, rng):
    for m, n, k in [(2, 3, 5), (13, 211, 7), (97, 89, 101), (31, 37, 263)]:
        a, b = operands(rng, m, n, k, trans_a, trans_b, dtype)
        assert_gemm_result(fastconv.gemm(a, b, trans_a=trans_a, trans_b=trans_b), a, b, trans_a=trans_a,
                           trans_b=trans_b)


@pytest.mark.parametrize("shape", [(2049, 33, 40), (20, 2049, 50), (17, 19, 2049)], ids=["M", "N", "K"])
def test_2049_in_one_dimension(arch, nthreads, dtype, shape, rng):
    m, n, k = shape
    for trans_a, trans_b in [(False, False), (True, True)]:
        a, b = operands(rng, m, n, k, trans_a, trans_b, dtype)
        assert_gemm_result(fastconv.gemm(a, b, trans_a=trans_a, trans_b=trans_b), a, b, trans_a=trans_a,
                           trans_b=trans_b)


def test_skinny_convolution_shape(arch, nthreads, dtype, rng):
    """LeNet-like layer on a 224x224 image: 16 filters, 50176 output pixels, K = 25."""
    a, b = operands(rng, 16, 50176, 25, False, False, dtype)
    assert_gemm_result(fastconv.gemm(a, b), a, b)


# ------------------------------------------------------------------------------------------ layouts

# A and B are packed by separate code, so each layout is paired with C order and with itself, not with all others.
LAYOUT_PAIRS = [(la, lb) for la in LAYOUTS for lb in LAYOUTS if la == lb or "C" in (la, lb)]


@pytest.mark.parametrize("layout_a, layout_b", LAYOUT_PAIRS, ids=[f"{la}-{lb}" for la, lb in LAYOUT_PAIRS])
def test_input_layouts(arch, nthreads, dtype, layout_a, layout_b, rng):
    """Any strides, including negative ones, for both operands; with and without transposes (a transpose swaps the
    strides the kernel sees, so C and F order with NN and TT give all four unit-stride patterns). The memory
    around strided views holds SENTINEL, which would poison the result if a kernel read outside the view."""
    m, n, k = 70, 75, 210  # M*N*K > 2^20: large enough for 2 threads to split it
    for trans_a, trans_b in [(False, False), (True, True)]:
        a, b = operands(rng, m, n, k, trans_a, trans_b, dtype)
        a_view, _ = in_layout(a, layout_a)
        b_view, _ = in_layout(b, layout_b)
        assert np.array_equal(a_view, a) and np.array_equal(b_view, b)
        got = fastconv.gemm(a_view, b_view, trans_a=trans_a, trans_b=trans_b)
        assert_gemm_result(got, a, b, trans_a=trans_a, trans_b=trans_b)


@pytest.mark.parametrize("layout_out", LAYOUTS)
def test_out_layouts(arch, nthreads, dtype, layout_out, rng):
    """out in any layout is written in place, and nothing around it is touched."""
    m, n, k = 70, 75, 210
    for alpha, beta in [(1.0, 0.0), (-1.5, 0.75)]:
        a, b = operands(rng, m, n, k, False, True, dtype)
        c0 = normal_matrix(rng, (m, n), dtype)
        out, around = in_layout(c0, layout_out)
        assert fastconv.gemm(a, b, out, trans_b=True, alpha=alpha, beta=beta) is out
        assert_gemm_result(out, a, b, c0, trans_b=True, alpha=alpha, beta=beta)
        if around is not None:
            buf, outside = around
            np.testing.assert_array_equal(buf[outside], SENTINEL)


# ------------------------------------------------------------------------------------------ alpha, beta, out

@pytest.mark.parametrize("alpha, beta", [(1.0, 0.0), (2.5, 0.0), (-1.0, 1.0), (0.5, -2.0), (1.0, 1.0),
                                         (0.0, 0.5), (0.0, 0.0), (1e-3, 1e3)])
def test_alpha_beta(arch, nthreads, dtype, alpha, beta, rng):
    """beta == 0 overwrites out, which holds NaN and must not leak; otherwise out is read and scaled."""
    m, n, k = 67, 131, 300  # K > KC for every kernel set: the later K blocks accumulate with beta = 1
    a, b = operands(rng, m, n, k, True, False, dtype)
    c0 = np.full((m, n), np.nan, dtype) if beta == 0 else normal_matrix(rng, (m, n), dtype)
    out = c0.copy()
    fastconv.gemm(a, b, out, trans_a=True, alpha=alpha, beta=beta)
    assert_gemm_result(out, a, b, c0, trans_a=True, alpha=alpha, beta=beta)


def test_beta_zero_with_empty_k_writes_zeros(arch, nthreads, dtype):
    out = np.full((5, 7), np.nan, dtype)
    fastconv.gemm(np.empty((5, 0), dtype), np.empty((0, 7), dtype), out)
    np.testing.assert_array_equal(out, 0)
    out = np.full((5, 7), 3.0, dtype)
    fastconv.gemm(np.empty((5, 0), dtype), np.empty((0, 7), dtype), out, beta=-2.0)
    np.testing.assert_array_equal(out, -6.0)


def test_alpha_zero_does_not_read_operands(arch, nthreads, dtype, rng):
    """BLAS semantics: with alpha == 0, a and b are not referenced (NaN there does not reach out)."""
    a = np.full((40, 50), np.nan, dtype)
    b = np.full((50, 60), np.inf, dtype)
    c0 = normal_matrix(rng, (40, 60), dtype)
    out = c0.copy()
    fastconv.gemm(a, b, out, alpha=0.0, beta=-1.5)
    np.testing.assert_array_equal(out, (dtype.type(-1.5) * c0))


def test_beta_one_accumulates_repeated_calls(arch, nthreads, dtype, rng):
    a, b = operands(rng, 50, 60, 300, False, False, dtype, integer_matrix)
    c0 = integer_matrix(rng, (50, 60), dtype)
    out = c0.copy()
    for _ in range(3):
        fastconv.gemm(a, b, out, beta=1.0)
    assert_gemm_result(out, a, b, c0, alpha=3.0, beta=1.0, exact=True)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_out_aliasing_an_input(arch, nthreads, dtype, beta, rng):
    """out may be a, b, or overlap one of them: the result is as if the inputs were read before out is written."""
    n = 97
    a, b = normal_matrix(rng, (n, n), dtype), normal_matrix(rng, (n, n), dtype)
    for target in ("a", "b", "a.T"):
        a_run, b_run = a.copy(), b.copy()
        out = {"a": a_run, "b": b_run, "a.T": a_run.T}[target]
        c0 = out.copy()
        assert fastconv.gemm(a_run, b_run, out, beta=beta) is out
        assert_gemm_result(out, a, b, c0, beta=beta)
    # out overlapping part of a: both are column blocks of one buffer
    buf = normal_matrix(rng, (60, 70), dtype)
    a_view, out = buf[:, :40], buf[:, 10:40]
    a_before, c0 = a_view.copy(), out.copy()
    b = normal_matrix(rng, (40, 30), dtype)
    fastconv.gemm(a_view, b, out, beta=beta)
    assert_gemm_result(out, a_before, b, c0, beta=beta)


def test_result_array(arch, nthreads, dtype, rng):
    a, b = operands(rng, 9, 11, 13, True, True, dtype)
    c = fastconv.gemm(a, b, trans_a=True, trans_b=True)
    assert isinstance(c, np.ndarray) and c.dtype == dtype and c.shape == (9, 11) and c.flags.c_contiguous
    assert c.flags.writeable and not np.shares_memory(c, a) and not np.shares_memory(c, b)


def test_python_lists_become_float64():
    c = fastconv.gemm([[1, 2, 3]], [[1.0], [2.0], [3.0]])
    assert c.dtype == np.float64
    np.testing.assert_array_equal(c, [[14.0]])


def test_read_only_inputs(arch, nthreads, dtype, rng):
    a, b = operands(rng, 30, 40, 50, False, False, dtype)
    a.flags.writeable = False
    b_broadcast = np.broadcast_to(b[:1], b.shape)  # read-only, zero row stride
    assert_gemm_result(fastconv.gemm(a, b), a, b)
    assert_gemm_result(fastconv.gemm(a, b_broadcast), a, np.array(b_broadcast))


def test_strides_not_multiple_of_itemsize(arch, nthreads, dtype, rng):
    """Fields of a packed record array have strides (and addresses) that are not multiples of the item size."""
    def packed_field(x):
        rec = np.zeros(x.shape, dtype=np.dtype([("x", dtype), ("flag", np.int8)]))  # itemsize 5 or 9: unaligned
        rec["x"] = x
        return rec["x"]
    a, b = operands(rng, 30, 40, 50, False, False, dtype)
    c0 = normal_matrix(rng, (30, 40), dtype)
    a_view, b_view, out = packed_field(a), packed_field(b), packed_field(c0)
    assert out.strides[1] % dtype.itemsize != 0
    assert fastconv.gemm(a_view, b_view, out, beta=1.0) is out
    assert_gemm_result(out, a, b, c0, beta=1.0)


def test_concurrent_calls_from_python_threads(arch, nthreads, dtype, rng):
    """The GIL is released and packing buffers are per thread: simultaneous calls must not mix their data."""
    from concurrent.futures import ThreadPoolExecutor
    problems = [(*operands(rng, 100 + i, 90, 150, False, i % 2 == 1, dtype), i % 2 == 1) for i in range(6)]

    def run(problem):
        a, b, trans_b = problem
        return fastconv.gemm(a, b, trans_b=trans_b)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(run, problems))
    for (a, b, trans_b), got in zip(problems, results):
        assert_gemm_result(got, a, b, trans_b=trans_b)


# ------------------------------------------------------------------------------------------ the C oracle

@pytest.mark.parametrize("dtype_", [np.float32, np.float64], ids=["f32", "f64"])
def test_naive_c_gemm_matches_numpy(dtype_, rng):
    """fastconv._C.gemm_naive, the oracle C code can be checked against, is itself right (strided views too)."""
    dtype = np.dtype(dtype_)
    for m, n, k in [(1, 1, 1), (7, 5, 3), (33, 17, 65), (4, 6, 0)]:
        a = normal_matrix(rng, (k, m), dtype).T  # column-major view
        b, _ = in_layout(normal_matrix(rng, (k, n), dtype), "negative")
        for alpha, beta in [(1.0, 0.0), (-0.5, 2.0)]:
            c0 = np.full((m, n), np.nan, dtype) if beta == 0 else normal_matrix(rng, (m, n), dtype)
            out = c0.copy()
            _C.gemm_naive(a, b, out, alpha, beta)
            assert_gemm_result(out, a, b, c0, alpha=alpha, beta=beta)


# ------------------------------------------------------------------------------------------ bad input

F32, F64 = np.float32, np.float64


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: fastconv.gemm(np.ones(3, F32), np.ones((3, 2), F32)), ValueError, r"2-D.*\(3,\).*\(3, 2\)"),
    (lambda: fastconv.gemm(np.ones((2, 3, 4)), np.ones((4, 2))), ValueError, r"2-D.*\(2, 3, 4\)"),
    (lambda: fastconv.gemm(np.ones((2, 3)), np.ones((4, 2))), ValueError, r"inner.*\(2, 3\).*\(4, 2\)"),
    (lambda: fastconv.gemm(np.ones((2, 3)), np.ones((2, 3)), trans_b=True, trans_a=True), ValueError,
     r"inner.*\(3, 2\).*\(3, 2\).*trans_a=True"),
    (lambda: fastconv.gemm(np.ones((2, 3), F32), np.ones((3, 2), F64)), TypeError,
     r"float32.*\(2, 3\).*float64.*\(3, 2\)"),
    (lambda: fastconv.gemm(np.ones((2, 3), np.int32), np.ones((3, 2), np.int32)), TypeError,
     r"a must be float32 or float64.*int32.*\(2, 3\)"),
    (lambda: fastconv.gemm(np.ones((2, 3), F32), np.ones((3, 2), np.float16)), TypeError,
     r"b must be float32 or float64.*float16.*\(3, 2\)"),
    (lambda: fastconv.gemm(np.ones((2, 3), np.complex128), np.ones((3, 2))), TypeError, r"a must be.*complex128"),
    (lambda: fastconv.gemm(np.ones((2, 3)), np.ones((3, 2)), np.empty((3, 2))), ValueError,
     r"out.*\(3, 2\).*\(2, 2\)"),
    (lambda: fastconv.gemm(np.ones((2, 3)), np.ones((3, 2)), np.empty((2, 2), F32)), TypeError,
     r"out.*float32.*\(2, 2\).*float64"),
    (lambda: fastconv.gemm(np.ones((2, 3)), np.ones((3, 2)), np.broadcast_to(0.0, (2, 2))), ValueError,
     r"out.*\(2, 2\).*read-only"),
    (lambda: fastconv.gemm(np.ones((2, 3)), np.ones((3, 2)), [[0.0, 0.0], [0.0, 0.0]]), TypeError,
     r"out must be a numpy.ndarray"),
    (lambda: fastconv.gemm(np.ones((2, 3)), np.ones((3, 2)), alpha=np.ones(2)), TypeError, r"alpha.*scalar"),
    (lambda: fastconv.gemm(np.ones((2, 3)), np.ones((3, 2)), alpha=np.array(2.0)), TypeError, r"alpha.*scalar"),
    (lambda: fastconv.gemm(np.ones((2, 3)), np.ones((3, 2)), beta=None), TypeError, r"beta.*scalar"),
    (lambda: fastconv.gemm(np.ones((2, 3)), np.ones((3, 2)), alpha="2"), TypeError, r"alpha.*scalar"),
    (lambda: fastconv.gemm(np.ones((2, 3)), np.ones((3, 2)), alpha=1j), TypeError, r"alpha.*real scalar"),
    (lambda: fastconv.gemm(np.ones((2, 3)), np.ones((3, 2)), beta=1.0), ValueError, r"beta.*out.*\(2, 2\)"),
    (lambda: fastconv.gemm("abc", np.ones((3, 2))), TypeError, r"a must be float32 or float64"),
], ids=["a-1d", "a-3d", "inner", "inner-transposed", "mixed-dtypes", "int32", "float16", "complex",
        "out-shape", "out-dtype", "out-read-only", "out-list", "alpha-array", "alpha-0d-array", "beta-None",
        "alpha-str", "alpha-complex", "beta-without-out", "a-str"])
def test_bad_input(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_size_overflow_is_an_error_not_a_hang(tmp_path):
    """M*N*K beyond int64 (zero-stride operands make it possible without memory) is rejected before any work.
    Run in a subprocess so that a missing check fails on the timeout instead of hanging the suite."""
    code = ("import numpy as np, fastconv\n"
            "k = 2 ** 57  # 8 * k * 4 bytes fits in an address space; 8 * 8 * k = 2^63 does not fit in int64\n"
            "a = np.broadcast_to(np.float32(1), (8, k)); b = np.broadcast_to(np.float32(1), (k, 8))\n"
            "try:\n"
            "    fastconv.gemm(a, b)\n"
            "except ValueError as e:\n"
            "    print('ValueError:', e)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))] +
        [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ValueError:" in proc.stdout and "overflow" in proc.stdout


# ------------------------------------------------------------------------------------------ random shapes

if given is None:
    @pytest.mark.skip(reason="hypothesis is not installed")
    def test_random_shapes_every_arch():
        pass
else:
    @settings(max_examples=30, deadline=None)
    @given(m=st.integers(0, 130), n=st.integers(0, 130), k=st.integers(0, 300), trans_a=st.booleans(),
           trans_b=st.booleans(), alpha=st.sampled_from([1.0, -1.0, 0.5, 3.25, 0.0]),
           beta=st.sampled_from([0.0, 1.0, -0.75]), double=st.booleans(), seed=st.integers(0, 2 ** 32 - 1))
    def test_random_shapes_every_arch(m, n, k, trans_a, trans_b, alpha, beta, double, seed):
        """Random shapes up to 130 x 130 x 300 (large ones split over 2 threads), on every kernel set."""
        dtype = np.dtype(np.float64 if double else np.float32)
        rng = np.random.default_rng(seed)
        a, b = operands(rng, m, n, k, trans_a, trans_b, dtype)
        c0 = np.full((m, n), np.nan, dtype) if beta == 0 else normal_matrix(rng, (m, n), dtype)
        previous = fastconv.get_arch()
        try:
            for arch in fastconv.available_archs():
                fastconv.set_arch(arch)
                for nthreads in (1, 2):
                    with fastconv.threads(nthreads):
                        out = c0.copy()
                        fastconv.gemm(a, b, out, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
                        assert_gemm_result(out, a, b, c0, trans_a=trans_a, trans_b=trans_b, alpha=alpha,
                                           beta=beta)
        finally:
            fastconv.set_arch(previous)


def test_byte_swapped_inputs_are_converted(rng):
    a = rng.standard_normal((5, 7))
    b = rng.standard_normal((7, 3))
    got = fastconv.gemm(a.astype(">f8"), b.astype(">f8"))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, a @ b, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------- transpose

@pytest.mark.parametrize("shape", [(1, 1), (8, 8), (7, 9), (16, 24), (13, 37), (8, 100), (45, 8), (3, 64)])
def test_transpose_exact(arch, dtype, shape, rng):
    """The arch's transpose (whole 8x8 / 4x4 register blocks, then the portable version for the rest) equals
    numpy's, from a row-strided view into a row-strided view, writing nothing outside it."""
    rows, cols = shape
    big = rng.standard_normal((rows, cols + 5)).astype(dtype)
    src = big[:, 2:2 + cols]
    out = np.full((cols, rows + 3), -7.0, dtype)
    _C.transpose(src, out[:, 1:1 + rows])
    np.testing.assert_array_equal(out[:, 1:1 + rows], src.T)
    assert (out[:, 0] == -7).all() and (out[:, 1 + rows:] == -7).all()


@pytest.mark.parametrize("rows", [1, 7, 8, 9, 16, 56, 57])
def test_transpose_of_four_contiguous_columns(arch, dtype, rows, rng):
    """Four columns with no gap between rows (a stride-4 layer's row split into its phases: the arch's own
    unpack-and-permute path) into rows of a strided view: numpy's transpose, nothing written outside."""
    src = rng.standard_normal((rows, 4)).astype(dtype)
    out = np.full((4, rows + 3), -7.0, dtype)
    _C.transpose(src, out[:, 1:1 + rows])
    np.testing.assert_array_equal(out[:, 1:1 + rows], src.T)
    assert (out[:, 0] == -7).all() and (out[:, 1 + rows:] == -7).all()


def test_transpose_bad_shape():
    with pytest.raises(ValueError, match=r"dst has shape \(3, 3\), expected \(4, 3\)"):
        _C.transpose(np.zeros((3, 4), np.float32), np.zeros((3, 3), np.float32))
