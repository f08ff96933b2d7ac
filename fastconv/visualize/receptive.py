"""Receptive fields from the architecture: which input pixels a unit of any layer can see.

Per spatial axis, a layer's units are described by three numbers, propagated from the input (start 0, size 1,
stride 1) through every layer:

    start   input coordinate of the first pixel seen by unit 0 (negative when it lies in the padding)
    size    how many input pixels one unit spans
    stride  input pixels between neighbouring units (the product of the strides so far, "jump")

so unit i spans input pixels ``start + i*stride .. start + i*stride + size - 1``. A convolution or pooling with
kernel k, stride s, padding p and dilation d maps them to

    start' = start - p * stride       size' = size + (k - 1) * d * stride       stride' = stride * s

Layers that keep the map's size (ReLU, batch norm, LRN, dropout, softmax, position bias; any other leaf
that does is taken as pointwise) change nothing. A unit after
global average pooling or Flatten sees every position of the map: size' = size + (H - 1) * stride. Containers:
Sequential chains its children; Concat and Residual take the envelope of their branches (body and shortcut):
from the smallest start to the largest end. When the branches are centred on the same pixel, as in inception
blocks (padding k // 2), that envelope is the largest branch's field: the maximum over branches.

These are the theoretical fields of the arithmetic: they ignore the image border (a field may reach into the
padding, which the crops of `top_patches` fill with zeros) and the weights (the effective field is smaller).

    >>> from fastconv import models
    >>> receptive_field(models.alexnet(init=None), "features.pool5").size
    (195, 195)
"""
from dataclasses import dataclass

import numpy as np

from .. import functional as F
from .. import nn
from ..models.googlenet import SideBranch

@dataclass(frozen=True)
class ReceptiveField:
    """The field of a layer's units: (rows, cols) pairs `start`, `size`, `stride` (see the module docstring)
    and the layer's output `shape` (with the batch: (N, C, H, W), or (N, D) after Flatten)."""
    start: tuple
    size: tuple
    stride: tuple
    shape: tuple

    def box(self, i=0, j=0):
        """(top, left, bottom, right) of unit (i, j)'s field in input pixels, bottom and right exclusive; may
        extend past the image."""
        top = self.start[0] + i * self.stride[0]
        left = self.start[1] + j * self.stride[1]
        return top, left, top + self.size[0], left + self.size[1]

    @property
    def spatial(self):
        """Whether the layer still has a map (H, W) of units, rather than a vector."""
        return len(self.shape) == 4


def _axis_pairs(module):
    """kernel, stride, padding, dilation of a conv or pool as (h, w) pairs."""
    if isinstance(module, nn.Conv2d):
        return (module.kernel_size, F._int_pair(module.stride, "stride"), F._int_pair(module.padding, "padding"),
                F._int_pair(module.dilation, "dilation"))
    kernel = F._int_pair(module.kernel_size, "kernel_size")
    stride = kernel if module.stride is None else F._int_pair(module.stride, "stride")
    return kernel, stride, F._int_pair(module.padding, "padding"), (1, 1)


def _envelope(fields, what):
    """The union of branch fields computed from one input (Concat, Residual)."""
    strides = {f.stride for f in fields}
    if len(strides) != 1:
        raise ValueError(f"{what}: branches have different strides {sorted(strides)}; their units do not line up")
    start = tuple(min(f.start[a] for f in fields) for a in (0, 1))
    end = tuple(max(f.start[a] + f.size[a] for f in fields) for a in (0, 1))
    return start, tuple(e - s for e, s in zip(end, start)), fields[0].stride


class _Walk:
    def __init__(self):
        self.fields = {}

    def record(self, name, field):
        if name:
            self.fields[name] = field
        return field

    def walk(self, module, name, field):
        join = (lambda child: f"{name}.{child}" if name else child)
        if isinstance(module, nn.Sequential):
            for cname, child in module.children.items():
                field = self.walk(child, join(cname), field)
            return self.record(name, field)
        if isinstance(module, (nn.Concat, nn.Residual)):
            branches = [self.walk(child, join(cname), field) for cname, child in module.children.items()]
            if isinstance(module, nn.Residual) and "shortcut" not in module.children:
                branches.append(field)
            shape = tuple(module.output_shape(field.shape))
            if len(shape) != 4:
                raise ValueError(f"{name}: a {type(module).__name__} of vectors has no receptive field")
            start, size, stride = _envelope(branches, name or "the model")
            return self.record(name, ReceptiveField(start, size, stride, shape))
        if isinstance(module, SideBranch):
            self.walk(module.children["head"], join("head"), field)
            return self.record(name, field)
        if module.children:
            raise TypeError(f"cannot follow {name or 'the model'}: {type(module).__name__} is a container other "
                            f"than Sequential, Concat, Residual or SideBranch")
        return self.record(name, self.leaf(module, name, field))

    def leaf(self, module, name, field):
        try:
            shape = tuple(module.output_shape(field.shape))
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        start, size, stride = field.start, field.size, field.stride
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p, d = _axis_pairs(module)
            start = tuple(start[a] - p[a] * stride[a] for a in (0, 1))
            size = tuple(size[a] + (k[a] - 1) * d[a] * stride[a] for a in (0, 1))
            stride = tuple(stride[a] * s[a] for a in (0, 1))
        elif isinstance(module, (nn.GlobalAvgPool2d, nn.Flatten)) and len(field.shape) == 4:
            h, w = field.shape[2:]
            size = (size[0] + (h - 1) * stride[0], size[1] + (w - 1) * stride[1])
            stride = (stride[0] * h, stride[1] * w)
        elif shape[2:] != tuple(field.shape[2:]):
            raise TypeError(f"{name}: {type(module).__name__} changes the map from {field.shape} to {shape} and "
                            f"its geometry (kernel, stride, padding) is unknown")
        return ReceptiveField(start, size, stride, shape)


def _input_shape(model, input_shape):
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ValueError("give input_shape (C, H, W): the model does not record one")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape!r}")
    return shape


def receptive_fields(model, input_shape=None):
    """{dotted layer name: ReceptiveField} for every named module of `model` (containers included), for
    inputs of `input_shape` (C, H, W; default the model's ``input_shape``). Nothing is run."""
    c, h, w = _input_shape(model, input_shape)
    walk = _Walk()
    walk.walk(model, "", ReceptiveField((0, 0), (1, 1), (1, 1), (1, c, h, w)))
    return walk.fields


def receptive_field(model, layer, input_shape=None):
    """The ReceptiveField of layer `layer` (a dotted name of ``model.named_modules()``)."""
    from ._core import get_layer
    get_layer(model, layer)  # a clear error for an unknown name
    return receptive_fields(model, input_shape)[layer]


def crop(image, box):
    """The part of `image` (C, H, W) inside `box` = (top, left, bottom, right) (bottom, right exclusive), with
    zeros where the box leaves the image: shape (C, bottom - top, right - left)."""
    image = np.asarray(image)
    top, left, bottom, right = box
    c, h, w = image.shape
    out = np.zeros((c, bottom - top, right - left), dtype=image.dtype)
    r0, r1, c0, c1 = max(top, 0), min(bottom, h), max(left, 0), min(right, w)
    if r0 < r1 and c0 < c1:
        out[:, r0 - top:r1 - top, c0 - left:c1 - left] = image[:, r0:r1, c0:c1]
    return out
