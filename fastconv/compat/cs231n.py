"""The layer API of CS231n's ``layers.py``, ``fast_layers.py`` and ``layer_utils.py``, run by fastconv.

Code written against those files swaps its backend by changing one import::

    from fastconv.compat.cs231n import *      # instead of cs231n.layers / fast_layers / layer_utils

Every ``*_forward(...)`` returns ``(out, cache)`` and every ``*_backward(dout, cache)`` returns the gradients in
the original order. Caches are opaque: pass them back unchanged. Conventions kept from the originals:

- images are NCHW; conv weights are (F, C, HH, WW); ``conv_param = {'stride', 'pad'}`` (zero padding on every
  side), output size ``1 + (H + 2 * pad - HH) // stride``;
- ``pool_param = {'pool_height', 'pool_width', 'stride'}``, no padding, output ``1 + (H - pool_height) // stride``;
  windows may overlap (3x3 stride 2). The gradient of a window goes to its FIRST maximum in row-major order, as
  the naive and im2col originals do (``max_pool_backward_reshape`` split it among tied maxima);
- affine weights are (D, M), NOT torch's (M, D): ``out = x.reshape(N, D) @ w + b``;
- batch norm: ``bn_param = {'mode': 'train'|'test', 'eps' (1e-5), 'momentum' (0.9), 'running_mean',
  'running_var'}``; missing running statistics start as zeros and, in training, the dict receives NEW arrays
  ``running = momentum * running + (1 - momentum) * batch_stat`` with the BIASED batch variance (the original's
  ``np.var``). Both differ from torch, whose momentum weighs the batch statistic and whose running variance is
  unbiased. Training needs more than one value per feature (N > 1, or N*H*W > 1 for the spatial version);
- dropout: ``dropout_param = {'p', 'mode', 'seed'}`` with p the KEEP probability (inverted dropout: kept values are
  divided by p). The mask is ``rand(*x.shape) < p`` drawn from ``np.random.RandomState(seed)`` when a seed is given
  (the same mask as the original, which calls ``np.random.seed(seed)`` -- here the global generator is left
  alone) and from the global ``np.random`` otherwise;
- ``softmax_loss(x, y)`` and ``svm_loss(x, y)`` return ``(loss, dx)`` with the loss averaged over the batch.

Arrays may be float32 or float64 (float32 in, float32 out); operands of mixed dtypes are computed in their
common NumPy dtype, and integer arrays as float64.
"""
import numpy as np

from .. import functional as F

__all__ = [
    "affine_forward", "affine_backward", "relu_forward", "relu_backward",
    "batchnorm_forward", "batchnorm_backward", "batchnorm_backward_alt",
    "spatial_batchnorm_forward", "spatial_batchnorm_backward",
    "layernorm_forward", "layernorm_backward", "spatial_groupnorm_forward", "spatial_groupnorm_backward",
    "dropout_forward", "dropout_backward", "softmax_loss", "svm_loss",
    "conv_forward_fast", "conv_backward_fast", "conv_forward_naive", "conv_backward_naive",
    "conv_forward_im2col", "conv_backward_im2col", "conv_forward_strides", "conv_backward_strides",
    "max_pool_forward_fast", "max_pool_backward_fast", "max_pool_forward_naive", "max_pool_backward_naive",
    "max_pool_forward_reshape", "max_pool_backward_reshape", "max_pool_forward_im2col", "max_pool_backward_im2col",
    "affine_relu_forward", "affine_relu_backward", "affine_bn_relu_forward", "affine_bn_relu_backward",
    "conv_relu_forward", "conv_relu_backward", "conv_bn_relu_forward", "conv_bn_relu_backward",
    "conv_relu_pool_forward", "conv_relu_pool_backward",
]


def _floats(*arrays):
    """The arrays converted to their common dtype: float32 or float64 (anything else, e.g. int, becomes float64),
    as NumPy's own arithmetic in the original layers would promote them."""
    arrays = [np.asarray(a) for a in arrays]
    dtype = np.result_type(*arrays)
    if dtype not in (np.float32, np.float64):
        dtype = np.float64
    return [a.astype(dtype, copy=False) for a in arrays]


# ------------------------------------------------------------------------------------------- affine and relu

def affine_forward(x, w, b):
    """Fully connected layer: x (N, d1, ..., dk) is flattened to (N, D); w (D, M); b (M,). Returns out (N, M)."""
    x, w, b = _floats(x, w, b)
    out = np.empty((x.shape[0], w.shape[1]), x.dtype)
    out[...] = b
    F.gemm(x.reshape(x.shape[0], -1), w, out=out, beta=1.0)
    return out, (x, w, b)


