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

# =====================================================================================================================
# Normalization, losses and linear layers: batch_norm, lrn, softmax / log_softmax, softmax_cross_entropy, linear,
# each with its backward.
# =====================================================================================================================

def _scalar_in_range(value, name, low=None, high=None, low_open=False):
    """`value` as a finite Python float, checked against [low, high] (or (low, high] when low_open)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def _same_shape_dtype(ref, ref_name, other, other_name):
    """`other` as a float array with exactly the shape and dtype of `ref`."""
    other = _as_float_array(other, other_name)
    if other.dtype != ref.dtype:
        raise TypeError(f"{other_name} has dtype {other.dtype} but {ref_name} has {ref.dtype}; "
                        f"they must be the same (float32 or float64)")
    if other.shape != ref.shape:
        raise ValueError(f"{other_name} has shape {other.shape} but {ref_name} has shape {ref.shape}; they must match")
    return other


def _spatial_size(x):
    """Number of values per sample and channel of an (N, C, *) array: the product of the axes after C."""
    return int(np.prod(x.shape[2:], dtype=np.int64))


def _per_channel_vector(v, name, dtype, channels, x_shape, ref="x"):
    """`v` as a C-contiguous (channels,) array of `dtype`; plain sequences are converted, arrays of another float
    dtype are refused (no silent mixing of precisions). Errors cite `ref`, of shape x_shape, where the length
    `channels` comes from."""
    if isinstance(v, np.ndarray):
        v = _as_float_array(v, name)
        if v.dtype != dtype:
            raise TypeError(f"{name} has dtype {v.dtype} but {ref} has {np.dtype(dtype)}; they must be the same")
    else:
        v = np.asarray(v, dtype=dtype)
    if v.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},) for {ref} of shape {x_shape}, got {v.shape}")
    return np.ascontiguousarray(v)


def _running_stat(v, name, dtype, channels, x_shape):
    """A running-statistics array updated in place: must be a writable (C,) ndarray of x's dtype."""
    if not isinstance(v, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray (it is updated in place), got {type(v).__name__}")
    if v.dtype != dtype:
        raise TypeError(f"{name} has dtype {v.dtype} but x has {np.dtype(dtype)}; they must be the same")
    if v.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},) for x of shape {x_shape}, got {v.shape}")
    if not v.flags.writeable:
        raise ValueError(f"{name} is read-only, but training updates it in place")
    return v


def batch_norm(x, gamma, beta, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
    """Batch normalization over the channel axis (torch.nn.functional.batch_norm).

    Parameters
    ----------
    x : (N, C, H, W) or (N, C) float32/float64 array (any (N, C, *) shape works: statistics are per channel over
        all the other axes).
    gamma, beta : (C,) scale and shift of x's dtype, or None for ones / zeros.
    running_mean, running_var : (C,) arrays of x's dtype. In training they may be None; when given they must be
        writable ndarrays and are updated IN PLACE:
        ``running = (1 - momentum) * running + momentum * batch_stat``, the variance being the UNBIASED batch
        variance (times m / (m - 1), m = N*H*W), as torch does. Required in inference.
    training : use the batch statistics (True) or the running ones (False).
    momentum : in [0, 1].
    eps : > 0, added to the variance.

    Returns
    -------
    y : array like x, ``(x - mean) * invstd * gamma + beta``.
    saved : (mean, invstd), each (C,) of x's dtype, ``invstd = 1 / sqrt(var + eps)`` with the BIASED batch
        variance in training, the running statistics in inference. Pass it to batch_norm_backward.

    Training needs more than one value per channel (N*H*W >= 2), as in torch.
    """
    x = _as_float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"batch_norm needs x of shape (N, C, H, W) or (N, C), got shape {x.shape}")
    n, c = x.shape[:2]
    hw = _spatial_size(x)
    m = n * hw
    gamma = np.ones(c, x.dtype) if gamma is None else _per_channel_vector(gamma, "gamma", x.dtype, c, x.shape)
    beta = np.zeros(c, x.dtype) if beta is None else _per_channel_vector(beta, "beta", x.dtype, c, x.shape)
    momentum = _scalar_in_range(momentum, "momentum", 0.0, 1.0)
    eps = _scalar_in_range(eps, "eps", 0.0, low_open=True)
    training = bool(training)
    if training:
        if c > 0 and m == 0:
            raise ValueError(f"batch_norm in training needs values to compute batch statistics from, but x of "
                             f"shape {x.shape} has none per channel (N*H*W = 0)")
        if c > 0 and m == 1:
            raise ValueError(f"batch_norm in training needs more than 1 value per channel (the unbiased variance "
                             f"divides by N*H*W - 1), got x of shape {x.shape}")
        if running_mean is not None:
            running_mean = _running_stat(running_mean, "running_mean", x.dtype, c, x.shape)
        if running_var is not None:
            running_var = _running_stat(running_var, "running_var", x.dtype, c, x.shape)
        targets = (running_mean, running_var)
        # The kernel updates contiguous aligned vectors; any other view is updated through a copy.
        stats = tuple(None if r is None else r if r.flags.c_contiguous and r.flags.aligned else np.array(r)
                      for r in targets)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm in inference (training=False) needs running_mean and running_var")
        stats = (_per_channel_vector(running_mean, "running_mean", x.dtype, c, x.shape),
                 _per_channel_vector(running_var, "running_var", x.dtype, c, x.shape))
        if np.any(stats[1] + eps <= 0):
            raise ValueError("running_var + eps must be positive in every channel")
    xc = np.ascontiguousarray(x)
    y = np.empty(x.shape, x.dtype)
    mean = np.empty(c, x.dtype)
    invstd = np.empty(c, x.dtype)
    _C.batch_norm_forward(xc.reshape(n, c, hw), y.reshape(n, c, hw), gamma, beta, mean, invstd, stats[0], stats[1],
                          training, momentum, eps)
    if training:
        for target, stat in zip(targets, stats):
            if target is not None and stat is not target:
                target[...] = stat
    return y, (mean, invstd)


