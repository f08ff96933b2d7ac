"""AlexNet (Krizhevsky, Sutskever & Hinton 2012) and ZFNet (Zeiler & Fergus 2013)."""
import numpy as np

from .. import nn
from ._build import dropout, finish, generator, image_size, init_weights, shape_through

# Local response normalization of the AlexNet paper: k = 2, n = 5, alpha = 1e-4, beta = 0.75, with the paper's
# sum *not* divided by n. fastconv (like PyTorch) divides alpha by the window size, so alpha here is 5 * 1e-4.
# (Caffe's reference models use k = 1 and alpha = 1e-4 in the divided convention.)
LRN_PAPER = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)


def _classifier(in_features, num_classes, p, rng, dtype):
    """FC6-FC7-FC8 with ReLU after the hidden layers and dropout before FC6 and FC7."""
    return nn.Sequential(
        flatten=nn.Flatten(),
        drop6=dropout(p, rng), fc6=nn.Linear(in_features, 4096, dtype=dtype), relu6=nn.ReLU(),
        drop7=dropout(p, rng), fc7=nn.Linear(4096, 4096, dtype=dtype), relu7=nn.ReLU(),
        fc8=nn.Linear(4096, num_classes, dtype=dtype),
    )


def _assemble(features, in_channels, input_size, num_classes, p, rng, dtype):
    h, w = image_size(input_size)
    _, c, fh, fw = shape_through([features], (1, in_channels, h, w))
    model = nn.Sequential(features=features, classifier=_classifier(c * fh * fw, num_classes, p, rng, dtype))
    return model, (in_channels, h, w)


def alexnet(num_classes=1000, in_channels=3, input_size=227, groups=1, dropout_p=0.5, init="paper", seed=0,
            rng=None, dtype=np.float32):
    """AlexNet, single tower by default (groups=1: 62,378,344 parameters).

    227x227x3 -> CONV1 96 11x11 stride 4 (55x55x96) -> MAX POOL1 3x3 stride 2 (27x27x96) -> NORM1 ->
    CONV2 256 5x5 pad 2 (27x27x256) -> MAX POOL2 (13x13x256) -> NORM2 -> CONV3 384 3x3 pad 1 -> CONV4 384 3x3
    pad 1 -> CONV5 256 3x3 pad 1 -> MAX POOL3 (6x6x256) -> FC6 4096 -> FC7 4096 -> FC8 `num_classes`; ReLU after
    every conv and hidden FC, dropout (p = `dropout_p`) before FC6 and FC7. Pooling before normalization, as in
    Caffe's reference model.

    groups=2 splits CONV2, CONV4 and CONV5 into the two towers of the original two-GPU network (CONV3 and the FC
    layers see both): the Caffe reference model, 60,965,224 parameters.

    init="paper": weights N(0, 0.01^2), biases 1 in CONV2, CONV4, CONV5 and the hidden FC layers, 0 elsewhere
    (section 5 of the paper); or "he", "xavier", "gaussian", None (zeros).
    """
    if groups not in (1, 2):
        raise ValueError(f"groups must be 1 (single tower) or 2 (the original two towers), got {groups!r}")
    rng = generator(rng, seed)
    kw = dict(dtype=dtype)
    features = nn.Sequential(
        conv1=nn.Conv2d(in_channels, 96, 11, stride=4, **kw), relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(3, 2), norm1=nn.LocalResponseNorm(**LRN_PAPER),
        conv2=nn.Conv2d(96, 256, 5, padding=2, groups=groups, **kw), relu2=nn.ReLU(),
        pool2=nn.MaxPool2d(3, 2), norm2=nn.LocalResponseNorm(**LRN_PAPER),
        conv3=nn.Conv2d(256, 384, 3, padding=1, **kw), relu3=nn.ReLU(),
        conv4=nn.Conv2d(384, 384, 3, padding=1, groups=groups, **kw), relu4=nn.ReLU(),
        conv5=nn.Conv2d(384, 256, 3, padding=1, groups=groups, **kw), relu5=nn.ReLU(),
        pool5=nn.MaxPool2d(3, 2),
    )
    model, input_shape = _assemble(features, in_channels, input_size, num_classes, dropout_p, rng, dtype)
    if init == "paper":
        init_weights(model, rng, "gaussian", std=0.01)
        for name in ("features.conv2", "features.conv4", "features.conv5", "classifier.fc6", "classifier.fc7"):
            dict(model.named_modules())[name].params["bias"][...] = 1
    else:
        init_weights(model, rng, init)
    return finish(model, "alexnet" if groups == 1 else "alexnet-2tower", input_shape, init)


def zfnet(num_classes=1000, in_channels=3, input_size=224, dropout_p=0.5, init="paper", seed=0, rng=None,
          dtype=np.float32):
    """ZFNet: AlexNet with CONV1 7x7 stride 2 and CONV3/4/5 of 512, 1024, 512 filters (107,627,624 parameters).

    The geometry is that of Zeiler & Fergus's Figure 3: 224x224x3 -> CONV1 96 7x7 stride 2 pad 1 (110x110) ->
    MAX POOL 3x3/2 (55x55) -> NORM -> CONV2 256 5x5 stride 2 (26x26) -> MAX POOL 3x3/2 (13x13) -> NORM ->
    CONV3 512, CONV4 1024, CONV5 512 3x3 pad 1 (13x13) -> MAX POOL 3x3/2 (6x6x512) -> FC6 4096 -> FC7 4096 ->
    FC8. The max pools round up (Caffe's rule) to give 55 and 13 as in the figure; CONV2 has stride 2 as in
    the paper (with AlexNet's stride 1 the maps would stay 4x larger all the way to FC6). ReLU, LRN and dropout
    as in `alexnet`.

    init="paper": weights N(0, 0.01^2) and zero biases (section 3 of the paper).
    """
    rng = generator(rng, seed)
    kw = dict(dtype=dtype)
    features = nn.Sequential(
        conv1=nn.Conv2d(in_channels, 96, 7, stride=2, padding=1, **kw), relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(3, 2, ceil_mode=True), norm1=nn.LocalResponseNorm(**LRN_PAPER),
        conv2=nn.Conv2d(96, 256, 5, stride=2, **kw), relu2=nn.ReLU(),
        pool2=nn.MaxPool2d(3, 2, ceil_mode=True), norm2=nn.LocalResponseNorm(**LRN_PAPER),
        conv3=nn.Conv2d(256, 512, 3, padding=1, **kw), relu3=nn.ReLU(),
        conv4=nn.Conv2d(512, 1024, 3, padding=1, **kw), relu4=nn.ReLU(),
        conv5=nn.Conv2d(1024, 512, 3, padding=1, **kw), relu5=nn.ReLU(),
        pool5=nn.MaxPool2d(3, 2, ceil_mode=True),
    )
    model, input_shape = _assemble(features, in_channels, input_size, num_classes, dropout_p, rng, dtype)
    init_weights(model, rng, "gaussian" if init == "paper" else init, std=0.01)
    return finish(model, "zfnet", input_shape, init)
