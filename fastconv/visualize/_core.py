"""What every technique needs: layers addressed by name, a forward pass up to a layer that captures its output,
and a backward pass from any layer's units to the image under a chosen ReLU rule.

Layers are the dotted names of ``model.named_modules()`` ("features.conv1", "classifier.fc7",
"inception_4a.3x3.conv"). Both passes walk the containers themselves (Sequential, Concat, Residual, GoogLeNet's
SideBranch): nothing is patched onto the model. A walk runs whole any container that does not hold the layer,
goes inside the ones that do, and stops at the layer; the backward walk then retraces the same path, calling
each module's own ``backward``, so the model's code is the only arithmetic.

Within ``inspecting(model, rule)`` -- which every technique uses -- the model is in eval mode (dropout off,
batch norm on running statistics), no parameter collects gradients, and every ReLU uses `rule`; everything is
restored on exit, exceptions included.
"""
import contextlib
import difflib
import json

import numpy as np

from .. import nn
from ..models.googlenet import SideBranch
from .receptive import receptive_fields

RULES = ("plain", "deconvnet", "guided")


# --------------------------------------------------------------------------------------------- names and shapes

def model_name(model):
    return getattr(model, "name", None) or type(model).__name__


def layer_names(model):
    """Every addressable layer: the dotted names of ``model.named_modules()`` except the root."""
    return [name for name, _ in model.named_modules() if name]


def get_layer(model, name):
    """The module called `name`, or a ValueError listing the valid names (and the closest ones)."""
    if isinstance(name, str) and name:
        for n, m in model.named_modules():
            if n == name:
                return m
    names = layer_names(model)
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
    hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
    shown = names if len(names) <= 60 else names[:60] + [f"... and {len(names) - 60} more"]
    raise ValueError(f"unknown layer {name!r}{hint}; the layers of {model_name(model)} are: {', '.join(shown)}")


def class_names(model):
    """The model's class names: its ``classes`` attribute, or the JSON list "classes" of the metadata a saved
    model was loaded with (fastconv.load); None when it has neither."""
    names = getattr(model, "classes", None)
    if names is None:
        try:
            names = json.loads(getattr(model, "metadata", {}).get("classes", "null"))
        except (TypeError, ValueError, AttributeError):
            names = None
    return list(names) if isinstance(names, (list, tuple)) else None


def model_dtype(model):
    for _, m in model.named_modules():
        for p in m.params.values():
            return p.dtype
    return np.dtype(np.float32)