def affine_backward(dout, cache):
    """Gradients of affine_forward: dx (x's shape), dw (D, M), db (M,) for dout (N, M)."""
    x, w, _ = cache
    dout = np.asarray(dout, x.dtype)
    dx = F.gemm(dout, w, trans_b=True).reshape(x.shape)
    dw = F.gemm(x.reshape(x.shape[0], -1), dout, trans_a=True)
    return dx, dw, dout.sum(axis=0)


def relu_forward(x):
    """max(x, 0) for x of any shape; the cache is x."""
    (x,) = _floats(x)
    return F.relu(x), x


def relu_backward(dout, cache):
    """dout where the forward input was > 0, else 0."""
    dout, x = _floats(dout, cache)
    return F.relu_backward(dout, x)


# ------------------------------------------------------------------------------------------- normalization

def _batchnorm(x, gamma, beta, bn_param):
    """Batch norm over axis 1 of x (N, C, *) with the original's bn_param protocol (see the module docstring)."""
    x, gamma, beta = _floats(x, gamma, beta)
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    channels = x.shape[1]
    running_mean = bn_param.get("running_mean", np.zeros(channels, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.zeros(channels, dtype=x.dtype))
    if mode == "train":
        # With torch's momentum 1 the engine writes the batch's unbiased variance into batch_var; the original
        # keeps the biased one, m / (m - 1) times smaller.
        batch_var = np.zeros(channels, x.dtype)
        out, saved = F.batch_norm(x, gamma, beta, None, batch_var, True, 1.0, eps)
        m = x.size // channels
        batch_var *= (m - 1) / m
        running_mean = momentum * running_mean + (1 - momentum) * saved[0]
        running_var = momentum * running_var + (1 - momentum) * batch_var
    elif mode == "test":
        out, saved = F.batch_norm(x, gamma, beta, np.asarray(running_mean, x.dtype),
                                  np.asarray(running_var, x.dtype), False, eps=eps)
    else:
        raise ValueError(f'Invalid forward batchnorm mode "{mode}" (bn_param["mode"] must be "train" or "test")')
    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, (x, gamma, saved, mode == "train")


def _batchnorm_backward(dout, cache):
    x, gamma, saved, training = cache
    return F.batch_norm_backward(np.asarray(dout, x.dtype), x, gamma, saved, training)


def batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalization of x (N, D) per feature; gamma, beta (D,). Updates bn_param (module docstring)."""
    if np.ndim(x) != 2:
        raise ValueError(f"batchnorm_forward needs x of shape (N, D), got shape {np.shape(x)}")
    return _batchnorm(x, gamma, beta, bn_param)


def batchnorm_backward(dout, cache):
    """Gradients of batchnorm_forward: dx (N, D), dgamma (D,), dbeta (D,)."""
    return _batchnorm_backward(dout, cache)


batchnorm_backward_alt = batchnorm_backward


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """Batch normalization of x (N, C, H, W) per channel; gamma, beta (C,). Updates bn_param as batchnorm does."""
    if np.ndim(x) != 4:
        raise ValueError(f"spatial_batchnorm_forward needs x of shape (N, C, H, W), got shape {np.shape(x)}")
    return _batchnorm(x, gamma, beta, bn_param)


def spatial_batchnorm_backward(dout, cache):
    """Gradients of spatial_batchnorm_forward: dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    return _batchnorm_backward(dout, cache)


def _row_norm(x2, eps):
    """Each row of x2 (R, K), K > 1, normalized by its own mean and biased variance: the engine's batch norm of
    the (1, R, K) tensor, whose channels are the rows. Returns (xhat (R, K), saved)."""
    xhat, saved = F.batch_norm(x2[None], None, None, training=True, eps=eps)
    return xhat[0], saved


def _row_norm_backward(dxhat2, x2, saved):
    return F.batch_norm_backward(dxhat2[None], x2[None], None, saved)[0][0]


def layernorm_forward(x, gamma, beta, ln_param):
    """Layer normalization: each row of x (N, D) by its own statistics, then * gamma (D,) + beta (D,).
    ln_param: {'eps': 1e-5}. Train and test behave the same."""
    x, gamma, beta = _floats(x, gamma, beta)
    xhat, saved = _row_norm(x, ln_param.get("eps", 1e-5))
    return xhat * gamma + beta, (x, xhat, gamma, saved)


def layernorm_backward(dout, cache):
    """Gradients of layernorm_forward: dx (N, D), dgamma (D,), dbeta (D,)."""
    x, xhat, gamma, saved = cache
    dout = np.asarray(dout, x.dtype)
    dx = _row_norm_backward(dout * gamma, x, saved)
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)