def batch_norm_backward(dy, x, gamma, saved, training=True):
    """Gradients of batch_norm.

    Parameters
    ----------
    dy : gradient of the loss with respect to y, same shape and dtype as x.
    x : the forward's input, (N, C, H, W) or (N, C).
    gamma : (C,) or None (ones), as given to the forward.
    saved : the (mean, invstd) pair the forward returned.
    training : True when the forward used batch statistics (they depend on x, which adds the mean terms below);
        False for the inference forward (statistics are constants).

    Returns
    -------
    dx : like x.  Training: ``gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))`` with
        ``xhat = (x - mean) * invstd`` and means over N*H*W; inference: ``dy * gamma * invstd``.
    dgamma : (C,), ``sum(dy * xhat)``.
    dbeta : (C,), ``sum(dy)``.
    """
    x = _as_float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"batch_norm_backward needs x of shape (N, C, H, W) or (N, C), got shape {x.shape}")
    dy = _same_shape_dtype(x, "x", dy, "dy")
    n, c = x.shape[:2]
    hw = _spatial_size(x)
    gamma = np.ones(c, x.dtype) if gamma is None else _per_channel_vector(gamma, "gamma", x.dtype, c, x.shape)
    if not isinstance(saved, (tuple, list)) or len(saved) != 2:
        raise TypeError("saved must be the (mean, invstd) pair returned by batch_norm")
    mean = _per_channel_vector(saved[0], "saved mean", x.dtype, c, x.shape)
    invstd = _per_channel_vector(saved[1], "saved invstd", x.dtype, c, x.shape)
    dx = np.empty(x.shape, x.dtype)
    dgamma = np.empty(c, x.dtype)
    dbeta = np.empty(c, x.dtype)
    _C.batch_norm_backward(np.ascontiguousarray(dy).reshape(n, c, hw), np.ascontiguousarray(x).reshape(n, c, hw),
                           dx.reshape(n, c, hw), gamma, dgamma, dbeta, mean, invstd, bool(training))
    return dx, dgamma, dbeta


def _lrn_params(size, alpha, beta, k):
    if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"size must be an int, got {size!r}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return (int(size), _scalar_in_range(alpha, "alpha", 0.0), _scalar_in_range(beta, "beta"),
            _scalar_in_range(k, "k", 0.0, low_open=True))


