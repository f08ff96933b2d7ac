"""ONNX import and export: ``load_onnx(path)`` builds a trainable fastconv model from an ONNX file, and
``export_onnx(model, path, input_shape)`` writes a fastconv model as an ONNX graph.

Import
------
Supported operators (default domain, opsets 6 and up; the opset decides the attribute/input conventions):
Conv (1-D and 2-D, groups, dilations, per-side pads, auto_pad), Gemm (transA, transB, alpha, beta), MatMul by a
constant, Relu, MaxPool / AveragePool (1-D and 2-D, per-side pads, ceil_mode, count_include_pad, auto_pad),
GlobalAveragePool, LRN, BatchNormalization (inference), Dropout, Flatten, Reshape / Squeeze / Unsqueeze /
Transpose (constant shapes and axes; Reshape's 0 copies the input's size unless allowzero, -1 is inferred), Concat,
Add / Sub / Mul / Div / Sum (numpy broadcasting; an operand may be a constant), Softmax, LogSoftmax, Pad (constant
mode, spatial axes), Identity, Constant, ConstantOfShape and initializers. Nodes whose inputs are all constants
(Constant, ConstantOfShape, Reshape of a weight, Unsqueeze of a scale, Shape, Gather, Cast, arithmetic) are
evaluated once at load time. Any other operator raises OnnxImportError naming the operator and the node.

The model comes back in eval mode (BatchNorm uses its running statistics, Dropout is the identity), as
onnxruntime runs it; call ``.train()`` to fine-tune. A graph that is a plain chain (each node feeds only the
next) becomes an ``nn.Sequential`` named after the nodes; any other graph (inception branches, residual sums,
DenseNet's concatenations) becomes a ``GraphModule``, which runs its nodes in topological order and, in
backward, adds up the gradients that reach a tensor from all of its consumers. Constant operands of Add/Mul and
the weights of Conv/Gemm/MatMul/BatchNormalization become parameters (BatchNorm's statistics buffers), so every
weight of the file trains.

Architecture-only files (the onnx package's ``backend/test/data/light`` models) generate their weights with
ConstantOfShape nodes (every weight 0.02). With ``fill_placeholders=True`` (the default) such placeholders are
replaced by seeded random values before import: He-normal for Conv/Gemm/MatMul weights, small values for biases,
means and additive constants, values in [0.5, 1.5] for scales and variances (so activations stay finite).
``materialize_placeholders(model_proto, seed=...)`` returns the file with those values written in as
initializers, so another runtime can be fed exactly the same weights.

Export
------
``export_onnx`` walks a tree of Sequential / Concat / Residual containers and our layers (every model of
fastconv.models, GoogLeNet's auxiliary heads left out as in eval) or a GraphModule, and writes the inference
graph (opset 11 and up; batch size left symbolic). Imported models export back, including the modules below.
"""
import os

import numpy as np

from . import functional as F
from . import nn


class OnnxImportError(ValueError):
    """A file that is not valid ONNX, or a graph that uses something fastconv does not import."""


def _require_onnx():
    try:
        import onnx
        import onnx.numpy_helper  # noqa: F401  (submodules used below)
        import onnx.helper  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX import/export needs the 'onnx' package: pip install onnx (or fastconv[onnx])") from e
    return onnx


# =================================================================================================== modules

def _pad_hw(x, pads, value):
    """x with the last two axes padded by (top, left, bottom, right) entries of `value`."""
    t, l, b, r = pads
    if not (t or l or b or r):
        return x
    h, w = x.shape[-2:]
    y = np.full(x.shape[:-2] + (h + t + b, w + l + r), value, dtype=x.dtype)
    y[..., t:t + h, l:l + w] = x
    return y


def _same_pads(size, kernel, stride, dilation, lower):
    """(begin, end) padding of one axis for auto_pad SAME_UPPER / SAME_LOWER: output ceil(size / stride); the odd
    pixel goes at the end (UPPER) or the beginning (LOWER)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    small, big = total // 2, total - total // 2
    return (big, small) if lower else (small, big)


def _auto_pads(auto_pad, h, w, kernel, stride, dilation=(1, 1)):
    """(top, left, bottom, right) for an ONNX auto_pad mode on an h x w input."""
    if auto_pad == "VALID":
        return (0, 0, 0, 0)
    lower = auto_pad == "SAME_LOWER"
    (t, b), (l, r) = (_same_pads(h, kernel[0], stride[0], dilation[0], lower),
                      _same_pads(w, kernel[1], stride[1], dilation[1], lower))
    return (t, l, b, r)


class Pad2d(nn.Module):
    """Constant padding of the last two axes: (top, left, bottom, right) entries of `value` (ONNX Pad in constant
    mode, and the per-side padding of a Conv that cannot be folded into the convolution's symmetric padding).
    `auto` = (mode, kernel, stride, dilation) instead computes the pads of ONNX auto_pad SAME_UPPER / SAME_LOWER
    from each input's size."""

    def __init__(self, pads=(0, 0, 0, 0), value=0.0, auto=None):
        super().__init__()
        self.pads = tuple(int(p) for p in pads)
        if len(self.pads) != 4 or min(self.pads) < 0:
            raise ValueError(f"Pad2d pads must be 4 non-negative ints (top, left, bottom, right), got {pads!r}")
        self.value, self.auto = float(value), auto

    def resolve(self, shape):
        if self.auto is None:
            return self.pads
        mode, kernel, stride, dilation = self.auto
        return _auto_pads(mode, shape[-2], shape[-1], kernel, stride, dilation)

    def forward(self, x):
        if x.ndim < 2:
            raise ValueError(f"Pad2d pads the last two axes; got an input of shape {x.shape}")
        self._shape, self._pads = x.shape, self.resolve(x.shape)
        return _pad_hw(x, self._pads, self.value)

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        t, l = self._pads[:2]
        h, w = self._shape[-2:]
        return np.ascontiguousarray(dy[..., t:t + h, l:l + w])

    def output_shape(self, input_shape):
        t, l, b, r = self.resolve(input_shape)
        return tuple(input_shape[:-2]) + (input_shape[-2] + t + b, input_shape[-1] + l + r)

    def extra_repr(self):
        return f"auto={self.auto[0]}" if self.auto else f"pads={self.pads}, value={self.value}"


def _pool_size(size, kernel, stride, begin, end, ceil_mode):
    """Pooled length of one axis with per-side padding; in ceil_mode the last window must start inside the
    input or its leading padding (the rule of PyTorch, which onnxruntime follows)."""
    span = size + begin + end - kernel
    n = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (n - 1) * stride >= size + begin:
        n -= 1
    return n


class Pool2d(nn.Module):
    """Max ("max") or average ("avg") pooling with ONNX's padding: per side (top, left, bottom, right), or
    `auto_pad` SAME_UPPER / SAME_LOWER / VALID resolved for each input. Used where our MaxPool2d/AvgPool2d
    (symmetric padding of at most half the kernel) cannot express the file's geometry: the input is padded
    explicitly (-inf for max, zeros for average, the average's divisor then counting only the input elements
    unless count_include_pad) and pooled without padding."""

    def __init__(self, kind, kernel_size, stride, pads=(0, 0, 0, 0), ceil_mode=False, count_include_pad=False,
                 auto_pad=None):
        super().__init__()
        if kind not in ("max", "avg"):
            raise ValueError(f"kind must be 'max' or 'avg', got {kind!r}")
        self.kind, self.kernel_size, self.stride = kind, tuple(kernel_size), tuple(stride)
        self.pads, self.ceil_mode, self.count_include_pad = tuple(pads), bool(ceil_mode), bool(count_include_pad)
        self.auto_pad = auto_pad

    def _geometry(self, shape):
        if len(shape) != 4:
            raise ValueError(f"{self.kind} pooling needs (N, C, H, W) input, got shape {tuple(shape)}")
        h, w = shape[2:]
        pads = self.pads if self.auto_pad is None else _auto_pads(self.auto_pad, h, w, self.kernel_size,
                                                                  self.stride)
        ceil = self.ceil_mode and self.auto_pad is None
        t, l, b, r = pads
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        out = (_pool_size(h, kh, sh, t, b, ceil), _pool_size(w, kw, sw, l, r, ceil))
        if min(out) < 1:
            raise ValueError(f"pooling kernel {self.kernel_size} does not fit input {tuple(shape)} with pads {pads}")
        return pads, ceil, out

    def output_shape(self, input_shape):
        _, _, (ho, wo) = self._geometry(input_shape)
        return tuple(input_shape[:2]) + (ho, wo)

    def _divisor(self, shape, pads, ceil, dtype):
        """Fraction of each window that lies on the input (pooling a padded map of ones)."""
        ones = _pad_hw(np.ones((1, 1) + tuple(shape[2:]), dtype), pads, 0.0)
        return F.avg_pool2d(ones, self.kernel_size, self.stride, 0, ceil, True)

    def forward(self, x):
        pads, ceil, (ho, wo) = self._geometry(x.shape)
        self._shape, self._pads, self._ceil = x.shape, pads, ceil
        xp = _pad_hw(x, pads, -np.inf if self.kind == "max" else 0.0)
        self._padded = xp.shape
        if self.kind == "max":
            y, self._argmax = F.max_pool2d(xp, self.kernel_size, self.stride, 0, ceil)
            self._div = None
        else:
            y = F.avg_pool2d(xp, self.kernel_size, self.stride, 0, ceil, True)
            self._div = None if self.count_include_pad or not any(pads) else \
                self._divisor(x.shape, pads, ceil, x.dtype)
            if self._div is not None:
                y = y / self._div
        self._full = y.shape
        return np.ascontiguousarray(y[:, :, :ho, :wo])

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        ho, wo = dy.shape[2:]
        full = np.zeros(self._full, dy.dtype)
        full[:, :, :ho, :wo] = dy
        if self.kind == "max":
            dxp = F.max_pool2d_backward(full, self._argmax, self._padded)
        else:
            if self._div is not None:
                full = full / self._div
            dxp = F.avg_pool2d_backward(full, self._padded, self.kernel_size, self.stride, 0, self._ceil, True)
        t, l = self._pads[:2]
        h, w = self._shape[2:]
        return np.ascontiguousarray(dxp[:, :, t:t + h, l:l + w])

    def extra_repr(self):
        pad = f"auto_pad={self.auto_pad}" if self.auto_pad else f"pads={self.pads}"
        s = f"{self.kind}, kernel_size={self.kernel_size}, stride={self.stride}, {pad}"
        if self.ceil_mode:
            s += ", ceil_mode=True"
        if self.kind == "avg":
            s += f", count_include_pad={self.count_include_pad}"
        return s


class Spatial1d(nn.Module):
    """Runs a 2-D layer on (N, C, L) input as (N, C, 1, L): 1-D convolutions and poolings."""

    def __init__(self, layer):
        super().__init__()
        self.add_child("layer", layer)

    def forward(self, x):
        if x.ndim != 3:
            raise ValueError(f"a 1-D layer needs (N, C, L) input, got shape {x.shape}")
        y = self.children["layer"].forward(x[:, :, None, :])
        return y[:, :, 0, :]

    def backward(self, dy):
        layer = self.children["layer"]
        layer.need_input_grad = self.need_input_grad
        dx = layer.backward(np.ascontiguousarray(dy[:, :, None, :]))
        return None if dx is None else dx[:, :, 0, :]

    def output_shape(self, input_shape):
        n, c, length = input_shape
        shape = self.children["layer"].output_shape((n, c, 1, length))
        return (shape[0], shape[1], shape[3])


class MatMul(nn.Linear):
    """x @ B for a constant B (in, out), over the last axis of an input of any rank: a Linear layer with
    weight = B^T that flattens the leading axes."""

    def forward(self, x):
        self._lead = x.shape[:-1]
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"MatMul by a ({self.in_features}, {self.out_features}) matrix got input {x.shape}")
        return super().forward(x.reshape(-1, self.in_features)).reshape(self._lead + (self.out_features,))

    def backward(self, dy):
        dx = super().backward(dy.reshape(-1, self.out_features))
        return None if dx is None else dx.reshape(self._lead + (self.in_features,))

    def output_shape(self, input_shape):
        if tuple(input_shape[-1:]) != (self.in_features,):
            raise ValueError(f"MatMul by a ({self.in_features}, {self.out_features}) matrix got input "
                             f"{tuple(input_shape)}")
        return tuple(input_shape[:-1]) + (self.out_features,)