def spatial_groupnorm_forward(x, gamma, beta, G, gn_param):
    """Group normalization: x (N, C, H, W) normalized over each of G groups of C // G channels per sample, then
    * gamma + beta, both of shape (1, C, 1, 1) as in the original (or (C,)). gn_param: {'eps': 1e-5}."""
    x, gamma, beta = _floats(x, gamma, beta)
    n, c, h, w = x.shape
    if c % G:
        raise ValueError(f"G={G} must divide the number of channels of x {x.shape}")
    grouped = x.reshape(n * G, -1)
    xhat, saved = _row_norm(grouped, gn_param.get("eps", 1e-5))
    xhat = xhat.reshape(x.shape)
    scale, shift = gamma.reshape(1, c, 1, 1), beta.reshape(1, c, 1, 1)
    return xhat * scale + shift, (grouped, xhat, gamma, saved)


def spatial_groupnorm_backward(dout, cache):
    """Gradients of spatial_groupnorm_forward: dx (N, C, H, W), dgamma and dbeta of gamma's shape."""
    grouped, xhat, gamma, saved = cache
    dout = np.asarray(dout, grouped.dtype)
    c = xhat.shape[1]
    dxhat = dout * gamma.reshape(1, c, 1, 1)
    dx = _row_norm_backward(dxhat.reshape(grouped.shape), grouped, saved).reshape(xhat.shape)
    dgamma = (dout * xhat).sum(axis=(0, 2, 3)).reshape(gamma.shape)
    return dx, dgamma, dout.sum(axis=(0, 2, 3)).reshape(gamma.shape)


# ------------------------------------------------------------------------------------------- dropout and losses

def dropout_forward(x, dropout_param):
    """Inverted dropout, p the KEEP probability: train: out = x * mask / p; test: out = x (the same array).
    Cache: (dropout_param, mask) with mask a bool array (True = kept) in train mode, None in test mode."""
    p, mode = dropout_param["p"], dropout_param["mode"]
    if mode == "test":
        return x, (dropout_param, None)
    if mode != "train":
        raise ValueError(f'dropout_param["mode"] must be "train" or "test", got {mode!r}')
    if not 0 <= p <= 1:
        raise ValueError(f'dropout_param["p"] (the keep probability) must be in [0, 1], got {p}')
    (x,) = _floats(x)
    random = np.random.RandomState(dropout_param["seed"]) if "seed" in dropout_param else np.random
    mask = random.rand(*x.shape) < p
    # Scaling the kept values is the engine's dropout backward; it takes the DROP probability.
    return F.dropout_backward(x, mask, 1 - p), (dropout_param, mask)


def dropout_backward(dout, cache):
    """Gradient of dropout_forward: dout * mask / p in train mode, dout in test mode."""
    dropout_param, mask = cache
    if dropout_param["mode"] == "test":
        return dout
    (dout,) = _floats(dout)
    return F.dropout_backward(dout, mask, 1 - dropout_param["p"])


def softmax_loss(x, y):
    """Mean softmax cross-entropy of scores x (N, C) for labels y (N,) in [0, C). Returns (loss, dx)."""
    (x,) = _floats(x)
    loss, probs = F.softmax_cross_entropy(x, y)
    return loss, F.softmax_cross_entropy_backward(probs, y)


def svm_loss(x, y):
    """Mean multiclass hinge loss, margin 1: sum over j != y_i of max(0, x_ij - x_iy_i + 1). Returns (loss, dx)."""
    (x,) = _floats(x)
    rows = np.arange(x.shape[0])
    margins = np.maximum(0, x - x[rows, y][:, None] + 1)
    margins[rows, y] = 0
    dx = (margins > 0).astype(x.dtype)
    dx[rows, y] -= dx.sum(axis=1)
    return margins.sum() / x.shape[0], dx / x.shape[0]


# ------------------------------------------------------------------------------------------- convolution, pooling

def conv_forward_fast(x, w, b, conv_param):
    """Convolution of x (N, C, H, W) with w (F, C, HH, WW) plus b (F,); conv_param {'stride', 'pad'}.
    Returns out (N, F, 1 + (H + 2 pad - HH) // stride, 1 + (W + 2 pad - WW) // stride)."""
    x, w, b = _floats(x, w, b)
    out = F.conv2d(x, w, b, conv_param["stride"], conv_param["pad"])
    return out, (x, w, b, conv_param)


