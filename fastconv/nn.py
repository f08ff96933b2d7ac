"""Modules with an explicit forward and backward, Caffe / Torch7 `nn` style.

A model is a tree of modules. ``forward(x)`` computes the output and caches what backward needs;
``backward(dy)`` takes the gradient of the loss with respect to that output, *accumulates* the gradients of the
module's parameters into ``grads`` and returns the gradient with respect to the input. There is no tape and no
graph: containers call their children in order (forward) and in reverse (backward).

Every module holds
  params    dict name -> ndarray, its own parameters (children hold theirs)
  grads     dict with the same keys, same shapes
  buffers   dict of non-trained state saved with the model (BatchNorm's running statistics)
  children  dict name -> Module, in forward order
  frozen    set of own parameter names that are neither given gradients nor updated
and the flag ``need_input_grad``: when False, backward skips the input gradient and returns None (the first layer
of a network never needs it during training).

Inference: inside ``with fastconv.no_grad():`` forward keeps nothing for backward, and containers fuse layers into
the convolution kernels' epilogue (each output written once, while it is in cache): a Conv2d with the eval-mode
BatchNorm2d and the ReLU after it, a Residual's add and the ReLU after it into the body's last convolution, and
each inception branch of a Concat writing its own channels of the output; other ReLUs run in place on arrays
made there.
"""
import threading

import numpy as np

from . import _C
from . import functional as F

_grad_state = threading.local()


_structure_version = [0]  # counts changes to any module's params, buffers or children (inference plans re-record)


class _TrackedDict(dict):
    """A module's params, buffers or children: a plain dict that counts its changes, so that a recorded inference
    plan notices a parameter or child put in behind it."""
    __slots__ = ()

    def __setitem__(self, key, value):
        _structure_version[0] += 1
        dict.__setitem__(self, key, value)

    def __delitem__(self, key):
        _structure_version[0] += 1
        dict.__delitem__(self, key)

    def pop(self, *args):
        _structure_version[0] += 1
        return dict.pop(self, *args)

    def popitem(self):
        _structure_version[0] += 1
        return dict.popitem(self)

    def clear(self):
        _structure_version[0] += 1
        dict.clear(self)

    def update(self, *args, **kwargs):
        _structure_version[0] += 1
        dict.update(self, *args, **kwargs)

    def setdefault(self, key, default=None):
        _structure_version[0] += 1
        return dict.setdefault(self, key, default)

    def __ior__(self, other):
        _structure_version[0] += 1
        return dict.__ior__(self, other)


def is_grad_enabled():
    """False inside ``no_grad()`` (per thread)."""
    return getattr(_grad_state, "enabled", True)


class no_grad:
    """Context manager for inference: forward passes inside it keep nothing for backward (a backward after one
    raises RuntimeError) and may fuse layers (see the module docstring); results equal a plain forward up to
    rounding. Per thread, nestable, restored on exit, like torch.no_grad."""

    def __enter__(self):
        self._previous = is_grad_enabled()
        _grad_state.enabled = False
        return self

    def __exit__(self, *exc_info):
        _grad_state.enabled = self._previous
        return False


def _zero(a):
    """a[...] = 0, over the threads for a contiguous array (a fully connected layer's gradient is 150 MB)."""
    if a.flags.c_contiguous and a.flags.writeable:
        _C.zero_fill(a)
    else:
        a[...] = 0


_grad_forwards = [0]  # forwards that kept something for backward: inference plans then re-mark their modules


def _keep_for_backward(module, **saved):
    """Store what backward needs, or (inside no_grad) a marker that makes backward raise."""
    if is_grad_enabled():
        _grad_forwards[0] += 1
        module._no_grad_forward = False
        for name, value in saved.items():
            setattr(module, name, value)
    else:
        module._no_grad_forward = True
        for name in saved:
            setattr(module, name, None)


def _check_kept(module):
    if getattr(module, "_no_grad_forward", False):
        raise RuntimeError(f"{type(module).__name__}.backward: the last forward ran inside fastconv.no_grad() and "
                           f"kept nothing for backward; run forward outside it")