def _reduce_to(g, shape):
    """Sum a broadcast gradient back to an operand's `shape`."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


class Arithmetic(nn.Module):
    """Element-wise add (any number of operands), sub, mul or div with numpy broadcasting (ONNX Add, Sum, Sub,
    Mul, Div). `operands` lists, in order, None for each input given to forward and an array for each constant;
    constants are parameters ``c<i>`` (trained; e.g. a Caffe Scale layer's scale and shift) or, with
    learned=False, buffers. forward takes the data inputs; backward returns their gradients (a tuple when there
    are several)."""

    OPS = ("add", "sub", "mul", "div")

    def __init__(self, op, operands, learned=True):
        super().__init__()
        if op not in self.OPS:
            raise ValueError(f"op must be one of {self.OPS}, got {op!r}")
        if op != "add" and len(operands) != 2:
            raise ValueError(f"{op} takes two operands, got {len(operands)}")
        if all(o is not None for o in operands):
            raise ValueError("Arithmetic needs at least one data operand")
        self.op, self.slots = op, []
        for i, c in enumerate(operands):
            if c is None:
                self.slots.append(None)
                continue
            key = f"c{i}"
            c = np.array(c, copy=True)
            if learned and c.dtype.kind == "f":
                self.add_param(key, c)
            else:
                self.buffers[key] = c
            self.slots.append(key)

    @property
    def num_inputs(self):
        return sum(s is None for s in self.slots)

    def _constant(self, key):
        return self.params[key] if key in self.params else self.buffers[key]

    def _operands(self, xs):
        xs = iter(xs)
        return [next(xs) if s is None else self._constant(s) for s in self.slots]

    def forward(self, *xs):
        if len(xs) != self.num_inputs:
            raise ValueError(f"Arithmetic({self.op}) takes {self.num_inputs} input(s), got {len(xs)}")
        vals = self._operands(xs)
        dtypes = {v.dtype for v in vals if v.dtype.kind == "f"}
        if len(dtypes) > 1:
            raise TypeError(f"Arithmetic({self.op}): operands mix dtypes {sorted(map(str, dtypes))}; convert the "
                            f"model with .astype() or the input")
        self._vals = vals
        if self.op == "add":
            y = vals[0]
            for v in vals[1:]:
                y = y + v
        else:
            a, b = vals
            y = a - b if self.op == "sub" else a * b if self.op == "mul" else a / b
        return np.asarray(y)

    def backward(self, dy):
        vals = self._vals
        if self.op == "add":
            local = [lambda: dy] * len(vals)
        elif self.op == "sub":
            local = [lambda: dy, lambda: -dy]
        elif self.op == "mul":
            local = [lambda: dy * vals[1], lambda: dy * vals[0]]
        else:
            local = [lambda: dy / vals[1], lambda: -dy * vals[0] / (vals[1] * vals[1])]
        data = []
        for slot, v, grad in zip(self.slots, vals, local):
            if slot is None:
                data.append(_reduce_to(grad(), v.shape) if self.need_input_grad else None)
            elif slot in self.params and self.trainable(slot):
                self.grads[slot] += _reduce_to(grad(), v.shape).reshape(v.shape)
        return data[0] if len(data) == 1 else tuple(data)

    def output_shape(self, *shapes):
        shapes = iter(shapes)
        return tuple(np.broadcast_shapes(*[tuple(next(shapes)) if s is None else self._constant(s).shape
                                           for s in self.slots]))

    def extra_repr(self):
        return ", ".join([self.op] + ["x" if s is None else f"{s}{self._constant(s).shape}" for s in self.slots])


class Concatenate(nn.Module):
    """Joins its inputs along `axis` (ONNX Concat of computed tensors; backward splits the gradient)."""

    def __init__(self, axis=1):
        super().__init__()
        self.axis = int(axis)

    def forward(self, *xs):
        self._sizes = [x.shape[self.axis] for x in xs]
        return np.concatenate(xs, axis=self.axis)

    def backward(self, dy):
        if not self.need_input_grad:
            return None if len(self._sizes) == 1 else (None,) * len(self._sizes)
        parts = np.split(dy, np.cumsum(self._sizes)[:-1], axis=self.axis)
        parts = [np.ascontiguousarray(p) for p in parts]
        return parts[0] if len(parts) == 1 else tuple(parts)

    def output_shape(self, *shapes):
        first = list(shapes[0])
        first[self.axis] = sum(s[self.axis] for s in shapes)
        return tuple(first)

    def extra_repr(self):
        return f"axis={self.axis}"


def _normalize_axes(axes, ndim, what):
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"{what}: axis {a} is out of range for rank {ndim}")
        out.append(a % ndim)
    return out


def _reshape_target(in_shape, shape, allowzero=False):
    """ONNX Reshape's output shape: 0 copies the input's size at that position (unless allowzero), -1 is
    inferred from the element count."""
    out = [int(s) for s in shape]
    for i, s in enumerate(out):
        if s == 0 and not allowzero:
            if i >= len(in_shape):
                raise ValueError(f"Reshape to {tuple(shape)}: a 0 at position {i} but the input {tuple(in_shape)} "
                                 f"has rank {len(in_shape)}")
            out[i] = in_shape[i]
    total = int(np.prod(in_shape, dtype=np.int64))
    if out.count(-1) > 1 or any(s < -1 for s in out):
        raise ValueError(f"Reshape to {tuple(shape)}: at most one -1 and no other negative size")
    if -1 in out:
        known = int(np.prod([s for s in out if s != -1], dtype=np.int64))
        if known == 0 or total % known:
            raise ValueError(f"cannot reshape {tuple(in_shape)} to {tuple(shape)}")
        out[out.index(-1)] = total // known
    if int(np.prod(out, dtype=np.int64)) != total:
        raise ValueError(f"cannot reshape {tuple(in_shape)} ({total} elements) to {tuple(shape)}")
    return tuple(out)


class Reshape(nn.Module):
    """Shape-only layers: kind "reshape" (ONNX Reshape with constant `shape`, 0 and -1 semantics), "flatten"
    (ONNX Flatten at `axis`: 2-D output), "squeeze" / "unsqueeze" (`axes`)."""

    def __init__(self, kind, shape=None, axis=None, axes=None, allowzero=False):
        super().__init__()
        if kind not in ("reshape", "flatten", "squeeze", "unsqueeze"):
            raise ValueError(f"unknown reshape kind {kind!r}")
        self.kind, self.shape, self.axis, self.allowzero = kind, shape, axis, bool(allowzero)
        self.axes = None if axes is None else [int(a) for a in axes]

    def target(self, in_shape):
        in_shape = tuple(in_shape)
        if self.kind == "reshape":
            return _reshape_target(in_shape, self.shape, self.allowzero)
        if self.kind == "flatten":
            axis = self.axis + len(in_shape) if self.axis < 0 else self.axis
            if not 0 <= axis <= len(in_shape):
                raise ValueError(f"Flatten axis {self.axis} is out of range for input {in_shape}")
            return (int(np.prod(in_shape[:axis], dtype=np.int64)), int(np.prod(in_shape[axis:], dtype=np.int64)))
        if self.kind == "squeeze":
            if self.axes is None:
                return tuple(s for s in in_shape if s != 1)
            axes = _normalize_axes(self.axes, len(in_shape), "Squeeze")
            if any(in_shape[a] != 1 for a in axes):
                raise ValueError(f"Squeeze axes {self.axes} of input {in_shape}: those sizes are not all 1")
            return tuple(s for i, s in enumerate(in_shape) if i not in axes)
        rank = len(in_shape) + len(self.axes)
        axes = _normalize_axes(self.axes, rank, "Unsqueeze")
        out, rest = [], iter(in_shape)
        for i in range(rank):
            out.append(1 if i in axes else next(rest))
        return tuple(out)

    def forward(self, x):
        self._shape = x.shape
        return x.reshape(self.target(x.shape))

    def backward(self, dy):
        return dy.reshape(self._shape) if self.need_input_grad else None

    def output_shape(self, input_shape):
        return self.target(input_shape)

    def extra_repr(self):
        detail = {"reshape": f"shape={self.shape}", "flatten": f"axis={self.axis}"}.get(self.kind, f"axes={self.axes}")
        return f"{self.kind}, {detail}"


class Transpose(nn.Module):
    """Permutes the axes (ONNX Transpose); ShuffleNet's channel shuffle is Reshape-Transpose-Reshape."""

    def __init__(self, perm):
        super().__init__()
        self.perm = tuple(int(p) for p in perm)
        self.inverse = tuple(int(i) for i in np.argsort(self.perm))

    def forward(self, x):
        if x.ndim != len(self.perm):
            raise ValueError(f"Transpose{self.perm} got an input of rank {x.ndim} (shape {x.shape})")
        return np.ascontiguousarray(x.transpose(self.perm))

    def backward(self, dy):
        return np.ascontiguousarray(dy.transpose(self.inverse)) if self.need_input_grad else None

    def output_shape(self, input_shape):
        return tuple(input_shape[p] for p in self.perm)

    def extra_repr(self):
        return f"perm={self.perm}"


class Softmax(nn.Module):
    """Softmax along `axis`; with coerce_2d (ONNX before opset 13) over all axes from `axis` on, the input seen as
    a (prod(shape[:axis]), prod(shape[axis:])) matrix."""

    log = False

    def __init__(self, axis=1, coerce_2d=False):
        super().__init__()
        self.axis, self.coerce_2d = int(axis), bool(coerce_2d)

    def _view(self, x):
        """x arranged so the softmax runs along the returned axis."""
        if not self.coerce_2d:
            return x, self.axis
        axis = self.axis % x.ndim if x.ndim else 0
        return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1), 1

    def forward(self, x):
        self._shape = x.shape
        v, axis = self._view(x)
        y = (F.log_softmax if self.log else F.softmax)(v, axis=axis)
        self._y = y
        return y.reshape(x.shape)

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        g, axis = self._view(dy)
        y = self._y
        if self.log:
            dx = g - np.exp(y) * g.sum(axis=axis, keepdims=True)
        else:
            dx = y * (g - (g * y).sum(axis=axis, keepdims=True))
        return dx.reshape(self._shape)

    def extra_repr(self):
        return f"axis={self.axis}" + (", coerce_2d=True" if self.coerce_2d else "")


