"""Stateless operations on NumPy arrays: the one place that checks arguments and converts arrays.

Arrays are float32 or float64 (never mixed); image tensors are NCHW. Each operation validates its inputs and
raises TypeError/ValueError naming the argument and the shapes, then hands buffers to the C engine, which
releases the GIL.
"""
import numpy as np

from . import _C

_FLOATS = (np.float32, np.float64)


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


# ================================================================ pooling and activations
# Image tensors are NCHW float32/float64; outputs are new C-contiguous arrays of the input's dtype. Inputs that are
# not C-contiguous are copied once (np.ascontiguousarray), so any view gives the same result.

def _float_tensor(x, name, ndim=None):
    """x as a C-contiguous float32/float64 array, checking its rank when `ndim` is given."""
    x = _as_float_array(x, name)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D (N, C, H, W), got shape {x.shape}")
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)  # (ascontiguousarray would make 0-d arrays 1-d)


def _int_pair(value, name):
    """An int or a pair of ints (h, w) as a tuple of two Python ints."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
                                 for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    return int(pair[0]), int(pair[1])


def _pool_output_size(size, kernel, stride, pad, ceil_mode):
    """Output length of one pooling axis, PyTorch's rule: floor((size + 2 pad - kernel) / stride) + 1, or with
    ceil_mode the ceiling, minus one if that last window would start past the input and its left padding."""
    span = size + 2 * pad - kernel
    n = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (n - 1) * stride >= size + pad:
        n -= 1
    return n


def _input_shape(shape, name="input_shape"):
    """A 4-tuple of non-negative ints (N, C, H, W)."""
    if not isinstance(shape, (tuple, list)) or len(shape) != 4 or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= 0 for v in shape):
        raise ValueError(f"{name} must be 4 non-negative ints (N, C, H, W), got {shape!r}")
    return tuple(int(v) for v in shape)


def _pool_geometry(fn, shape, kernel_size, stride, padding, ceil_mode):
    """Checked geometry of a pooling of an (N, C, H, W) tensor: (kernel, stride, padding, (Ho, Wo)) as int pairs."""
    kernel = _int_pair(kernel_size, "kernel_size")
    stride = kernel if stride is None else _int_pair(stride, "stride")
    padding = _int_pair(padding, "padding")
    where = f"{fn} of an input of shape {tuple(shape)}"
    if min(kernel) <= 0:
        raise ValueError(f"kernel_size must be positive, got {kernel} ({where})")
    if min(stride) <= 0:
        raise ValueError(f"stride must be positive, got {stride} ({where})")
    if min(padding) < 0:
        raise ValueError(f"padding must be non-negative, got {padding} ({where})")
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"padding {padding} must be at most half of kernel_size {kernel} ({where})")
    h, w = shape[2], shape[3]
    if h == 0 or w == 0:
        raise ValueError(f"{fn} needs non-empty planes, got an input of shape {tuple(shape)}")
    if kernel[0] > h + 2 * padding[0] or kernel[1] > w + 2 * padding[1]:
        raise ValueError(f"kernel_size {kernel} is larger than the padded input "
                         f"({h + 2 * padding[0]}, {w + 2 * padding[1]}) ({where}, padding {padding})")
    out = (_pool_output_size(h, kernel[0], stride[0], padding[0], ceil_mode),
           _pool_output_size(w, kernel[1], stride[1], padding[1], ceil_mode))
    return kernel, stride, padding, out


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """2-D max pooling with the index of each maximum (PyTorch's conventions).

    Parameters
    ----------
    x : (N, C, H, W) float32 or float64 array.
    kernel_size, stride, padding : int or pair (h, w). stride None means kernel_size. Padding is -inf padding on
        both sides, at most half the kernel.
    ceil_mode : round the output size up (the last window must still start inside the input or left padding).

    Returns
    -------
    y : (N, C, Ho, Wo) array of x's dtype.
    argmax : (N, C, Ho, Wo) int64, the flat index h * W + w of each maximum in its input plane. Ties go to the first
        maximum in row-major window order; a NaN in a window wins (the last NaN if several), so NaN propagates; a
        window of -inf points at its first element inside the input.
    """
    x = _float_tensor(x, "x", 4)
    kernel, stride, padding, (ho, wo) = _pool_geometry("max_pool2d", x.shape, kernel_size, stride, padding,
                                                       ceil_mode)
    y = np.empty(x.shape[:2] + (ho, wo), dtype=x.dtype)
    argmax = np.empty(y.shape, dtype=np.int64)
    if y.size:
        _C.max_pool2d_forward(x, y, argmax, kernel, stride, padding, bool(ceil_mode))
    return y, argmax


def max_pool2d_backward(dy, argmax, input_shape):
    """Gradient of max_pool2d: dx (input_shape) is zero except dx[n, c].flat[argmax] += dy (overlapping windows
    that share a maximum add up).

    dy : (N, C, Ho, Wo) float32/float64; argmax : integer array of dy's shape (max_pool2d's second output), entries
    in [0, H * W); input_shape : (N, C, H, W) of the pooled input.
    """
    dy = _float_tensor(dy, "dy", 4)
    shape = _input_shape(input_shape)
    argmax = np.asarray(argmax)
    if argmax.dtype.kind not in "iu":
        raise TypeError(f"argmax must be an integer array, got dtype {argmax.dtype} (shape {argmax.shape})")
    if argmax.shape != dy.shape:
        raise ValueError(f"argmax has shape {argmax.shape}, expected dy's shape {dy.shape}")
    if dy.shape[:2] != shape[:2]:
        raise ValueError(f"dy has shape {dy.shape}, which does not match input_shape {shape} in (N, C)")
    if shape[2] == 0 or shape[3] == 0:
        raise ValueError(f"max_pool2d_backward needs non-empty planes, got input_shape {shape}")
    dx = np.empty(shape, dtype=dy.dtype)
    if dy.size == 0:
        dx.fill(0)
        return dx
    plane = shape[2] * shape[3]
    if argmax.min() < 0 or argmax.max() >= plane:
        raise ValueError(f"argmax entries must lie in [0, {plane}) (planes of input_shape {shape}), "
                         f"got values in [{argmax.min()}, {argmax.max()}]")
    _C.max_pool2d_backward(dy, np.ascontiguousarray(argmax, dtype=np.int64), dx)
    return dx


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """2-D average pooling (PyTorch's conventions).

    x : (N, C, H, W) float32/float64; kernel_size, stride (None = kernel_size), padding : int or pair (h, w), zero
    padding at most half the kernel. The divisor is the window clipped to the padded input when count_include_pad
    (a ceil_mode window hanging past the padding counts only up to it), else the number of input elements it
    covers. Returns y (N, C, Ho, Wo) of x's dtype.
    """
    x = _float_tensor(x, "x", 4)
    kernel, stride, padding, (ho, wo) = _pool_geometry("avg_pool2d", x.shape, kernel_size, stride, padding,
                                                       ceil_mode)
    y = np.empty(x.shape[:2] + (ho, wo), dtype=x.dtype)
    if y.size:
        _C.avg_pool2d_forward(x, y, kernel, stride, padding, bool(ceil_mode), bool(count_include_pad))
    return y


def avg_pool2d_backward(dy, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True):
    """Gradient of avg_pool2d: every window's input elements get dy / divisor (divisor as in avg_pool2d).

    dy : (N, C, Ho, Wo) float32/float64 with (Ho, Wo) the output size of avg_pool2d for input_shape (N, C, H, W)
    and the same geometry arguments. Returns dx of shape input_shape and dy's dtype.
    """
    dy = _float_tensor(dy, "dy", 4)
    shape = _input_shape(input_shape)
    kernel, stride, padding, (ho, wo) = _pool_geometry("avg_pool2d_backward", shape, kernel_size, stride, padding,
                                                       ceil_mode)
    if dy.shape != shape[:2] + (ho, wo):
        raise ValueError(f"dy has shape {dy.shape}, expected {shape[:2] + (ho, wo)} for avg_pool2d of input_shape "
                         f"{shape} (kernel_size {kernel}, stride {stride}, padding {padding}, ceil_mode={ceil_mode})")
    dx = np.empty(shape, dtype=dy.dtype)
    if dy.size == 0:
        dx.fill(0)
        return dx
    _C.avg_pool2d_backward(dy, dx, kernel, stride, padding, bool(ceil_mode), bool(count_include_pad))
    return dx


def global_avg_pool2d(x):
    """Mean of every (H, W) plane: x (N, C, H, W) float32/float64 -> y (N, C, 1, 1) (sums accumulate in float64)."""
    x = _float_tensor(x, "x", 4)
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"global_avg_pool2d needs non-empty planes, got x of shape {x.shape}")
    y = np.empty(x.shape[:2] + (1, 1), dtype=x.dtype)
    if y.size:
        _C.global_avg_pool2d_forward(x, y.reshape(x.shape[:2]))
    return y


def global_avg_pool2d_backward(dy, input_shape):
    """Gradient of global_avg_pool2d: dy (N, C, 1, 1) -> dx (input_shape) = dy / (H * W) over each plane."""
    dy = _float_tensor(dy, "dy", 4)
    shape = _input_shape(input_shape)
    if dy.shape != shape[:2] + (1, 1):
        raise ValueError(f"dy has shape {dy.shape}, expected {shape[:2] + (1, 1)} for input_shape {shape}")
    if shape[2] == 0 or shape[3] == 0:
        raise ValueError(f"global_avg_pool2d_backward needs non-empty planes, got input_shape {shape}")
    dx = np.empty(shape, dtype=dy.dtype)
    if dx.size:
        _C.global_avg_pool2d_backward(dy.reshape(shape[:2]), dx)
    return dx


def _same_shape_and_dtype(a, a_name, b, b_name):
    if a.shape != b.shape:
        raise ValueError(f"{a_name} and {b_name} must have the same shape, got {a.shape} and {b.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"{a_name} and {b_name} must have the same dtype, got {a.dtype} and {b.dtype}")


def relu(x):
    """max(x, 0) element-wise on a float32/float64 array of any shape; NaN stays NaN (as PyTorch)."""
    x = _float_tensor(x, "x")
    y = np.empty(x.shape, dtype=x.dtype)
    _C.relu_forward(x.reshape(-1), y.reshape(-1))
    return y


def relu_backward(dy, x, rule="plain"):
    """Gradient through relu, given the forward input x (same shape and dtype as dy).

    rule "plain": dx = dy where x > 0 (the gradient); "guided": dx = dy where x > 0 and dy > 0 (guided
    backpropagation); "deconvnet": dx = dy where dy > 0 (relu of the gradient). Elsewhere dx = 0. The gates are
    selects, not products, and a NaN gate counts as open (as PyTorch's threshold_backward), so NaN in dy or x is
    passed on rather than silently zeroed.
    """
    dy = _float_tensor(dy, "dy")
    x = _float_tensor(x, "x")
    _same_shape_and_dtype(dy, "dy", x, "x")
    if not isinstance(rule, str) or rule not in _C.RELU_RULES:
        raise ValueError(f"rule must be one of {sorted(_C.RELU_RULES)}, got {rule!r}")
    dx = np.empty(dy.shape, dtype=dy.dtype)
    _C.relu_backward(dy.reshape(-1), x.reshape(-1), dx.reshape(-1), _C.RELU_RULES[rule])
    return dx


def _drop_probability(p):
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"p must be a number in [0, 1], got {p!r}")
    if not 0 <= p <= 1:
        raise ValueError(f"p (the drop probability) must be in [0, 1], got {p}")
    return float(p)


def _dropout_scale(p):
    """1 / (1 - p), the inverted-dropout scale (0 when everything is dropped, so 0 * x stays 0)."""
    return 0.0 if p == 1 else 1.0 / (1.0 - p)


def dropout(x, p, rng, training=True):
    """Inverted dropout: y = x * mask / (1 - p), p the DROP probability (PyTorch's convention).

    The mask (bool, x's shape, True = kept) is drawn in NumPy as ``rng.random(x.shape) >= p`` with `rng` a
    numpy.random.Generator seeded by the caller, so results depend on the seed only (not on threads).
    Returns (y, mask); when not training or p == 0 returns (a copy of x, None).
    """
    x = _float_tensor(x, "x")
    p = _drop_probability(p)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    if not training or p == 0:
        return x.copy(), None
    mask = rng.random(x.shape) >= p
    y = np.empty(x.shape, dtype=x.dtype)
    _C.dropout_apply(x.reshape(-1), mask.reshape(-1).view(np.uint8), y.reshape(-1), _dropout_scale(p))
    return y, mask


def dropout_backward(dy, mask, p):
    """Gradient of dropout: dx = dy * mask / (1 - p) with dropout's mask (None: dropout was the identity, dx = dy)."""
    dy = _float_tensor(dy, "dy")
    p = _drop_probability(p)
    if mask is None:
        return dy.copy()
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise TypeError(f"mask must be a bool array (dropout's second output), got dtype {mask.dtype}")
    if mask.shape != dy.shape:
        raise ValueError(f"mask has shape {mask.shape}, expected dy's shape {dy.shape}")
    dx = np.empty(dy.shape, dtype=dy.dtype)
    _C.dropout_apply(dy.reshape(-1), np.ascontiguousarray(mask).reshape(-1).view(np.uint8), dx.reshape(-1),
                     _dropout_scale(p))
    return dx
