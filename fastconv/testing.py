"""Slow, independent twins ("references") of every fastconv.functional operation, and gradient-check helpers.

The fast path lowers convolutions to im2col + packed GEMM in C; these references are written differently on
purpose -- strided window views + ``np.einsum`` (no BLAS, ``optimize=False``) or plain Python loops over output
positions -- so a shared mistake is unlikely. They need only NumPy and never touch ``fastconv._C``, so this
module can be loaded on its own as an oracle.

Conventions are those of the fastconv.functional contract (API.md), with the names suffixed ``_ref``: NCHW
arrays, float32 or float64; every reference computes in float64 and returns arrays of the input's dtype.
``stride``/``padding``/``dilation``/``kernel_size`` accept an int or a pair ``(h, w)``. References check only
what they need to stay meaningful; argument validation is the job of fastconv.functional.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "conv_output_size", "numerical_gradient", "max_relative_error", "gemm_ref",
    "conv2d_ref", "conv2d_backward_ref",
    "max_pool2d_ref", "max_pool2d_backward_ref", "avg_pool2d_ref", "avg_pool2d_backward_ref",
    "global_avg_pool2d_ref", "global_avg_pool2d_backward_ref",
    "batch_norm_ref", "batch_norm_backward_ref", "lrn_ref", "lrn_backward_ref",
    "relu_ref", "relu_backward_ref", "dropout_backward_ref", "linear_ref", "linear_backward_ref",
    "softmax_ref", "log_softmax_ref", "softmax_cross_entropy_ref", "softmax_cross_entropy_backward_ref",
]


# ---------------------------------------------------------------------------------------------------- helpers

def _pair(value, name):
    """An int or a pair of ints as a tuple (h, w)."""
    if np.ndim(value) == 0:
        return int(value), int(value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair (h, w), got {value!r}")
    return int(value[0]), int(value[1])


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def conv_output_size(size, kernel, stride=1, padding=0, dilation=1, ceil_mode=False):
    """Output length of a convolution or pooling along one axis (an int; <= 0 means "no valid window").

    ``floor((size + 2*padding - dilation*(kernel - 1) - 1) / stride) + 1``; with `ceil_mode` the division rounds
    up, but (as in torch) a last window that would start beyond ``size + padding`` -- i.e. wholly in the right
    padding -- is dropped.
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
        return out
    return span // stride + 1


def numerical_gradient(f, x, dy, eps=1e-6):
    """Central finite differences of ``sum(f(x) * dy)`` with respect to `x`.

    `x` must be a writable float64 array; each entry is perturbed in place by +-eps and restored exactly
    (also when `f` raises). `f` returns an array broadcastable against `dy` (or a scalar). Returns a float64
    array shaped like `x`. Cost: two evaluations of `f` per entry of `x`, so keep `x` small.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise TypeError(f"numerical_gradient needs a float64 ndarray x, got {type(x).__name__} "
                        f"{getattr(x, 'dtype', '')}")
    dy = _f64(dy)
    grad = np.zeros(x.shape, dtype=np.float64)
    for index in np.ndindex(x.shape):
        original = x[index]
        try:
            x[index] = original + eps
            plus = np.sum(_f64(f(x)) * dy)
            x[index] = original - eps
            minus = np.sum(_f64(f(x)) * dy)
        finally:
            x[index] = original
        grad[index] = (plus - minus) / (2 * eps)
    return grad


def max_relative_error(a, b):
    """``max|a - b| / max(max|a|, max|b|)``: the worst error relative to the largest magnitude present.

    Scaling by the largest magnitude (not entry by entry) keeps near-zero entries, where finite differences
    only reach absolute accuracy, from dominating. 0.0 when both are all zero or empty; NaN anywhere gives NaN
    (so ``error < tol`` fails). Shapes must match.
    """
    a, b = _f64(a), _f64(b)
    if a.shape != b.shape:
        raise ValueError(f"max_relative_error needs equal shapes, got {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    if np.isnan(a).any() or np.isnan(b).any():
        return float("nan")
    scale = max(np.max(np.abs(a)), np.max(np.abs(b)))
    if scale == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / scale)


# ---------------------------------------------------------------------------------------------------- GEMM

def gemm_ref(a, b, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None):
    """``alpha * op(a) @ op(b) + beta * c`` as a new array of a's dtype; op transposes when asked.

    BLAS semantics: with ``beta == 0`` `c` is never read (it may be None or hold NaN).
    """
    op_a = _f64(a).T if trans_a else _f64(a)
    op_b = _f64(b).T if trans_b else _f64(b)
    out = alpha * np.einsum("ik,kj->ij", op_a, op_b, optimize=False)
    if beta != 0:
        out = out + beta * _f64(c)
    return out.astype(np.result_type(a), copy=False)


# ---------------------------------------------------------------------------------------------------- conv

def _conv_windows(x64, kernel, stride, padding, dilation):
    """Zero-padded x as a read-only view (N, C, Ho, Wo, kh, kw) of its receptive fields."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    padded = np.pad(x64, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if padded.shape[2] < span_h or padded.shape[3] < span_w:
        raise ValueError(f"kernel {kernel} with dilation {dilation} spans ({span_h}, {span_w}), larger than the "
                         f"padded input {padded.shape[2:]}")
    # Every window of the full span, then keep every stride-th window and every dilation-th tap in it.
    spans = sliding_window_view(padded, (span_h, span_w), axis=(2, 3))
    return spans[:, :, ::sh, ::sw, ::dh, ::dw]


