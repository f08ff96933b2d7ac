"""The dataset patches that excite a unit most (Zeiler & Fergus 2014, Girshick et al. 2014): for each unit of a
layer, the K images whose strongest response of that unit is largest, each cropped to the receptive field of
the position where the response peaked."""
from dataclasses import dataclass

import numpy as np

from ._core import check_images, check_unit, forward_to, get_layer, output_shapes
from .images import display, labelled_grid
from .receptive import crop, receptive_field


@dataclass
class TopPatches:
    """For U units and K patches each:
    values (U, K)        the unit's response (the maximum over its map), best first
    indices (U, K)       which dataset image
    positions (U, K, 2)  (row, col) of the peak in the layer's map ((0, 0) for vector layers)
    boxes (U, K, 4)      (top, left, bottom, right) of the crop in input pixels (bottom, right exclusive)
    patches (U, K, C, h, w)  the crops, zero outside the image; h, w the receptive field's size
    """
    layer: str
    units: list
    values: np.ndarray
    indices: np.ndarray
    positions: np.ndarray
    boxes: np.ndarray
    patches: np.ndarray


def top_patches(model, images, layer, units=None, k=9, batch_size=64):
    """The `k` strongest patches of `images` (N, C, H, W) for each of `units` (default: the first 16 units)
    of `layer`. Each image counts once per unit, at the peak of that unit's map; ties keep dataset order.
    Returns TopPatches."""
    x = check_images(model, images)
    get_layer(model, layer)
    shape = output_shapes(model, x.shape[1:])[layer]
    units = list(range(min(16, shape[1]))) if units is None else [check_unit(model, layer, u, shape) for u in units]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    k = min(int(k), len(x))
    field = receptive_field(model, layer, x.shape[1:])
    best = np.empty((len(x), len(units)), dtype=np.float64)
    where = np.zeros((len(x), len(units), 2), dtype=np.int64)
    for b in range(0, len(x), batch_size):
        y = forward_to(model, x[b:b + batch_size], layer)[:, units]
        if y.ndim == 4:
            flat = y.reshape(y.shape[0], y.shape[1], -1)
            arg = flat.argmax(axis=2)
            best[b:b + len(y)] = np.take_along_axis(flat, arg[..., None], axis=2)[..., 0]
            where[b:b + len(y)] = np.stack(np.unravel_index(arg, y.shape[2:]), axis=-1)
        else:
            best[b:b + len(y)] = y
    order = np.argsort(-best, axis=0, kind="stable")[:k].T                     # (U, K)
    values = np.take_along_axis(best.T, order, axis=1)
    positions = np.stack([where[order[u], u] for u in range(len(units))])
    boxes = np.array([[field.box(*positions[u, j]) for j in range(k)] for u in range(len(units))])
    patches = np.stack([np.stack([crop(x[order[u, j]], boxes[u, j]) for j in range(k)]) for u in range(len(units))])
    return TopPatches(layer, units, values, order, positions, boxes, patches)


def render_top_patches(result, cell_px=64):
    """A picture of TopPatches: one row per unit, its patches left to right, each labelled with the unit
    and the response. Pixels share one linear scale across all patches. RGB uint8."""
    p = result.patches
    lo, hi = float(p.min()), float(p.max())
    scaled = (p - lo) / (hi - lo) if hi > lo else np.full(p.shape, 0.5)
    cells, labels = [], []
    for u, unit in enumerate(result.units):
        for j in range(p.shape[1]):
            cells.append(display(scaled[u, j]))
            labels.append(f"u{unit}: {result.values[u, j]:.3g}")
    return labelled_grid(cells, labels, ncols=p.shape[1], cell_px=cell_px)