def lrn(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """Local response normalization across channels (torch.nn.functional.local_response_norm).

    ``scale[c] = k + alpha / size * sum(x[j]**2 for j in c - size//2 .. c + (size-1)//2)`` (channels past the
    edges count as zero), ``y = x * scale**-beta``.

    Alpha convention: alpha is divided by `size`, as in torch and Caffe (ACROSS_CHANNELS, whose local_size must be
    odd and whose k defaults to 1). The AlexNet paper's formula has no division (its alpha = 1e-4, k = 2, n = 5,
    beta = 0.75): to reproduce the paper exactly pass ``alpha = 1e-4 * size``. The defaults here are the paper's
    numbers in torch's formula, i.e. torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0).

    Parameters
    ----------
    x : (N, C, H, W) float32/float64 array (any (N, C, *) shape).
    size : channels in the window, >= 1 (even sizes take one more channel before c than after, as torch).
    alpha : >= 0.  beta : real.  k : > 0 (keeps the scale positive).

    Returns
    -------
    y, scale : arrays like x; keep both (and x) for lrn_backward.
    """
    x = _as_float_array(x, "x")
    if x.ndim < 3:
        raise ValueError(f"lrn needs x of shape (N, C, H, W), got shape {x.shape}")
    size, alpha, beta, k = _lrn_params(size, alpha, beta, k)
    n, c = x.shape[:2]
    hw = _spatial_size(x)
    y = np.empty(x.shape, x.dtype)
    scale = np.empty(x.shape, x.dtype)
    _C.lrn_forward(np.ascontiguousarray(x).reshape(n, c, hw), y.reshape(n, c, hw), scale.reshape(n, c, hw), size,
                   alpha, beta, k)
    return y, scale


def lrn_backward(dy, x, y, scale, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """Gradient of lrn with respect to x.

    ``dx[c] = dy[c] * scale[c]**-beta - 2 * alpha * beta / size * x[c] * sum(dy[j] * y[j] / scale[j])`` over the
    channels j whose window contains c. `dy`, `x`, `y` (the forward's output) and `scale` all have x's shape and
    dtype; size, alpha, beta, k are those of the forward (k is only validated: scale already contains it).
    """
    x = _as_float_array(x, "x")
    if x.ndim < 3:
        raise ValueError(f"lrn_backward needs x of shape (N, C, H, W), got shape {x.shape}")
    dy = _same_shape_dtype(x, "x", dy, "dy")
    y = _same_shape_dtype(x, "x", y, "y")
    scale = _same_shape_dtype(x, "x", scale, "scale")
    size, alpha, beta, k = _lrn_params(size, alpha, beta, k)
    n, c = x.shape[:2]
    hw = _spatial_size(x)
    dx = np.empty(x.shape, x.dtype)
    _C.lrn_backward(*(np.ascontiguousarray(a).reshape(n, c, hw) for a in (dy, x, y, scale)), dx.reshape(n, c, hw),
                    size, alpha, beta)
    return dx


def _softmax_along(x, axis, log):
    x = _as_float_array(x, "x")
    if x.ndim == 0:
        raise ValueError("softmax needs an array with at least one axis, got a 0-d array")
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an int, got {axis!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for x of shape {x.shape}")
    rows = np.ascontiguousarray(np.moveaxis(x, axis, -1))
    out = np.empty(rows.shape, x.dtype)
    k = rows.shape[-1]
    n = rows.size // k if k else 0
    if n and k:
        _C.softmax(rows.reshape(n, k), out.reshape(n, k), log)
    return np.ascontiguousarray(np.moveaxis(out, -1, axis))


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along `axis` (computed with the maximum subtracted, so large values do not overflow).
    x float32/float64 of any shape; returns an array like x."""
    return _softmax_along(x, axis, False)


def log_softmax(x, axis=-1):
    """x - logsumexp(x) along `axis`, computed stably; x float32/float64 of any shape; returns an array like x."""
    return _softmax_along(x, axis, True)


def _class_labels(labels, n, k):
    """labels as a C-contiguous int64 (n,) array of class indices in [0, k); errors name the first bad index."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "b" or labels.dtype.kind not in "iuf":
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match logits with {n} rows, got {labels.shape}")
    if labels.dtype.kind == "f":
        integral = np.isfinite(labels) & (labels == np.floor(labels))
        if not integral.all():
            i = int(np.argmin(integral))
            raise ValueError(f"labels must be integers, but labels[{i}] = {labels[i]}")
    bad = (labels < 0) | (labels >= k)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"labels must be class indices in [0, {k}), but labels[{i}] = {labels[i]}")
    return np.ascontiguousarray(labels, dtype=np.int64)


def _logits_2d(logits, name):
    logits = _as_float_array(logits, name)
    if logits.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, K) array, got shape {logits.shape}")
    return logits


def softmax_cross_entropy(logits, labels):
    """Mean softmax cross-entropy (torch.nn.functional.cross_entropy with integer targets).

    Parameters
    ----------
    logits : (N, K) float32/float64, N >= 1.
    labels : (N,) integer class indices in [0, K) (float arrays holding whole numbers are accepted).

    Returns
    -------
    loss : Python float, ``mean_i(logsumexp(logits[i]) - logits[i, labels[i]])``, accumulated in double and
        finite however large the logits (the maximum is subtracted first).
    probs : (N, K) softmax of the logits, x's dtype; keep it for softmax_cross_entropy_backward.
    """
    logits = _logits_2d(logits, "logits")
    n, k = logits.shape
    if n == 0:
        raise ValueError(f"softmax_cross_entropy needs at least one row (the loss is a mean over the batch), "
                         f"got logits of shape {logits.shape}")
    labels = _class_labels(labels, n, k)
    probs = np.empty((n, k), logits.dtype)
    loss = _C.softmax_cross_entropy(np.ascontiguousarray(logits), labels, probs)
    return loss, probs


def softmax_cross_entropy_backward(probs, labels, dloss=1.0):
    """Gradient of the MEAN loss of softmax_cross_entropy: ``(probs - onehot(labels)) * dloss / N``.

    probs (N, K) as returned by the forward, labels (N,) as given to it, dloss the gradient of the loss (a real
    scalar). Returns dlogits (N, K) of probs' dtype.
    """
    probs = _logits_2d(probs, "probs")
    n, k = probs.shape
    labels = _class_labels(labels, n, k)
    if isinstance(dloss, np.ndarray) and dloss.ndim == 0:
        dloss = dloss.item()
    dloss = _scalar_in_range(dloss, "dloss")
    dlogits = np.empty((n, k), probs.dtype)
    if n:
        _C.softmax_cross_entropy_backward(np.ascontiguousarray(probs), labels, dlogits, dloss / n)
    return dlogits


def _linear_operands(x, weight):
    x = _as_float_array(x, "x")
    weight = _as_float_array(weight, "weight")
    if x.ndim != 2 or weight.ndim != 2:
        raise ValueError(f"linear needs x (N, in) and weight (out, in), got x {x.shape} and weight {weight.shape}")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight has dtype {weight.dtype} but x has {x.dtype}; they must be the same")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"linear: x has {x.shape[1]} features (shape {x.shape}) but weight expects "
                         f"{weight.shape[1]} (shape {weight.shape}, torch layout (out, in))")
    return x, weight


