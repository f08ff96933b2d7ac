"""Gradient pictures: saliency maps (Simonyan, Vedaldi & Zisserman 2014) and the backward pass from one neuron
under the three ReLU rules (Zeiler & Fergus 2014; Springenberg et al. 2015).

At a ReLU with forward input f, the signal R coming back from above is passed on as

    plain backprop   R_in = (f > 0) * R             the true gradient
    deconvnet        R_in = (R > 0) * R             a ReLU of the signal itself, blind to the forward pass
    guided backprop  R_in = (f > 0) * (R > 0) * R   both gates

Convolutions pass R through their transposed filters and max pools to the position that won the forward pass
(the deconvnet's "switches") under every rule; only the ReLUs differ.
"""
from dataclasses import dataclass

import numpy as np

from ._core import (RULES, check_class, check_images, check_position, check_unit, forward_to, get_layer,
                    gradient_to_input, output_shapes, score_layer, unit_seed)


@dataclass
class Saliency:
    """map (H, W): max over channels of |d score / d image|; gradient (C, H, W); the class `target` and its
    `score` (before softmax)."""
    map: np.ndarray
    gradient: np.ndarray
    target: int
    score: float


def class_scores(model, images):
    """Class scores before any softmax, (N, K), for images (N, C, H, W)."""
    return forward_to(model, images, score_layer(model))


def saliency(model, image, target=None):
    """Image-specific class saliency: the gradient of class `target`'s score (default: the predicted class)
    with respect to the image, and its maximum absolute value over the channels.

    image: (C, H, W) or (1, C, H, W) of the model's input shape. Returns a Saliency."""
    x = check_images(model, image, "image")[:1]
    layer = score_layer(model)
    num_classes = output_shapes(model, x.shape[1:])[layer][1]
    if target is not None:
        target = check_class(model, target, num_classes)

    def seed(scores):
        nonlocal target
        if target is None:
            target = int(np.argmax(scores[0]))
        return unit_seed(scores.shape, target, None, scores.dtype)

    scores, grad = gradient_to_input(model, x, layer, seed, "plain")
    return Saliency(np.abs(grad[0]).max(axis=0), grad[0], target, float(scores[0, target]))


@dataclass
class NeuronBackward:
    """The backward pass from one neuron to the image under each rule: gradients {rule: (C, H, W)}; the
    neuron's `layer`, `unit`, `position` (None for vector layers) and its `activation` on the image."""
    gradients: dict
    layer: str
    unit: int
    position: tuple
    activation: float


def neuron_backward(model, image, layer, unit, position=None, rules=RULES):
    """Backward from neuron (`unit`, `position`) of `layer` to the image with each ReLU rule of `rules`.

    The seed is 1 at that neuron and 0 elsewhere in the layer. For a layer with maps, `position` (row, col)
    defaults to where the unit's map is strongest on this image (Zeiler & Fergus project the strongest
    activation). Returns a NeuronBackward."""
    x = check_images(model, image, "image")[:1]
    get_layer(model, layer)
    shape = output_shapes(model, x.shape[1:])[layer]
    unit = check_unit(model, layer, unit, shape)
    for rule in rules:
        if rule not in RULES:
            raise ValueError(f"rules must be among {RULES}, got {rule!r}")
    if position is not None:
        position = check_position(position, shape, layer)
    chosen = {}

    def seed(y):
        if "position" not in chosen:
            where = position
            if y.ndim == 4 and where is None:
                where = tuple(int(v) for v in np.unravel_index(np.argmax(y[0, unit]), y.shape[2:]))
            chosen["position"] = where
            chosen["activation"] = float(y[0, unit][where] if y.ndim == 4 else y[0, unit])
        return unit_seed(y.shape, unit, chosen["position"], y.dtype)

    gradients = {rule: gradient_to_input(model, x, layer, seed, rule)[1][0] for rule in rules}
    return NeuronBackward(gradients, layer, unit, chosen["position"], chosen["activation"])
