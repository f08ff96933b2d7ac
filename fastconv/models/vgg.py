"""VGG (Simonyan & Zisserman 2014), configurations A, A-LRN, B, C, D, E of Table 1."""
import numpy as np

from .. import nn
from ._build import dropout, finish, generator, image_size, init_weights, shape_through
from .alexnet import LRN_PAPER

# Each block is a list of convs: an int is a 3x3 stride-1 pad-1 conv with that many filters, (n, 1) a 1x1 conv
# (configuration C); "LRN" a local response normalization. Every block ends with a 2x2 stride-2 max pool.
CONFIGS = {
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "A-LRN": [[64, "LRN"], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "C": [[64, 64], [128, 128], [256, 256, (256, 1)], [512, 512, (512, 1)], [512, 512, (512, 1)]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}
ALIASES = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}


def vgg(config="D", num_classes=1000, in_channels=3, input_size=224, dropout_p=0.5, init="he", seed=0, rng=None,
        dtype=np.float32):
    """VGG network of `config` (A, A-LRN, B, C, D, E or an alias vgg11/13/16/19).

    Layers are named as in Table 1: conv{block}_{i} + relu{block}_{i}, pool{block}; then FC6 4096, FC7 4096,
    FC8 `num_classes` with ReLU and dropout (p = `dropout_p`) after FC6 and FC7. At 224x224 the last pool gives
    7x7x512 = 25,088 features. Parameters: A 132,863,336; A-LRN 132,863,336; B 133,047,848; C 133,638,952;
    D 138,357,544; E 143,667,240.

    init: "he" (default: Kaiming normal, which trains all depths from scratch; the paper instead trained A
    from N(0, 0.01^2) and initialized the deeper nets from it), "xavier", "gaussian" (N(0, 0.01^2)) or None.
    """
    key = ALIASES.get(str(config).lower(), str(config).upper())
    if key not in CONFIGS:
        raise ValueError(f"unknown VGG configuration {config!r}; choose from {sorted(CONFIGS)} or "
                         f"{sorted(ALIASES)}")
    rng = generator(rng, seed)
    layers = {}
    channels = in_channels
    for b, block in enumerate(CONFIGS[key], start=1):
        i = 0
        for item in block:
            if item == "LRN":
                layers[f"norm{b}"] = nn.LocalResponseNorm(**LRN_PAPER)
                continue
            filters, kernel = item if isinstance(item, tuple) else (item, 3)
            i += 1
            layers[f"conv{b}_{i}"] = nn.Conv2d(channels, filters, kernel, padding=kernel // 2, dtype=dtype)
            layers[f"relu{b}_{i}"] = nn.ReLU()
            channels = filters
        layers[f"pool{b}"] = nn.MaxPool2d(2, 2)
    features = nn.Sequential(**layers)
    h, w = image_size(input_size)
    _, c, fh, fw = shape_through([features], (1, in_channels, h, w))
    classifier = nn.Sequential(
        flatten=nn.Flatten(),
        fc6=nn.Linear(c * fh * fw, 4096, dtype=dtype), relu6=nn.ReLU(), drop6=dropout(dropout_p, rng),
        fc7=nn.Linear(4096, 4096, dtype=dtype), relu7=nn.ReLU(), drop7=dropout(dropout_p, rng),
        fc8=nn.Linear(4096, num_classes, dtype=dtype),
    )
    model = nn.Sequential(features=features, classifier=classifier)
    model.config = key
    init_weights(model, rng, init)
    return finish(model, f"vgg-{key.lower()}", (in_channels, h, w), init)


def _alias(config):
    def build(**options):
        return vgg(config, **options)
    build.__wrapped__ = vgg  # inspect.signature shows the generic builder's options
    build.__name__ = f"vgg_{config.lower().replace('-', '_')}"
    build.__doc__ = f"VGG configuration {config} (see fastconv.models.vgg.vgg)."
    return build


vgg_a, vgg_a_lrn, vgg_b, vgg_c, vgg_d, vgg_e = (_alias(c) for c in ("A", "A-LRN", "B", "C", "D", "E"))
vgg11, vgg13, vgg16, vgg19 = vgg_a, vgg_b, vgg_d, vgg_e
