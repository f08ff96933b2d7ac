"""A layer's codes over a dataset laid out in 2-D with t-SNE (van der Maaten & Hinton 2008), drawn as a map of
image thumbnails or as points coloured by label. t-SNE comes from openTSNE when it is installed, else from
scikit-learn (extra ``fastconv[data]``); the labelled-points plot uses matplotlib (extra ``fastconv[plot]``)."""
import inspect

import numpy as np

from ._core import check_images, forward_to, get_layer
from .images import as_rgb, display


def layer_codes(model, images, layer, batch_size=64):
    """The output of `layer` for every image, flattened: (N, D) float64."""
    x = check_images(model, images)
    get_layer(model, layer)
    y = forward_to(model, x, layer, batch_size)
    return y.reshape(len(y), -1).astype(np.float64)


def tsne(codes, perplexity=30.0, seed=0, iterations=1000):
    """2-D t-SNE of codes (N, D): (N, 2) float64. The perplexity is capped at (N - 1) / 3 so small sets work.
    Uses openTSNE when importable, else sklearn.manifold.TSNE (PCA initialization, `seed`); `iterations` of
    gradient descent (at least 500 with scikit-learn, whose first 250 are the early-exaggeration phase)."""
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or len(codes) < 4:
        raise ValueError(f"t-SNE needs codes (N, D) with N >= 4, got shape {codes.shape}")
    perplexity = float(min(perplexity, (len(codes) - 1) / 3))
    try:
        from openTSNE import TSNE as OpenTSNE
    except ImportError:
        OpenTSNE = None
    if OpenTSNE is not None:
        # openTSNE's n_iter counts the iterations after its 250 of early exaggeration
        embedding = OpenTSNE(perplexity=perplexity, random_state=seed, n_iter=max(250, int(iterations) - 250))
        return np.asarray(embedding.fit(codes), dtype=np.float64)
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ImportError("t-SNE needs scikit-learn (pip install 'fastconv[data]') or openTSNE") from None
    iterations = max(500, int(iterations))
    key = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"  # renamed in 1.5
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                **{key: iterations}).fit_transform(codes)


def embed(model, images, layer, perplexity=30.0, seed=0, iterations=1000, batch_size=64):
    """t-SNE of `layer`'s codes over images (N, C, H, W): (N, 2)."""
    return tsne(layer_codes(model, images, layer, batch_size), perplexity, seed, iterations)


def thumbnail_map(coords, images, size=800, thumb=None):
    """Draw each image (N, C, H, W) as a thumbnail at its 2-D position (N, 2) on a white square canvas of
    `size` pixels; later images are drawn over earlier ones. `thumb`: thumbnail side in pixels (default:
    about size / sqrt(N), at least 8). Returns an RGB picture (size, size, 3) in [0, 1]."""
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(images):
        raise ValueError(f"coords must be (N, 2) for N = {len(images)} images, got shape {coords.shape}")
    thumb = int(thumb or max(8, size // max(1, int(np.sqrt(len(images))) * 2)))
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    pos = np.round((coords - lo) / span * (size - thumb)).astype(np.int64)
    canvas = np.ones((size, size, 3))
    for (px, py), image in zip(pos, images):
        picture = as_rgb(display(image))
        h, w = picture.shape[:2]
        rows = np.arange(thumb) * h // thumb
        cols = np.arange(thumb) * w // thumb
        canvas[py:py + thumb, px:px + thumb] = picture[rows][:, cols]
    return canvas


def scatter_plot(coords, labels, path, class_names=None, title=None):
    """Save the points (N, 2) coloured by integer label as a PNG with a legend (matplotlib).
    Returns the file's (width, height)."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global backend or figure manager involved
    except ImportError:
        raise ImportError("the labelled t-SNE plot needs matplotlib: pip install 'fastconv[plot]'") from None
    coords, labels = np.asarray(coords), np.asarray(labels)
    fig = Figure(figsize=(6, 6), dpi=100)
    ax = fig.add_subplot()
    for k in np.unique(labels):
        pick = labels == k
        name = class_names[k] if class_names is not None else str(k)
        ax.scatter(coords[pick, 0], coords[pick, 1], s=8, label=name)
    ax.legend(markerscale=2, fontsize="small", loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    fig.savefig(path, format="png")
    return tuple(int(v) for v in fig.canvas.get_width_height())