class Module:
    """Base class: holds parameters, gradients, buffers and children; subclasses write forward and backward."""

    def __init__(self):
        self.params = _TrackedDict()
        self.grads = {}
        self.buffers = _TrackedDict()
        self.children = _TrackedDict()
        self.frozen = set()
        self.training = True
        self.need_input_grad = True

    # --------------------------------------------------------------- the two methods every layer writes
    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, x):
        return self.forward(x)

    def output_shape(self, input_shape):
        """Shape of forward's output for an input of `input_shape`, computed without running anything (the
        analyzer propagates shapes through a model with it). Shape-preserving layers keep this default."""
        return tuple(input_shape)

    # --------------------------------------------------------------- parameters
    def add_param(self, name, value):
        """Register a parameter (and its zeroed gradient)."""
        self.params[name] = value
        # np.zeros (calloc) rather than zeros_like: untouched gradient pages cost no memory until written, so a
        # large model built only to be analyzed stays cheap
        self.grads[name] = np.zeros(value.shape, dtype=value.dtype)
        return value

    def add_child(self, name, module):
        if not isinstance(module, Module):
            raise TypeError(f"child {name!r} must be a fastconv.nn.Module, got {type(module).__name__}")
        self.children[str(name)] = module
        return module

    def trainable(self, name):
        """Whether own parameter `name` gets gradients."""
        return name not in self.frozen

    def named_modules(self, prefix=""):
        """(dotted name, module) for this module and every descendant, in forward order."""
        yield prefix, self
        for name, child in self.children.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, include_frozen=True):
        """(dotted name, param, grad, owning module, own name) for every parameter of the tree."""
        for mname, m in self.named_modules():
            for pname, p in m.params.items():
                if include_frozen or m.trainable(pname):
                    yield (f"{mname}.{pname}" if mname else pname), p, m.grads[pname], m, pname

    def parameters(self):
        """Trainable parameters as (dotted name, param, grad) triples."""
        return [(n, p, g) for n, p, g, _, _ in self.named_parameters(include_frozen=False)]

    def num_parameters(self, trainable_only=False):
        return sum(p.size for _, p, _, _, _ in self.named_parameters(include_frozen=not trainable_only))

    def zero_grad(self):
        for _, m in self.named_modules():
            for g in m.grads.values():
                _zero(g)

    def freeze(self, names=None):
        """Freeze this module's parameters (all of them, recursively, when `names` is None; else the own
        parameters named). Frozen parameters get no gradient and no update."""
        if names is None:
            for _, m in self.named_modules():
                m.frozen.update(m.params)
        else:
            for n in [names] if isinstance(names, str) else names:
                if n not in self.params:
                    raise KeyError(f"{type(self).__name__} has no parameter {n!r}; it has {sorted(self.params)}")
                self.frozen.add(n)
        return self

    def unfreeze(self):
        for _, m in self.named_modules():
            m.frozen.clear()
        return self

    def has_trainable(self):
        return any(True for _ in self.named_parameters(include_frozen=False))

    def train(self, mode=True):
        """Training mode (mode=True; also ends prepare_inference) or evaluation mode."""
        if mode:
            self.release_inference()
        for _, m in self.named_modules():
            m.training = bool(mode)
        return self

    def prepare_inference(self):
        """Evaluation mode, with each convolution's weights prepared once for repeated inference, as an
        inference session does when it loads a model: a layer transforms its weights for Winograd (or packs them
        for the GEMM) at its first forward under ``no_grad()`` and reuses them while the input's channels, width,
        arch and tile setting stay the same, instead of on every call (about 10 % of VGG-16's forward at batch
        1). Results are identical. The parameters become read-only meanwhile, so nothing changes them
        behind the prepared copies (an in-place write raises ValueError), and so do the buffers (batch-norm's
        running statistics, folded into the convolutions); ``train()``, ``release_inference()``,
        ``load_state_dict`` and ``astype`` make them writable again and drop the copies. Memory: up to 4x the
        convolutions' weights, twice that while a model alternates two input shapes (each layer keeps its copy
        for the previous shape too).

        A Sequential model called inside ``no_grad()`` also records an inference plan per input shape at its first
        call: the kernel calls of that forward, replayed from then on in one loop without the Python between them
        (LeNet-5 at batch 1 spends 85 % of a forward there), into a new output array each call. The plan keeps
        that forward's activations (it is only made when they take at most ``INFERENCE_PLAN_MAX_BYTES``) and is
        only kept when a replay over poisoned buffers gives the recorded result bit for bit; otherwise, and for
        inputs that are not C-contiguous, the layers run one by one as before. Replacing a parameter, buffer or
        child re-records; change a layer's settings (stride, padding, mode) after ``release_inference()``.
        On more than one thread, a network with at most ``INFERENCE_SPLIT_MAX_WEIGHTS`` weights records a batch
        that the thread count divides as one plan per thread, each over its share of the images with one-thread
        kernels, replayed side by side (LeNet-5 at batch 8 on 2 threads: 1.27x); each image then gets the bits of
        the one-thread forward of its share, which may differ from the whole batch's in the last bits.
        Returns self."""
        self.eval()
        for _, m in self.named_modules():
            if not m.__dict__.get("_inference_prepared", False):
                m._inference_prepared = True
                m._locked_params = [p for p in list(m.params.values()) + list(m.buffers.values())
                                    if isinstance(p, np.ndarray) and p.flags.writeable]
                for p in m._locked_params:
                    p.flags.writeable = False
        return self

    def _lock_for_inference(self, w):
        """A weight array put in after prepare_inference, about to be prepared: read-only like the others until
        release_inference."""
        if w.flags.writeable:
            w.flags.writeable = False
            self._locked_params.append(w)

    def _prepared_for(self, w, key, make):
        """prepare_inference's copy of weight array w, make()'s result: made again when w (the array itself) or
        key (what else it depends on) changes; w stays read-only meanwhile."""
        cached = self.__dict__.get("_prepared")
        if cached is None or cached[0] is not w or cached[1] != key:
            # the copy before is kept too: a model that alternates two batch sizes (a last partial batch), whose
            # Winograd tile depends on the batch, does not prepare again at every switch
            other, self._prepared_other = self.__dict__.get("_prepared_other"), cached
            if other is not None and other[0] is w and other[1] == key:
                cached = other
            else:
                self._lock_for_inference(w)
                cached = (w, key, make())
            self._prepared = cached
        return cached[2]

    def release_inference(self):
        """Undo prepare_inference: drop the prepared weights and make the parameters writable again (the mode
        stays as it is). Returns self."""
        _structure_version[0] += 1  # recorded plans above this module see it change
        for _, m in self.named_modules():
            m.__dict__.pop("_plans", None)
            if m.__dict__.pop("_inference_prepared", False):
                for p in m.__dict__.pop("_locked_params", []):
                    p.flags.writeable = True
                m.__dict__.pop("_prepared", None)
                m.__dict__.pop("_prepared_other", None)
        return self

    def eval(self):
        return self.train(False)

    def astype(self, dtype):
        """Convert every parameter, gradient and floating buffer to `dtype` (float32 or float64), in place."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"modules hold float32 or float64, not {dtype}")
        self.release_inference()
        for _, m in self.named_modules():
            for k in m.params:
                m.params[k] = m.params[k].astype(dtype)
                m.grads[k] = m.grads[k].astype(dtype)
            for k, b in m.buffers.items():
                if b.dtype.kind == "f":
                    m.buffers[k] = b.astype(dtype)
        return self

    # --------------------------------------------------------------- saving
    def state_dict(self):
        """Copies of every parameter and buffer, keyed by dotted name."""
        state = {}
        for mname, m in self.named_modules():
            for k, v in list(m.params.items()) + list(m.buffers.items()):
                state[f"{mname}.{k}" if mname else k] = np.array(v, copy=True)
        return state

    def load_state_dict(self, state, strict=True):
        """Copy arrays from `state` into the parameters and buffers, checking names and shapes.

        With strict=True a missing or unexpected key is a KeyError; a shape mismatch is always a ValueError.
        Values are cast to each parameter's dtype. Ends prepare_inference (the weights change).
        """
        self.release_inference()
        targets = {}
        for mname, m in self.named_modules():
            for store in (m.params, m.buffers):
                for k in store:
                    targets[f"{mname}.{k}" if mname else k] = (store, k)
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets))
        if strict and (missing or unexpected):
            raise KeyError(f"state_dict mismatch: missing {missing[:10]}{'...' if len(missing) > 10 else ''}, "
                           f"unexpected {unexpected[:10]}{'...' if len(unexpected) > 10 else ''}")
        for name, (store, k) in targets.items():
            if name not in state:
                continue
            value = np.asarray(state[name])
            if value.shape != store[k].shape:
                raise ValueError(f"{name}: checkpoint shape {value.shape} does not match the model's "
                                 f"{store[k].shape}")
            store[k][...] = value
        return self

    # --------------------------------------------------------------- printing
    def extra_repr(self):
        return ""

    def __repr__(self):
        head = f"{type(self).__name__}({self.extra_repr()})"
        if not self.children:
            return head
        lines = [f"{type(self).__name__}("]
        for name, child in self.children.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        lines.append(")")
        return "\n".join(lines)


def _check_dtype(x, module):
    """A float32 input into a float64 model (or the reverse) is a clear error, never a silent cast."""
    for name, p in module.params.items():
        if p.dtype != x.dtype:
            raise TypeError(f"{type(module).__name__}: input dtype {x.dtype} differs from parameter {name!r} dtype "
                            f"{p.dtype}; convert the model with .astype({x.dtype}) or the input")


# ------------------------------------------------------------------------------------------------- layers

class Conv2d(Module):
    """2-D convolution. weight (out, in/groups, kh, kw), bias (out,). Initialized with He (Kaiming) normal
    unless `rng` is None, in which case weights are zeros (fill them with fastconv.init)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, rng=None, dtype=np.float32):
        super().__init__()
        kh, kw = F._int_pair(kernel_size, "kernel_size", 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = (kh, kw), stride, padding
        self.dilation, self.groups = dilation, groups
        w = np.zeros((out_channels, in_channels // groups, kh, kw), dtype=dtype)
        if rng is not None:
            from .init import kaiming_normal
            kaiming_normal(w, rng)
        self.add_param("weight", w)
        if bias:
            self.add_param("bias", np.zeros(out_channels, dtype=dtype))

    def forward(self, x, relu=False):
        """The convolution of x; relu: max(., 0) of it, in the same pass over the output (a Sequential fuses a
        Conv2d with the ReLU after it so)."""
        if not is_grad_enabled() and self.__dict__.get("_inference_prepared", False):
            return self.forward_inference(x, relu=relu)
        _check_dtype(x, self)
        _keep_for_backward(self, _x=x)
        return F.conv2d(x, self.params["weight"], self.params.get("bias"), self.stride, self.padding,
                        self.dilation, self.groups, relu=relu)

    def _prepared_weights(self, x):
        """prepare_inference's copy of the weights for input x: made again when the weight array, the input's
        shape (bar the batch), the arch or the Winograd settings change, or the Winograd tile a 3x3 layer takes
        (which depends on its count of tiles, so on the batch)."""
        w = self.params["weight"]
        if self.kernel_size == (3, 3) and F._int_pair(self.stride, "stride", 1) == (1, 1) and \
                F._int_pair(self.dilation, "dilation", 1) == (1, 1):
            tile = _C.conv2d_winograd_tiles(x.shape, w.shape, F._int_pair(self.padding, "padding", 0),
                                            self.groups)[0]
        else:
            tile = _C.conv2d_winograd_tile()
        key = (x.shape[1:], x.dtype, _C.current_arch(), _C.conv2d_winograd_mode(), tile)
        return self._prepared_for(w, key, lambda: F.conv2d_prepare_weights(w, x.shape, self.stride, self.padding,
                                                                           self.dilation, self.groups))

    def forward_inference(self, x, bn=None, residual=None, relu=False, out=None, pool_input=False):
        """Inference: this convolution, then `bn` (a BatchNorm2d in eval mode, or None), + `residual` (None or an
        array of the output's shape), then ReLU when `relu`, as one convolution writing its output once. The
        batch-norm folds into the output: the convolution's channels scaled by s = gamma / sqrt(running_var + eps)
        in the kernel's epilogue (no scaled copy of the weights: ResNet-50's would cost 16 ms per forward), the
        bias (b - running_mean) s + beta. `out`: where to write (F.conv2d's). `pool_input`: convolve
        max_pool2d(x, 3, 1, 1) instead of x (F.conv2d_pooled). Keeps nothing for backward."""
        _check_dtype(x, self)
        self._x = None
        self._no_grad_forward = True
        w, bias, scale = self.params["weight"], self.params.get("bias"), None
        if bn is not None:
            scale = bn.params["weight"] / np.sqrt(bn.buffers["running_var"] + bn.eps)
            shift = (0 if bias is None else bias) - bn.buffers["running_mean"]
            bias = (shift * scale + bn.params["bias"]).astype(w.dtype, copy=False)
            scale = scale.astype(w.dtype, copy=False)
        prepared = self._prepared_weights(x) if self.__dict__.get("_inference_prepared", False) else None
        conv = F.conv2d_pooled if pool_input else F.conv2d
        return conv(x, w, bias, self.stride, self.padding, self.dilation, self.groups, scale=scale,
                    residual=residual, relu=relu, out=out, prepared=prepared)

    def backward(self, dy):
        _check_kept(self)
        has_bias = "bias" in self.params
        dx, dw, db = F.conv2d_backward(dy, self._x, self.params["weight"], self.stride, self.padding,
                                       self.dilation, self.groups, need_input_grad=self.need_input_grad,
                                       need_weight_grad=self.trainable("weight"),
                                       need_bias_grad=has_bias and self.trainable("bias"))
        if dw is not None:
            self.grads["weight"] += dw
        if db is not None:
            self.grads["bias"] += db
        return dx

    def output_shape(self, input_shape):
        n, c, h, w = input_shape
        if c != self.in_channels:
            raise ValueError(f"Conv2d({self.in_channels}, ...) got {c} input channels (input {tuple(input_shape)})")
        (sh, sw), (ph, pw), (dh, dw) = (F._int_pair(v, name, lo) for v, name, lo in (
            (self.stride, "stride", 1), (self.padding, "padding", 0), (self.dilation, "dilation", 1)))
        kh, kw = self.kernel_size
        oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"Conv2d kernel {self.kernel_size} does not fit input {tuple(input_shape)}")
        return (n, self.out_channels, oh, ow)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != 0:
            s += f", padding={self.padding}"
        if self.dilation != 1:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if "bias" not in self.params:
            s += ", bias=False"
        return s


class Linear(Module):
    """Fully connected layer y = x W^T + b; weight (out, in), bias (out,)."""

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        w = np.zeros((out_features, in_features), dtype=dtype)
        if rng is not None:
            from .init import kaiming_normal
            kaiming_normal(w, rng)
        self.add_param("weight", w)
        if bias:
            self.add_param("bias", np.zeros(out_features, dtype=dtype))

    def forward(self, x):
        _check_dtype(x, self)
        if x.ndim != 2:
            raise ValueError(f"Linear expects (N, {self.in_features}) input, got shape {x.shape}; "
                             f"put a Flatten before it")
        _keep_for_backward(self, _x=x)
        return F.linear(x, self.params["weight"], self.params.get("bias"))

    def forward_inference(self, x, relu=False):
        """Inference: this layer, then ReLU when `relu`, as one call writing its output once. Keeps nothing for
        backward. Under prepare_inference a layer of fewer than PREPARED_MAX_WEIGHTS weights runs as the dense
        convolution it equals, on weights packed once (F.linear packs them on every call: 3.6 of LeNet-5's 27 us
        at batch 1), with the same bits: both sum on the same GEMM panels, then add the bias."""
        _check_dtype(x, self)
        if x.ndim != 2:
            raise ValueError(f"Linear expects (N, {self.in_features}) input, got shape {x.shape}; "
                             f"put a Flatten before it")
        _keep_for_backward(self, _x=None)
        w, b = self.params["weight"], self.params.get("bias")
        if not self.__dict__.get("_inference_prepared", False) or w.size >= self.PREPARED_MAX_WEIGHTS or \
                not x.flags.c_contiguous or not w.flags.c_contiguous:
            return F.linear(x, w, b, relu=relu)
        w4 = w.reshape(w.shape + (1, 1))
        prepared = self._prepared_for(w, (x.shape[1], x.dtype, _C.current_arch()),
                                      lambda: F.conv2d_prepare_weights(w4, (1, x.shape[1], 1, 1)))
        y = F.conv2d(x.reshape(x.shape + (1, 1)), w4, b, relu=relu, prepared=prepared)
        return y.reshape(y.shape[:2])

    # below this many weights F.linear packs them for the GEMM at every batch size (the dot products take larger
    # ones at small batches: gemm.c's FC_GEMM_SMALL_M_DOT_MIN_B), so preparing them changes no bit
    PREPARED_MAX_WEIGHTS = 1 << 16

    def backward(self, dy):
        _check_kept(self)
        w = self.params["weight"]
        if dy.shape != (self._x.shape[0], self.out_features) or dy.dtype != w.dtype:
            raise ValueError(f"Linear.backward: dy must be {(self._x.shape[0], self.out_features)} {w.dtype}, got "
                             f"{dy.shape} {dy.dtype}")
        if self.trainable("weight"):
            # dW += dy^T x straight into the gradient: for AlexNet's FC6 (4096 x 9216) a separate dW and an add
            # would cost two more passes over 150 MB per step
            F.gemm(dy, self._x, out=self.grads["weight"], trans_a=True, beta=1.0)
        if "bias" in self.params and self.trainable("bias"):
            self.grads["bias"] += dy.sum(axis=0)
        return F.gemm(dy, w) if self.need_input_grad else None

    def output_shape(self, input_shape):
        if len(input_shape) != 2 or input_shape[1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, ...) got input {tuple(input_shape)}")
        return (input_shape[0], self.out_features)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}" + ("" if "bias" in self.params else ", bias=False")


def _pool_output_shape(input_shape, kernel_size, stride, padding, ceil_mode):
    """Pooling output shape (PyTorch's rounding), from the same checked geometry the kernels use."""
    n, c = input_shape[:2]
    (oh, ow) = F._pool_geometry("pooling", input_shape, kernel_size, stride, padding, ceil_mode)[3]
    return (n, c, oh, ow)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.ceil_mode = kernel_size, stride, padding, ceil_mode

    def output_shape(self, input_shape):
        return _pool_output_shape(input_shape, self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def forward(self, x):
        if not is_grad_enabled():  # inference: no indices to keep
            _keep_for_backward(self, _argmax=None, _shape=None)
            return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, indices=False)
        y, argmax = F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)
        _keep_for_backward(self, _argmax=argmax, _shape=x.shape)
        return y

    def backward(self, dy):
        _check_kept(self)
        if not self.need_input_grad:
            return None
        return F.max_pool2d_backward(dy, self._argmax, self._shape)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride or self.kernel_size}, "
                f"padding={self.padding}" + (", ceil_mode=True" if self.ceil_mode else ""))


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def output_shape(self, input_shape):
        return _pool_output_shape(input_shape, self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def forward(self, x):
        self._shape = x.shape
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        return F.avg_pool2d_backward(dy, self._shape, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                     self.count_include_pad)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride or self.kernel_size}, padding={self.padding}"


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C, 1, 1) mean over the spatial positions."""

    def output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], 1, 1)

    def forward(self, x):
        self._shape = x.shape
        return F.global_avg_pool2d(x)

    def backward(self, dy):
        return F.global_avg_pool2d_backward(dy, self._shape) if self.need_input_grad else None


class BatchNorm2d(Module):
    """Batch normalization over (N, H, W) per channel (BatchNorm1d: over N for (N, C) input).

    Training uses batch statistics and updates running_mean/running_var (momentum, unbiased variance, as
    PyTorch); eval uses the running statistics."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.add_param("weight", np.ones(num_features, dtype=dtype))
        self.add_param("bias", np.zeros(num_features, dtype=dtype))
        self.buffers["running_mean"] = np.zeros(num_features, dtype=dtype)
        self.buffers["running_var"] = np.ones(num_features, dtype=dtype)

    def forward(self, x):
        _check_dtype(x, self)
        y, saved = F.batch_norm(x, self.params["weight"], self.params["bias"], self.buffers["running_mean"],
                                self.buffers["running_var"], training=self.training, momentum=self.momentum,
                                eps=self.eps)
        _keep_for_backward(self, _x=x, _saved=saved, _was_training=self.training)
        return y

    def backward(self, dy):
        _check_kept(self)
        dx, dg, db = F.batch_norm_backward(dy, self._x, self.params["weight"], self._saved,
                                           training=self._was_training)
        if self.trainable("weight"):
            self.grads["weight"] += dg
        if self.trainable("bias"):
            self.grads["bias"] += db
        return dx if self.need_input_grad else None

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(BatchNorm2d):
    """BatchNorm for (N, C) input."""