def conv_backward_fast(dout, cache):
    """Gradients of conv_forward_fast: dx (N, C, H, W), dw (F, C, HH, WW), db (F,)."""
    x, w, _, conv_param = cache
    return F.conv2d_backward(np.asarray(dout, x.dtype), x, w, conv_param["stride"], conv_param["pad"])


conv_forward_naive = conv_forward_im2col = conv_forward_strides = conv_forward_fast
conv_backward_naive = conv_backward_im2col = conv_backward_strides = conv_backward_fast


def max_pool_forward_fast(x, pool_param):
    """Max pooling of x (N, C, H, W); pool_param {'pool_height', 'pool_width', 'stride'}.
    Returns out (N, C, 1 + (H - pool_height) // stride, 1 + (W - pool_width) // stride)."""
    (x,) = _floats(x)
    out, argmax = F.max_pool2d(x, (pool_param["pool_height"], pool_param["pool_width"]), pool_param["stride"])
    return out, (x.shape, argmax)


def max_pool_backward_fast(dout, cache):
    """Gradient of max_pool_forward_fast: dx (N, C, H, W), each window's dout at its first maximum."""
    input_shape, argmax = cache
    (dout,) = _floats(dout)
    return F.max_pool2d_backward(dout, argmax, input_shape)


max_pool_forward_naive = max_pool_forward_reshape = max_pool_forward_im2col = max_pool_forward_fast
max_pool_backward_naive = max_pool_backward_reshape = max_pool_backward_im2col = max_pool_backward_fast


# ------------------------------------------------------------------------------------------- sandwich layers

def affine_relu_forward(x, w, b):
    """affine -> relu."""
    a, fc_cache = affine_forward(x, w, b)
    out, relu_cache = relu_forward(a)
    return out, (fc_cache, relu_cache)


def affine_relu_backward(dout, cache):
    """Returns dx, dw, db."""
    fc_cache, relu_cache = cache
    return affine_backward(relu_backward(dout, relu_cache), fc_cache)


def affine_bn_relu_forward(x, w, b, gamma, beta, bn_param):
    """affine -> batchnorm -> relu."""
    a, fc_cache = affine_forward(x, w, b)
    an, bn_cache = batchnorm_forward(a, gamma, beta, bn_param)
    out, relu_cache = relu_forward(an)
    return out, (fc_cache, bn_cache, relu_cache)


def affine_bn_relu_backward(dout, cache):
    """Returns dx, dw, db, dgamma, dbeta."""
    fc_cache, bn_cache, relu_cache = cache
    da, dgamma, dbeta = batchnorm_backward(relu_backward(dout, relu_cache), bn_cache)
    return (*affine_backward(da, fc_cache), dgamma, dbeta)


def conv_relu_forward(x, w, b, conv_param):
    """conv -> relu."""
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    out, relu_cache = relu_forward(a)
    return out, (conv_cache, relu_cache)


def conv_relu_backward(dout, cache):
    """Returns dx, dw, db."""
    conv_cache, relu_cache = cache
    return conv_backward_fast(relu_backward(dout, relu_cache), conv_cache)


def conv_bn_relu_forward(x, w, b, gamma, beta, conv_param, bn_param):
    """conv -> spatial batchnorm -> relu."""
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    an, bn_cache = spatial_batchnorm_forward(a, gamma, beta, bn_param)
    out, relu_cache = relu_forward(an)
    return out, (conv_cache, bn_cache, relu_cache)


def conv_bn_relu_backward(dout, cache):
    """Returns dx, dw, db, dgamma, dbeta."""
    conv_cache, bn_cache, relu_cache = cache
    da, dgamma, dbeta = spatial_batchnorm_backward(relu_backward(dout, relu_cache), bn_cache)
    return (*conv_backward_fast(da, conv_cache), dgamma, dbeta)


def conv_relu_pool_forward(x, w, b, conv_param, pool_param):
    """conv -> relu -> max pool."""
    a, conv_cache = conv_forward_fast(x, w, b, conv_param)
    s, relu_cache = relu_forward(a)
    out, pool_cache = max_pool_forward_fast(s, pool_param)
    return out, (conv_cache, relu_cache, pool_cache)


def conv_relu_pool_backward(dout, cache):
    """Returns dx, dw, db."""
    conv_cache, relu_cache, pool_cache = cache
    ds = max_pool_backward_fast(dout, pool_cache)
    return conv_backward_fast(relu_backward(ds, relu_cache), conv_cache)