class LogSoftmax(Softmax):
    """log(softmax) with the conventions of Softmax."""

    log = True


class EvenLRN(nn.LocalResponseNorm):
    """ONNX LRN with an even `size`: the window reaches (size-1)//2 channels back and size//2 forward, the mirror
    image of our (and torch's) window, so the channels are reversed around our kernel."""

    def forward(self, x):
        return np.ascontiguousarray(super().forward(np.ascontiguousarray(x[:, ::-1]))[:, ::-1])

    def backward(self, dy):
        dx = super().backward(np.ascontiguousarray(dy[:, ::-1]))
        return None if dx is None else np.ascontiguousarray(dx[:, ::-1])


class GraphModule(nn.Module):
    """A directed acyclic graph of modules over named tensors (what an ONNX graph with branches becomes).

    Each node is a child module with the names of its input tensors and of its output tensor; nodes run in
    topological order. Modules with one input are ordinary layers; modules with several (Arithmetic,
    Concatenate) take them as forward(*xs) and return a tuple of gradients. forward(*inputs) returns the output,
    or a tuple when the graph has several; backward takes the matching gradient(s) (None for an output that does
    not enter the loss) and returns the input gradient(s). A tensor read by several nodes (a residual shortcut,
    an inception block's input) receives the sum of their gradients. Nodes whose output gradient cannot reach a
    trainable parameter or a needed input gradient are skipped in backward.
    """

    def __init__(self, inputs, outputs, nodes):
        super().__init__()
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.nodes = []
        available = set(self.inputs)
        for name, module, ins, out in nodes:
            missing = [t for t in ins if t not in available]
            if missing:
                raise ValueError(f"GraphModule node {name!r} reads {missing} before any node produces them")
            self.add_child(name, module)
            self.nodes.append((str(name), list(ins), out))
            available.add(out)
        missing = [t for t in self.outputs if t not in available]
        if missing:
            raise ValueError(f"GraphModule outputs {missing} are not produced by any node")
        # tensors to drop after each node in forward (their last reader ran), so inference keeps only live maps
        last = {}
        for i, (_, ins, _) in enumerate(self.nodes):
            for t in ins:
                last[t] = i
        self._free_after = [[] for _ in self.nodes]
        for t, i in last.items():
            if t not in self.outputs:
                self._free_after[i].append(t)

    def __call__(self, *xs):
        return self.forward(*xs)

    def forward(self, *xs):
        if len(xs) != len(self.inputs):
            raise ValueError(f"GraphModule takes {len(self.inputs)} input(s) {self.inputs}, got {len(xs)}")
        self._input_meta = [(x.shape, x.dtype) for x in xs]
        env = dict(zip(self.inputs, xs))
        for (name, ins, out), free in zip(self.nodes, self._free_after):
            env[out] = self.children[name].forward(*[env[t] for t in ins])
            for t in free:
                env.pop(t, None)
        results = tuple(env[t] for t in self.outputs)
        return results[0] if len(results) == 1 else results

    def _needs_grad(self):
        """tensor -> whether its gradient is needed (it depends on a trainable parameter, or on an input whose
        gradient is asked for)."""
        needs = {t: self.need_input_grad for t in self.inputs}
        for name, ins, out in self.nodes:
            needs[out] = any(needs[t] for t in ins) or self.children[name].has_trainable()
        return needs

    def backward(self, dy):
        dys = (dy,) if len(self.outputs) == 1 else tuple(dy)
        if len(dys) != len(self.outputs):
            raise ValueError(f"GraphModule.backward expects {len(self.outputs)} gradients, got {len(dys)}")
        needs = self._needs_grad()
        grads = {}

        def accumulate(t, g):
            grads[t] = g if t not in grads else grads[t] + g  # never in place: g may be another tensor's array

        for t, g in zip(self.outputs, dys):
            if g is not None:
                accumulate(t, g)
        for name, ins, out in reversed(self.nodes):
            g = grads.pop(out, None)
            if g is None or not needs[out]:
                continue
            module = self.children[name]
            wanted = [needs[t] for t in ins]
            module.need_input_grad = any(wanted)
            dx = module.backward(g)
            if not any(wanted):
                continue
            for t, want, d in zip(ins, wanted, (dx,) if len(ins) == 1 else dx):
                if want and d is not None:
                    accumulate(t, d)
        if not self.need_input_grad:
            result = [None] * len(self.inputs)
        else:
            result = [grads[t] if t in grads else np.zeros(shape, dtype)
                      for t, (shape, dtype) in zip(self.inputs, self._input_meta)]
        return result[0] if len(result) == 1 else tuple(result)

    def output_shape(self, *input_shapes):
        env = dict(zip(self.inputs, (tuple(s) for s in input_shapes)))
        for name, ins, out in self.nodes:
            try:
                env[out] = tuple(self.children[name].output_shape(*[env[t] for t in ins]))
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
        shapes = tuple(env[t] for t in self.outputs)
        return shapes[0] if len(shapes) == 1 else shapes

    def __repr__(self):
        lines = [f"GraphModule(inputs={self.inputs}, outputs={self.outputs},"]
        for name, ins, out in self.nodes:
            body = repr(self.children[name]).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}  <- {', '.join(ins)}")
        lines.append(")")
        return "\n".join(lines)