def linear(x, weight, bias=None):
    """Fully connected layer, torch layout: ``y = x @ weight.T + bias``.

    x (N, in), weight (out, in), bias (out,) or None, all of one float dtype. Returns y (N, out).
    """
    x, weight = _linear_operands(x, weight)
    y = np.empty((x.shape[0], weight.shape[0]), x.dtype)
    if bias is not None:
        y[...] = _per_channel_vector(bias, "bias", x.dtype, weight.shape[0], weight.shape, "weight")
    _C.gemm(x, weight, y, False, True, 1.0, 1.0 if bias is not None else 0.0)
    return y


def linear_backward(dy, x, weight, *, need_input_grad=True):
    """Gradients of linear: ``dx = dy @ weight`` (None unless need_input_grad), ``dw = dy.T @ x``,
    ``db = dy.sum(0)``. dy (N, out), x (N, in), weight (out, in). Returns (dx, dw, db)."""
    x, weight = _linear_operands(x, weight)
    dy = _as_float_array(dy, "dy")
    expected = (x.shape[0], weight.shape[0])
    if dy.shape != expected:
        raise ValueError(f"dy has shape {dy.shape}, expected {expected} for x {x.shape} and weight {weight.shape}")
    if dy.dtype != x.dtype:
        raise TypeError(f"dy has dtype {dy.dtype} but x has {x.dtype}; they must be the same")
    dx = None
    if need_input_grad:
        dx = np.empty(x.shape, x.dtype)
        _C.gemm(dy, weight, dx, False, False, 1.0, 0.0)
    dw = np.empty(weight.shape, x.dtype)
    _C.gemm(dy, x, dw, True, False, 1.0, 0.0)
    db = dy.sum(axis=0)
    return dx, dw, db