def input_shape_of(model, image_shape=None):
    """The (C, H, W) the model takes: its ``input_shape`` attribute, else the given image's."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        if image_shape is None:
            raise ValueError(f"{model_name(model)} does not record its input shape; give an image")
        shape = image_shape
    return tuple(int(s) for s in shape)


def output_shapes(model, input_shape=None):
    """{layer name: output shape of one image (1, ...)} from the architecture (nothing is run)."""
    return {name: f.shape for name, f in receptive_fields(model, input_shape_of(model, input_shape)).items()}


def score_layer(model):
    """The layer whose output is the class scores before any softmax: the model's last leaf, or the one before
    it when that is a Softmax (AlphaGo's policy network ends with one)."""
    leaves = [(n, m) for n, m in model.named_modules() if n and not m.children]
    if not leaves:
        raise ValueError(f"{model_name(model)} has no layers")
    if isinstance(leaves[-1][1], nn.Softmax) and len(leaves) > 1:
        return leaves[-2][0]
    return leaves[-1][0]


def num_units(shape):
    """Units of a layer output shape (1, C, H, W) or (1, D): its channels (feature maps) or features."""
    return int(shape[1])


def check_unit(model, layer, unit, shape, what="unit"):
    """`unit` as an int in range for `layer` of output `shape`; else a ValueError naming the range."""
    n = num_units(shape)
    if isinstance(unit, (bool, np.bool_)) or not isinstance(unit, (int, np.integer)) or not 0 <= unit < n:
        kind = "feature maps" if len(shape) == 4 else "units"
        raise ValueError(f"{what} {unit!r} is out of range: layer {layer!r} of {model_name(model)} has {n} {kind}, "
                         f"numbered 0..{n - 1}")
    return int(unit)


def check_class(model, target, num_classes):
    """A class index in range, else a ValueError naming the range (and the class names when the model has
    them)."""
    if isinstance(target, (bool, np.bool_)) or not isinstance(target, (int, np.integer)) or \
            not 0 <= target < num_classes:
        names = class_names(model)
        named = f" ({', '.join(map(str, names))})" if names is not None and len(names) <= 20 else ""
        raise ValueError(f"class {target!r} is out of range: {model_name(model)} has {num_classes} classes, "
                         f"numbered 0..{num_classes - 1}{named}")
    return int(target)


def check_position(position, shape, layer):
    """(i, j) inside a (1, C, H, W) map, or None for vector layers."""
    if len(shape) != 4:
        if position is not None:
            raise ValueError(f"layer {layer!r} outputs vectors {shape[1:]}; it has no position to choose")
        return None
    h, w = shape[2:]
    try:
        i, j = (int(v) for v in position)
    except (TypeError, ValueError):
        raise ValueError(f"position must be a pair (row, col), got {position!r}") from None
    if not (0 <= i < h and 0 <= j < w):
        raise ValueError(f"position {position!r} is outside layer {layer!r}'s {h}x{w} map (rows 0..{h - 1}, "
                         f"cols 0..{w - 1})")
    return i, j


def check_images(model, images, name="images"):
    """A float (N, C, H, W) batch (or one (C, H, W) image) of the model's input shape, as a contiguous array
    of the model's dtype. Wrong rank, channels or size is a ValueError naming both shapes."""
    x = np.asarray(images)
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must be floating point (float32 or float64), got {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"{name} must be one (C, H, W) image or a non-empty (N, C, H, W) batch, got shape "
                         f"{np.shape(images)}")
    expected = input_shape_of(model, x.shape[1:])
    if x.shape[1:] != expected:
        raise ValueError(f"{name}: shape {'x'.join(map(str, x.shape[1:]))} (C x H x W) does not fit "
                         f"{model_name(model)}, which takes {'x'.join(map(str, expected))}")
    return np.ascontiguousarray(x, dtype=model_dtype(model))


# --------------------------------------------------------------------------------------------- the model's state

@contextlib.contextmanager
def inspecting(model, rule="plain"):
    """Eval mode, every parameter frozen (backward computes only input gradients), need_input_grad set
    everywhere, and every ReLU's backward rule set to `rule` ("plain", "deconvnet" or "guided"), for the
    duration of the block; the previous state is restored on exit, also after an exception."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    modules = [m for _, m in model.named_modules()]
    saved = [(m, m.training, set(m.frozen), m.need_input_grad, getattr(m, "rule", None)) for m in modules]
    try:
        for m in modules:
            m.training = False
            m.frozen.update(m.params)
            m.need_input_grad = True
            if isinstance(m, nn.ReLU):
                m.rule = rule
        yield model
    finally:
        for m, training, frozen, need, relu_rule in saved:
            m.training, m.need_input_grad = training, need
            m.frozen.clear()
            m.frozen.update(frozen)  # in place: whoever holds the set keeps seeing it
            if isinstance(m, nn.ReLU):
                m.rule = relu_rule


def _inside(name, prefix):
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


class _Reached(Exception):
    """Raised by the forward walk once every wanted layer has been captured."""


def _walk_forward(module, prefix, x, pending, captured):
    """Run `module` (named `prefix`) on x, capturing the outputs of the names in `pending`."""
    if any(_inside(w, prefix) and w != prefix for w in pending):
        y = _walk_container(module, prefix, x, pending, captured)
    else:
        y = module.forward(x)
    if prefix in pending:
        captured[prefix] = y
        pending.discard(prefix)
        if not pending:
            raise _Reached
    return y


def _walk_container(module, prefix, x, pending, captured):
    def child(name):
        return f"{prefix}.{name}" if prefix else name
    if isinstance(module, nn.Sequential):
        for name, c in module.children.items():
            x = _walk_forward(c, child(name), x, pending, captured)
        return x
    if isinstance(module, nn.Concat):
        return np.concatenate([_walk_forward(c, child(n), x, pending, captured)
                               for n, c in module.children.items()], axis=1)
    if isinstance(module, nn.Residual):
        y = _walk_forward(module.children["body"], child("body"), x, pending, captured)
        if "shortcut" in module.children:
            return y + _walk_forward(module.children["shortcut"], child("shortcut"), x, pending, captured)
        return y + x
    if isinstance(module, SideBranch):
        _walk_forward(module.children["head"], child("head"), x, pending, captured)
        return x
    raise TypeError(f"cannot look inside {prefix or 'the model'}: {type(module).__name__} is a container other "
                    f"than Sequential, Concat, Residual or SideBranch")


def _capture(model, x, layers):
    pending, captured = set(layers), {}
    try:
        _walk_forward(model, "", x, pending, captured)
    except _Reached:
        pass
    return captured


def _walk_backward(module, prefix, target, dy):
    """The gradient at `module`'s input given dy at the output of layer `target` inside it: back through the
    target and every module before it on the path from the input."""
    if prefix == target:
        return module.backward(dy)
    names = list(module.children)
    k = next(i for i, n in enumerate(names) if _inside(target, f"{prefix}.{n}" if prefix else n))
    child = module.children[names[k]]
    dx = _walk_backward(child, f"{prefix}.{names[k]}" if prefix else names[k], target, dy)
    if isinstance(module, nn.Sequential):
        for earlier in reversed(names[:k]):
            dx = module.children[earlier].backward(dx)
        return dx
    if isinstance(module, (nn.Concat, nn.Residual, SideBranch)):
        return dx  # the target's branch alone connects it to the input
    raise TypeError(f"cannot look inside {prefix or 'the model'}: {type(module).__name__} is a container other "
                    f"than Sequential, Concat, Residual or SideBranch")


# --------------------------------------------------------------------------------------------- public passes

def activations(model, images, layers, batch_size=64):
    """{layer: output} of each of `layers` for a batch of images (N, C, H, W), in eval mode, computed batch by
    batch; the forward pass stops at the last of them. Outputs have the model's dtype, (N, C', H', W') or
    (N, D)."""
    layers = [layers] if isinstance(layers, str) else list(layers)
    for layer in layers:
        get_layer(model, layer)
    x = check_images(model, images)
    parts = {layer: [] for layer in layers}
    with inspecting(model):
        for b in range(0, len(x), batch_size):
            captured = _capture(model, x[b:b + batch_size], layers)
            for layer in layers:
                parts[layer].append(captured[layer])
    return {layer: np.concatenate(p) for layer, p in parts.items()}


def forward_to(model, images, layer, batch_size=64):
    """The output of `layer` for images (N, C, H, W), running the model only as far as that layer."""
    return activations(model, images, [layer], batch_size)[layer]


def gradient_to_input(model, images, layer, seed, rule="plain"):
    """Backward from `layer` to the input: (output of the layer, d(sum(seed * output)) / d(input)).

    images: (N, C, H, W) of the model's shape. seed: the gradient placed on the layer's output -- an array of
    its shape, or a function output -> array. rule: the backward rule of every ReLU ("plain" is the true
    gradient; "deconvnet" and "guided" the visualization rules). Returns (output, gradient (N, C, H, W))."""
    get_layer(model, layer)
    x = check_images(model, images)
    with inspecting(model, rule):
        y = _capture(model, x, [layer])[layer]
        dy = seed(y) if callable(seed) else seed
        dy = np.ascontiguousarray(dy, dtype=y.dtype)
        if dy.shape != y.shape:
            raise ValueError(f"the seed gradient has shape {dy.shape} but layer {layer!r} outputs {y.shape}")
        dx = _walk_backward(model, "", layer, dy)
    return y, dx


def unit_seed(shape, unit, position, dtype, batch=None):
    """One-hot gradient at the output of a layer: 1 at `unit` (and `position` (i, j) of a map) of every image,
    or of image b only for a per-image list `unit[b]` / `position[b]`."""
    dy = np.zeros(shape, dtype=dtype)
    n = shape[0]
    units = unit if np.ndim(unit) else [unit] * n
    positions = position if (position is not None and np.ndim(position) == 2) else [position] * n
    for b in range(n):
        if len(shape) == 4:
            i, j = positions[b]
            dy[b, units[b], i, j] = 1
        else:
            dy[b, units[b]] = 1
    return dy
