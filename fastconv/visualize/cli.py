"""``fastconv visualize TECHNIQUE --model PATH [--image FILE] [--layer NAME] [--unit N] [--class C] [-o DIR]``
and ``fastconv visualize all --model PATH -o DIR`` (every picture plus an index.html gallery).

The main command line wires this module in with ``add_parser(subparsers)`` and, for the "visualize" command,
``run(args)``. The optional packages (Pillow, scikit-learn, matplotlib, tqdm) are imported only when used.
"""
import os
import sys

import numpy as np

from ..data import ImageFolder
from ..data import read_image as read_picture
from ..io import load
from ..models import MODELS, get_model
from . import images as pic
from ._core import RULES, check_images, check_unit, get_layer, input_shape_of, output_shapes, score_layer
from .embedding import embed, scatter_plot, thumbnail_map
from .filters import conv_layers, filter_grid
from .gallery import YOSINSKI, code_layer, default_images, map_layers, slug, strongest_unit, write_gallery
from .gradients import neuron_backward, saliency
from .occlusion import occlusion
from .optimize import class_model, invert_layers, maximize
from .patches import render_top_patches, top_patches
from .receptive import receptive_fields

TECHNIQUES = {
    "filters": "the kernels of a conv layer (default: the first)",
    "top-patches": "the dataset patches that excite each unit of a layer most, cropped to its receptive field",
    "embedding": "t-SNE of a layer's codes over the dataset (default: the layer the classifier reads)",
    "occlusion": "class probability as a gray square slides across the image",
    "saliency": "|d class score / d image|, max over channels",
    "backprop": "backward from one unit: plain, deconvnet and guided backprop side by side",
    "class-model": "the image that maximizes a class score (or --layer/--unit) by gradient ascent",
    "deepvis": "class-model images with Yosinski et al.'s regularizers (decay, blur, clipping)",
    "inversion": "reconstructions of the image from a layer's code (default: several layers)",
    "receptive-field": "print every layer's receptive field (or --layer's)",
    "all": "every picture and an index.html gallery in -o DIR",
}


