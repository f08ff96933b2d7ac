"""Every picture for one model, written as PNG files with an index.html that opens in a browser.

`write_gallery` chooses sensible layers by itself (the ReLU maps at the start, middle and end of the network
for top patches, three-rule backward passes and inversions; the layer feeding the classifier for t-SNE), so it
works on any model of fastconv.models or any trained one; `default_images` supplies a dataset when none is
given (scikit-learn's digits for one-channel inputs, crops of its two sample photos for RGB ones).
"""
import html
import os
import re
from dataclasses import dataclass

import numpy as np

from .. import nn
from ..models.googlenet import SideBranch
from . import images as pic
from ._core import (RULES, check_images, class_names, forward_to, get_layer, input_shape_of, model_name,
                    output_shapes, score_layer)
from .embedding import embed, scatter_plot, thumbnail_map
from .filters import conv_layers, filter_grid
from .gradients import neuron_backward, saliency
from .occlusion import occlusion
from .optimize import class_model, invert_layers
from .patches import render_top_patches, top_patches
from .receptive import receptive_fields

# Yosinski et al.'s regularizers (L2 decay, blur, clipping by norm and by contribution) at strengths that keep
# small images readable.
YOSINSKI = dict(decay=0.01, blur_every=4, blur_sigma=0.5, norm_percentile=20, contribution_percentile=20)


# --------------------------------------------------------------------------------------------- data

def _resize(images, h, w):
    """Bilinear resize of (N, C, h0, w0) to (N, C, h, w) (half-pixel centres)."""
    from ..data import bilinear_matrix
    rows, cols = bilinear_matrix(images.shape[2], h), bilinear_matrix(images.shape[3], w)
    return np.einsum("ij,ncjk,lk->ncil", rows, images, cols)


def default_images(input_shape, n=256, seed=0):
    """A dataset for a model of input (C, H, W): (images float32 (N, C, H, W) in [0, 1], labels or None,
    class names or None). One channel: the digits of scikit-learn (fastconv.data.load_digits_32, test split,
    resized to H x W); three: random square crops of scikit-learn's two sample photos resized with Pillow
    (labelled by photo); otherwise uniform noise."""
    c, h, w = input_shape
    rng = np.random.default_rng(seed)
    if c == 1:
        from ..data import load_digits_32
        ds = load_digits_32("test")
        x, y = ds.images[:n], ds.labels[:n]
        if (h, w) != x.shape[2:]:
            x = np.clip(_resize(x.astype(np.float64), h, w), 0, 1)
        return x.astype(np.float32), y, [str(k) for k in range(10)]
    if c == 3:
        from PIL import Image
        from sklearn.datasets import load_sample_images
        photos = load_sample_images()
        out, labels = [], []
        for k in range(n):
            label = k % len(photos.images)
            photo = photos.images[label]
            side = int(rng.uniform(0.4, 1.0) * min(photo.shape[:2]))
            top = int(rng.integers(0, photo.shape[0] - side + 1))
            left = int(rng.integers(0, photo.shape[1] - side + 1))
            patch = Image.fromarray(photo[top:top + side, left:left + side]).resize((w, h), Image.BILINEAR)
            out.append(np.asarray(patch, dtype=np.float32).transpose(2, 0, 1) / 255)
            labels.append(label)
        names = [os.path.splitext(os.path.basename(f))[0] for f in photos.filenames]
        return np.stack(out), np.array(labels), names
    return rng.uniform(0, 1, (n, c, h, w)).astype(np.float32), None, None


# --------------------------------------------------------------------------------------------- choices

def map_layers(model, input_shape=None, count=3):
    """Up to `count` layers of the trunk with maps (4-D outputs), spread from first to last: the ReLUs that are
    not inside a branch, and the joins of inception blocks (a Concat's output; what lies inside Concat,
    Residual and SideBranch branches is skipped). Conv2d layers when there are none."""
    shapes = output_shapes(model, input_shape)
    branched, names, convs = [], [], []
    for name, m in model.named_modules():
        if not name or any(name.startswith(b + ".") for b in branched) or len(shapes.get(name, ())) != 4:
            continue
        if isinstance(m, (nn.Concat, nn.Residual, SideBranch)):
            branched.append(name)
        if isinstance(m, (nn.ReLU, nn.Concat)):
            names.append(name)
        elif isinstance(m, nn.Conv2d):
            convs.append(name)
    names = names or convs
    if len(names) <= count:
        return names
    picks = np.linspace(0, len(names) - 1, count).round().astype(int)
    return [names[i] for i in picks]


