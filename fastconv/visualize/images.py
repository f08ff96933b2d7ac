"""Turning arrays into pictures: scaling to [0, 1], tiling into grids, colour maps, overlays, PNG files.

Conventions: a picture is a float array in [0, 1] of shape (H, W) (gray) or (H, W, 3) (RGB); a network image is
(C, H, W) with C = 1 or 3 (other channel counts are shown by their mean). PNG files are written with Pillow
(extra ``fastconv[images]``), imported when a file is written.
"""
import os

import numpy as np


def _pillow():
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise ImportError("writing pictures needs Pillow: pip install 'fastconv[images]'") from None
    return Image, ImageDraw, ImageFont


def to_hwc(image):
    """A (C, H, W) network image as a picture: (H, W) for one channel, (H, W, 3) for three, the channel mean
    for any other count. Values are not rescaled."""
    x = np.asarray(image, dtype=np.float64)
    if x.ndim == 2:
        return x
    if x.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {x.shape}")
    if x.shape[0] == 1:
        return x[0]
    if x.shape[0] == 3:
        return x.transpose(1, 2, 0)
    return x.mean(axis=0)


def rescale(x, symmetric=False):
    """Map x linearly onto [0, 1]: min -> 0 and max -> 1, or with `symmetric` 0 -> 0.5 and the largest |x| to 0
    or 1 (signed quantities such as weights and gradients keep zero gray). A constant array becomes 0.5."""
    x = np.asarray(x, dtype=np.float64)
    if symmetric:
        m = np.max(np.abs(x)) if x.size else 0.0
        return np.full(x.shape, 0.5) if m == 0 else 0.5 + x / (2 * m)
    lo, hi = (x.min(), x.max()) if x.size else (0.0, 0.0)
    return np.full(x.shape, 0.5) if hi == lo else (x - lo) / (hi - lo)


def display(image):
    """A network image (C, H, W) as a picture in [0, 1]: kept as is when already inside [0, 1] (pixels of a
    dataset in [0, 1] keep their brightness), else rescaled by its min and max."""
    x = to_hwc(image)
    if x.size and x.min() >= 0 and x.max() <= 1:
        return x
    return rescale(x)


def as_rgb(picture):
    """(H, W) or (H, W, 3) -> (H, W, 3)."""
    p = np.asarray(picture, dtype=np.float64)
    return np.repeat(p[..., None], 3, axis=2) if p.ndim == 2 else p


def upscale(picture, factor):
    """Nearest-neighbour enlargement by an integer factor (small maps stay crisp)."""
    factor = int(factor)
    if factor < 1:
        raise ValueError(f"scale factor must be a positive integer, got {factor}")
    p = np.asarray(picture)
    return p if factor == 1 else p.repeat(factor, axis=0).repeat(factor, axis=1)