class LocalResponseNorm(Module):
    """Cross-channel LRN (AlexNet), PyTorch's convention: x / (k + alpha/size * sum x^2)^beta."""

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=2.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x):
        self._x = x
        self._y, self._scale = F.lrn(x, self.size, self.alpha, self.beta, self.k)
        return self._y

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        return F.lrn_backward(dy, self._x, self._y, self._scale, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self):
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class ReLU(Module):
    """max(x, 0). `rule` picks the backward: "plain", "guided" (guided backprop) or "deconvnet" (the
    visualization rules of Springenberg et al. and Zeiler & Fergus)."""

    def __init__(self, rule="plain"):
        super().__init__()
        self.rule = rule

    def forward(self, x):
        _keep_for_backward(self, _x=x)
        return F.relu(x)

    def backward(self, dy):
        _check_kept(self)
        return F.relu_backward(dy, self._x, rule=self.rule) if self.need_input_grad else None

    def extra_repr(self):
        return "" if self.rule == "plain" else f"rule={self.rule!r}"


class Dropout(Module):
    """Inverted dropout: in training each unit is zeroed with probability p (the DROP probability, as
    PyTorch) and the survivors scaled by 1/(1-p); identity in eval. `rng`: a numpy Generator or a seed."""

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability p must be in [0, 1), got {p}")
        self.p = p
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def forward(self, x):
        y, self._mask = F.dropout(x, self.p, self.rng, training=self.training)
        return y

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        return dy if self._mask is None else F.dropout_backward(dy, self._mask, self.p)

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Module):
    """(N, ...) -> (N, prod(...))."""

    def output_shape(self, input_shape):
        return (input_shape[0], int(np.prod(input_shape[1:])))

    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._shape) if self.need_input_grad else None


