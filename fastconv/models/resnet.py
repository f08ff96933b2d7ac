"""Residual networks (He, Zhang, Ren & Sun 2015): ResNet-18/34 with basic blocks, 50/101/152 with bottlenecks."""
import numpy as np

from .. import nn
from ._build import finish, generator, image_size, init_weights

# depth -> (block kind, blocks per stage conv2_x .. conv5_x), Table 1 of the paper
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _conv_bn(layers, suffix, c_in, c_out, k, stride, dtype):
    layers[f"conv{suffix}"] = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False, dtype=dtype)
    layers[f"bn{suffix}"] = nn.BatchNorm2d(c_out, dtype=dtype)


def residual_block(kind, in_channels, width, stride, stride_in_1x1=True, dtype=np.float32):
    """One block as Sequential(res=Residual(body, shortcut), relu=ReLU()); returns (block, out_channels).

    basic:      3x3 conv (stride) - BN - ReLU - 3x3 conv - BN, out = width
    bottleneck: 1x1 conv - BN - ReLU - 3x3 conv - BN - ReLU - 1x1 conv (4 x width) - BN, out = 4 * width; the
                stride sits on the first 1x1 conv as in the paper's (Caffe) models, or on the 3x3 with
                stride_in_1x1=False (the later "v1.5" variant; same parameters, different arithmetic)
    The shortcut is the identity, or a 1x1 conv (stride) + BN projection where the shape changes (option B).
    """
    body = {}
    if kind == "basic":
        out_channels = width
        _conv_bn(body, 1, in_channels, width, 3, stride, dtype)
        body["relu1"] = nn.ReLU()
        _conv_bn(body, 2, width, width, 3, 1, dtype)
    elif kind == "bottleneck":
        out_channels = 4 * width
        _conv_bn(body, 1, in_channels, width, 1, stride if stride_in_1x1 else 1, dtype)
        body["relu1"] = nn.ReLU()
        _conv_bn(body, 2, width, width, 3, 1 if stride_in_1x1 else stride, dtype)
        body["relu2"] = nn.ReLU()
        _conv_bn(body, 3, width, out_channels, 1, 1, dtype)
    else:
        raise ValueError(f"block kind must be 'basic' or 'bottleneck', got {kind!r}")
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        projection = {}
        _conv_bn(projection, "", in_channels, out_channels, 1, stride, dtype)
        shortcut = nn.Sequential(**projection)
    block = nn.Sequential(res=nn.Residual(nn.Sequential(**body), shortcut), relu=nn.ReLU())
    return block, out_channels


def resnet(depth=50, num_classes=1000, in_channels=3, input_size=224, stride_in_1x1=True, init="he", seed=0,
           rng=None, dtype=np.float32):
    """ResNet-`depth` (18, 34, 50, 101, 152).

    conv1 7x7/2 64 + BN + ReLU (112x112) -> max pool 3x3/2 pad 1 (56x56) -> layer1 .. layer4 (the paper's
    conv2_x .. conv5_x: widths 64, 128, 256, 512; layers 2-4 halve the map in their first block) -> global
    average pool -> FC `num_classes`. Convs have no bias (BN follows every conv). Parameters (BN gamma and beta
    included, running statistics not): 11,689,512 / 21,797,672 / 25,557,032 / 44,549,160 / 60,192,808.

    init: "he" (default; Kaiming normal with fan_in, as the paper's reference [13]), "xavier", "gaussian",
    None. BN starts at gamma = 1, beta = 0.
    """
    if depth not in DEPTHS:
        raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth!r}")
    kind, counts = DEPTHS[depth]
    rng = generator(rng, seed)
    layers = {}
    _conv_bn(layers, 1, in_channels, 64, 7, 2, dtype)
    layers["relu"] = nn.ReLU()
    layers["maxpool"] = nn.MaxPool2d(3, 2, padding=1)
    channels = 64
    for stage, (width, count) in enumerate(zip((64, 128, 256, 512), counts), start=1):
        blocks = {}
        for i in range(count):
            stride = 2 if stage > 1 and i == 0 else 1
            blocks[str(i)], channels = residual_block(kind, channels, width, stride, stride_in_1x1, dtype)
        layers[f"layer{stage}"] = nn.Sequential(**blocks)
    layers.update(avgpool=nn.GlobalAvgPool2d(), flatten=nn.Flatten(),
                  fc=nn.Linear(channels, num_classes, dtype=dtype))
    model = nn.Sequential(**layers)
    model.depth = depth
    init_weights(model, rng, init)
    h, w = image_size(input_size)
    return finish(model, f"resnet{depth}", (in_channels, h, w), init)


def _depth(depth):
    def build(**options):
        return resnet(depth, **options)
    build.__wrapped__ = resnet  # inspect.signature shows the generic builder's options
    build.__name__ = f"resnet{depth}"
    build.__doc__ = f"ResNet-{depth} (see fastconv.models.resnet.resnet)."
    return build


resnet18, resnet34, resnet50, resnet101, resnet152 = (_depth(d) for d in DEPTHS)
