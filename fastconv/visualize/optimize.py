"""Pictures found by optimizing the image: class-model images and unit visualizations (Simonyan, Vedaldi &
Zisserman 2014, with the regularizers of Yosinski et al. 2015), and feature inversion (Mahendran & Vedaldi 2015).
Every optimization shows a tqdm progress bar unless ``progress=False``.
"""
import math
from dataclasses import dataclass

import numpy as np

from ._core import (check_class, check_images, check_position, check_unit, forward_to, get_layer,
                    gradient_to_input, input_shape_of, model_dtype, output_shapes, score_layer, unit_seed)


def _progress(steps, desc, enabled):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress bars need tqdm: pip install tqdm (or pass progress=False)") from None
    return tqdm(range(steps), desc=desc, disable=not enabled, leave=False)


def _check_steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return int(steps)


def _cosine(lr, t, steps):
    """Step size at step t of `steps`: `lr` decaying to 0 along half a cosine, so the last steps settle."""
    return lr * 0.5 * (1 + math.cos(math.pi * t / steps))


# --------------------------------------------------------------------------------------------- image priors

def gaussian_blur(x, sigma):
    """Blur the maps of x (..., H, W) with a Gaussian of standard deviation `sigma` pixels (separable, the
    kernel truncated at 3 sigma and renormalized, edges reflected)."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    out = x
    for axis in (-2, -1):
        n = out.shape[axis]
        r = min(radius, n - 1)  # reflect padding needs at least r + 1 samples
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect") if r else out
        k = kernel[radius - r:radius + r + 1]
        k = k / k.sum()
        out = sum(k[i] * np.take(padded, np.arange(i, i + n), axis=axis) for i in range(len(k)))
    return out.astype(x.dtype)


def alpha_norm(x, alpha, bound):
    """R(x) = mean(|x / bound| ** alpha) over the image (C, H, W), and its gradient."""
    z = x / bound
    value = np.mean(np.abs(z) ** alpha)
    grad = alpha * np.abs(z) ** (alpha - 1) * np.sign(z) / (bound * z.size)
    return float(value), grad


def total_variation(x, beta, bound):
    """R(x) = mean over pixels of ((x[i+1, j] - x[i, j])^2 + (x[i, j+1] - x[i, j])^2) ** (beta / 2) / bound**beta
    for an image (C, H, W), differences past the last row or column taken as 0; and its gradient. (beta < 2
    adds 1e-8 inside the power to keep the gradient finite where the image is flat.)"""
    dh = np.zeros_like(x)
    dw = np.zeros_like(x)
    dh[:, :-1, :] = x[:, 1:, :] - x[:, :-1, :]
    dw[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
    t = dh ** 2 + dw ** 2 + (1e-8 if beta < 2 else 0.0)
    scale = 1.0 / (bound ** beta * x.size)
    value = float(np.sum(t ** (beta / 2)) * scale)
    q = beta * t ** (beta / 2 - 1) * scale       # d value / d t, times 2 for the square
    gh, gw = q * dh, q * dw
    grad = np.zeros_like(x)
    grad[:, 1:, :] += gh[:, :-1, :]
    grad[:, :-1, :] -= gh[:, :-1, :]
    grad[:, :, 1:] += gw[:, :, :-1]
    grad[:, :, :-1] -= gw[:, :, :-1]
    return value, grad


# --------------------------------------------------------------------------------------------- activation maximization

@dataclass
class Maximized:
    """images (U, C, H, W): one per unit; scores (steps + 1, U): the unit's activation before each step and
    after the last; layer, units, positions as optimized."""
    images: np.ndarray
    scores: np.ndarray
    layer: str
    units: list
    positions: list


def maximize(model, layer, units, positions=None, steps=200, lr=0.1, l2=0.05, decay=0.0, blur_every=0,
             blur_sigma=0.5, norm_percentile=0.0, contribution_percentile=0.0, init="zeros", seed=0,
             progress=True):
    """Images that maximize units of a layer: argmax_I S(I) - l2 * ||I||^2, S the unit's activation.

    Gradient ascent from a zero image (init="zeros") or small noise (init="noise", std 0.01), one image per
    unit, all optimized as one batch. Each step moves the image by the objective's gradient divided by its root
    mean square (a step of fixed size whatever the scale of the scores) times a step size that decays from
    `lr` to 0 along half a cosine. For a layer with maps the
    unit is the one at `positions[u]` (default the map's centre).

    A unit that is off at the start (its ReLU closed on the zero image) gets no gradient and stays off; start
    such units from noise instead.

    The regularizers of Yosinski et al., applied after each step and off by default:
      decay                    I <- (1 - decay) I                         (L2 decay)
      blur_every, blur_sigma   Gaussian blur every `blur_every` steps
      norm_percentile          zero pixels whose norm over channels is below this percentile (0..100)
      contribution_percentile  zero pixels whose |sum over channels of I * dS/dI| (first-order
                               contribution to S) is below this percentile
    Returns Maximized.
    """
    get_layer(model, layer)
    steps = _check_steps(steps)
    shape_in = input_shape_of(model)
    shape = output_shapes(model, shape_in)[layer]
    units = [check_unit(model, layer, u, shape) for u in ([units] if np.ndim(units) == 0 else units)]
    if len(shape) == 4:
        centre = (shape[2] // 2, shape[3] // 2)
        positions = [check_position(p, shape, layer) for p in (positions or [centre] * len(units))]
    else:
        positions = [check_position(p, shape, layer) for p in (positions or [None] * len(units))]
    if len(positions) != len(units):
        raise ValueError(f"give one position per unit: {len(units)} units, {len(positions)} positions")
    for name, p in (("norm_percentile", norm_percentile), ("contribution_percentile", contribution_percentile)):
        if not 0 <= p <= 100:
            raise ValueError(f"{name} must be in [0, 100], got {p}")
    if init not in ("zeros", "noise"):
        raise ValueError(f"init must be 'zeros' or 'noise', got {init!r}")
    dtype = model_dtype(model)
    x = np.zeros((len(units),) + shape_in, dtype=dtype)
    if init == "noise":
        x += np.random.default_rng(seed).normal(0, 0.01, x.shape).astype(dtype)
    seed_grad = unit_seed((len(units),) + tuple(shape[1:]), units, positions if len(shape) == 4 else None, dtype)
    pick = seed_grad.reshape(len(units), -1).argmax(axis=1)
    history = []
    bar = _progress(steps, f"maximizing {layer}", progress)
    for t in bar:
        y, g = gradient_to_input(model, x, layer, seed_grad)
        history.append(y.reshape(len(units), -1)[np.arange(len(units)), pick])
        g = g - 2 * l2 * x
        rms = np.sqrt(np.mean(g.reshape(len(units), -1) ** 2, axis=1)).reshape(-1, 1, 1, 1)
        x = x + _cosine(lr, t, steps) * g / (rms + 1e-12)
        if decay:
            x *= 1 - decay
        if blur_every and (t + 1) % blur_every == 0:
            x = gaussian_blur(x, blur_sigma)
        if norm_percentile:
            norm = np.sqrt((x ** 2).sum(axis=1))                                  # (U, H, W)
            x *= (norm >= np.percentile(norm.reshape(len(units), -1), norm_percentile, axis=1)[:, None, None]
                  )[:, None]
        if contribution_percentile:
            contrib = np.abs((x * g).sum(axis=1))
            x *= (contrib >= np.percentile(contrib.reshape(len(units), -1), contribution_percentile,
                                           axis=1)[:, None, None])[:, None]
        if progress and t % 10 == 0:
            bar.set_postfix(score=f"{float(np.mean(history[-1])):.3g}")
    y = forward_to(model, x, layer)
    history.append(y.reshape(len(units), -1)[np.arange(len(units)), pick])
    return Maximized(x, np.array(history, dtype=np.float64), layer, units, positions)


def class_model(model, classes, steps=200, lr=0.1, l2=0.05, progress=True, **regularizers):
    """Class-model images (Simonyan et al.): for each class of `classes` (an int or a list), the image that
    maximizes its score before the softmax minus l2 * ||I||^2, by gradient ascent from zeros. Other keyword
    arguments are maximize's (the Yosinski regularizers, init, seed). Returns Maximized."""
    layer = score_layer(model)
    num_classes = output_shapes(model)[layer][1]
    classes = [check_class(model, c, num_classes) for c in ([classes] if np.ndim(classes) == 0 else classes)]
    return maximize(model, layer, classes, steps=steps, lr=lr, l2=l2, progress=progress, **regularizers)


# --------------------------------------------------------------------------------------------- inversion

@dataclass
class Inversion:
    """image (C, H, W): the reconstruction; distances (steps + 1,): ||Phi(x) - Phi0||^2 / ||Phi0||^2 before
    each step and after the last; layer."""
    image: np.ndarray
    distances: np.ndarray
    layer: str


def invert(model, layer, image=None, code=None, steps=200, lr=0.05, alpha=6.0, alpha_weight=1e-4,
           tv_weight=0.5, tv_beta=2.0, bound=None, seed=0, progress=True):
    """Reconstruct an image from its code at `layer` (Mahendran & Vedaldi):

        x* = argmin ||Phi(x) - Phi0||^2 / ||Phi0||^2 + alpha_weight * R_alpha(x) + tv_weight * R_TV(x)

    with R_alpha = mean(|x / B|^alpha) (keeps pixels in range) and R_TV the mean of (dx^2 + dy^2)^(tv_beta/2)
    / B^tv_beta (favours piecewise-smooth images); B = `bound`, default the largest |pixel| of `image` (1 when
    only a code is given). Phi0 is `code` (the layer's output for one image) or the code of `image`.

    Gradient descent with momentum 0.9 from noise (std 0.1 B) around the image's per-channel mean (0 with a
    code only); each step moves the image by the velocity divided by its root mean square times a step size
    decaying from `lr` * B to 0 along half a cosine. (Per-pixel step sizes, as Adam's, let the smoothness prior
    flatten the image before the features are matched, and a flat image can switch every ReLU off.)
    Returns an Inversion.
    """
    get_layer(model, layer)
    steps = _check_steps(steps)
    dtype = model_dtype(model)
    shape_in = input_shape_of(model)
    if (image is None) == (code is None):
        raise ValueError("give the image to invert or its code at the layer, not both")
    if image is not None:
        image = check_images(model, image, "image")[:1]
        code = forward_to(model, image, layer)
        if bound is None:
            bound = float(np.abs(image).max()) or 1.0
        mean = image[0].mean(axis=(1, 2), keepdims=True)
    else:
        expected = (1,) + tuple(output_shapes(model, shape_in)[layer][1:])
        code = np.asarray(code, dtype=dtype).reshape(expected) if np.size(code) == np.prod(expected) else None
        if code is None:
            raise ValueError(f"code must hold the layer's output for one image, shape {expected}")
        mean = 0.0
    bound = 1.0 if bound is None else float(bound)
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    code = code.astype(np.float64)
    norm = float(np.sum(code ** 2)) or 1.0
    rng = np.random.default_rng(seed)
    x = (mean + rng.normal(0, 0.1 * bound, shape_in)).astype(np.float64)
    velocity = np.zeros_like(x)
    distances = []
    bar = _progress(steps, f"inverting {layer}", progress)
    for t in bar:
        diff = {}

        def seed_grad(y):
            diff["d"] = y.astype(np.float64) - code
            return 2 * diff["d"] / norm
        _, g = gradient_to_input(model, x[None].astype(dtype), layer, seed_grad)
        distances.append(float(np.sum(diff["d"] ** 2)) / norm)
        _, g_alpha = alpha_norm(x, alpha, bound)
        _, g_tv = total_variation(x, tv_beta, bound)
        g = g[0].astype(np.float64) + alpha_weight * g_alpha + tv_weight * g_tv
        velocity = 0.9 * velocity + g
        x -= _cosine(lr * bound, t, steps) * velocity / (np.sqrt(np.mean(velocity ** 2)) + 1e-12)
        if progress and t % 10 == 0:
            bar.set_postfix(distance=f"{distances[-1]:.3g}")
    final = forward_to(model, x[None].astype(dtype), layer).astype(np.float64)
    distances.append(float(np.sum((final - code) ** 2)) / norm)
    return Inversion(x.astype(dtype), np.array(distances), layer)


def invert_layers(model, image, layers, **options):
    """Reconstructions of `image` from each of `layers` (a list of Inversion), for side-by-side display."""
    return [invert(model, layer, image=image, **options) for layer in layers]