class Softmax(Module):
    """Softmax over axis 1 (class probabilities); backward is the softmax Jacobian-vector product."""

    def forward(self, x):
        self._y = F.softmax(x, axis=1)
        return self._y

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        y = self._y
        return y * (dy - (dy * y).sum(axis=1, keepdims=True))


def _relu_in_place(x):
    """max(x, 0) written over x, an array made by a layer (NaN stays NaN)."""
    if x.flags.c_contiguous and x.dtype.char in "fd":
        flat = x.reshape(-1)
        _C.relu_forward(flat, flat)
        return x
    return np.maximum(x, 0, out=x)


# ------------------------------------------------------------------------------------------------- containers

class Sequential(Module):
    """Children run one after the other. Backward stops early once everything before a layer is frozen and
    the input gradient is not needed (a frozen feature extractor costs no backward at all)."""

    def __init__(self, *layers, **named_layers):
        super().__init__()
        for i, layer in enumerate(layers):
            self.add_child(str(i), layer)
        for name, layer in named_layers.items():
            self.add_child(name, layer)

    def forward(self, x):
        if not is_grad_enabled() and self.__dict__.get("_inference_prepared", False):
            y = _planned_forward(self, x)
            if y is not None:
                return y
        return self._forward_layers(x)

    def _forward_layers(self, x):
        # arrays made inside come from fastconv's array cache: a network's activations reuse the blocks of the
        # previous call instead of faulting in fresh pages (fastconv.array_cache_info)
        previous = _C.array_cache_enter()
        try:
            if not is_grad_enabled():
                return self._forward_fused(x)
            layers, i = list(self.children.values()), 0
            while i < len(layers):
                layer = layers[i]
                if type(layer) is Conv2d and i + 1 < len(layers) and type(layers[i + 1]) is ReLU and \
                        "forward" not in layer.__dict__ and "forward" not in layers[i + 1].__dict__:
                    # the ReLU in the convolution's epilogue: one pass over the output fewer. The ReLU's backward
                    # gates on its output, which is > 0 exactly where its input is (NaN stays NaN in both). Not
                    # where a forward was replaced on the instance (extract_features captures a layer's output)
                    x = layer.forward(x, relu=True)
                    _keep_for_backward(layers[i + 1], _x=x)
                    i += 2
                else:
                    x, i = layer.forward(x), i + 1
            return x
        finally:
            _C.array_cache_exit(previous)

    def _forward_fused(self, x, residual=None, relu=False, out=None, start=0):
        """Inference (inside no_grad): a Conv2d, the eval-mode BatchNorm2d and the ReLU after it run as one
        convolution (Conv2d.forward_inference), as does a Residual and the ReLU after it; another ReLU applies in
        place when its input is an array made here (not this container's input or a view of it).

        `residual` and `relu` (a Residual's shortcut and the ReLU after it) apply to the output, fused into the
        last convolution when this container ends with one. `out` (a slice of a Concat's output): where the result
        goes, written by the last convolution when it can. `start`: the layers before it already ran (a Concat ran
        them for several branches at once)."""
        layers, given, i, fresh, pooled = list(self.children.values()), x, start, False, False
        while i < len(layers):
            layer = layers[i]
            if type(layer) is MaxPool2d and x.ndim == 4 and i + 1 < len(layers) and _pool3_then_pointwise(
                    layer, layers[i + 1]):
                # an inception pool branch: the convolution pools its input itself (F.conv2d_pooled)
                _keep_for_backward(layer, _argmax=None, _shape=None)
                i, pooled = i + 1, True
            elif type(layer) is Conv2d and x.ndim == 4:
                j = i + 1
                bn = layers[j] if j < len(layers) and type(layers[j]) is BatchNorm2d and not layers[j].training \
                    else None
                j += bn is not None
                with_relu = j < len(layers) and type(layers[j]) is ReLU
                j += with_relu
                if with_relu:
                    _keep_for_backward(layers[j - 1], _x=None)
                # the residual joins here when nothing follows (a ReLU of the group would come before the add)
                take = residual is not None and j == len(layers) and not with_relu
                if take:
                    Residual._check_shapes(layer.output_shape(x.shape), residual.shape)
                into = out if j == len(layers) and (residual is None or take) else None
                x = layer.forward_inference(x, bn, residual if take else None, with_relu or (take and relu), into,
                                            **({"pool_input": True} if pooled else {}))
                if take or into is not None:
                    return x
                i, fresh, pooled = j, True, False
            elif type(layer) is Linear and x.ndim == 2:
                with_relu = i + 1 < len(layers) and type(layers[i + 1]) is ReLU
                if with_relu:
                    _keep_for_backward(layers[i + 1], _x=None)
                x, i, fresh = layer.forward_inference(x, relu=with_relu), i + 1 + with_relu, True
            elif type(layer) is ReLU and fresh and not np.may_share_memory(x, given) and x.flags.writeable:
                _keep_for_backward(layer, _x=None)
                x, i = _relu_in_place(x), i + 1
            elif type(layer) is Dropout and not layer.training:  # identity: no copy
                layer._mask, i = None, i + 1
            elif type(layer) is Residual and i + 1 < len(layers) and type(layers[i + 1]) is ReLU:
                _keep_for_backward(layers[i + 1], _x=None)
                x, i, fresh = layer._forward_fused(x, relu=True), i + 2, True
            else:
                # only fastconv's own layers are known to return arrays nobody else holds
                x, i, fresh = layer.forward(x), i + 1, type(layer) in _FRESH_OUTPUT_LAYERS
        if residual is not None:
            Residual._check_shapes(x.shape, residual.shape)
            x = x + residual if not fresh or np.may_share_memory(x, given) else np.add(x, residual, out=x)
            fresh = True
        if relu:
            x = _relu_in_place(x) if fresh and not np.may_share_memory(x, given) and x.flags.writeable \
                else np.maximum(x, 0)
        if out is not None:
            out[...] = x
            return out
        return x

    def backward(self, dy):
        previous = _C.array_cache_enter()
        try:
            return self._backward(dy)
        finally:
            _C.array_cache_exit(previous)

    def _backward(self, dy):
        layers = list(self.children.values())
        # the input gradient of layer i is needed if anything before it trains, or this container's input
        # gradient is needed
        needed = self.need_input_grad
        needs = []
        for layer in layers:
            needs.append(needed)
            needed = needed or layer.has_trainable()
        for layer, need in zip(reversed(layers), reversed(needs)):
            if not need and not layer.has_trainable():
                return None
            layer.need_input_grad = need
            dy = layer.backward(dy)
        return dy

    def output_shape(self, input_shape):
        for name, layer in self.children.items():
            try:
                input_shape = layer.output_shape(input_shape)
            except ValueError as e:  # name the layer that does not fit (nested: "features: pool5: ...")
                raise ValueError(f"{name}: {e}") from None
        return tuple(input_shape)

    def __getitem__(self, key):
        if isinstance(key, int):
            return list(self.children.values())[key]
        return self.children[key]

    def __len__(self):
        return len(self.children)


