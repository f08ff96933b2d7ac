"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998): [CONV-POOL-CONV-POOL-CONV-FC-FC]."""
import numpy as np

from .. import nn
from ._build import finish, generator, image_size, init_weights, shape_through


def lenet5(num_classes=10, in_channels=1, input_size=32, init="he", seed=0, rng=None, dtype=np.float32):
    """LeNet-5 on 32x32 images.

    C1 6 5x5 convs (-> 6x28x28), S2 2x2 subsampling stride 2 (-> 14x14), C3 16 5x5 convs (-> 16x10x10), S4
    (-> 5x5), C5 120 5x5 convs (-> 120x1x1), F6 84 units, output `num_classes` logits: 61,706 parameters for
    10 classes.

    Modernized where the paper's pieces have no counterpart here, as is usual: ReLU instead of the scaled tanh,
    average pooling for the trainable subsampling (coefficient and bias), C3 connected to all six S2 maps
    (the paper's sparse table leaves 60 of the 96 map pairs), logits for a softmax loss instead of the RBF
    output units. Default init: He normal.
    """
    rng = generator(rng, seed)
    kw = dict(dtype=dtype)
    features = nn.Sequential(
        c1=nn.Conv2d(in_channels, 6, 5, **kw), relu1=nn.ReLU(),
        s2=nn.AvgPool2d(2, 2),
        c3=nn.Conv2d(6, 16, 5, **kw), relu3=nn.ReLU(),
        s4=nn.AvgPool2d(2, 2),
        c5=nn.Conv2d(16, 120, 5, **kw), relu5=nn.ReLU(),
    )
    h, w = image_size(input_size)
    _, c, fh, fw = shape_through([features], (1, in_channels, h, w))
    classifier = nn.Sequential(
        flatten=nn.Flatten(),
        f6=nn.Linear(c * fh * fw, 84, **kw), relu6=nn.ReLU(),
        output=nn.Linear(84, num_classes, **kw),
    )
    model = nn.Sequential(features=features, classifier=classifier)
    init_weights(model, rng, init)
    return finish(model, "lenet5", (in_channels, h, w), init)