def code_layer(model):
    """The layer whose output the classifier reads (e.g. fc7 in AlexNet, pool5 in GoogLeNet): the last leaf
    before the score layer that is not a Dropout or Flatten."""
    leaves = [n for n, m in model.named_modules() if n and not m.children
              and not isinstance(m, (nn.Dropout, nn.Flatten))]
    scores = score_layer(model)
    return leaves[leaves.index(scores) - 1] if scores in leaves and leaves.index(scores) > 0 else scores


def slug(text):
    """A layer name as a safe piece of a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


# --------------------------------------------------------------------------------------------- the gallery

@dataclass
class Entry:
    """One picture of the gallery: its section, title, file name (relative to index.html), pixel size and
    a caption."""
    section: str
    title: str
    file: str
    width: int
    height: int
    caption: str = ""


class _Writer:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.entries = []

    def add(self, section, title, name, picture, scale=1, caption=""):
        width, height = pic.save_png(os.path.join(self.out_dir, name), picture, scale)
        self.entries.append(Entry(section, title, name, width, height, caption))


def write_gallery(model, out_dir, images=None, labels=None, label_names=None, examples=3, steps=100,
                  classes=10, top_k=6, units=8, tsne_iterations=1000, progress=True, seed=0):
    """Write every visualization of `model` into `out_dir` and an index.html linking them; returns the list
    of Entry written (the page is ``out_dir/index.html``).

    images (N, C, H, W): the dataset for top patches and t-SNE (default `default_images`); labels (N,) colour
    the t-SNE points and label_names name them in its legend; examples: the images explained (occlusion,
    saliency, three rules, inversion) -- an array (M, C, H, W), or a count of the dataset's first images.
    steps: iterations of each optimization (class models, inversions); classes: how many class-model images
    (the first ones); top_k, units: patches per unit and units per layer; tsne_iterations: t-SNE's.
    """
    os.makedirs(out_dir, exist_ok=True)
    shape = input_shape_of(model, None if images is None else np.shape(images)[1:])
    if images is None:
        images, labels, label_names = default_images(shape, seed=seed)
    x = check_images(model, images)
    scores_at = score_layer(model)
    num_classes = output_shapes(model, shape)[scores_at][1]
    names = class_names(model)
    if names is not None and len(names) != num_classes:
        names = None
    layers = map_layers(model, shape)
    w = _Writer(out_dir)
    scale = pic.auto_scale(shape[1])
    examples = x[:examples] if np.ndim(examples) == 0 else check_images(model, examples, "examples")
    shows = [pic.display(im) for im in examples]

    # filters
    convs = conv_layers(model)
    for layer in convs[:2]:
        grid = filter_grid(model, layer)
        per_channel = get_layer(model, layer).in_channels not in (1, 3)
        w.add("Filters", layer, f"filters_{slug(layer)}.png", grid, pic.auto_scale(grid.shape[0], 256),
              ("one row per filter, one tile per input channel" if per_channel else "one tile per filter")
              + "; zero is gray")

    # top patches
    for layer in layers:
        n_units = output_shapes(model, shape)[layer][1]
        result = top_patches(model, x, layer, units=list(range(min(units, n_units))), k=top_k)
        size = result.patches.shape[-2:]
        w.add("Top patches", layer, f"top_patches_{slug(layer)}.png", render_top_patches(result), 1,
              f"the {top_k} strongest {size[0]}x{size[1]} receptive-field crops of units 0..{len(result.units) - 1}")

    # embedding
    codes_at = code_layer(model)
    coords = embed(model, x, codes_at, seed=seed, iterations=tsne_iterations)
    w.add("Embedding", f"t-SNE of {codes_at}: thumbnails", "tsne_thumbnails.png", thumbnail_map(coords, x), 1,
          f"{len(x)} images placed by t-SNE of their {codes_at} codes")
    if labels is not None:
        try:
            name = "tsne_points.png"
            width, height = scatter_plot(coords, labels, os.path.join(out_dir, name), label_names,
                                         f"t-SNE of {codes_at}")
            w.entries.append(Entry("Embedding", f"t-SNE of {codes_at}: labels", name, width, height,
                                   "points coloured by label"))
        except ImportError:
            pass  # matplotlib is optional; the thumbnail map is always there

    # occlusion, saliency, the three rules, each on the example images
    for k, image in enumerate(examples):
        occ = occlusion(model, image)
        label = names[occ.target] if names is not None else occ.target
        w.add("Occlusion", f"image {k}", f"occlusion_{k}.png",
              pic.side_by_side([shows[k], pic.overlay(shows[k], pic.rescale(occ.pixel_map))]), scale,
              f"probability of class {label} (unoccluded {occ.base:.2f}, lowest {occ.probs.min():.2f}) as a "
              f"{occ.size}x{occ.size} square slides; dark = the square hurts")
    for k, image in enumerate(examples):
        sal = saliency(model, image)
        w.add("Saliency", f"image {k}", f"saliency_{k}.png", pic.side_by_side([shows[k], pic.rescale(sal.map)]),
              scale, f"|d score / d image| of class {sal.target}, max over channels")
    for k, image in enumerate(examples):
        for layer in layers[-1:] + [scores_at]:
            nb = neuron_backward(model, image, layer, strongest_unit(model, image, layer))
            panels = [pic.rescale(pic.to_hwc(nb.gradients[r]), symmetric=True) for r in RULES]
            w.add("Backward from one neuron", f"image {k}, {layer} unit {nb.unit}",
                  f"backward_{k}_{slug(layer)}.png", pic.side_by_side([shows[k]] + panels), scale,
                  f"image | {' | '.join(RULES)} rule, from unit {nb.unit}"
                  + (f" at {nb.position}" if nb.position is not None else "") + f" (activation {nb.activation:.3g})")

    # class models
    chosen = list(range(min(classes, num_classes)))
    for title, options, name in (("Simonyan et al.: L2 penalty only", {}, "class_models.png"),
                                 ("Yosinski et al.: decay, blur, norm and contribution clipping", YOSINSKI,
                                  "class_models_regularized.png")):
        result = class_model(model, chosen, steps=steps, progress=progress, seed=seed, **options)
        grid = pic.tile(np.stack([pic.as_rgb(pic.rescale(pic.to_hwc(im))) for im in result.images]),
                        ncols=min(10, len(chosen)))
        w.add("Class models", title, name, grid, scale,
              f"classes {chosen[0]}..{chosen[-1]}, left to right; final scores "
              f"{', '.join(f'{s:.3g}' for s in result.scores[-1])}")

    # inversion
    inv_layers = layers + [codes_at]
    inversions = invert_layers(model, examples[0], inv_layers, steps=steps, progress=progress, seed=seed)
    panels = [shows[0]] + [pic.display(inv.image) for inv in inversions]
    w.add("Inversion", "reconstructions", "inversion.png", pic.side_by_side(panels), scale,
          "original | from " + " | ".join(f"{inv.layer} (distance {inv.distances[-1]:.2g})" for inv in inversions))

    _write_index(out_dir, model, w.entries, _field_rows(model, shape, layers + [codes_at]))
    return w.entries


def strongest_unit(model, image, layer):
    """The unit of `layer` whose response (its map's maximum) to image (C, H, W) is largest."""
    y = forward_to(model, image[None], layer)[0]
    return int(np.argmax(y.reshape(len(y), -1).max(axis=1)))


def _field_rows(model, shape, layers):
    fields = receptive_fields(model, shape)
    return [(layer, "x".join(map(str, f.shape[1:])), f"{f.size[0]}x{f.size[1]}", f"{f.stride[0]}x{f.stride[1]}")
            for layer, f in ((layer, fields[layer]) for layer in layers)]


def _write_index(out_dir, model, entries, field_rows):
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
             f"<title>fastconv visualize: {e(model_name(model))}</title>",
             "<style>body{font-family:sans-serif;margin:2em}figure{display:inline-block;margin:0 1.5em 1.5em 0;"
             "vertical-align:top}img{image-rendering:pixelated;border:1px solid #ccc}figcaption{max-width:40em;"
             "font-size:90%}td,th{padding:0 1em;text-align:left}</style></head><body>",
             f"<h1>{e(model_name(model))}</h1>", "<h2>Receptive fields</h2>",
             "<table><tr><th>layer</th><th>output (C x H x W)</th><th>field</th><th>stride</th></tr>"]
    parts += [f"<tr><td>{e(a)}</td><td>{e(b)}</td><td>{e(c)}</td><td>{e(d)}</td></tr>" for a, b, c, d in field_rows]
    parts.append("</table>")
    section = None
    for entry in entries:
        if entry.section != section:
            section = entry.section
            parts.append(f"<h2>{e(section)}</h2>")
        src = e(entry.file, quote=True)
        parts.append(f"<figure><a href='{src}'><img src='{src}' width='{entry.width}' height='{entry.height}' "
                     f"alt='{e(entry.title, quote=True)}'></a><figcaption><b>{e(entry.title)}</b><br>"
                     f"{e(entry.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    with open(os.path.join(out_dir, "index.html"), "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")