class Concat(Module):
    """Inception block: every branch sees the same input; outputs are joined along channels (axis 1)."""

    def __init__(self, *branches, **named_branches):
        super().__init__()
        for i, b in enumerate(branches):
            self.add_child(str(i), b)
        for name, b in named_branches.items():
            self.add_child(name, b)

    def _branch_shapes(self, input_shape):
        shapes = [b.output_shape(input_shape) for b in self.children.values()]
        if any(s[0] != shapes[0][0] or s[2:] != shapes[0][2:] for s in shapes):
            raise ValueError(f"Concat branches disagree outside the channel axis: {shapes}")
        return shapes

    def output_shape(self, input_shape):
        shapes = self._branch_shapes(input_shape)
        return (shapes[0][0], sum(s[1] for s in shapes)) + tuple(shapes[0][2:])

    def forward(self, x):
        if not is_grad_enabled():
            return self._forward_fused(x)
        outs = [b.forward(x) for b in self.children.values()]
        self._sizes = [o.shape[1] for o in outs]
        return np.concatenate(outs, axis=1)

    def _forward_fused(self, x):
        """Inference: each branch writes its channels of the output itself (its last convolution straight into
        the slice), instead of a concatenation copying them all once more."""
        if x.ndim != 4:
            return np.concatenate([b.forward(x) for b in self.children.values()], axis=1)
        shapes = self._branch_shapes(x.shape)
        y = np.empty((shapes[0][0], sum(s[1] for s in shapes)) + tuple(shapes[0][2:]), dtype=x.dtype)
        parts, c0 = [], 0
        for shape in shapes:
            parts.append(y[:, c0:c0 + shape[1]])
            c0 += shape[1]
        self._sizes = [shape[1] for shape in shapes]
        heads = self._pointwise_heads(x) if self.__dict__.get("_inference_prepared", False) else {}
        if heads:
            self._forward_heads(x, heads, parts)
        for k, b in enumerate(self.children.values()):
            if k in heads:
                _, _, used, z = heads[k]
                if z is not parts[k]:
                    b._forward_fused(z, out=parts[k], start=used)
            elif type(b) is Sequential:
                b._forward_fused(x, out=parts[k])
            else:
                parts[k][...] = b.forward(x)
        return y

    def _pointwise_heads(self, x):
        """The branches (by index) that open with a 1x1 convolution (stride 1, no padding, one group, x's
        dtype), maybe an eval-mode batch-norm, and a ReLU: {k: [conv, bn or None, layers used, output]} for the
        first four of them when there are at least two and their joint layer is on the GEMM path, else {}."""
        heads = {}
        for k, b in enumerate(self.children.values()):
            layers = list(b.children.values()) if type(b) is Sequential else []
            conv = layers[0] if layers else None
            if (type(conv) is not Conv2d or conv.kernel_size != (1, 1) or conv.groups != 1 or
                    F._int_pair(conv.stride, "stride", 1) != (1, 1) or F._int_pair(conv.padding, "padding", 0) !=
                    (0, 0) or conv.in_channels != x.shape[1] or conv.params["weight"].dtype != x.dtype):
                continue
            j = 1
            bn = layers[j] if j < len(layers) and type(layers[j]) is BatchNorm2d and not layers[j].training else None
            j += bn is not None
            if j < len(layers) and type(layers[j]) is ReLU:
                heads[k] = [conv, bn, j + 1, None]  # the last: the output, set by _forward_heads
        if len(heads) < 2:
            return {}
        heads = dict(list(heads.items())[:4])  # conv2d_split's most outputs
        f = sum(h[0].out_channels for h in heads.values())
        if _C.conv2d_forward_path(x.shape, (f, x.shape[1], 1, 1), (1, 1), (0, 0), (1, 1), 1,
                                  x.dtype.itemsize) != "gemm":
            return {}
        return heads

    def _forward_heads(self, x, heads, parts):
        """prepare_inference's inception step: the branches' opening 1x1 convolutions (and batch-norms, ReLUs) as
        one convolution of all their filters (F.conv2d_split), which packs x once instead of once per branch. A
        branch that ends there writes its part of the output directly; the others get a new array to go on
        from (heads[k][3])."""
        convs = [h[0] for h in heads.values()]
        weights = [c.params["weight"] for c in convs]
        key = (x.shape[1:], x.dtype, _C.current_arch())
        cached = self.__dict__.get("_prepared")
        if cached is None or len(cached[0]) != len(weights) or any(a is not b for a, b in zip(cached[0], weights)) \
                or cached[1] != key:
            for conv, w in zip(convs, weights):
                conv._lock_for_inference(w)
            w_all = np.concatenate(weights)
            cached = (weights, key, w_all, F.conv2d_prepare_weights(w_all, x.shape))
            self._prepared = cached
        scales, biases = [], []
        for conv, bn, _, _ in heads.values():
            b = conv.params.get("bias")
            if bn is None:
                scales.append(np.ones(conv.out_channels, x.dtype))
                biases.append(np.zeros(conv.out_channels, x.dtype) if b is None else b)
            else:  # as Conv2d.forward_inference folds it
                scale = bn.params["weight"] / np.sqrt(bn.buffers["running_var"] + bn.eps)
                shift = (0 if b is None else b) - bn.buffers["running_mean"]
                biases.append((shift * scale + bn.params["bias"]).astype(x.dtype, copy=False))
                scales.append(scale.astype(x.dtype, copy=False))
        any_bn = any(h[1] is not None for h in heads.values())
        outs = []
        branches = list(self.children.values())
        for k, h in heads.items():
            conv, _, used, _ = h
            h[3] = parts[k] if used == len(branches[k]) else np.empty(conv.output_shape(x.shape), dtype=x.dtype)
            outs.append(h[3])
            conv._x, conv._no_grad_forward = None, True
            _keep_for_backward(branches[k][used - 1], _x=None)
        F.conv2d_split(x, cached[2], np.concatenate(biases), [c.out_channels for c in convs],
                       scale=np.concatenate(scales) if any_bn else None, relu=True, out=outs, prepared=cached[3])

    def backward(self, dy):
        dx = None
        start = 0
        for b, size in zip(self.children.values(), self._sizes):
            b.need_input_grad = self.need_input_grad
            g = b.backward(np.ascontiguousarray(dy[:, start:start + size]))
            start += size
            if g is not None:
                dx = g if dx is None else dx + g
        return dx


