"""The learned kernels as pictures: the first layer's filters as RGB or gray tiles, a higher layer's as one
gray tile per (filter, input channel)."""
import numpy as np

from .. import nn
from ._core import get_layer
from .images import rescale, tile


def conv_layers(model):
    """Dotted names of the model's Conv2d layers, in forward order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def filter_grid(model, layer=None, max_filters=64, max_channels=16, pad=1, scale="filter"):
    """A picture of the kernels of convolution `layer` (default: the first one).

    With 3 input channels each filter is one RGB tile (channels = R, G, B); with 1 a gray tile; otherwise
    each filter is a row of gray tiles, one per input channel (the first `max_channels`), filters one under
    another (the first `max_filters`). Weights are shown with zero as mid-gray, scaled by the largest |w| of
    each filter (scale="filter") or of the whole layer (scale="layer").

    Returns a float picture in [0, 1]: (H, W, 3) for RGB tiles, else (H, W). For F filters of k x k with C in
    (1, 3) the grid has ceil(sqrt(F)) columns; per-channel grids have min(C, max_channels) columns; `pad`
    pixels of white separate the tiles.
    """
    if layer is None:
        names = conv_layers(model)
        if not names:
            raise ValueError("the model has no Conv2d layer to show")
        layer = names[0]
    m = get_layer(model, layer)
    if not isinstance(m, nn.Conv2d):
        raise ValueError(f"layer {layer!r} is a {type(m).__name__}, not a Conv2d; the convolutions are: "
                         f"{', '.join(conv_layers(model))}")
    if scale not in ("filter", "layer"):
        raise ValueError(f"scale must be 'filter' or 'layer', got {scale!r}")
    w = np.asarray(m.params["weight"], dtype=np.float64)[:max_filters]          # (F, C, kh, kw)
    if scale == "layer":
        tiles = rescale(w, symmetric=True)
    else:
        tiles = np.stack([rescale(f, symmetric=True) for f in w])
    f, c = tiles.shape[:2]
    if c == 3:
        return tile(tiles.transpose(0, 2, 3, 1), pad=pad)
    if c == 1:
        return tile(tiles[:, 0], pad=pad)
    c = min(c, max_channels)
    return tile(tiles[:, :c].reshape((f * c,) + tiles.shape[2:]), ncols=c, pad=pad)
