"""Occlusion sensitivity (Zeiler & Fergus 2014): slide a gray square across the image and record the
probability of the true class at every position of the square. Where covering the image makes that probability
drop, the network was looking."""
from dataclasses import dataclass

import numpy as np

from .. import functional as F
from ._core import check_class, check_images, output_shapes, score_layer
from .gradients import class_scores


@dataclass
class Occlusion:
    """probs (len(tops), len(lefts)): the class probability with the square's top-left corner at
    (tops[r], lefts[c]); pixel_map (H, W): for every pixel the mean of probs over the placements covering it;
    base: the probability of the unoccluded image; target, size, stride, fill as used."""
    probs: np.ndarray
    pixel_map: np.ndarray
    tops: np.ndarray
    lefts: np.ndarray
    base: float
    target: int
    size: int
    stride: int
    fill: np.ndarray


def _starts(length, size, stride):
    """Top-left corners along one axis: every stride, plus the last one that fits so the far edge is covered."""
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return np.array(starts)


def occlusion(model, image, target=None, size=None, stride=None, fill="mean", batch_size=32):
    """Occlusion map of `image` (C, H, W) for class `target` (default: the predicted class).

    size: side of the square (default max(2, min(H, W) // 4)); stride: its step (default max(1, size // 4));
    fill: the square's value -- "mean" (the image's per-channel mean: gray on natural images), a number, or
    one value per channel. Returns an Occlusion."""
    x = check_images(model, image, "image")[:1]
    _, c, h, w = x.shape
    num_classes = output_shapes(model, x.shape[1:])[score_layer(model)][1]
    size = max(2, min(h, w) // 4) if size is None else int(size)
    if not 1 <= size <= min(h, w):
        raise ValueError(f"size must be between 1 and the image's smaller side {min(h, w)}, got {size}")
    stride = max(1, size // 4) if stride is None else int(stride)
    if stride < 1:
        raise ValueError(f"stride must be positive, got {stride}")
    if isinstance(fill, str):
        if fill != "mean":
            raise ValueError(f"fill must be 'mean', a number or one value per channel, got {fill!r}")
        fill = x[0].mean(axis=(1, 2))
    fill = np.broadcast_to(np.asarray(fill, dtype=x.dtype).reshape(-1), (c,)).copy()
    base = F.softmax(class_scores(model, x).astype(np.float64), axis=1)[0]
    target = int(np.argmax(base)) if target is None else check_class(model, target, num_classes)
    tops, lefts = _starts(h, size, stride), _starts(w, size, stride)
    corners = [(t, l) for t in tops for l in lefts]
    probs = np.empty(len(corners))
    for b in range(0, len(corners), batch_size):
        batch = np.repeat(x, len(corners[b:b + batch_size]), axis=0)
        for k, (t, l) in enumerate(corners[b:b + batch_size]):
            batch[k, :, t:t + size, l:l + size] = fill[:, None, None]
        probs[b:b + len(batch)] = F.softmax(class_scores(model, batch).astype(np.float64), axis=1)[:, target]
    probs = probs.reshape(len(tops), len(lefts))
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for r, t in enumerate(tops):
        for q, l in enumerate(lefts):
            total[t:t + size, l:l + size] += probs[r, q]
            count[t:t + size, l:l + size] += 1
    return Occlusion(probs, total / count, tops, lefts, float(base[target]), target, size, stride, fill)