# =================================================================================================== reading

def _read_model(source):
    """(ModelProto, a name for messages) from a path, bytes or a ModelProto."""
    onnx = _require_onnx()
    if isinstance(source, onnx.ModelProto):
        return source, "<ModelProto>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, where, base = bytes(source), "<bytes>", None
    else:
        where = os.fspath(source)
        with open(where, "rb") as f:
            data = f.read()
        base = os.path.dirname(os.path.abspath(where))
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # google.protobuf DecodeError and friends
        raise OnnxImportError(f"{where}: not a valid ONNX model file ({type(e).__name__}: {e}); truncated or "
                              f"not ONNX?") from None
    if not model.HasField("graph") or not model.graph.node or not model.graph.output:
        raise OnnxImportError(f"{where}: the ONNX model has no graph, no nodes or no outputs (truncated or not an "
                              f"ONNX model file?)")
    if base is not None and any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        from onnx.external_data_helper import load_external_data_for_model
        try:
            load_external_data_for_model(model, base)
        except Exception as e:
            raise OnnxImportError(f"{where}: cannot read the external weight data ({e})") from None
    return model, where


def _attributes(node):
    from onnx import helper, numpy_helper
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif hasattr(v, "data_type") and hasattr(v, "dims"):  # a TensorProto
            v = numpy_helper.to_array(v)
        out[a.name] = v
    return out


def _default_opset(model):
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return 1 if not model.opset_import else None


def _topological(nodes, available, where):
    """The nodes in an order where every input is produced before it is read (Kahn's algorithm; files are
    normally sorted already, which this keeps)."""
    available = set(available) | {""}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    waiting = [0] * len(nodes)
    readers = {}
    for i, n in enumerate(nodes):
        for t in set(n.input):
            if t not in available:
                if t not in producer:
                    raise OnnxImportError(f"{where}: node {n.name or n.output[0]!r} ({n.op_type}) reads {t!r}, which "
                                          f"no node, initializer or graph input provides (a truncated file?)")
                waiting[i] += 1
                readers.setdefault(t, []).append(i)
    ready = [i for i in range(len(nodes)) if not waiting[i]][::-1]
    order = []
    while ready:
        i = ready.pop()
        order.append(nodes[i])
        for t in nodes[i].output:
            for j in readers.pop(t, []):
                waiting[j] -= 1
                if not waiting[j]:
                    ready.append(j)
    if len(order) != len(nodes):
        stuck = next(n for i, n in enumerate(nodes) if waiting[i])
        raise OnnxImportError(f"{where}: the graph has a cycle through node {stuck.name or stuck.output[0]!r} "
                              f"({stuck.op_type})")
    return order


# =================================================================================================== placeholders

_PASS_THROUGH = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Transpose", "Identity", "Cast")


def _static_consts(graph):
    """Arrays of the initializers and Constant nodes (shape vectors and the like)."""
    from onnx import numpy_helper
    consts = {}
    for t in graph.initializer:
        consts[t.name] = t
    for n in graph.node:
        if n.op_type == "Constant" and n.output:
            attrs = _attributes(n)
            if "value" in attrs:
                consts[n.output[0]] = attrs["value"]
    return lambda name: (numpy_helper.to_array(consts[name]) if name in consts and not isinstance(consts[name],
                                                                                                   np.ndarray)
                         else consts.get(name))


def _shape_after(node, shape, const, opset):
    """The shape of a constant of `shape` after a shape-only node (for following a placeholder to its user)."""
    attrs = _attributes(node)
    op = node.op_type
    if op == "Reshape":
        target = attrs.get("shape") if len(node.input) < 2 else const(node.input[1])
        return None if target is None else _reshape_target(shape, target, attrs.get("allowzero", 0))
    if op in ("Squeeze", "Unsqueeze"):
        axes = attrs.get("axes") if opset < 13 else (const(node.input[1]) if len(node.input) > 1 else None)
        kind = op.lower()
        return Reshape(kind, axes=None if axes is None else list(axes)).target(shape)
    if op == "Flatten":
        return Reshape("flatten", axis=attrs.get("axis", 1)).target(shape)
    if op == "Transpose":
        perm = attrs.get("perm", list(range(len(shape)))[::-1])
        return tuple(shape[p] for p in perm)
    return shape


def _fill(rng, role, shape, dtype):
    kind, fan_in = role
    dtype = np.dtype(dtype).type
    if kind == "weight":
        values = rng.standard_normal(shape, dtype=dtype)
        values *= dtype(np.sqrt(2.0 / max(fan_in, 1)))
        return values
    if kind == "scale":
        return rng.random(shape, dtype=dtype) + dtype(0.5)
    values = rng.standard_normal(shape, dtype=dtype)
    values *= dtype(0.1)
    return values


def _placeholder_role(name, shape, consumers, const, opset):
    """("weight", fan_in) / ("scale", _) / ("shift", _) for a placeholder by what finally reads it, or None."""
    for _ in range(16):  # follow shape-only nodes (a weight reshaped before its Gemm)
        users = consumers.get(name, [])
        if len(users) != 1 or users[0][0].op_type not in _PASS_THROUGH or users[0][1] != 0:
            break
        node = users[0][0]
        shape = _shape_after(node, shape, const, opset)
        if shape is None:
            return None
        name = node.output[0]
    users = consumers.get(name, [])
    if not users:
        return None
    node, index = users[0]
    op, attrs = node.op_type, _attributes(node)
    if op in ("Conv", "Gemm", "MatMul") and index == 1:
        if op == "Conv":
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        elif op == "Gemm":
            fan_in = shape[-1] if attrs.get("transB", 0) else shape[0]
        else:
            fan_in = shape[-2] if len(shape) > 1 else shape[0]
        return ("weight", fan_in)
    if op in ("Conv", "Gemm") and index == 2:
        return ("shift", 0)
    if op == "BatchNormalization" and index in (1, 4):
        return ("scale", 0)
    if op == "BatchNormalization" and index in (2, 3):
        return ("shift", 0)
    if op in ("Mul", "Div"):
        return ("scale", 0)
    if op in ("Add", "Sub", "Sum"):
        return ("shift", 0)
    return None


def _placeholder_values(model, seed):
    """{output name of a placeholder ConstantOfShape node: seeded random array}, in node order."""
    opset = _default_opset(model) or 1
    graph = model.graph
    const = _static_consts(graph)
    consumers = {}
    for n in graph.node:
        for i, t in enumerate(n.input):
            consumers.setdefault(t, []).append((n, i))
    rng = np.random.default_rng(seed)
    filled = {}
    for n in graph.node:
        if n.op_type != "ConstantOfShape" or n.domain not in ("", "ai.onnx") or not n.input:
            continue
        shape = const(n.input[0])
        if shape is None:
            continue
        value = _attributes(n).get("value")
        dtype = np.float32 if value is None else value.dtype
        if np.dtype(dtype) not in (np.float32, np.float64):
            continue
        shape = tuple(int(s) for s in np.asarray(shape).reshape(-1))
        role = _placeholder_role(n.output[0], shape, consumers, const, opset)
        if role is not None:
            filled[n.output[0]] = _fill(rng, role, shape, dtype)
    return filled


def _write_placeholders(model, filled):
    """A copy of `model` with the ConstantOfShape nodes producing `filled` replaced by initializers."""
    from onnx import helper, numpy_helper
    out = type(model)()
    out.CopyFrom(model)
    kept = [n for n in out.graph.node if not (n.op_type == "ConstantOfShape" and n.output[0] in filled)]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    # the generators' shape vectors are now unused: drop them (runtimes warn about unused initializers)
    shapes = {n.input[0] for n in model.graph.node if n.op_type == "ConstantOfShape" and n.output[0] in filled}
    shapes -= {i for n in kept for i in n.input} | {o.name for o in out.graph.output}
    for field in (out.graph.initializer, out.graph.input):
        kept_items = [t for t in field if t.name not in shapes]
        del field[:]
        field.extend(kept_items)
    for name, value in filled.items():
        out.graph.initializer.append(numpy_helper.from_array(value, name))
        if out.ir_version < 4:  # before IR 4 every initializer must also be a graph input
            out.graph.input.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape))
    return out


def materialize_placeholders(model, *, seed=None):
    """A copy of `model` (a ModelProto, a path or bytes) whose placeholder weights are written in as
    initializers of seeded random values.

    A placeholder is the output of a ConstantOfShape node with a constant shape that feeds a weight slot: input
    1 or 2 of Conv/Gemm, input 1 of MatMul, inputs 1-4 of BatchNormalization, or an operand of Mul/Div/Add/Sub/
    Sum (possibly through Reshape/Unsqueeze/Transpose). Weights get He-normal values N(0, 2/fan_in) (fan_in from
    the reading node's layout), biases, shifts and means N(0, 0.1^2), scales and variances U(0.5, 1.5). The same
    seed gives the same values, which is what ``load_onnx(..., seed=seed)`` uses, so onnxruntime can be run on the
    returned model to check an import. Returns `model` itself when there is nothing to fill."""
    model, _ = _read_model(model)
    filled = _placeholder_values(model, seed)
    return _write_placeholders(model, filled) if filled else model


