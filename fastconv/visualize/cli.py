"""``fastconv visualize TECHNIQUE --model PATH [--image FILE] [--layer NAME] [--unit N] [--class C] [-o DIR]``
and ``fastconv visualize all --model PATH -o DIR`` (every picture plus an index.html gallery).

The main command line wires this module in with ``add_parser(subparsers)`` and, for the "visualize" command,
``run(args)``. Nothing heavy is imported until `run`.
"""
import os
import sys

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
                   help="a saved model file (read with fastconv.load) or the name of a fastconv.models model "
                        "(built with seed 0)")
    p.add_argument("--weights", metavar="FILE.npz",
                   help="parameters to load into a named model: a .npz of model.state_dict()")
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
    """A model from a file (fastconv.load) or a fastconv.models name (seed 0), with optional .npz weights."""
    import numpy as np

    if os.path.isfile(spec):
        load = _model_loader()
        if load is None:
            raise ValueError(f"--model {spec}: reading model files needs fastconv.load, which this build lacks; "
                             f"give a model name and --weights FILE.npz")
        model = load(spec)
    else:
        from ..models import MODELS, get_model
        key = spec.lower().replace("_", "-")
        if key not in {k.replace("_", "-") for k in MODELS}:
            raise ValueError(f"--model {spec!r} is neither a file nor a model name; the models are: "
                             f"{', '.join(MODELS)}")
        model = get_model(spec, seed=0)
    if weights is not None:
        with np.load(weights) as state:
            model.load_state_dict({k: state[k] for k in state.files})
    return model


def _model_loader():
    import fastconv
    load = getattr(fastconv, "load", None)
    if load is None:
        try:
            from .. import io
            load = getattr(io, "load", None)
        except ImportError:
            load = None
    return load


def read_image(model, path):
    """The image to explain as (C, H, W) of the model's input: a .npy array taken as is (its shape must fit),
    any other file read with Pillow and resized."""
    import numpy as np

    from ..data import read_image as read_picture
    from ._core import check_images, input_shape_of
    if path.lower().endswith(".npy"):
        return check_images(model, np.load(path), f"image {path}")[0]
    c, h, w = input_shape_of(model)
    if c not in (1, 3):
        raise ValueError(f"{path}: a picture file has 1 or 3 channels, but the model takes {c}; give a .npy")
    return check_images(model, read_picture(path, (h, w), channels=c), f"image {path}")[0]


def _dataset(model, args):
    from ._core import input_shape_of
    from .gallery import default_images
    shape = input_shape_of(model)
    if args.images < 1:
        raise ValueError(f"--images must be positive, got {args.images}")
    if args.data:
        from ..data import ImageFolder
        folder = ImageFolder(args.data, shape[1:], channels=shape[0])
        return folder.images[:args.images], folder.labels[:args.images], folder.classes
    return default_images(shape, n=args.images, seed=args.seed)


# --------------------------------------------------------------------------------------------- techniques

