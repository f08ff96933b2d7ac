"""Helpers shared by the model builders: options, seeded initialization, shape bookkeeping."""
import numpy as np

from .. import init as initializers
from .. import nn


def image_size(input_size, name="input_size"):
    """An int or an (H, W) pair -> (H, W)."""
    if isinstance(input_size, (int, np.integer)) and not isinstance(input_size, bool):
        hw = (int(input_size), int(input_size))
    elif isinstance(input_size, (tuple, list)) and len(input_size) == 2:
        hw = (int(input_size[0]), int(input_size[1]))
    else:
        raise TypeError(f"{name} must be an int or an (H, W) pair, got {input_size!r}")
    if min(hw) < 1:
        raise ValueError(f"{name} must be positive, got {input_size!r}")
    return hw


def generator(rng, seed):
    """The Generator every random choice of a model comes from: `rng` if given, else one seeded with `seed`."""
    if rng is None:
        return np.random.default_rng(seed)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


def dropout(p, rng):
    """A Dropout layer with its own stream, drawn from the model's generator (so models are reproducible and
    layers independent)."""
    return nn.Dropout(p, rng=np.random.default_rng(int(rng.integers(2 ** 63))))


def shape_through(layers, input_shape):
    """Output shape of running `layers` (an iterable of modules) in sequence on `input_shape`."""
    shape = tuple(input_shape)
    for layer in layers:
        shape = layer.output_shape(shape)
    return shape


def weighted_layers(model):
    """(dotted name, module) of every Conv2d and Linear, in forward order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


SCHEMES = ("he", "xavier", "gaussian")


def init_weights(model, rng, scheme, std=0.01):
    """Fill every conv and linear weight of `model` in forward order; biases become zero.

    scheme: "he" (Kaiming normal, fan_in: N(0, 2/fan_in)), "xavier" (Glorot uniform), "gaussian" (N(0, std^2),
    the papers' choice for AlexNet/ZFNet), or None (leave the zeros: for analysis or loading a checkpoint).
    BatchNorm layers keep gamma = 1, beta = 0.
    """
    if scheme is None:
        return model
    if scheme not in SCHEMES:
        raise ValueError(f"init must be one of {SCHEMES} or None, got {scheme!r}")
    for _, m in weighted_layers(model):
        w = m.params["weight"]
        if scheme == "he":
            initializers.kaiming_normal(w, rng)
        elif scheme == "xavier":
            initializers.xavier_uniform(w, rng)
        else:
            initializers.gaussian(w, rng, std=std)
        if "bias" in m.params:
            m.params["bias"][...] = 0
    return model


def finish(model, name, input_shape, init_scheme):
    """Record the model's name and default (C, H, W) input on it and check that the architecture fits it."""
    model.name = name
    model.input_shape = tuple(input_shape)
    model.init_scheme = init_scheme
    model.output_shape((1,) + model.input_shape)  # raises a ValueError naming the layer that does not fit
    return model
