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
        if x.dtype.kind == "f" and x.dtype.newbyteorder("=") in _FLOATS:  # byte-swapped float32/float64
            return np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype} (shape {x.shape})")
    if not x.flags.aligned:  # strides that are not whole elements (views into structured arrays)
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
        raise TypeError(f"gemm operands must have the same dtype, got a {a.dtype} (shape {a.shape}) and "
                        f"b {b.dtype} (shape {b.shape})")
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
            raise ValueError(f"gemm with beta={beta!r} needs `out`, the {(m, n)} array it accumulates into")
        out = np.empty((m, n), dtype=a.dtype)
        target = out
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
        if out.shape != (m, n):
            raise ValueError(f"out has shape {out.shape}, expected {(m, n)} for op(a) {(m, k)} @ op(b) {(k, n)}")
        if out.dtype != a.dtype:
            raise TypeError(f"out has dtype {out.dtype} (shape {out.shape}), expected {a.dtype} like a {a.shape} "
                            f"and b {b.shape}")
        if not out.flags.writeable:
            raise ValueError(f"out (shape {out.shape}) is read-only")
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

def _int_pair(value, name, minimum=None):
    """An int or a pair of ints -> (h, w) Python ints, each >= minimum when one is given."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        pair = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    if minimum is not None and min(pair) < minimum:
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


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, scale=None, residual=None,
           relu=False, out=None, prepared=None):
    """2-D convolution (cross-correlation, as in every framework), NCHW.

    Parameters
    ----------
    x : (N, C, H, W) float32 or float64.
    weight : (F, C // groups, kh, kw), same dtype.
    bias : (F,) or None.
    stride, padding, dilation : int or (h, w) pair; padding is zeros on both sides.
    groups : splits channels into `groups` independent convolutions (AlexNet's two towers: groups=2).
    scale : None or (F,): each output channel of the convolution multiplied by it before the bias is added (an
        inference batch-norm folded in without a scaled copy of the weights).
    residual : None or an array of y's shape, added to the output (a residual block's shortcut).
    relu : apply max(., 0) last (NaN stays NaN).
        Both for inference: ``conv2d(x, w, b, residual=s, relu=True)`` equals ``relu(conv2d(x, w, b) + s)`` but
        writes y once, each tile while it is in cache, instead of once per elementwise pass.
    out : None or an array of y's shape and dtype to write into and return, whose every image is one contiguous
        block: a C-contiguous array or a channel slice ``buf[:, c0:c1]`` of one (an inception block writes each
        branch straight into its part of the concatenation). With a residual it must be C-contiguous.
    prepared : None or ``conv2d_prepare_weights(weight, ...)`` of this very weight, unchanged since: read instead
        of transforming the weights again (for repeated inference). Where it was made for another arch, tile
        setting or input width the layer transforms `weight` as usual, so the result never depends on it.

    Returns
    -------
    y : (N, F, Ho, Wo) with Ho = (H + 2*ph - dh*(kh-1) - 1) // sh + 1 (likewise Wo).

    Three ways, chosen per layer (docs/kernels-performance.md; ``fastconv._C.conv2d_forward_path`` tells which):
    3x3 stride-1 undilated layers with >= 16 channels and >= 32 filters per group run Winograd: F(4x4, 3x3) from
    24 output columns or enough tiles (4x fewer multiplications), F(2x2, 3x3) on the others (2.25x fewer;
    ``fastconv._C.conv2d_winograd_tiles`` tells which, ``fastconv._C.conv2d_winograd_tile`` forces one); workspace: the transformed weights, P x F x C/groups elements with P = 36
    or 16 points, plus per thread P x (C + F)/groups x about 96 tiles; strided layers whose kernel spans 3 strides (AlexNet's 11x11 stride 4)
    run the same way after rearranging the input phase by phase into a stride-1 layer on C*stride**2 channels
    (workspace: one rearranged copy of the input and of the weights); other stride-1 layers with few filters per group and a small image,
    and strided first layers (<= 4 channels per group, kernels of >= 9 taps), run direct-convolution kernels on a
    zero-padded copy of one image per thread split into its stride phases (at most 4M elements, plus the packed
    weights); the others run the GEMM with operands packed straight from the image (no im2col matrix),
    whose workspace is the packing buffers, at most (mc*kc + kc*nc) elements per thread (about 7 MiB in float32
    with AVX-512). Winograd's rounding error is bounded by the same pipeline run on absolute values
    (``fastconv.testing.conv2d_winograd_bound``): a small multiple of the direct sum's for F(2x2, 3x3), some ten
    times more for F(4x4, 3x3) (about 1e-5 of the largest output in float32).
    """
    args = _conv_args(x, weight, bias, stride, padding, dilation, groups)
    return _conv2d_forward(args, scale, residual, relu, out, prepared, False)


def _conv2d_forward(args, scale, residual, relu, out, prepared, pool_input):
    """conv2d's (and conv2d_pooled's) checks of the epilogue operands and output, then the kernel."""
    x, weight, bias, stride, padding, dilation, groups, out_shape = args
    if scale is not None:
        scale = _operand_like(scale, "scale", (out_shape[1],), x.dtype, lambda got: (
            f"scale must have shape ({out_shape[1]},) for weight {weight.shape}, got {got}"))
    if residual is not None:
        residual = _operand_like(residual, "residual", out_shape, x.dtype, lambda got: (
            f"residual has shape {got}, expected the output's {out_shape} for x {x.shape} and weight "
            f"{weight.shape}"))
    if out is None:
        y = np.empty(out_shape, dtype=x.dtype)
    else:
        y = _conv_out(out, out_shape, x.dtype, residual is not None)
    _check_prepared(prepared, x.dtype)
    _C.conv2d_forward(np.ascontiguousarray(x), y, np.ascontiguousarray(weight), bias, stride, padding, dilation,
                      groups, residual, bool(relu), scale, prepared, pool_input)
    return y


def conv2d_pooled(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, scale=None, residual=None,
                  relu=False, out=None, prepared=None):
    """``conv2d(max_pool2d(x, 3, stride=1, padding=1, indices=False), weight, ...)``: an inception block's pool
    branch (a 3x3 stride-1 max pool, then usually a 1x1 convolution) as one call, for inference.

    Arguments as conv2d's (x is the input before pooling; the pool keeps its height and width). A 1x1 layer with
    stride 1 and no padding on the GEMM path (``fastconv._C.conv2d_pooled_input_fused(...)``) pools each image (or
    batch of small images) into a per-thread buffer that the GEMM reads while it is still in cache, so the pooled
    tensor is never written to memory and read back; its workspace is one image's input per thread. Any other
    layer pools, then convolves. The result equals the two calls' bit for bit either way. There is no backward:
    train with max_pool2d and conv2d.
    """
    args = _conv_args(x, weight, bias, stride, padding, dilation, groups)
    if not _C.conv2d_pooled_input_fused(args[0].shape, args[1].shape, *args[3:7], args[0].dtype.itemsize):
        return conv2d(max_pool2d(args[0], 3, 1, 1, indices=False), weight, bias, stride, padding, dilation, groups,
                      scale=scale, residual=residual, relu=relu, out=out, prepared=prepared)
    return _conv2d_forward(args, scale, residual, relu, out, prepared, True)


def conv2d_prepare_weights(weight, x_shape, stride=1, padding=0, dilation=1, groups=1):
    """The weights of a convolution prepared once for many inference calls of ``conv2d(..., prepared=...)``.

    Layers on the Winograd path (3x3 stride-1 ones, and strided or 5x5 layers rearranged into them) transform
    their weights on every call: P x F x C/groups values (P = 16 or 36 points), about 10 % of VGG-16's forward at
    batch 1; layers on the GEMM path pack them into the GEMM's panels (on one thread, before the images are shared
    out). This does it once, for the current arch and tile setting and inputs of x_shape's channels and width
    (the batch does not matter). Returns a 1-D array of weight's dtype (P/9 times the weights' size on Winograd,
    about their size on the GEMM path and for a dense layer, whose kernel covers its whole input, the weights
    padded to whole filter blocks on the direct path, plus 64 bytes). The GEMM path uses it where it runs image
    after image (outputs of >= 192 pixels) and dense layers always; with smaller outputs it batches images and
    reads the weights as they are. The result is only valid for this weight
    as it is now: prepare again after changing it.
    """
    x_shape = tuple(int(v) for v in x_shape)
    if len(x_shape) != 4:
        raise ValueError(f"x_shape must be (N, C, H, W), got {x_shape}")
    probe = np.lib.stride_tricks.as_strided(np.zeros(1, dtype=getattr(weight, "dtype", np.float32)),
                                            (max(x_shape[0], 1),) + x_shape[1:], (0, 0, 0, 0))
    _, weight, _, stride, padding, dilation, groups, _ = _conv_args(probe, weight, None, stride, padding, dilation,
                                                                   groups)
    return _C.conv2d_prepare_weights(np.ascontiguousarray(weight), x_shape, stride, padding, dilation, groups)


def conv2d_split(x, weight, bias=None, sections=None, stride=1, padding=0, dilation=1, *, scale=None, relu=False,
                 out=None, prepared=None):
    """Several convolutions of one input run as one: weight's filters cut in order into ``sections`` (channel counts,
    at most 4), returning ``[conv2d(x, weight[a:b], bias[a:b], ...) for each section]``, equal bit for bit.

    The GEMM reads all the filters at once, so the input is packed once instead of once per layer, and the few-
    filter layers (an inception block's 16- and 32-filter reductions) no longer pay the packing alone. For layers
    on the GEMM path (``fastconv._C.conv2d_forward_path(...) == "gemm"``: 1x1, large filter counts), groups 1;
    ValueError otherwise. scale, relu, prepared: as conv2d's, for the whole weight (``conv2d_prepare_weights`` of
    it). out: None or one array per section, each as conv2d's out (every image one contiguous block).
    """
    x, weight, bias, stride, padding, dilation, groups, out_shape = _conv_args(
        x, weight, bias, stride, padding, dilation, 1)
    if sections is None:
        raise TypeError("conv2d_split needs sections: the channel count of each output")
    sections = [int(f) for f in sections]
    if not 1 <= len(sections) <= 4 or min(sections) < 1 or sum(sections) != out_shape[1]:
        raise ValueError(f"sections must be 1 to 4 positive channel counts adding up to weight's {out_shape[1]} "
                         f"filters, got {sections}")
    if scale is not None:
        scale = _operand_like(scale, "scale", (out_shape[1],), x.dtype, lambda got: (
            f"scale must have shape ({out_shape[1]},) for weight {weight.shape}, got {got}"))
    shapes = [(out_shape[0], f) + out_shape[2:] for f in sections]
    if out is None:
        ys = [np.empty(shape, dtype=x.dtype) for shape in shapes]
    else:
        if not isinstance(out, (list, tuple)) or len(out) != len(sections):
            raise TypeError(f"out must be a list of {len(sections)} arrays (one per section), got "
                            f"{type(out).__name__}")
        ys = [_conv_out(o, shape, x.dtype, False) for o, shape in zip(out, shapes)]
    _check_prepared(prepared, x.dtype)
    _C.conv2d_forward_split(np.ascontiguousarray(x), ys, np.ascontiguousarray(weight), bias, stride, padding,
                            dilation, bool(relu), scale, prepared)
    return ys


def _check_prepared(prepared, dtype):
    if prepared is not None and (not isinstance(prepared, np.ndarray) or prepared.dtype != dtype or
                                 prepared.ndim != 1 or not prepared.flags.c_contiguous):
        raise TypeError(f"prepared must be conv2d_prepare_weights' 1-D {dtype} array, got "
                        f"{type(prepared).__name__} {getattr(prepared, 'dtype', '')} "
                        f"{getattr(prepared, 'shape', '')}")


def _operand_like(a, name, shape, dtype, shape_message):
    """An extra operand of a convolution (dy, scale, residual) as a contiguous float array of `shape` and x's
    dtype; shape_message(got) words the ValueError."""
    a = _as_float_array(a, name)
    if a.shape != shape:
        raise ValueError(shape_message(a.shape))
    if a.dtype != dtype:
        raise TypeError(f"{name} dtype {a.dtype} differs from x dtype {dtype}")
    return np.ascontiguousarray(a)


def _conv_out(out, shape, dtype, dense):
    """conv2d's `out`, checked: the kernels write each image as one block at out's image stride."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"out dtype {out.dtype} differs from x dtype {dtype}")
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected {shape}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    item = out.itemsize
    image = item * shape[1] * shape[2] * shape[3]
    blocks = out.size == 0 or (
        (shape[3] == 1 or out.strides[3] == item) and (shape[2] == 1 or out.strides[2] == item * shape[3]) and
        (shape[1] == 1 or out.strides[1] == item * shape[2] * shape[3]) and
        (shape[0] == 1 or (out.strides[0] >= image and out.strides[0] % item == 0)))
    if not blocks or (dense and not out.flags.c_contiguous):
        raise ValueError(f"out (shape {out.shape}, strides {out.strides}) must hold each image as one contiguous "
                         f"block{' and be C-contiguous (with a residual)' if dense else ''}, as a C-contiguous "
                         f"array or a channel slice of one")
    return out


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, *, need_input_grad=True,
                    need_weight_grad=True, need_bias_grad=True):
    """Gradients of conv2d: returns (dx, dweight, dbias), None for those not asked for.

    dy : (N, F, Ho, Wo), the gradient of the loss with respect to conv2d's output; x and weight as given to
    conv2d. The input gradient of a stride-1 layer is usually the forward convolution of dy with the flipped,
    transposed weights (workspace: that copy of the weights, plus the forward's); otherwise it multiplies
    weight^T by dy one tile of output pixels at a time and scatters it back (col2im), with a workspace of
    C/groups*kh*kw x tile elements per thread, bounded by 2**20 elements (4 MiB float32, 8 MiB float64) plus the
    GEMM packing buffers, whatever the batch size (the flipped convolution may itself run on Winograd). The
    weight gradient of a 3x3 stride-1 layer with >= 64 channels and filters per group runs on Winograd (F(4x4,
    3x3) from 96 tiles of 4x4 outputs per thread, else F(2x2, 3x3); workspace per thread: P x (F + C)/groups x up
    to kc tiles, and P x F x C/groups for its sums); otherwise on the direct kernels or the GEMM as the forward
    does; the direct one stages at most 2**18 elements of input and gradient per thread.
    """
    x, weight, _, stride, padding, dilation, groups, out_shape = _conv_args(
        x, weight, None, stride, padding, dilation, groups)
    dy = _operand_like(dy, "dy", out_shape, x.dtype, lambda got: (
        f"dy has shape {got}, expected {out_shape} for x {x.shape} and weight {weight.shape}"))
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