def add_parser(subparsers):
    """Add the "visualize" command to an argparse subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "visualize", help="pictures of what a model learned (filters, top patches, t-SNE, occlusion, saliency, "
                          "guided backprop, class models, inversion)",
        description="Visualize what a ConvNet learned. Techniques: " + "; ".join(
            f"{name}: {text}" for name, text in TECHNIQUES.items()) + ".")
    p.add_argument("technique", choices=list(TECHNIQUES), metavar="TECHNIQUE",
                   help="one of: " + ", ".join(TECHNIQUES))
    p.add_argument("--model", required=True, metavar="PATH",
                   help="a model file written by fastconv train / fastconv.save, or the name of a fastconv.models "
                        "model (built with seed 0)")
    p.add_argument("--weights", metavar="FILE.npz",
                   help="parameters to load into a named model: a .npz of model.state_dict() (numpy.savez)")
    p.add_argument("--image", metavar="FILE",
                   help="the image to explain: a picture file (resized to the model's input) or a .npy array "
                        "(C, H, W) of exactly the model's input shape; default: the dataset's first image")
    p.add_argument("--layer", metavar="NAME", help="a layer, by its dotted name in model.named_modules()")
    p.add_argument("--unit", type=int, metavar="N", help="a unit (feature map or feature) of --layer")
    p.add_argument("--class", dest="target", type=int, metavar="C", help="a class index")
    p.add_argument("-o", "--output", default="visualize", metavar="DIR", help="folder for the pictures "
                                                                              "(default ./visualize)")
    p.add_argument("--data", metavar="DIR", help="dataset for top patches and t-SNE: an image folder with one "
                                                 "subfolder per class; default: scikit-learn's digits (1 "
                                                 "channel) or crops of its sample photos (3 channels)")
    p.add_argument("--images", type=int, default=256, metavar="N", help="dataset images used (default 256)")
    p.add_argument("--k", type=int, default=9, help="patches per unit (default 9)")
    p.add_argument("--steps", type=int, default=200, help="iterations of each optimization (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(args):
    """Carry out a parsed "visualize" command; 0 on success, 2 (with the reason on stderr) on bad input."""
    try:
        return _run(args)
    except (ValueError, TypeError, ImportError, OSError) as e:
        print(f"fastconv visualize: error: {e}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------------------------- inputs

def load_model(spec, weights=None):
    """A model from a file saved by fastconv.save (fastconv.load rebuilds it) or a fastconv.models name (built
    with seed 0), with optional .npz weights loaded into it."""
    if os.path.isfile(spec):
        model = load(spec)
    else:
        key = spec.lower().replace("_", "-")
        if key not in {k.replace("_", "-") for k in MODELS}:
            raise ValueError(f"--model {spec!r} is neither a file nor a model name; the models are: "
                             f"{', '.join(MODELS)}")
        model = get_model(spec, seed=0)
    if weights is not None:
        with np.load(weights) as state:  # a saved model's .npz also holds its "__metadata__"
            model.load_state_dict({k: state[k] for k in state.files if k != "__metadata__"})
    return model


def read_image(model, path):
    """The image to explain as (C, H, W) of the model's input: a .npy array taken as is (its shape must fit),
    any other file read with Pillow and resized."""
    if path.lower().endswith(".npy"):
        return check_images(model, np.load(path), f"image {path}")[0]
    c, h, w = input_shape_of(model)
    if c not in (1, 3):
        raise ValueError(f"{path}: a picture file has 1 or 3 channels, but the model takes {c}; give a .npy")
    return check_images(model, read_picture(path, (h, w), channels=c), f"image {path}")[0]


def _dataset(model, args):
    shape = input_shape_of(model)
    if args.images < 1:
        raise ValueError(f"--images must be positive, got {args.images}")
    if args.data:
        folder = ImageFolder(args.data, shape[1:], channels=shape[0])
        return folder.images[:args.images], folder.labels[:args.images], folder.classes
    return default_images(shape, n=args.images, seed=args.seed)


# --------------------------------------------------------------------------------------------- techniques

class _Job:
    """What every technique gets: the model, the parsed arguments, the image to explain, the dataset, and
    `save` (writes a picture into the output folder and remembers it)."""

    def __init__(self, model, args, image, data):
        self.model, self.args, self.image = model, args, image
        self.images, self.labels, self.label_names = data
        self.layer = args.layer
        self.progress = not args.no_progress
        self.scale = pic.auto_scale(input_shape_of(model)[1])
        self.written = []

    def save(self, name, picture, scale=1):
        path = os.path.join(self.args.output, name)
        width, height = pic.save_png(path, picture, scale)
        self.written.append(f"{path} ({width}x{height})")


def _filters(job):
    layer = job.layer or conv_layers(job.model)[0]
    grid = filter_grid(job.model, layer)
    job.save(f"filters_{slug(layer)}.png", grid, pic.auto_scale(grid.shape[0], 256))


def _top_patches(job):
    layer = job.layer or map_layers(job.model)[-1]
    units = None if job.args.unit is None else [job.args.unit]
    job.save(f"top_patches_{slug(layer)}.png",
             render_top_patches(top_patches(job.model, job.images, layer, units, k=job.args.k)))


def _embedding(job):
    layer = job.layer or code_layer(job.model)
    coords = embed(job.model, job.images, layer, seed=job.args.seed)
    job.save("tsne_thumbnails.png", thumbnail_map(coords, job.images))
    if job.labels is not None:
        path = os.path.join(job.args.output, "tsne_points.png")
        width, height = scatter_plot(coords, job.labels, path, job.label_names, f"t-SNE of {layer}")
        job.written.append(f"{path} ({width}x{height})")


def _occlusion(job):
    occ = occlusion(job.model, job.image, job.args.target)
    show = pic.display(job.image)
    job.save("occlusion.png", pic.side_by_side([show, pic.overlay(show, pic.rescale(occ.pixel_map))]), job.scale)
    print(f"class {occ.target}: probability {occ.base:.3f} unoccluded, {occ.probs.min():.3f} at worst")


def _saliency(job):
    sal = saliency(job.model, job.image, job.args.target)
    job.save("saliency.png", pic.side_by_side([pic.display(job.image), pic.rescale(sal.map)]), job.scale)
    print(f"class {sal.target}: score {sal.score:.4g}")


def _backprop(job):
    layer = job.layer or map_layers(job.model)[-1]
    unit = strongest_unit(job.model, job.image, layer) if job.args.unit is None else job.args.unit
    nb = neuron_backward(job.model, job.image, layer, unit)
    panels = [pic.rescale(pic.to_hwc(nb.gradients[r]), symmetric=True) for r in RULES]
    job.save(f"backward_{slug(layer)}_{unit}.png", pic.side_by_side([pic.display(job.image)] + panels), job.scale)
    print(f"{layer} unit {unit} at {nb.position}: activation {nb.activation:.4g}; panels: image, "
          + ", ".join(RULES))


def _class_model(job, regularizers=None):
    shapes, scores_at = output_shapes(job.model), score_layer(job.model)
    options = dict(steps=job.args.steps, progress=job.progress, seed=job.args.seed, **(regularizers or {}))
    if job.layer is None or job.layer == scores_at:
        chosen = job.args.target if job.args.target is not None else job.args.unit
        classes = [chosen] if chosen is not None else list(range(min(10, shapes[scores_at][1])))
        result = class_model(job.model, classes, **options)
    else:
        units = [job.args.unit] if job.args.unit is not None else list(range(min(10, shapes[job.layer][1])))
        result = maximize(job.model, job.layer, units, **options)
    tiles = np.stack([pic.as_rgb(pic.rescale(pic.to_hwc(im))) for im in result.images])
    job.save(f"{job.args.technique}_{slug(result.layer)}.png", pic.tile(tiles, ncols=min(10, len(tiles))),
             job.scale)
    for unit, before, after in zip(result.units, result.scores[0], result.scores[-1]):
        print(f"{result.layer} unit {unit}: {before:.4g} -> {after:.4g}")


def _deepvis(job):
    _class_model(job, YOSINSKI)


def _inversion(job):
    layers = [job.layer] if job.layer else map_layers(job.model) + [code_layer(job.model)]
    inversions = invert_layers(job.model, job.image, layers, steps=job.args.steps, progress=job.progress,
                               seed=job.args.seed)
    panels = [pic.display(job.image)] + [pic.display(inv.image) for inv in inversions]
    job.save("inversion.png", pic.side_by_side(panels), job.scale)
    for inv in inversions:
        print(f"{inv.layer}: feature distance {inv.distances[0]:.3g} -> {inv.distances[-1]:.3g}")


_RUNNERS = {"filters": _filters, "top-patches": _top_patches, "embedding": _embedding, "occlusion": _occlusion,
            "saliency": _saliency, "backprop": _backprop, "class-model": _class_model, "deepvis": _deepvis,
            "inversion": _inversion}
_NEEDS_DATASET = ("top-patches", "embedding")
_NEEDS_IMAGE = ("occlusion", "saliency", "backprop", "inversion")


def _run(args):
    model = load_model(args.model, args.weights)
    input_shape_of(model)  # a clear error now if the model does not record its input shape
    if args.layer is not None:
        get_layer(model, args.layer)
        if args.unit is not None:
            check_unit(model, args.layer, args.unit, output_shapes(model)[args.layer])
    elif args.unit is not None:
        raise ValueError("--unit needs --layer (the class of a class-model image is --class)")
    if args.technique == "receptive-field":
        return _print_fields(model, args.layer)
    if args.technique == "all":
        x, labels, names = _dataset(model, args)
        examples = read_image(model, args.image)[None] if args.image else 3
        entries = write_gallery(model, args.output, images=x, labels=labels, label_names=names,
                                examples=examples, steps=args.steps, top_k=args.k,
                                progress=not args.no_progress, seed=args.seed)
        print(f"wrote {len(entries)} pictures and {os.path.join(args.output, 'index.html')}")
        return 0
    t = args.technique
    needs_data = t in _NEEDS_DATASET or (t in _NEEDS_IMAGE and args.image is None)
    data = _dataset(model, args) if needs_data else (None, None, None)
    image = read_image(model, args.image) if args.image else (data[0][0] if data[0] is not None else None)
    job = _Job(model, args, image, data)
    _RUNNERS[t](job)
    for line in job.written:
        print(f"wrote {line}")
    return 0


def _print_fields(model, layer):
    fields = receptive_fields(model, input_shape_of(model))
    rows = [("layer", "output", "field", "stride", "start")]
    for name, f in fields.items():
        if layer is None or name == layer:
            rows.append((name, "x".join(map(str, f.shape[1:])), f"{f.size[0]}x{f.size[1]}",
                         f"{f.stride[0]}x{f.stride[1]}", f"{f.start[0]},{f.start[1]}"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0
