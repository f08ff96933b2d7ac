"""Stateless operations on NumPy arrays: the one place that checks arguments and converts arrays.

Arrays are float32 or float64 (never mixed); image tensors are NCHW. Each operation validates its inputs and
raises TypeError/ValueError naming the argument and the shapes, then hands buffers to the C engine, which
releases the GIL.
"""
import numpy as np

from . import _C

_FLOATS = (np.float32, np.float64)
_INDEX_MAX = 2**62  # geometry beyond this cannot describe a real tensor and would overflow C's int64 sums


def _as_float_array(x, name):
    """x as a float32/float64 ndarray (not copied when it already is one)."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
        if x.dtype.kind in "iub":  # python lists of ints: use float64 as NumPy would
            x = x.astype(np.float64)
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype} (shape {x.shape})")
    if any(s % x.itemsize for s in x.strides):  # unaligned strides (e.g. views into structured arrays)
        x = np.ascontiguousarray(x)
    return x


def gemm(a, b, out=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """General matrix multiply: ``out = alpha * op(a) @ op(b) + beta * out``.

    Parameters
    ----------
    a, b : 2-D float32 or float64 arrays of the same dtype; any memory order or strides (views are not copied).
        ``op(a)`` is ``a.T`` when `trans_a`, else `a`; likewise for `b`. op(a) is (M, K), op(b) is (K, N).
    out : optional (M, N) writable array of the same dtype. With ``beta == 0`` it is overwritten and never read
        (BLAS semantics: NaN in `out` does not propagate). Without `out`, a new C-ordered array is returned.
    alpha, beta : scalars.

    Returns
    -------
    out : (M, N) array.
    """
    a = _as_float_array(a, "a")
    b = _as_float_array(b, "b")
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"gemm needs 2-D arrays, got a with shape {a.shape} and b with shape {b.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"gemm operands must have the same dtype, got a {a.dtype} and b {b.dtype}")
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != kb:
        raise ValueError(f"gemm inner dimensions differ: op(a) is {(m, k)} and op(b) is {(kb, n)} "
                         f"(a {a.shape}, trans_a={trans_a}; b {b.shape}, trans_b={trans_b})")
    for name, v in (("alpha", alpha), ("beta", beta)):
        if not np.isscalar(v) or isinstance(v, (str, bytes)) or np.iscomplexobj(v):
            raise TypeError(f"{name} must be a real scalar, got {v!r}")
    if out is None:
        if beta != 0:
            raise ValueError("gemm with beta != 0 needs `out` (the C it accumulates into)")
        out = np.empty((m, n), dtype=a.dtype)
        target = out
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
        if out.shape != (m, n):
            raise ValueError(f"out has shape {out.shape}, expected {(m, n)} for op(a) {(m, k)} @ op(b) {(k, n)}")
        if out.dtype != a.dtype:
            raise TypeError(f"out has dtype {out.dtype}, expected {a.dtype}")
        if not out.flags.writeable:
            raise ValueError("out is read-only")
        target = out
        # Writing into an operand while reading it would be undefined: compute aside, then copy.
        if any(s % out.itemsize for s in out.strides) or np.may_share_memory(out, a) or \
                np.may_share_memory(out, b):
            target = np.array(out, order="C", copy=True)
    _C.gemm(a, b, target, bool(trans_a), bool(trans_b), alpha, beta)
    if target is not out:
        out[...] = target
    return out


# ---------------------------------------------------------------------------------------------- convolution

def _int_pair(value, name, minimum):
    """An int or a pair of ints -> (h, w), each >= minimum."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if max(pair) > _INDEX_MAX:
        raise ValueError(f"{name} must be <= {_INDEX_MAX} (sizes are 64-bit in the C engine), got {value!r}")
    return pair