# ==============================================================================================================


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


def linear(x, weight, bias=None, *, relu=False):
    """Fully connected layer, torch layout: ``y = x @ weight.T + bias``, then max(y, 0) when `relu` (one pass).

    x (N, in), weight (out, in), bias (out,) or None, all of one float dtype. Returns y (N, out).
    """
    x, weight = _linear_operands(x, weight)
    y = np.empty((x.shape[0], weight.shape[0]), x.dtype)
    if bias is not None:
        bias = _per_channel_vector(bias, "bias", x.dtype, weight.shape[0], weight.shape, "weight")
    if x.flags.c_contiguous and weight.flags.c_contiguous:
        _C.linear_forward(x, y, weight, bias, bool(relu))
        return y
    if bias is not None:  # strided operands: the GEMM reads them in place
        y[...] = bias
    _C.gemm(x, weight, y, False, True, 1.0, 1.0 if bias is not None else 0.0)
    return np.maximum(y, 0, out=y) if relu else y


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
# ================================================================ pooling and activations
# Image tensors are NCHW float32/float64; outputs are new C-contiguous arrays of the input's dtype. Inputs that are
# not C-contiguous are copied once (np.ascontiguousarray), so any view gives the same result.

def _float_tensor(x, name, ndim=None):
    """x as a C-contiguous float32/float64 array, checking its rank when `ndim` is given."""
    x = _as_float_array(x, name)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D (N, C, H, W), got shape {x.shape}")
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)  # (ascontiguousarray would make 0-d arrays 1-d)


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


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, *, indices=True):
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
        window of -inf points at its first element inside the input. Only when `indices` (the default); with
        indices=False just y, from a faster kernel that keeps no indices (for inference).
    """
    x = _float_tensor(x, "x", 4)
    kernel, stride, padding, (ho, wo) = _pool_geometry("max_pool2d", x.shape, kernel_size, stride, padding,
                                                       ceil_mode)
    y = np.empty(x.shape[:2] + (ho, wo), dtype=x.dtype)
    if not indices:
        if y.size:
            _C.max_pool2d_forward_values(x, y, kernel, stride, padding, bool(ceil_mode))
        return y
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