def _run(args):
    import numpy as np

    from . import gallery, images as pic
    from ._core import check_unit, get_layer, output_shapes, score_layer

    model = load_model(args.model, args.weights)
    out = args.output
    progress = not args.no_progress
    if args.layer is not None:
        get_layer(model, args.layer)
    if args.unit is not None and args.layer is None:
        raise ValueError("--unit needs --layer (the class of a class-model image is --class)")
    if args.technique == "receptive-field":
        return _print_fields(model, args.layer)
    if args.technique == "all":
        x, labels, names = _dataset(model, args)
        examples = read_image(model, args.image)[None] if args.image else 3
        entries = gallery.write_gallery(model, out, images=x, labels=labels, class_names=names, examples=examples,
                                        steps=args.steps, top_k=args.k, progress=progress, seed=args.seed)
        print(f"wrote {len(entries)} pictures and {os.path.join(out, 'index.html')}")
        return 0

    shape = output_shapes(model)
    written = []

    def save(name, picture, scale=1):
        path = os.path.join(out, name)
        width, height = pic.save_png(path, picture, scale)
        written.append(f"{path} ({width}x{height})")

    needs_data = args.technique in ("top-patches", "embedding") or (
        args.image is None and args.technique in ("occlusion", "saliency", "backprop", "inversion"))
    x, labels, names = _dataset(model, args) if needs_data else (None, None, None)
    image = read_image(model, args.image) if args.image else (x[0] if x is not None else None)
    scale = pic.auto_scale(model.input_shape[1]) if hasattr(model, "input_shape") else 1
    layer = args.layer
    t = args.technique

    if t == "filters":
        from .filters import filter_grid
        grid = filter_grid(model, layer)
        layer = layer or gallery.conv_layers(model)[0]
        save(f"filters_{gallery._slug(layer)}.png", grid, pic.auto_scale(grid.shape[0], 256))
    elif t == "top-patches":
        from .patches import render_top_patches, top_patches
        layer = layer or gallery.map_layers(model)[-1]
        units = None if args.unit is None else [args.unit]
        result = top_patches(model, x, layer, units, k=args.k)
        save(f"top_patches_{gallery._slug(layer)}.png", render_top_patches(result))
    elif t == "embedding":
        from .embedding import embed, scatter_plot, thumbnail_map
        layer = layer or gallery.code_layer(model)
        coords = embed(model, x, layer, seed=args.seed)
        save("tsne_thumbnails.png", thumbnail_map(coords, x))
        if labels is not None:
            path = os.path.join(out, "tsne_points.png")
            width, height = scatter_plot(coords, labels, path, names, f"t-SNE of {layer}")
            written.append(f"{path} ({width}x{height})")
    elif t == "occlusion":
        from .occlusion import occlusion
        occ = occlusion(model, image, args.target)
        show = pic.display(image)
        save("occlusion.png", pic.side_by_side([show, pic.overlay(show, pic.rescale(occ.pixel_map))]), scale)
        print(f"class {occ.target}: probability {occ.base:.3f} unoccluded, {occ.probs.min():.3f} at worst")
    elif t == "saliency":
        from .gradients import saliency
        sal = saliency(model, image, args.target)
        save("saliency.png", pic.side_by_side([pic.display(image), pic.rescale(sal.map)]), scale)
        print(f"class {sal.target}: score {sal.score:.4g}")
    elif t == "backprop":
        from ._core import RULES
        from .gradients import neuron_backward
        layer = layer or gallery.map_layers(model)[-1]
        if args.unit is None:
            unit = gallery._strongest_unit(model, image, layer)
        else:
            unit = check_unit(model, layer, args.unit, shape[layer])
        nb = neuron_backward(model, image, layer, unit)
        panels = [pic.rescale(pic.to_hwc(nb.gradients[r]), symmetric=True) for r in RULES]
        save(f"backward_{gallery._slug(layer)}_{unit}.png", pic.side_by_side([pic.display(image)] + panels), scale)
        print(f"{layer} unit {unit} at {nb.position}: activation {nb.activation:.4g}; panels: image, "
              + ", ".join(RULES))
    elif t in ("class-model", "deepvis"):
        from .optimize import class_model, maximize
        options = gallery.YOSINSKI if t == "deepvis" else {}
        scores_at = score_layer(model)
        if layer is None or layer == scores_at:
            chosen = args.target if args.target is not None else args.unit
            classes = [chosen] if chosen is not None else list(range(min(10, shape[scores_at][1])))
            result = class_model(model, classes, steps=args.steps, progress=progress, seed=args.seed, **options)
        else:
            units = [args.unit] if args.unit is not None else list(range(min(10, shape[layer][1])))
            result = maximize(model, layer, units, steps=args.steps, progress=progress, seed=args.seed, **options)
        tiles = np.stack([pic.as_rgb(pic.rescale(pic.to_hwc(im))) for im in result.images])
        save(f"{t}_{gallery._slug(result.layer)}.png", pic.tile(tiles, ncols=min(10, len(tiles))), scale)
        print(f"{result.layer} units {result.units}: activation {np.round(result.scores[0], 3).tolist()} -> "
              f"{np.round(result.scores[-1], 3).tolist()}")
    elif t == "inversion":
        from .optimize import invert_layers
        layers = [layer] if layer else gallery.map_layers(model) + [gallery.code_layer(model)]
        inversions = invert_layers(model, image, layers, steps=args.steps, progress=progress, seed=args.seed)
        save("inversion.png", pic.side_by_side([pic.display(image)] + [pic.display(i.image) for i in inversions]),
             scale)
        for inv in inversions:
            print(f"{inv.layer}: feature distance {inv.distances[0]:.3g} -> {inv.distances[-1]:.3g}")
    for line in written:
        print(f"wrote {line}")
    return 0


def _print_fields(model, layer):
    from ._core import input_shape_of
    from .receptive import receptive_fields
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