# =================================================================================================== import

def _sanitize(name):
    return name.replace(".", "_") or "node"


class _Importer:
    """Turns a graph into modules, one per node, evaluating constant sub-graphs on the way."""

    def __init__(self, model, where, seed, filled=None):
        self.model, self.where = model, where
        self.filled = filled or {}
        self.opset = _default_opset(model)
        if self.opset is None:
            raise OnnxImportError(f"{where}: the model imports no version of the default ONNX operator set")
        self.rng = np.random.default_rng(seed)
        self.consts, self.learned, self.alias = {}, set(), {}
        self.steps, self.names = [], set()

    # ------------------------------------------------------------------------------------------- helpers
    def fail(self, node, message):
        label = node.name or (node.output[0] if node.output else "")
        raise OnnxImportError(f"{self.where}: node {label!r} ({node.op_type}): {message}")

    def resolve(self, name):
        return self.alias.get(name, name)

    def const(self, node, index, what, optional=False):
        name = self.resolve(node.input[index]) if index < len(node.input) else ""
        if name == "":
            if optional:
                return None
            self.fail(node, f"the {what} (input {index}) is missing")
        if name not in self.consts:
            self.fail(node, f"the {what} (input {index}, {name!r}) must be a constant (an initializer), not a "
                            f"computed tensor")
        return self.consts[name]

    def float_const(self, node, index, what, optional=False):
        value = self.const(node, index, what, optional)
        if value is not None and value.dtype not in (np.float32, np.float64):
            self.fail(node, f"the {what} has dtype {value.dtype}; fastconv models hold float32 or float64")
        return value

    def data_input(self, node, index=0):
        name = self.resolve(node.input[index]) if index < len(node.input) else ""
        if name == "" or name in self.consts:
            self.fail(node, f"input {index} must be a computed tensor")
        return name

    def unique(self, node):
        base = _sanitize(node.name or node.output[0])
        name, i = base, 1
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    # ------------------------------------------------------------------------------------------- driving
    def run(self):
        from onnx import numpy_helper
        graph, where = self.model.graph, self.where
        for t in graph.initializer:
            try:
                self.consts[t.name] = numpy_helper.to_array(t)
            except Exception as e:
                raise OnnxImportError(f"{where}: initializer {t.name!r} cannot be read ({e})") from None
            if self.consts[t.name].dtype.kind == "f":
                self.learned.add(t.name)
        for name, value in self.filled.items():  # placeholders: their generator nodes are skipped below
            self.consts[name] = value
            self.learned.add(name)
        inputs = [i for i in graph.input if i.name not in self.consts]
        if not inputs:
            raise OnnxImportError(f"{where}: the graph has no input that is not an initializer")
        self.inputs = [i.name for i in inputs]
        for node in _topological(graph.node, list(self.consts) + self.inputs, where):
            if node.domain not in ("", "ai.onnx"):
                self.fail(node, f"operators of domain {node.domain!r} are not supported")
            self.node(node)
        outputs = [self.resolve(o.name) for o in graph.output]
        for o, r in zip(graph.output, outputs):
            if r in self.consts:
                raise OnnxImportError(f"{where}: graph output {o.name!r} is a constant; fastconv models compute "
                                      f"their outputs")
        model = self.build(outputs, inputs)
        return model

    def node(self, node):
        if node.op_type == "ConstantOfShape" and node.output and node.output[0] in self.filled:
            return
        attrs = _attributes(node)
        ins = [self.resolve(i) for i in node.input]
        op = node.op_type
        if op in _FOLD and all(i == "" or i in self.consts for i in ins):
            try:
                values = _FOLD[op](self, node, attrs, [self.consts[i] if i else None for i in ins])
            except OnnxImportError:
                raise
            except Exception as e:
                self.fail(node, f"cannot evaluate on its constant inputs ({type(e).__name__}: {e})")
            if not isinstance(values, (tuple, list)):
                values = [values]
            learned = any(i in self.learned for i in ins)
            for name, value in zip(node.output, values):
                self.consts[name] = np.asarray(value)
                if learned or op == "ConstantOfShape":
                    self.learned.add(name)
            return
        if op == "Identity":
            self.alias[node.output[0]] = self.data_input(node)
            return
        converter = _CONVERT.get(op)
        if converter is None:
            self.fail(node, f"operator {op!r} is not supported by fastconv's ONNX import (supported: "
                            f"{', '.join(sorted(set(_CONVERT) | {'Identity'}))}; on constant inputs only: "
                            f"{', '.join(sorted(set(_FOLD) - set(_CONVERT) - {'Identity'}))})")
        module, data = converter(self, node, attrs)
        self.steps.append((self.unique(node), module, data, node.output[0], node))

    def build(self, outputs, inputs):
        # drop nodes no output depends on; refuse reads of secondary outputs (Dropout's mask, MaxPool's indices)
        needed, steps = set(outputs), []
        for step in reversed(self.steps):
            if step[3] in needed:
                steps.append(step)
                needed.update(step[2])
        steps.reverse()
        produced = set(self.inputs) | {s[3] for s in steps}
        for name, _, data, _, node in steps:
            for t in data:
                if t not in produced:
                    owner = next((s for s in self.steps if t in s[4].output), None)
                    if owner is not None:
                        self.fail(owner[4], f"its output {t!r} (an output other than the first) is used, which "
                                            f"fastconv's import does not support")
                    raise OnnxImportError(f"{self.where}: tensor {t!r} read by node {name!r} is not produced")
        chain = (len(self.inputs) == 1 and len(outputs) == 1 and steps and steps[-1][3] == outputs[0]
                 and all(len(s[2]) == 1 for s in steps)
                 and all(s[2][0] == (steps[i - 1][3] if i else self.inputs[0]) for i, s in enumerate(steps)))
        if chain:
            readers = {}
            for s in steps:
                readers[s[2][0]] = readers.get(s[2][0], 0) + 1
            chain = all(v == 1 for v in readers.values())
        if chain:
            model = nn.Sequential(**{name: module for name, module, _, _, _ in steps})
        else:
            model = GraphModule(self.inputs, outputs, [(name, module, data, out) for name, module, data, out, _
                                                       in steps])
        model.eval()
        graph = self.model.graph
        model.name = graph.name or "onnx"
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) >= 2 and all(d for d in dims[1:]):
            model.input_shape = tuple(dims[1:])
        model.onnx_opset = self.opset
        return model

    def new_dropout(self, p):
        return nn.Dropout(p, rng=np.random.default_rng(int(self.rng.integers(2 ** 63))))


# ------------------------------------------------------------------------------------------------ constant folding

def _axes_of(imp, node, attrs, values, index=1):
    if imp.opset < 13 or "axes" in attrs:
        return attrs.get("axes")
    return None if len(values) <= index or values[index] is None else [int(a) for a in values[index]]


def _fold_constant(imp, node, attrs, values):
    if "value" in attrs:
        return attrs["value"]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    imp.fail(node, f"Constant with attributes {sorted(attrs)} is not supported")


def _fold_constant_of_shape(imp, node, attrs, values):
    value = attrs.get("value", np.zeros(1, np.float32))
    return np.full(tuple(int(s) for s in values[0]), value.reshape(-1)[0], dtype=value.dtype)


def _fold_reshape(imp, node, attrs, values):
    shape = attrs["shape"] if len(values) < 2 else values[1]
    return values[0].reshape(_reshape_target(values[0].shape, shape, attrs.get("allowzero", 0)))


def _fold_squeeze(imp, node, attrs, values):
    return values[0].reshape(Reshape(node.op_type.lower(), axes=_axes_of(imp, node, attrs, values)).target(
        values[0].shape))


def _fold_cast(imp, node, attrs, values):
    from onnx import helper
    return values[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))


def _fold_arith(imp, node, attrs, values):
    op = node.op_type
    if op == "Sum":
        out = values[0]
        for v in values[1:]:
            out = out + v
        return out
    a, b = values
    if imp.opset < 7 and attrs.get("broadcast") and "axis" in attrs:
        b = b.reshape(b.shape + (1,) * (a.ndim - attrs["axis"] - b.ndim))
    if op == "Div" and a.dtype.kind in "iu":
        return (np.trunc(a / b)).astype(a.dtype)
    return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](a, b).astype(a.dtype)


_FOLD = {
    "Constant": _fold_constant,
    "ConstantOfShape": _fold_constant_of_shape,
    "Identity": lambda imp, node, attrs, v: v[0],
    "Reshape": _fold_reshape,
    "Squeeze": _fold_squeeze,
    "Unsqueeze": _fold_squeeze,
    "Flatten": lambda imp, node, attrs, v: v[0].reshape(Reshape("flatten", axis=attrs.get("axis", 1)).target(
        v[0].shape)),
    "Transpose": lambda imp, node, attrs, v: np.transpose(v[0], attrs.get("perm")),
    "Concat": lambda imp, node, attrs, v: np.concatenate([x for x in v if x is not None], axis=attrs["axis"]),
    "Shape": lambda imp, node, attrs, v: np.array(v[0].shape, dtype=np.int64),
    "Gather": lambda imp, node, attrs, v: np.take(v[0], v[1], axis=attrs.get("axis", 0)),
    "Cast": _fold_cast,
    "Add": _fold_arith, "Sub": _fold_arith, "Mul": _fold_arith, "Div": _fold_arith, "Sum": _fold_arith,
}


