"""Weight initializers, each filling an array in place from an explicit numpy Generator.

fan_in = in_channels/groups * kh * kw for a conv weight (out, in/groups, kh, kw), `in` for a linear (out, in);
fan_out likewise with out.
"""
import numpy as np


def _fans(w):
    if w.ndim < 2:
        raise ValueError(f"initializers need a weight of 2 or more dimensions, got shape {w.shape}")
    receptive = int(np.prod(w.shape[2:])) if w.ndim > 2 else 1
    return w.shape[1] * receptive, w.shape[0] * receptive


def _rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {rng!r}")
    return rng


def gaussian(w, rng, std=0.01, mean=0.0):
    """N(mean, std^2): the papers' init (AlexNet std 0.01, ZFNet 0.01, VGG's shallow nets 0.01)."""
    w[...] = _rng(rng).normal(mean, std, size=w.shape)
    return w


def xavier_uniform(w, rng, gain=1.0):
    """Glorot & Bengio: U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(w)
    a = gain * np.sqrt(6.0 / (fan_in + fan_out))
    w[...] = _rng(rng).uniform(-a, a, size=w.shape)
    return w


def xavier_normal(w, rng, gain=1.0):
    """Glorot & Bengio, normal form: N(0, gain^2 * 2 / (fan_in + fan_out))."""
    fan_in, fan_out = _fans(w)
    w[...] = _rng(rng).normal(0.0, gain * np.sqrt(2.0 / (fan_in + fan_out)), size=w.shape)
    return w


def kaiming_normal(w, rng, mode="fan_in"):
    """He et al. ("Xavier/2", ResNet): N(0, 2 / fan), fan = fan_in (default) or fan_out."""
    fan_in, fan_out = _fans(w)
    fan = {"fan_in": fan_in, "fan_out": fan_out}.get(mode)
    if fan is None:
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    w[...] = _rng(rng).normal(0.0, np.sqrt(2.0 / fan), size=w.shape)
    return w


def constant(w, value):
    w[...] = value
    return w