def conv2d_ref(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Cross-correlation as in torch: x (N, C, H, W), weight (F, C/groups, kh, kw), bias (F,) -> (N, F, Ho, Wo).

    Channel group g sees input channels [g*C/groups, (g+1)*C/groups) and produces filters
    [g*F/groups, (g+1)*F/groups).
    """
    x64, w64 = _f64(x), _f64(weight)
    n, c, _, _ = x64.shape
    f, cg, kh, kw = w64.shape
    if c != cg * groups or f % groups:
        raise ValueError(f"x {x64.shape} and weight {w64.shape} do not fit groups={groups}")
    windows = _conv_windows(x64, (kh, kw), _pair(stride, "stride"), _pair(padding, "padding"),
                            _pair(dilation, "dilation"))
    ho, wo = windows.shape[2:4]
    windows = windows.reshape(n, groups, cg, ho, wo, kh, kw)
    w_grouped = w64.reshape(groups, f // groups, cg, kh, kw)
    y = np.einsum("ngchwij,gfcij->ngfhw", windows, w_grouped, optimize=False).reshape(n, f, ho, wo)
    if bias is not None:
        y = y + _f64(bias).reshape(1, f, 1, 1)
    return y.astype(x.dtype, copy=False)


# Winograd F(2x2, 3x3): y_tile = A^T [(G g G^T) . (B^T d B)] A for each 4x4 input tile d (Lavin & Gray, 2016).
_WINOGRAD_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
_WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
_WINOGRAD_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
# F(4x4, 3x3) (Lavin and Gray, interpolation points 0, +-1, +-2)
_WINOGRAD4_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                          [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=np.float64)
_WINOGRAD4_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                         [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=np.float64)
_WINOGRAD4_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                         dtype=np.float64)


def conv2d_winograd_bound(x, weight, bias=None, padding=0, groups=1, tile=2):
    """The F(tile x tile, 3x3) pipeline (tile 2 or 4) run on absolute values, in float64: one value per output of
    the 3x3, stride-1 convolution ``conv2d_ref(x, weight, bias, padding=padding, groups=groups)``.

    Rounding analysis of the Winograd algorithm: every value it computes (transformed tiles, their products, the
    channel sums, the inverse transform) is a sum of terms whose absolute values add up to at most the matching
    value of this pipeline with every matrix and operand replaced by its absolute value, so with K = C/groups
    channels summed and at most 16 further rounding steps along any path (F(2x2)), an implementation is within
    ``(K + 16) * eps * bound`` of the exact result; F(4x4)'s transforms take up to 12 steps each way besides the
    channel sum. The bound is at least the direct sum's sum |x| |w|.
    """
    if tile not in (2, 4):
        raise ValueError(f"tile must be 2 or 4, got {tile!r}")
    x64, w64 = np.abs(_f64(x)), np.abs(_f64(weight))
    n, c, h, w = x64.shape
    f, cg, kh, kw = w64.shape
    if (kh, kw) != (3, 3) or c != cg * groups or f % groups:
        raise ValueError(f"x {x64.shape} and weight {w64.shape}: need 3x3 filters that fit groups={groups}")
    ph, pw = _pair(padding, "padding")
    ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
    th, tw = -(-ho // tile), -(-wo // tile)
    side = tile + 2
    padded = np.zeros((n, c, tile * th + 2, tile * tw + 2))
    rows, cols = min(h, tile * th + 2 - ph), min(w, tile * tw + 2 - pw)
    padded[:, :, ph:ph + rows, pw:pw + cols] = x64[:, :, :rows, :cols]
    tiles = sliding_window_view(padded, (side, side), axis=(2, 3))[:, :, ::tile, ::tile]  # n c th tw side side
    if tile == 2:
        bt, g, at = np.abs(_WINOGRAD_BT), np.abs(_WINOGRAD_G), np.abs(_WINOGRAD_AT)
    else:
        bt, g, at = np.abs(_WINOGRAD4_BT), np.abs(_WINOGRAD4_G), np.abs(_WINOGRAD4_AT)
    v = np.einsum("ij,nctujk,lk->nctuil", bt, tiles, bt).reshape(n, groups, cg, th, tw, side, side)
    u = np.einsum("ij,fcjk,lk->fcil", g, w64, g).reshape(groups, f // groups, cg, side, side)
    m = np.einsum("gfcil,ngctuil->ngftuil", u, v).reshape(n, f, th, tw, side, side)
    out = np.einsum("ij,nftujk,lk->nftuil", at, m, at)  # n f th tw tile tile
    out = out.transpose(0, 1, 2, 4, 3, 5).reshape(n, f, tile * th, tile * tw)[:, :, :ho, :wo]
    if bias is not None:
        out = out + np.abs(_f64(bias)).reshape(1, f, 1, 1)
    return out


def conv2d_winograd_weight_grad_bound(dy, x, padding=0, groups=1, tile=2):
    """The F(tile x tile, 3x3) weight-gradient pipeline (tile 2 or 4) run on absolute values, in float64: one value
    per weight of the 3x3, stride-1 convolution of x that produced dy (shape (F, C/groups, 3, 3)).

    The weight gradient of one tile of dy is G^T [(A e A^T) . (B^T d B)] G (e the tile x tile window of dy, d its
    (tile + 2)-square input window, A the forward's A^T transposed); summed over T tiles before the last
    transform. As for conv2d_winograd_bound, an implementation is within ``(T + 16) * eps * bound`` of the exact
    gradient with tile 2 (``(T + 32) * eps * bound`` with tile 4).
    """
    if tile not in (2, 4):
        raise ValueError(f"tile must be 2 or 4, got {tile!r}")
    dy64, x64 = np.abs(_f64(dy)), np.abs(_f64(x))
    n, c, h, w = x64.shape
    f, ho, wo = dy64.shape[1:]
    ph, pw = _pair(padding, "padding")
    if (ho, wo) != (h + 2 * ph - 2, w + 2 * pw - 2) or c % groups or f % groups:
        raise ValueError(f"dy {dy64.shape} is not the output of a 3x3 stride-1 convolution of x {x64.shape} "
                         f"with padding {padding} and groups={groups}")
    th, tw = -(-ho // tile), -(-wo // tile)
    side = tile + 2
    padded = np.zeros((n, c, tile * th + 2, tile * tw + 2))
    rows, cols = min(h, tile * th + 2 - ph), min(w, tile * tw + 2 - pw)
    padded[:, :, ph:ph + rows, pw:pw + cols] = x64[:, :, :rows, :cols]
    tiles = sliding_window_view(padded, (side, side), axis=(2, 3))[:, :, ::tile, ::tile]  # n c th tw side side
    dy_tiles = np.zeros((n, f, tile * th, tile * tw))
    dy_tiles[:, :, :ho, :wo] = dy64
    dy_tiles = dy_tiles.reshape(n, f, th, tile, tw, tile).transpose(0, 1, 2, 4, 3, 5)  # n f th tw tile tile
    if tile == 2:
        bt, g, a = np.abs(_WINOGRAD_BT), np.abs(_WINOGRAD_G), np.abs(_WINOGRAD_AT).T
    else:
        bt, g, a = np.abs(_WINOGRAD4_BT), np.abs(_WINOGRAD4_G), np.abs(_WINOGRAD4_AT).T
    v = np.einsum("ij,nctujk,lk->nctuil", bt, tiles, bt).reshape(n, groups, c // groups, th, tw, side, side)
    e = np.einsum("ij,nftujk,lk->nftuil", a, dy_tiles, a).reshape(n, groups, f // groups, th, tw, side, side)
    hsum = np.einsum("ngftuil,ngctuil->gfcil", e, v).reshape(f, c // groups, side, side)
    return np.einsum("ji,fcjk,kl->fcil", g, hsum, g)


def conv2d_backward_ref(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, *, need_input_grad=True,
                        need_weight_grad=True, need_bias_grad=True):
    """Gradients of conv2d_ref: dy (N, F, Ho, Wo) -> (dx like x, dw like weight, db (F,)); None where not asked.

    dw contracts dy with the receptive-field view; dx scatters dy back one kernel tap at a time into a padded
    buffer (the adjoint of the window gather), then drops the padding.
    """
    dy64, x64, w64 = _f64(dy), _f64(x), _f64(weight)
    n, c, h, w = x64.shape
    f, cg, kh, kw = w64.shape
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    dil_h, dil_w = _pair(dilation, "dilation")
    fg = f // groups
    ho, wo = dy64.shape[2:]
    dy_grouped = dy64.reshape(n, groups, fg, ho, wo)
    w_grouped = w64.reshape(groups, fg, cg, kh, kw)
    dx = dw = db = None
    if need_weight_grad:
        windows = _conv_windows(x64, (kh, kw), (sh, sw), (ph, pw), (dil_h, dil_w)).reshape(n, groups, cg, ho, wo, kh, kw)
        dw = np.einsum("ngfhw,ngchwij->gfcij", dy_grouped, windows, optimize=False).reshape(f, cg, kh, kw)
        dw = dw.astype(weight.dtype, copy=False)
    if need_bias_grad:
        db = dy64.sum(axis=(0, 2, 3)).astype(dy.dtype, copy=False)
    if need_input_grad:
        dx_padded = np.zeros((n, groups, cg, h + 2 * ph, w + 2 * pw))
        for i in range(kh):
            for j in range(kw):
                # Tap (i, j) of output (oh, ow) reads padded input (oh*sh + i*dil_h, ow*sw + j*dil_w).
                rows = slice(i * dil_h, i * dil_h + sh * (ho - 1) + 1, sh)
                cols = slice(j * dil_w, j * dil_w + sw * (wo - 1) + 1, sw)
                dx_padded[:, :, :, rows, cols] += np.einsum("ngfhw,gfc->ngchw", dy_grouped, w_grouped[..., i, j],
                                                            optimize=False)
        dx = dx_padded.reshape(n, c, h + 2 * ph, w + 2 * pw)[:, :, ph:ph + h, pw:pw + w]
        dx = np.ascontiguousarray(dx).astype(x.dtype, copy=False)
    return dx, dw, db


# ---------------------------------------------------------------------------------------------------- pooling

def _pool_geometry(input_shape, kernel_size, stride, padding, ceil_mode):
    """(H, W, (kh, kw), (sh, sw), (ph, pw), Ho, Wo) for a pooling; stride None means kernel_size."""
    h, w = input_shape[2], input_shape[3]
    kh, kw = _pair(kernel_size, "kernel_size")
    sh, sw = _pair(kernel_size if stride is None else stride, "stride")
    ph, pw = _pair(padding, "padding")
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"padding {(ph, pw)} must be at most half the kernel {(kh, kw)}")
    ho = conv_output_size(h, kh, sh, ph, 1, ceil_mode)
    wo = conv_output_size(w, kw, sw, pw, 1, ceil_mode)
    if ho < 1 or wo < 1:
        raise ValueError(f"pooling {(kh, kw)} with padding {(ph, pw)} has no window on input {(h, w)}")
    return h, w, (kh, kw), (sh, sw), (ph, pw), ho, wo


def _pool_windows(h, w, kernel, stride, padding, ho, wo):
    """For each output (oh, ow): its window in input coordinates, both clipped to the input (rows r0:r1, cols
    c0:c1) and clipped only to the padded input (the divisor of avg_pool with count_include_pad)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    for oh in range(ho):
        top = oh * sh - ph
        bottom = min(top + kh, h + ph)  # with ceil_mode the last window may run past the padded input
        for ow in range(wo):
            left = ow * sw - pw
            right = min(left + kw, w + pw)
            padded_count = (bottom - top) * (right - left)
            yield oh, ow, max(top, 0), min(bottom, h), max(left, 0), min(right, w), padded_count


def max_pool2d_ref(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Max pooling with -inf padding: x (N, C, H, W) -> (y (N, C, Ho, Wo), argmax int64 (N, C, Ho, Wo)).

    argmax is the flat index ``h*W + w`` into the input plane (torch's convention), always a real (not
    padding) position. Ties pick the FIRST maximum in row-major window order (as torch). NaN propagates: a
    window holding NaN gives y = NaN and argmax at the first NaN of the window (torch points at the last NaN;
    compare argmax in NaN windows only through ``isnan(x.flat[argmax])``). A window of only -inf gives -inf and
    the index of its first real position.
    """
    x64 = _f64(x)
    n, c = x64.shape[:2]
    h, w, kernel, stride_hw, pad, ho, wo = _pool_geometry(x64.shape, kernel_size, stride, padding, ceil_mode)
    y = np.empty((n, c, ho, wo))
    argmax = np.empty((n, c, ho, wo), dtype=np.int64)
    for oh, ow, r0, r1, c0, c1, _ in _pool_windows(h, w, kernel, stride_hw, pad, ho, wo):
        window = x64[:, :, r0:r1, c0:c1].reshape(n, c, (r1 - r0) * (c1 - c0))
        local = np.argmax(window, axis=-1)  # first maximum; NaN counts as the maximum
        y[:, :, oh, ow] = np.take_along_axis(window, local[..., None], axis=-1)[..., 0]
        argmax[:, :, oh, ow] = (r0 + local // (c1 - c0)) * w + c0 + local % (c1 - c0)
    return y.astype(x.dtype, copy=False), argmax


def max_pool2d_backward_ref(dy, argmax, input_shape):
    """Route each dy (N, C, Ho, Wo) to the input position argmax names; overlapping windows add up.

    Returns dx with shape `input_shape` (N, C, H, W) and dy's dtype.
    """
    n, c, h, w = input_shape
    argmax = np.asarray(argmax, dtype=np.int64)
    dx = np.zeros((n * c, h * w))
    plane_offsets = np.arange(n * c, dtype=np.int64)[:, None] * (h * w)
    flat_index = plane_offsets + argmax.reshape(n * c, argmax.shape[2] * argmax.shape[3])
    np.add.at(dx.reshape(-1), flat_index.ravel(), _f64(dy).ravel())
    return dx.reshape(n, c, h, w).astype(dy.dtype, copy=False)


def avg_pool2d_ref(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Average pooling with zero padding: x (N, C, H, W) -> y (N, C, Ho, Wo), torch's divisor semantics.

    The sum runs over the window clipped to the input. The divisor is, with `count_include_pad`, the window
    clipped to the PADDED input (a ceil_mode window running past it counts only its part inside), otherwise
    the number of real input positions in the window.
    """
    x64 = _f64(x)
    n, c = x64.shape[:2]
    h, w, kernel, stride_hw, pad, ho, wo = _pool_geometry(x64.shape, kernel_size, stride, padding, ceil_mode)
    y = np.empty((n, c, ho, wo))
    for oh, ow, r0, r1, c0, c1, padded_count in _pool_windows(h, w, kernel, stride_hw, pad, ho, wo):
        divisor = padded_count if count_include_pad else (r1 - r0) * (c1 - c0)
        y[:, :, oh, ow] = x64[:, :, r0:r1, c0:c1].sum(axis=(2, 3)) / divisor
    return y.astype(x.dtype, copy=False)


def avg_pool2d_backward_ref(dy, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                            count_include_pad=True):
    """Gradient of avg_pool2d_ref: spread each dy (N, C, Ho, Wo) / divisor evenly over its window.

    Returns dx with shape `input_shape` and dy's dtype.
    """
    dy64 = _f64(dy)
    h, w, kernel, stride_hw, pad, ho, wo = _pool_geometry(input_shape, kernel_size, stride, padding, ceil_mode)
    dx = np.zeros(tuple(input_shape))
    for oh, ow, r0, r1, c0, c1, padded_count in _pool_windows(h, w, kernel, stride_hw, pad, ho, wo):
        divisor = padded_count if count_include_pad else (r1 - r0) * (c1 - c0)
        dx[:, :, r0:r1, c0:c1] += dy64[:, :, oh, ow, None, None] / divisor
    return dx.astype(dy.dtype, copy=False)


def global_avg_pool2d_ref(x):
    """Mean over each plane: x (N, C, H, W) -> y (N, C, 1, 1)."""
    return _f64(x).mean(axis=(2, 3), keepdims=True).astype(x.dtype, copy=False)


def global_avg_pool2d_backward_ref(dy, input_shape):
    """dy (N, C, 1, 1) spread evenly over each (H, W) plane -> dx with shape `input_shape`."""
    h, w = input_shape[2], input_shape[3]
    dx = np.broadcast_to(_f64(dy) / (h * w), tuple(input_shape))
    return np.array(dx, dtype=dy.dtype)


# ---------------------------------------------------------------------------------------------------- normalization

def _channel_axes(x):
    """Reduction axes and the broadcast shape of a per-channel (C,) vector for x (N, C) or (N, C, H, W)."""
    if x.ndim == 2:
        return (0,), (1, x.shape[1])
    if x.ndim == 4:
        return (0, 2, 3), (1, x.shape[1], 1, 1)
    raise ValueError(f"batch norm needs x of shape (N, C) or (N, C, H, W), got {x.shape}")


def batch_norm_ref(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
    """Batch normalization over N (and H, W): x (N, C) or (N, C, H, W); gamma, beta (C,) -> (y, (mean, invstd)).

    Training normalizes with the batch mean and BIASED variance, ``invstd = 1 / sqrt(var + eps)``, and updates
    the running arrays in place (when given): ``running = (1 - momentum) * running + momentum * stat`` with the
    UNBIASED variance, as torch; like torch it refuses a batch with a single value per channel. Inference
    normalizes with running_mean / running_var and returns those as the saved statistics.
    """
    x64 = _f64(x)
    axes, shape = _channel_axes(x64)
    if training:
        count = x64.size // x64.shape[1]
        if count < 2:
            raise ValueError(f"batch norm in training needs more than one value per channel, got x {x64.shape}")
        mean = x64.mean(axis=axes)
        var = ((x64 - mean.reshape(shape)) ** 2).mean(axis=axes)
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * _f64(running_mean) + momentum * mean
        if running_var is not None:
            running_var[...] = (1 - momentum) * _f64(running_var) + momentum * var * count / (count - 1)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch norm in inference needs running_mean and running_var")
        mean, var = _f64(running_mean), _f64(running_var)
    invstd = 1.0 / np.sqrt(var + eps)
    y = (x64 - mean.reshape(shape)) * (invstd * _f64(gamma)).reshape(shape) + _f64(beta).reshape(shape)
    return y.astype(x.dtype, copy=False), (mean.astype(x.dtype), invstd.astype(x.dtype))


def batch_norm_backward_ref(dy, x, gamma, saved, training=True):
    """Gradients of batch_norm_ref given its saved (mean, invstd) -> (dx like x, dgamma (C,), dbeta (C,)).

    With m values per channel and xhat = (x - mean) * invstd: dbeta = sum dy, dgamma = sum dy * xhat, and in
    training (mean and invstd depend on x) ``dx = gamma * invstd * (dy - dbeta/m - xhat * dgamma/m)``; in
    inference the statistics are constants, so ``dx = gamma * invstd * dy``.
    """
    dy64, x64 = _f64(dy), _f64(x)
    axes, shape = _channel_axes(x64)
    mean, invstd = (_f64(s).reshape(shape) for s in saved)
    gamma64 = _f64(gamma).reshape(shape)
    xhat = (x64 - mean) * invstd
    dbeta = dy64.sum(axis=axes)
    dgamma = (dy64 * xhat).sum(axis=axes)
    if training:
        count = x64.size // x64.shape[1]
        dx = gamma64 * invstd * (dy64 - dbeta.reshape(shape) / count - xhat * dgamma.reshape(shape) / count)
    else:
        dx = gamma64 * invstd * dy64
    return dx.astype(x.dtype, copy=False), dgamma.astype(x.dtype), dbeta.astype(x.dtype)


def _lrn_scale(x64, size, alpha, k):
    """scale[:, c] = k + alpha/size * sum of x^2 over channels [c - size//2, c + (size-1)//2] (zero outside)."""
    channels = x64.shape[1]
    squares = x64 ** 2
    scale = np.empty_like(x64)
    for c in range(channels):
        lo, hi = max(0, c - size // 2), min(channels, c + (size - 1) // 2 + 1)
        scale[:, c] = k + alpha / size * squares[:, lo:hi].sum(axis=1)
    return scale


def lrn_ref(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """Local response normalization across channels, torch convention: x (N, C, ...) -> (y, scale).

    ``scale = k + alpha/size * (sum of x^2 over the size-channel window, zero padded: size//2 channels
    before, (size-1)//2 after)`` -- the divisor is always `size`, even where the window is clipped;
    ``y = x * scale**-beta``.
    """
    x64 = _f64(x)
    scale = _lrn_scale(x64, size, alpha, k)
    return (x64 * scale ** -beta).astype(x.dtype, copy=False), scale.astype(x.dtype, copy=False)


def lrn_backward_ref(dy, x, y, scale, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """Gradient of lrn_ref with respect to x -> dx like x.

    ``dx_c = dy_c * scale_c**-beta - 2*alpha*beta/size * x_c * sum_j dy_j * x_j * scale_j**(-beta-1)`` over the
    channels j whose window holds c. `y` and `scale` are accepted for signature parity with
    fastconv.functional but recomputed from `x`, so the reference never trusts the forward under test.
    """
    del y, scale
    dy64, x64 = _f64(dy), _f64(x)
    channels = x64.shape[1]
    scale = _lrn_scale(x64, size, alpha, k)
    dx = dy64 * scale ** -beta
    through_scale = dy64 * x64 * scale ** (-beta - 1)
    for c in range(channels):
        # Channel j's window [j - size//2, j + (size-1)//2] holds c  <=>  c - (size-1)//2 <= j <= c + size//2.
        lo, hi = max(0, c - (size - 1) // 2), min(channels, c + size // 2 + 1)
        dx[:, c] -= 2 * alpha * beta / size * x64[:, c] * through_scale[:, lo:hi].sum(axis=1)
    return dx.astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------------------------------- activations

def relu_ref(x):
    """max(x, 0) elementwise (NaN stays NaN)."""
    return np.maximum(_f64(x), 0.0).astype(x.dtype, copy=False)


def relu_backward_ref(dy, x, rule="plain"):
    """dx for ReLU under one of three rules: "plain" dy * (x > 0); "guided" dy * (x > 0) * (dy > 0) (guided
    backpropagation); "deconvnet" dy * (dy > 0) (ignores x)."""
    dy64, x64 = _f64(dy), _f64(x)
    if rule == "plain":
        keep = x64 > 0
    elif rule == "guided":
        keep = (x64 > 0) & (dy64 > 0)
    elif rule == "deconvnet":
        keep = dy64 > 0
    else:
        raise ValueError(f"rule must be 'plain', 'guided' or 'deconvnet', got {rule!r}")
    return np.where(keep, dy64, 0.0).astype(dy.dtype, copy=False)


def dropout_backward_ref(dy, mask, p):
    """Inverted dropout gradient: dy * mask / (1 - p), mask the bool array of kept units, p the drop rate."""
    return (_f64(dy) * np.asarray(mask, dtype=bool) / (1.0 - p)).astype(dy.dtype, copy=False)


# ---------------------------------------------------------------------------------------------------- linear, losses

def linear_ref(x, weight, bias=None):
    """x (N, in) @ weight (out, in).T + bias (out,) -> y (N, out)."""
    y = np.einsum("ni,oi->no", _f64(x), _f64(weight), optimize=False)
    if bias is not None:
        y = y + _f64(bias)
    return y.astype(x.dtype, copy=False)


def linear_backward_ref(dy, x, weight, *, need_input_grad=True):
    """Gradients of linear_ref: dy (N, out) -> (dx (N, in) or None, dw (out, in), db (out,))."""
    dy64, x64, w64 = _f64(dy), _f64(x), _f64(weight)
    dx = None
    if need_input_grad:
        dx = np.einsum("no,oi->ni", dy64, w64, optimize=False).astype(x.dtype, copy=False)
    dw = np.einsum("no,ni->oi", dy64, x64, optimize=False).astype(weight.dtype, copy=False)
    return dx, dw, dy64.sum(axis=0).astype(dy.dtype, copy=False)


def log_softmax_ref(x, axis=-1):
    """x - logsumexp(x) along `axis`, shifted by the maximum so large logits do not overflow."""
    x64 = _f64(x)
    shifted = x64 - np.max(x64, axis=axis, keepdims=True)
    return (shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))).astype(x.dtype, copy=False)


def softmax_ref(x, axis=-1):
    """exp(x) / sum exp(x) along `axis`, shifted by the maximum so large logits do not overflow."""
    x64 = _f64(x)
    e = np.exp(x64 - np.max(x64, axis=axis, keepdims=True))
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(x.dtype, copy=False)


def softmax_cross_entropy_ref(logits, labels):
    """Mean over the batch of -log softmax(logits)[i, labels[i]]: logits (N, K), labels int (N,) in [0, K).

    Returns (loss as a NumPy scalar of the logits' dtype, probs (N, K) = softmax of the logits).
    """
    log_probs = log_softmax_ref(_f64(logits), axis=1)
    labels = np.asarray(labels)
    loss = -np.mean(log_probs[np.arange(log_probs.shape[0]), labels])
    dtype = np.asarray(logits).dtype
    return dtype.type(loss), np.exp(log_probs).astype(dtype, copy=False)


def softmax_cross_entropy_backward_ref(probs, labels, dloss=1.0):
    """Gradient of the MEAN loss with respect to the logits: dloss * (probs - onehot(labels)) / N."""
    grad = _f64(probs).copy()
    n = grad.shape[0]
    grad[np.arange(n), np.asarray(labels)] -= 1.0
    return (grad * (dloss / n)).astype(probs.dtype, copy=False)