class Residual(Module):
    """y = body(x) + shortcut(x), the shortcut being the identity when None or a projection module (ResNet puts
    the block's final ReLU as a separate layer after the Residual)."""

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.add_child("body", body)
        if shortcut is not None:
            self.add_child("shortcut", shortcut)

    def output_shape(self, input_shape):
        return self.children["body"].output_shape(input_shape)

    def forward(self, x):
        if not is_grad_enabled():
            return self._forward_fused(x)
        y = self.children["body"].forward(x)
        s = self.children["shortcut"].forward(x) if "shortcut" in self.children else x
        self._check_shapes(y.shape, s.shape)
        return y + s

    @staticmethod
    def _check_shapes(body_shape, shortcut_shape):
        if tuple(body_shape) != tuple(shortcut_shape):
            raise ValueError(f"Residual: body output {tuple(body_shape)} and shortcut {tuple(shortcut_shape)} "
                             f"differ; give a projection shortcut")

    def _forward_fused(self, x, relu=False):
        """Inference: the shortcut first, then the body with the add (and the following ReLU when `relu`) fused
        into its last convolution when the body is a Sequential ending with one."""
        body = self.children["body"]
        s = self.children["shortcut"].forward(x) if "shortcut" in self.children else x
        if type(body) is Sequential:
            return body._forward_fused(x, residual=s, relu=relu)
        y = body.forward(x)
        self._check_shapes(y.shape, s.shape)
        y = np.add(y, s, out=y) if not np.may_share_memory(y, x) and y.flags.writeable else y + s
        return np.maximum(y, 0, out=y) if relu else y

    def backward(self, dy):
        body = self.children["body"]
        body.need_input_grad = self.need_input_grad
        dx = body.backward(dy)
        if "shortcut" in self.children:
            sc = self.children["shortcut"]
            sc.need_input_grad = self.need_input_grad
            ds = sc.backward(dy)
        else:
            ds = dy if self.need_input_grad else None
        if dx is None:
            return ds
        return dx if ds is None else dx + ds