# ------------------------------------------------------------------------------------------------ converters

def _spatial_attrs(imp, node, attrs, rank, with_dilations=True):
    """(kernel, strides, pads (begin..., end...), dilations, auto_pad) of a conv/pool node of `rank` spatial
    axes, as lists."""
    kernel = list(attrs.get("kernel_shape", []))
    strides = list(attrs.get("strides", [1] * rank))
    dilations = list(attrs.get("dilations", [1] * rank))
    pads = list(attrs.get("pads", [0] * (2 * rank)))
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        imp.fail(node, f"unknown auto_pad {auto_pad!r}")
    if len(strides) != rank or len(dilations) != rank or len(pads) != 2 * rank:
        imp.fail(node, f"strides {strides}, dilations {dilations} or pads {pads} do not match {rank} spatial axes")
    if not with_dilations and any(d != 1 for d in dilations):
        imp.fail(node, f"dilations {dilations} are not supported for pooling")
    return kernel, strides, pads, dilations, (None if auto_pad == "NOTSET" else auto_pad)


def _as_2d(values, fill):
    """1-D geometry lists -> 2-D (a leading axis of size 1)."""
    return [fill] + list(values)


def _convert_conv(imp, node, attrs):
    x = imp.data_input(node)
    w = imp.float_const(node, 1, "weight")
    b = imp.float_const(node, 2, "bias", optional=True)
    rank = w.ndim - 2
    if rank not in (1, 2):
        imp.fail(node, f"{rank}-D convolution (weight {w.shape}) is not supported; fastconv convolves 1-D and 2-D")
    kernel, strides, pads, dilations, auto_pad = _spatial_attrs(imp, node, attrs, rank)
    if kernel and list(kernel) != list(w.shape[2:]):
        imp.fail(node, f"kernel_shape {kernel} does not match the weight {w.shape}")
    group = int(attrs.get("group", 1))
    if rank == 1:
        w = w.reshape(w.shape[:2] + (1,) + w.shape[2:])
        strides, dilations = _as_2d(strides, 1), _as_2d(dilations, 1)
        pads = [0, pads[0], 0, pads[1]]
    else:
        pads = [pads[0], pads[1], pads[2], pads[3]]
    conv = nn.Conv2d(w.shape[1] * group, w.shape[0], w.shape[2:], stride=tuple(strides), dilation=tuple(dilations),
                     groups=group, bias=b is not None, dtype=w.dtype)
    conv.params["weight"][...] = w
    if b is not None:
        if b.shape != (w.shape[0],):
            imp.fail(node, f"bias shape {b.shape} does not match {w.shape[0]} output channels")
        conv.params["bias"][...] = b
    t, l, bottom, r = pads
    if auto_pad is not None:
        module = nn.Sequential(pad=Pad2d(auto=(auto_pad, tuple(w.shape[2:]), tuple(strides), tuple(dilations))),
                               conv=conv)
    elif t == bottom and l == r:
        conv.padding = (t, l)
        module = conv
    else:
        module = nn.Sequential(pad=Pad2d((t, l, bottom, r)), conv=conv)
    return (Spatial1d(module) if rank == 1 else module), [x]


def _convert_pool(imp, node, attrs):
    x = imp.data_input(node)
    kind = "max" if node.op_type == "MaxPool" else "avg"
    kernel = list(attrs.get("kernel_shape", []))
    rank = len(kernel)
    if rank not in (1, 2):
        imp.fail(node, f"{rank}-D pooling is not supported; fastconv pools 1-D and 2-D")
    kernel, strides, pads, _, auto_pad = _spatial_attrs(imp, node, attrs, rank, with_dilations=False)
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    include = bool(attrs.get("count_include_pad", 0))
    if rank == 1:
        kernel, strides, pads = _as_2d(kernel, 1), _as_2d(strides, 1), [0, pads[0], 0, pads[1]]
    t, l, b, r = pads
    if any(p >= k for p, k in zip((t, l, b, r), kernel * 2)):
        imp.fail(node, f"pads {pads} must be smaller than the kernel {kernel}")
    if auto_pad is None and t == b and l == r and t <= kernel[0] // 2 and l <= kernel[1] // 2:
        if kind == "max":
            module = nn.MaxPool2d(tuple(kernel), tuple(strides), (t, l), ceil_mode)
        else:
            module = nn.AvgPool2d(tuple(kernel), tuple(strides), (t, l), ceil_mode, include)
    else:
        module = Pool2d(kind, kernel, strides, (t, l, b, r), ceil_mode, include, auto_pad)
    return (Spatial1d(module) if rank == 1 else module), [x]


def _convert_gemm(imp, node, attrs):
    a = imp.data_input(node)
    b = imp.float_const(node, 1, "matrix B")
    c = imp.float_const(node, 2, "matrix C", optional=True)
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    if b.ndim != 2:
        imp.fail(node, f"B must be 2-D, got shape {b.shape}")
    weight = b if attrs.get("transB", 0) else b.T
    out_features, in_features = weight.shape
    bias, extra = None, None
    if c is not None:
        c = (beta * c).astype(weight.dtype)
        if c.size == out_features and (c.ndim < 2 or (c.ndim == 2 and c.shape[0] == 1)):
            bias = c.reshape(out_features)
        elif c.size == 1:
            bias = np.full(out_features, c.reshape(-1)[0], dtype=weight.dtype)
        else:
            extra = c
    linear = nn.Linear(in_features, out_features, bias=bias is not None, dtype=weight.dtype)
    np.multiply(weight, weight.dtype.type(alpha), out=linear.params["weight"])
    if bias is not None:
        linear.params["bias"][...] = bias
    layers = {}
    if attrs.get("transA", 0):
        layers["transpose"] = Transpose((1, 0))
    layers["linear"] = linear
    if extra is not None:
        layers["add_c"] = Arithmetic("add", [None, extra], learned=node.input[2] in imp.learned)
    return (linear if len(layers) == 1 else nn.Sequential(**layers)), [a]


def _convert_matmul(imp, node, attrs):
    a = imp.data_input(node)
    b = imp.float_const(node, 1, "second operand")
    if b.ndim != 2:
        imp.fail(node, f"MatMul by a constant of shape {b.shape}: only 2-D constants are supported")
    layer = MatMul(b.shape[0], b.shape[1], bias=False, dtype=b.dtype)
    layer.params["weight"][...] = b.T
    return layer, [a]


def _convert_batchnorm(imp, node, attrs):
    x = imp.data_input(node)
    scale, bias, mean, var = (imp.float_const(node, i, what) for i, what in
                              ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    if attrs.get("spatial", 1) != 1:
        imp.fail(node, "spatial=0 (per-activation statistics) is not supported")
    if attrs.get("training_mode", 0):
        imp.fail(node, "training_mode=1 is not supported (the import is for inference; call .train() on the model)")
    if not scale.shape == bias.shape == mean.shape == var.shape or scale.ndim != 1:
        imp.fail(node, f"scale {scale.shape}, bias {bias.shape}, mean {mean.shape}, var {var.shape} must be equal "
                       f"1-D shapes")
    bn = nn.BatchNorm2d(scale.shape[0], eps=float(attrs.get("epsilon", 1e-5)),
                        momentum=1.0 - float(attrs.get("momentum", 0.9)), dtype=scale.dtype)
    bn.params["weight"][...] = scale
    bn.params["bias"][...] = bias
    bn.buffers["running_mean"][...] = mean
    bn.buffers["running_var"][...] = var
    return bn, [x]


def _convert_lrn(imp, node, attrs):
    size = int(attrs["size"])
    cls = nn.LocalResponseNorm if size % 2 else EvenLRN
    return cls(size, float(attrs.get("alpha", 1e-4)), float(attrs.get("beta", 0.75)),
               float(attrs.get("bias", 1.0))), [imp.data_input(node)]


def _convert_dropout(imp, node, attrs):
    ratio = attrs.get("ratio", 0.5)
    if imp.opset >= 12:
        value = imp.const(node, 1, "ratio", optional=True)
        ratio = 0.5 if value is None else float(value)
    return imp.new_dropout(float(ratio)), [imp.data_input(node)]


def _convert_reshape(imp, node, attrs):
    x = imp.data_input(node)
    shape = attrs.get("shape") if len(node.input) < 2 else imp.const(node, 1, "shape")
    if shape is None:
        imp.fail(node, "no target shape")
    return Reshape("reshape", shape=tuple(int(s) for s in np.asarray(shape).reshape(-1)),
                   allowzero=attrs.get("allowzero", 0)), [x]


def _convert_squeeze(imp, node, attrs):
    x = imp.data_input(node)
    axes = attrs.get("axes")
    if imp.opset >= 13 and len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in imp.const(node, 1, "axes")]
    if node.op_type == "Unsqueeze" and axes is None:
        imp.fail(node, "Unsqueeze without axes")
    return Reshape(node.op_type.lower(), axes=axes), [x]


def _convert_flatten(imp, node, attrs):
    axis = int(attrs.get("axis", 1))
    return (nn.Flatten() if axis == 1 else Reshape("flatten", axis=axis)), [imp.data_input(node)]