def auto_scale(height, target=128):
    """The integer factor that brings a picture of `height` pixels to at least about `target` pixels."""
    return max(1, -(-int(target) // max(1, int(height))))


def tile(pictures, ncols=None, pad=1, pad_value=1.0):
    """Arrange N pictures of one size into a grid, row by row, `pad` pixels of `pad_value` between them and
    around. pictures: (N, h, w) or (N, h, w, 3); ncols default ceil(sqrt(N)). Returns (rows*(h+pad)+pad,
    ncols*(w+pad)+pad[, 3])."""
    p = np.asarray(pictures, dtype=np.float64)
    if p.ndim not in (3, 4) or len(p) == 0:
        raise ValueError(f"tile needs a non-empty (N, h, w) or (N, h, w, 3) stack, got shape {p.shape}")
    n, h, w = p.shape[:3]
    ncols = int(np.ceil(np.sqrt(n))) if ncols is None else int(ncols)
    nrows = -(-n // ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad) + p.shape[3:], pad_value)
    for k in range(n):
        r, c = divmod(k, ncols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = p[k]
    return grid


def side_by_side(pictures, pad=2, pad_value=1.0):
    """Pictures of one height next to each other (gray ones become RGB when any is RGB)."""
    pics = [np.asarray(p, dtype=np.float64) for p in pictures]
    if any(p.ndim == 3 for p in pics):
        pics = [as_rgb(p) for p in pics]
    h = pics[0].shape[0]
    if any(p.shape[0] != h for p in pics):
        raise ValueError(f"side_by_side needs one height, got {[p.shape for p in pics]}")
    width = sum(p.shape[1] for p in pics) + pad * (len(pics) + 1)
    out = np.full((h + 2 * pad, width) + pics[0].shape[2:], pad_value)
    x = pad
    for p in pics:
        out[pad:pad + h, x:x + p.shape[1]] = p
        x += p.shape[1] + pad
    return out


# A perceptual blue -> green -> yellow map (anchors sampled from viridis), so heat maps need no matplotlib.
_ANCHORS = np.array([[0.267, 0.005, 0.329], [0.283, 0.141, 0.458], [0.254, 0.265, 0.530],
                     [0.207, 0.372, 0.553], [0.164, 0.471, 0.558], [0.128, 0.567, 0.551],
                     [0.135, 0.659, 0.518], [0.267, 0.749, 0.441], [0.478, 0.821, 0.318],
                     [0.741, 0.873, 0.150], [0.993, 0.906, 0.144]])


def colormap(values):
    """Values in [0, 1] (any shape) -> RGB in [0, 1] (shape + (3,)), interpolating the anchors above."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0, 1) * (len(_ANCHORS) - 1)
    i = np.minimum(np.floor(v).astype(np.int64), len(_ANCHORS) - 2)
    f = (v - i)[..., None]
    return _ANCHORS[i] * (1 - f) + _ANCHORS[i + 1] * f


def overlay(picture, heat, alpha=0.5):
    """Blend a heat map (H, W) in [0, 1], coloured, over a picture (H, W) or (H, W, 3): RGB (H, W, 3)."""
    base = as_rgb(picture)
    if base.shape[:2] != np.shape(heat):
        raise ValueError(f"overlay: picture {base.shape[:2]} and heat map {np.shape(heat)} differ in size")
    return (1 - alpha) * base + alpha * colormap(heat)


def to_uint8(picture):
    return np.round(np.clip(np.asarray(picture, dtype=np.float64), 0, 1) * 255).astype(np.uint8)


def save_png(path, picture, scale=1):
    """Write a picture ((H, W) or (H, W, 3), floats in [0, 1] or uint8) to `path` as PNG, enlarged `scale`
    times (nearest neighbour). Creates the folder. Returns the file's (width, height)."""
    Image, _, _ = _pillow()
    p = np.asarray(picture)
    if p.dtype != np.uint8:
        p = to_uint8(p)
    p = upscale(p, scale)
    if p.ndim not in (2, 3) or (p.ndim == 3 and p.shape[2] != 3):
        raise ValueError(f"a picture is (H, W) or (H, W, 3), got shape {p.shape}")
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    Image.fromarray(p, mode="L" if p.ndim == 2 else "RGB").save(path, format="PNG")
    return p.shape[1], p.shape[0]


def labelled_grid(cells, labels, ncols, cell_px, pad=4, text_px=12):
    """A grid of pictures, each enlarged to `cell_px` (nearest, integer factor) with a text line under it.

    cells: list of pictures of one size (gray or RGB); labels: a string per cell. Returns RGB uint8 (drawn with
    Pillow's default font)."""
    Image, ImageDraw, ImageFont = _pillow()
    factor = max(1, cell_px // max(1, cells[0].shape[0]))
    big = [as_rgb(upscale(c, factor)) for c in cells]
    h, w = big[0].shape[:2]
    nrows = -(-len(cells) // ncols)
    cw, ch = w + pad, h + text_px + pad
    canvas = np.ones((nrows * ch + pad, ncols * cw + pad, 3))
    for k, b in enumerate(big):
        r, c = divmod(k, ncols)
        canvas[pad + r * ch:pad + r * ch + h, pad + c * cw:pad + c * cw + w] = b
    img = Image.fromarray(to_uint8(canvas))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for k, text in enumerate(labels):
        r, c = divmod(k, ncols)
        draw.text((pad + c * cw, pad + r * ch + h), str(text), fill=(0, 0, 0), font=font)
    return np.asarray(img)