def _pool3_then_pointwise(pool, conv):
    """A 3x3 stride-1 max pool with padding 1 (which keeps the size) followed by a 1x1 stride-1 unpadded
    convolution: what F.conv2d_pooled runs as one."""
    if type(conv) is not Conv2d or pool.stride is None:
        return False
    pair = F._int_pair
    return (pair(pool.kernel_size, "kernel_size", 1) == (3, 3) and pair(pool.stride, "stride", 1) == (1, 1) and
            pair(pool.padding, "padding", 0) == (1, 1) and tuple(conv.kernel_size) == (1, 1) and
            pair(conv.stride, "stride", 1) == (1, 1) and pair(conv.padding, "padding", 0) == (0, 0) and
            pair(conv.dilation, "dilation", 1) == (1, 1))


# Layers whose forward output (inside no_grad) is a new array or a view of their input: an in-place ReLU after
# them touches nothing the caller holds (Sequential._forward_fused checks the view case).
_FRESH_OUTPUT_LAYERS = (Conv2d, Linear, MaxPool2d, AvgPool2d, GlobalAvgPool2d, BatchNorm2d, BatchNorm1d,
                        LocalResponseNorm, ReLU, Dropout, Flatten, Sequential, Concat, Residual)


# ------------------------------------------------------------------------------------------------- loss