def _convert_transpose(imp, node, attrs):
    x = imp.data_input(node)
    perm = attrs.get("perm")
    if perm is None:
        imp.fail(node, "Transpose without perm (reversing axes of unknown rank) is not supported")
    return Transpose(perm), [x]


def _convert_softmax(imp, node, attrs):
    default = 1 if imp.opset < 13 else -1
    cls = Softmax if node.op_type == "Softmax" else LogSoftmax
    return cls(int(attrs.get("axis", default)), coerce_2d=imp.opset < 13), [imp.data_input(node)]


def _convert_concat(imp, node, attrs):
    names = [imp.resolve(i) for i in node.input if i]
    if any(n in imp.consts for n in names):
        imp.fail(node, "Concat of computed tensors with constants is not supported")
    return Concatenate(int(attrs["axis"])), names


def _convert_arith(imp, node, attrs):
    op = {"Add": "add", "Sum": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}[node.op_type]
    names = [imp.resolve(i) for i in node.input if i]
    operands, data, learned = [], [], False
    for name in names:
        if name in imp.consts:
            c = imp.consts[name]
            if imp.opset < 7 and attrs.get("broadcast") and "axis" in attrs and c.size > 1:
                imp.fail(node, "legacy broadcasting along an axis (opset < 7, broadcast=1, axis) is not supported")
            if c.dtype.kind != "f":
                imp.fail(node, f"constant operand {name!r} has dtype {c.dtype}; only float constants are supported")
            operands.append(c)
            learned = learned or name in imp.learned
        else:
            operands.append(None)
            data.append(name)
    return Arithmetic(op, operands, learned=learned), data


def _convert_pad(imp, node, attrs):
    x = imp.data_input(node)
    mode = attrs.get("mode", "constant")
    if mode != "constant":
        imp.fail(node, f"Pad mode {mode!r} is not supported (only 'constant')")
    if imp.opset < 11:
        pads, value = attrs.get("pads", attrs.get("paddings")), float(attrs.get("value", 0.0))
    else:
        pads = imp.const(node, 1, "pads")
        value = imp.const(node, 2, "constant_value", optional=True)
        value = 0.0 if value is None else float(np.asarray(value).reshape(-1)[0])
        if len(node.input) > 3 and node.input[3]:
            imp.fail(node, "Pad with explicit axes is not supported")
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    rank = len(pads) // 2
    begin, end = pads[:rank], pads[rank:]
    if rank < 2 or any(begin[:-2]) or any(end[:-2]) or min(pads) < 0:
        imp.fail(node, f"pads {pads}: only non-negative padding of the last two axes is supported")
    return Pad2d((begin[-2], begin[-1], end[-2], end[-1]), value), [x]


_CONVERT = {
    "Conv": _convert_conv,
    "MaxPool": _convert_pool,
    "AveragePool": _convert_pool,
    "GlobalAveragePool": lambda imp, node, attrs: (nn.GlobalAvgPool2d(), [imp.data_input(node)]),
    "Gemm": _convert_gemm,
    "MatMul": _convert_matmul,
    "Relu": lambda imp, node, attrs: (nn.ReLU(), [imp.data_input(node)]),
    "LRN": _convert_lrn,
    "BatchNormalization": _convert_batchnorm,
    "Dropout": _convert_dropout,
    "Flatten": _convert_flatten,
    "Reshape": _convert_reshape,
    "Squeeze": _convert_squeeze,
    "Unsqueeze": _convert_squeeze,
    "Transpose": _convert_transpose,
    "Concat": _convert_concat,
    "Add": _convert_arith, "Sub": _convert_arith, "Mul": _convert_arith, "Div": _convert_arith,
    "Sum": _convert_arith,
    "Softmax": _convert_softmax,
    "LogSoftmax": _convert_softmax,
    "Pad": _convert_pad,
}


def load_onnx(source, *, seed=None, fill_placeholders=True):
    """Build a fastconv model from an ONNX model.

    Parameters
    ----------
    source : path of a .onnx file (external weight files next to it are read), its bytes, or an
        onnx.ModelProto.
    seed : seeds the values of placeholder weights and the streams of Dropout layers (None: fresh entropy).
    fill_placeholders : replace weights generated by ConstantOfShape (architecture-only files) by seeded random
        values (see materialize_placeholders); False keeps the generators' constant values.

    Returns
    -------
    An nn.Sequential (a chain graph) or a GraphModule, in eval mode, float32 or float64 as the file's weights,
    with ``name`` (the graph's), ``input_shape`` ((C, H, W) when the file declares static sizes),
    ``onnx_opset`` and ``onnx_placeholders`` (names of the weights that were filled).

    Raises OnnxImportError (a ValueError) for a file that is not ONNX (truncated, corrupt) and for operators or
    attributes outside the supported set, naming the file, the node and its operator.
    """
    model, where = _read_model(source)
    filled = _placeholder_values(model, seed) if fill_placeholders else {}
    result = _Importer(model, where, seed, filled).run()
    result.onnx_placeholders = list(filled)
    return result


# =================================================================================================== export