def _conv_args(x, weight, bias, stride, padding, dilation, groups):
    x = _as_float_array(x, "x")
    weight = _as_float_array(weight, "weight")
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"weight must be 4-D (F, C/groups, kh, kw), got shape {weight.shape}")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight dtype {weight.dtype} differs from x dtype {x.dtype}")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    groups = int(groups)
    n, c, h, w = x.shape
    f, cg, kh, kw = weight.shape
    if c % groups or f % groups:
        raise ValueError(f"groups={groups} must divide both the input channels ({c}, x {x.shape}) and the "
                         f"output channels ({f}, weight {weight.shape})")
    if cg != c // groups:
        raise ValueError(f"weight {weight.shape} expects {cg * groups} input channels with groups={groups}, "
                         f"but x {x.shape} has {c}")
    if min(f, kh, kw) < 1 or min(c, h, w) < 1:
        raise ValueError(f"empty channel, spatial or kernel dimension: x {x.shape}, weight {weight.shape}")
    if bias is not None:
        bias = _as_float_array(bias, "bias")
        if bias.shape != (f,):
            raise ValueError(f"bias must have shape ({f},) for weight {weight.shape}, got {bias.shape}")
        if bias.dtype != x.dtype:
            raise TypeError(f"bias dtype {bias.dtype} differs from x dtype {x.dtype}")
        bias = np.ascontiguousarray(bias)
    stride = _int_pair(stride, "stride", 1)
    padding = _int_pair(padding, "padding", 0)
    dilation = _int_pair(dilation, "dilation", 1)
    span_h, span_w = h + 2 * padding[0], w + 2 * padding[1]
    ext_h, ext_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    if ext_h > span_h or ext_w > span_w:
        raise ValueError(f"kernel {(kh, kw)} with dilation {dilation} spans {(ext_h, ext_w)}, larger than the "
                         f"padded input {(span_h, span_w)} (x {x.shape}, padding {padding})")
    oh, ow = (span_h - ext_h) // stride[0] + 1, (span_w - ext_w) // stride[1] + 1
    return x, weight, bias, stride, padding, dilation, groups, (n, f, oh, ow)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation, as in every framework), NCHW.

    Parameters
    ----------
    x : (N, C, H, W) float32 or float64.
    weight : (F, C // groups, kh, kw), same dtype.
    bias : (F,) or None.
    stride, padding, dilation : int or (h, w) pair; padding is zeros on both sides.
    groups : splits channels into `groups` independent convolutions (AlexNet's two towers: groups=2).

    Returns
    -------
    y : (N, F, Ho, Wo) with Ho = (H + 2*ph - dh*(kh-1) - 1) // sh + 1 (likewise Wo).

    The forward pass packs GEMM operands straight from the image (no im2col matrix): its workspace is the GEMM's
    packing buffers only, at most (mc*kc + kc*nc) elements per thread (about 7 MiB in float32 with AVX-512).
    """
    x, weight, bias, stride, padding, dilation, groups, out_shape = _conv_args(
        x, weight, bias, stride, padding, dilation, groups)
    y = np.empty(out_shape, dtype=x.dtype)
    _C.conv2d_forward(np.ascontiguousarray(x), y, np.ascontiguousarray(weight), bias, stride, padding, dilation,
                      groups)
    return y


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, *, need_input_grad=True,
                    need_weight_grad=True, need_bias_grad=True):
    """Gradients of conv2d: returns (dx, dweight, dbias), None for those not asked for.

    dy : (N, F, Ho, Wo), the gradient of the loss with respect to conv2d's output; x and weight as given to
    conv2d. The input gradient multiplies weight^T by dy one tile of output pixels at a time and scatters it
    back (col2im); its workspace is C/groups*kh*kw x tile elements per thread, bounded by 2**20 elements
    (4 MiB float32, 8 MiB float64) plus the GEMM packing buffers, whatever the batch size.
    """
    x, weight, _, stride, padding, dilation, groups, out_shape = _conv_args(
        x, weight, None, stride, padding, dilation, groups)
    dy = _as_float_array(dy, "dy")
    if dy.shape != out_shape:
        raise ValueError(f"dy has shape {dy.shape}, expected {out_shape} for x {x.shape} and weight "
                         f"{weight.shape}")
    if dy.dtype != x.dtype:
        raise TypeError(f"dy dtype {dy.dtype} differs from x dtype {x.dtype}")
    dy = np.ascontiguousarray(dy)
    weight_c = np.ascontiguousarray(weight)
    dx = dw = db = None
    if need_input_grad:
        dx = np.empty(x.shape, dtype=x.dtype)
        _C.conv2d_backward_input(dy, dx, weight_c, stride, padding, dilation, groups)
    if need_weight_grad or need_bias_grad:
        dw = np.empty(weight.shape, dtype=x.dtype) if need_weight_grad else None
        db = np.empty(weight.shape[0], dtype=x.dtype) if need_bias_grad else None
        _C.conv2d_backward_weight(np.ascontiguousarray(x), dy, dw, db, weight.shape, stride, padding, dilation,
                                  groups)
    return dx, dw, db