class CrossEntropyLoss:
    """Mean softmax cross-entropy over the batch with integer labels: ``loss = forward(logits, labels)``,
    then ``dlogits = backward()``."""

    def forward(self, logits, labels):
        self._labels = labels
        loss, self._probs = F.softmax_cross_entropy(logits, labels)
        return loss

    __call__ = forward

    def backward(self, dloss=1.0):
        return F.softmax_cross_entropy_backward(self._probs, self._labels, dloss)


# ------------------------------------------------------------------------------------------------- inference plans

INFERENCE_PLAN_MAX_BYTES = 64 << 20  # activations a plan may keep (ResNet-50's at batch 1 take 41 MiB)
INFERENCE_PLANS_PER_MODULE = 4  # input shapes with a plan each, the oldest dropped first
# a network with at most this many weights, on more than one thread, records a batch that the thread count divides
# as one plan per thread over its share of the images (_C.SplitInferencePlan): its layers are too small to share
# between threads, and every layer would wake the team and wait for it
INFERENCE_SPLIT_MAX_WEIGHTS = 1 << 20
# modules whose no_grad() forward computes only through the kernels a plan records (or through a neighbour's,
# fused): a model holding any other module runs layer by layer
PLAN_SAFE_MODULES = {Sequential, Conv2d, BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, GlobalAvgPool2d,
                     LocalResponseNorm, Dropout, Flatten, Linear, Residual, Concat}


def _planned_forward(model, x):
    """model's inference forward on x through the plan for x's shape and the current settings, recorded at the
    first such call (see Module.prepare_inference); None where no plan applies: the caller runs the layers."""
    if type(x) is not np.ndarray or not x.flags.c_contiguous or _C.plan_recording():
        return None
    plans = model.__dict__.get("_plans")
    if plans is None or plans["version"] != _structure_version[0]:
        plans = model._plans = {"version": _structure_version[0]}
    settings = _C.plan_settings()
    key = (x.shape, x.dtype.char, settings)
    plan = plans.get(key, plans)  # plans itself: not seen yet
    if plan is not plans:
        if plan is None:
            return None
        if plan.grad_forwards != _grad_forwards[0]:  # a training forward since: backward must raise again
            for m in plan.modules:
                m._no_grad_forward = True
            plan.grad_forwards = _grad_forwards[0]
        return plan.run(x)
    if x.dtype.char not in "fd" or x.size == 0:
        return None
    modules = [m for _, m in model.named_modules()]
    if any(type(m) not in PLAN_SAFE_MODULES and not getattr(type(m), "plan_safe", False) for m in modules):
        plans[key] = None
        return None
    threads = settings[1]
    plan = y = None
    if 1 < threads <= 64 and x.ndim >= 1 and x.shape[0] >= threads and x.shape[0] % threads == 0 and \
            model.num_parameters() <= INFERENCE_SPLIT_MAX_WEIGHTS:
        plan, y = _record_split_plan(model, x, threads)
    if plan is None:
        plan, y = _record_plan(model, x)
    if plan is False:  # another thread is recording
        return None
    if len(plans) > INFERENCE_PLANS_PER_MODULE:
        del plans[next(k for k in plans if k != "version")]
    if plan is not None:
        plan.modules, plan.grad_forwards = modules, _grad_forwards[0]
    plans[key] = plan
    return y


def _record_plan(model, x):
    """(plan, y): model's forward y on x, recorded; plan is None when the recording cannot be replayed, False
    (and y None) when another thread is recording."""
    plan = _C.InferencePlan(x, INFERENCE_PLAN_MAX_BYTES)
    if not plan.start():
        return False, None
    try:
        y = model._forward_layers(x)
    finally:
        plan.stop()
    plan.finish(y)
    if plan.usable:
        # a value computed between the kernels (not recorded) would leave NaN or a stale value in the replay
        plan.poison()
        if not np.array_equal(plan.run(x, fill_output=True), y, equal_nan=True):
            plan.reason = "a replay differs from the forward: it computes values outside the recorded kernels"
    return (plan if plan.usable else None), y


def _record_split_plan(model, x, threads):
    """(SplitInferencePlan, y) for x's images in `threads` equal shares, each share's forward recorded with
    one-thread kernels; (None, None) when a share's recording cannot be replayed or the output does not keep the
    images first (the whole batch is then recorded instead), (False, None) while another thread records."""
    share = x.shape[0] // threads
    parts, ys = [], []
    previous = _C.set_this_thread_num_threads(1)
    try:
        for t in range(threads):
            part, y = _record_plan(model, x[t * share:(t + 1) * share])
            if not part:  # None (cannot be replayed) or False (another thread records)
                return part, None
            parts.append(part)
            ys.append(y)
    finally:
        _C.set_this_thread_num_threads(previous)
    try:
        plan = _C.SplitInferencePlan(parts)
    except ValueError:
        return None, None
    return plan, np.concatenate(ys)