class _Exporter:
    def __init__(self, opset, dtype):
        from onnx import TensorProto
        self.opset = opset
        self.elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
        self.dtype = dtype
        self.nodes, self.initializers, self.used = [], [], set()

    def fresh(self, hint):
        base = hint or "t"
        name, i = base, 1
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name

    def const(self, hint, value):
        from onnx import numpy_helper
        name = self.fresh(hint)
        value = np.asarray(value)  # (ascontiguousarray would turn a 0-d scalar into shape (1,))
        self.initializers.append(numpy_helper.from_array(value if value.flags.c_contiguous else value.copy(), name))
        return name

    def ints(self, hint, values):
        return self.const(hint, np.array(values, dtype=np.int64))

    def add(self, op, inputs, path, **attrs):
        from onnx import helper
        out = self.fresh(path or op)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def fail(self, module, path, why):
        raise ValueError(f"export_onnx: {path or 'the model'} ({type(module).__name__}): {why}")

    # --------------------------------------------------------------------------------------- modules
    def emit(self, m, path, xs, shapes):
        """Nodes computing module `m` on tensors `xs` of `shapes`; returns (output name, output shape)."""
        from .models.googlenet import SideBranch
        x, shape = xs[0], shapes[0]
        sub = (lambda name: f"{path}.{name}" if path else name)
        if isinstance(m, GraphModule):
            outs = self.graph(m, path, xs, shapes)
            if len(outs) != 1:
                self.fail(m, path, "a graph with several outputs can only be exported at the top level")
            return outs[0]
        if isinstance(m, nn.Sequential):
            for name, child in m.children.items():
                if isinstance(child, SideBranch):  # an auxiliary head: training only
                    continue
                x, shape = self.emit(child, sub(name), [x], [shape])
            return x, shape
        if isinstance(m, nn.Concat):
            outs = [self.emit(b, sub(name), [x], [shape]) for name, b in m.children.items()]
            return self.add("Concat", [o[0] for o in outs], path, axis=1), m.output_shape(shape)
        if isinstance(m, nn.Residual):
            y, yshape = self.emit(m.children["body"], sub("body"), [x], [shape])
            s = self.emit(m.children["shortcut"], sub("shortcut"), [x], [shape])[0] if "shortcut" in m.children \
                else x
            return self.add("Add", [y, s], path), yshape
        if isinstance(m, SideBranch):
            return x, shape
        if isinstance(m, Spatial1d):
            axes = [2]
            if self.opset >= 13:
                u = self.add("Unsqueeze", [x, self.ints(sub("axes"), axes)], path)
            else:
                u = self.add("Unsqueeze", [x], path, axes=axes)
            n, c, length = shape
            y, yshape = self.emit(m.children["layer"], sub("layer"), [u], [(n, c, 1, length)])
            if self.opset >= 13:
                y = self.add("Squeeze", [y, self.ints(sub("axes"), axes)], path)
            else:
                y = self.add("Squeeze", [y], path, axes=axes)
            return y, (yshape[0], yshape[1], yshape[3])
        out_shape = m.output_shape(*shapes)
        return self.layer(m, path, xs, shapes, sub), out_shape

    def graph(self, m, path, xs, shapes):
        """Nodes of a GraphModule; returns [(name, shape)] of its outputs."""
        if len(xs) != len(m.inputs):
            self.fail(m, path, f"takes {len(m.inputs)} inputs, given {len(xs)}")
        env = dict(zip(m.inputs, zip(xs, shapes)))
        for name, ins, out in m.nodes:
            env[out] = self.emit(m.children[name], f"{path}.{name}" if path else name, [env[t][0] for t in ins],
                                 [env[t][1] for t in ins])
        return [env[t] for t in m.outputs]

    def rename(self, old, new):
        for n in self.nodes:
            for field in (n.input, n.output):
                for i, t in enumerate(field):
                    if t == old:
                        field[i] = new

    def layer(self, m, path, xs, shapes, sub):
        from .models.alphago import PositionBias
        x, shape = xs[0], shapes[0]
        p = m.params
        if isinstance(m, MatMul):
            return self.add("MatMul", [x, self.const(sub("weight"), p["weight"].T)], path)
        if isinstance(m, nn.Linear):
            ins = [x, self.const(sub("weight"), p["weight"])]
            if "bias" in p:
                ins.append(self.const(sub("bias"), p["bias"]))
            return self.add("Gemm", ins, path, transB=1)
        if isinstance(m, nn.Conv2d):
            ph, pw = F._int_pair(m.padding, "padding")
            ins = [x, self.const(sub("weight"), p["weight"])]
            if "bias" in p:
                ins.append(self.const(sub("bias"), p["bias"]))
            return self.add("Conv", ins, path, kernel_shape=list(m.kernel_size),
                            strides=list(F._int_pair(m.stride, "stride")), pads=[ph, pw, ph, pw],
                            dilations=list(F._int_pair(m.dilation, "dilation")), group=m.groups)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            kernel = F._int_pair(m.kernel_size, "kernel_size")
            stride = kernel if m.stride is None else F._int_pair(m.stride, "stride")
            ph, pw = F._int_pair(m.padding, "padding")
            attrs = dict(kernel_shape=list(kernel), strides=list(stride), pads=[ph, pw, ph, pw],
                         ceil_mode=int(bool(m.ceil_mode)))
            if isinstance(m, nn.AvgPool2d):
                return self.add("AveragePool", [x], path, count_include_pad=int(bool(m.count_include_pad)), **attrs)
            return self.add("MaxPool", [x], path, **attrs)
        if isinstance(m, Pool2d):
            attrs = dict(kernel_shape=list(m.kernel_size), strides=list(m.stride))
            if m.auto_pad:
                attrs["auto_pad"] = m.auto_pad
            else:
                t, l, b, r = m.pads
                attrs.update(pads=[t, l, b, r], ceil_mode=int(m.ceil_mode))
            if m.kind == "avg":
                return self.add("AveragePool", [x], path, count_include_pad=int(m.count_include_pad), **attrs)
            return self.add("MaxPool", [x], path, **attrs)
        if isinstance(m, nn.GlobalAvgPool2d):
            return self.add("GlobalAveragePool", [x], path)
        if isinstance(m, nn.BatchNorm2d):
            ins = [x] + [self.const(sub(k), v) for k, v in (("weight", p["weight"]), ("bias", p["bias"]),
                                                            ("running_mean", m.buffers["running_mean"]),
                                                            ("running_var", m.buffers["running_var"]))]
            return self.add("BatchNormalization", ins, path, epsilon=float(m.eps), momentum=1.0 - float(m.momentum))
        if isinstance(m, nn.LocalResponseNorm):
            if m.size % 2 == 0 and not isinstance(m, EvenLRN):
                self.fail(m, path, f"an even window (size={m.size}) is centered differently in ONNX's LRN")
            return self.add("LRN", [x], path, size=int(m.size), alpha=float(m.alpha), beta=float(m.beta),
                            bias=float(m.k))
        if isinstance(m, nn.ReLU):
            return self.add("Relu", [x], path)
        if isinstance(m, nn.Dropout):
            if self.opset >= 12:
                return self.add("Dropout", [x, self.const(sub("ratio"), np.array(m.p, dtype=self.dtype))], path)
            return self.add("Dropout", [x], path, ratio=float(m.p))
        if isinstance(m, nn.Flatten):
            return self.add("Flatten", [x], path, axis=1)
        if isinstance(m, (nn.Softmax, Softmax)):
            return self.softmax(m, path, x, shape, sub)
        if isinstance(m, Pad2d):
            t, l, b, r = m.resolve(shape)
            zeros = [0] * (len(shape) - 2)
            pads = zeros + [t, l] + zeros + [b, r]
            value = np.array(m.value, dtype=self.dtype)
            if self.opset >= 11:
                return self.add("Pad", [x, self.ints(sub("pads"), pads), self.const(sub("value"), value)], path,
                                mode="constant")
            return self.add("Pad", [x], path, pads=pads, value=float(m.value), mode="constant")
        if isinstance(m, Reshape):
            if m.kind == "reshape":
                attrs = {"allowzero": 1} if m.allowzero and self.opset >= 14 else {}
                return self.add("Reshape", [x, self.ints(sub("shape"), m.shape)], path, **attrs)
            if m.kind == "flatten":
                return self.add("Flatten", [x], path, axis=m.axis)
            op = "Squeeze" if m.kind == "squeeze" else "Unsqueeze"
            if m.axes is None:
                return self.add(op, [x], path)
            if self.opset >= 13:
                return self.add(op, [x, self.ints(sub("axes"), m.axes)], path)
            return self.add(op, [x], path, axes=m.axes)
        if isinstance(m, Transpose):
            return self.add("Transpose", [x], path, perm=list(m.perm))
        if isinstance(m, Arithmetic):
            data = iter(xs)
            ins = [next(data) if s is None else self.const(sub(s), m._constant(s)) for s in m.slots]
            op = {"add": "Add" if len(ins) == 2 else "Sum", "sub": "Sub", "mul": "Mul", "div": "Div"}[m.op]
            if len(ins) == 1:
                return self.add("Identity", ins, path)
            return self.add(op, ins, path)
        if isinstance(m, Concatenate):
            return self.add("Concat", list(xs), path, axis=m.axis)
        if isinstance(m, PositionBias):
            return self.add("Add", [x, self.const(sub("bias"), p["bias"])], path)
        self.fail(m, path, "no ONNX translation for this module type")

    def softmax(self, m, path, x, shape, sub):
        op = "LogSoftmax" if isinstance(m, Softmax) and m.log else "Softmax"
        axis, coerce = (1, False) if isinstance(m, nn.Softmax) else (m.axis, m.coerce_2d)
        rank = len(shape)
        last = axis % rank == rank - 1
        if coerce == (self.opset < 13) or last or (rank == 2 and axis % rank == 1):
            return self.add(op, [x], path, axis=axis)
        if self.opset < 13:
            self.fail(m, path, f"softmax along axis {axis} of a rank-{rank} input needs opset >= 13")
        # softmax over all axes from `axis` on, at opset >= 13: flatten, softmax the rows, restore the shape
        dims = self.add("Shape", [x], path)
        flat = self.add("Flatten", [x], path, axis=axis)
        y = self.add(op, [flat], path, axis=1)
        return self.add("Reshape", [y, dims], path)


def export_onnx(model, path, input_shape, opset=17):
    """Write `model` (a fastconv.nn module tree or an imported GraphModule) as an ONNX inference graph.

    Parameters
    ----------
    model : Sequential / Concat / Residual containers of Conv2d, Linear, MaxPool2d, AvgPool2d, GlobalAvgPool2d,
        BatchNorm2d/1d (running statistics), LocalResponseNorm (odd sizes), ReLU, Dropout, Flatten, Softmax,
        every model of fastconv.models (GoogLeNet's auxiliary heads are left out, as in eval), or what load_onnx
        returns. Parameters are copied as initializers; float32 models give FLOAT graphs, float64 DOUBLE.
    path : file to write, or None to only return the ModelProto.
    input_shape : (N, C, H, W) (or the rank the model takes) used to check the model and size declared outputs;
        the batch axis is written as the symbolic size "N".
    opset : ONNX operator set version, 11 or newer.

    Returns the onnx.ModelProto (checked with onnx.checker). Raises ValueError naming the module path for
    a module it cannot translate.
    """
    onnx = _require_onnx()
    from onnx import helper
    latest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, (int, np.integer)) or not 11 <= opset <= latest:
        raise ValueError(f"opset must be an int in [11, {latest}], got {opset!r}")
    input_shape = tuple(int(s) for s in input_shape)
    dtypes = {p.dtype for _, p, _, _, _ in model.named_parameters()} or {np.dtype(np.float32)}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (np.float32, np.float64):
        raise ValueError(f"export_onnx: the model's parameters must all be float32 or all float64, got "
                         f"{sorted(map(str, dtypes))}")
    dtype = next(iter(dtypes)).type
    ex = _Exporter(int(opset), dtype)
    try:
        out_shapes = model.output_shape(input_shape)
    except ValueError as e:
        raise ValueError(f"export_onnx: the model does not take input {input_shape}: {e}") from None
    count = len(model.outputs) if isinstance(model, GraphModule) else 1
    names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    ex.used.update(["input"] + names)
    if isinstance(model, GraphModule):
        results = ex.graph(model, "", ["input"], [input_shape])
        out_shapes = (out_shapes,) if count == 1 else out_shapes
    else:
        results, out_shapes = [ex.emit(model, "", ["input"], [input_shape])], (out_shapes,)
    written = {}
    for (y, _), name in zip(results, names):
        if y == "input" or y in written:  # the input itself, or a tensor already written as another output
            ex.nodes.append(helper.make_node("Identity", [written.get(y, y)], [name], name=ex.fresh(name)))
        else:
            ex.rename(y, name)
            written[y] = name

    def info(name, shape):
        dims = ["N"] + list(shape[1:]) if len(shape) else []
        return helper.make_tensor_value_info(name, ex.elem, dims)

    graph = helper.make_graph(ex.nodes, getattr(model, "name", None) or "fastconv", [info("input", input_shape)],
                              [info(n, s) for n, s in zip(names, out_shapes)], initializer=ex.initializers)
    opsets = [helper.make_opsetid("", int(opset))]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="fastconv")
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto
