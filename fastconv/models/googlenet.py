"""GoogLeNet (Szegedy et al. 2014, "Going deeper with convolutions"), Table 1."""
import numpy as np

from .. import nn
from ._build import dropout, finish, generator, image_size, init_weights, shape_through
from .alexnet import LRN_PAPER

# Table 1: name -> (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj)
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def inception(in_channels, n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj, dtype=np.float32):
    """Four branches on the same input joined on channels: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1,
    ReLU after every conv; spatial size kept (pad 1 and 2, pool stride 1 pad 1)."""
    def conv(c_in, c_out, k):
        return nn.Conv2d(c_in, c_out, k, padding=k // 2, dtype=dtype)
    return nn.Concat(**{
        "1x1": nn.Sequential(conv=conv(in_channels, n1x1, 1), relu=nn.ReLU()),
        "3x3": nn.Sequential(reduce=conv(in_channels, n3x3_reduce, 1), relu_reduce=nn.ReLU(),
                             conv=conv(n3x3_reduce, n3x3, 3), relu=nn.ReLU()),
        "5x5": nn.Sequential(reduce=conv(in_channels, n5x5_reduce, 1), relu_reduce=nn.ReLU(),
                             conv=conv(n5x5_reduce, n5x5, 5), relu=nn.ReLU()),
        "pool_proj": nn.Sequential(pool=nn.MaxPool2d(3, 1, padding=1), conv=conv(in_channels, pool_proj, 1),
                                   relu=nn.ReLU()),
    })


class SideBranch(nn.Module):
    """Identity on the main path; in training it also runs `head` on its input (an auxiliary classifier) and
    keeps the result in ``output``. Before the model's backward, the gradient for that output is put in
    ``output_grad``; backward adds the head's input gradient to the main path's."""

    plan_safe = True  # in eval it passes x on and computes nothing (fastconv.nn.PLAN_SAFE_MODULES)

    def __init__(self, head):
        super().__init__()
        self.add_child("head", head)
        self.output = self.output_grad = None

    def forward(self, x):
        self.output = self.children["head"].forward(x) if self.training else None
        return x

    def backward(self, dy):
        g, self.output_grad = self.output_grad, None
        if g is None or self.output is None:
            return dy
        head = self.children["head"]
        head.need_input_grad = self.need_input_grad
        dx_head = head.backward(g)
        return dy + dx_head if self.need_input_grad else None


class GoogLeNet(nn.Sequential):
    """The GoogLeNet trunk; with auxiliary classifiers, forward in training returns (logits, aux1, aux2) and
    backward takes the matching triple of gradients (an aux gradient may be None). In eval, or without them,
    forward returns the logits only. The paper weighs the auxiliary losses by 0.3: scale their gradients."""

    plan_safe = True  # Sequential's inference, the auxiliary heads off in eval

    def aux_branches(self):
        return [m for m in self.children.values() if isinstance(m, SideBranch)]

    def forward(self, x):
        y = super().forward(x)
        aux = [b.output for b in self.aux_branches()]
        if self.training and aux:
            return (y,) + tuple(aux)
        return y

    def backward(self, dy):
        if isinstance(dy, tuple):
            branches = self.aux_branches()
            if len(dy) != 1 + len(branches):
                raise ValueError(f"GoogLeNet.backward expects {1 + len(branches)} gradients (logits and one per "
                                 f"auxiliary classifier), got {len(dy)}")
            for b, g in zip(branches, dy[1:]):
                b.output_grad = g
            dy = dy[0]
        return super().backward(dy)


def _aux_head(in_channels, map_shape, num_classes, rng, dtype):
    """Auxiliary classifier of section 5: 5x5/3 average pool, 1x1 conv 128 + ReLU, FC 1024 + ReLU, 70% dropout,
    linear `num_classes`."""
    pool = nn.AvgPool2d(5, 3)
    conv = nn.Conv2d(in_channels, 128, 1, dtype=dtype)
    _, c, h, w = shape_through([pool, conv], map_shape)
    return nn.Sequential(pool=pool, conv=conv, relu=nn.ReLU(), flatten=nn.Flatten(),
                         fc=nn.Linear(c * h * w, 1024, dtype=dtype), relu_fc=nn.ReLU(), drop=dropout(0.7, rng),
                         classifier=nn.Linear(1024, num_classes, dtype=dtype))


def googlenet(num_classes=1000, in_channels=3, input_size=224, aux_logits=False, lrn=False, dropout_p=0.4,
              init="xavier", seed=0, rng=None, dtype=np.float32):
    """GoogLeNet as in Table 1 (6,998,552 parameters without the auxiliary classifiers).

    conv1 7x7/2 64 (112x112) -> max pool 3x3/2 (56x56) -> conv2 1x1 64 (reduce) + 3x3 192 -> max pool 3x3/2
    (28x28) -> inception 3a, 3b -> max pool (14x14) -> 4a .. 4e -> max pool (7x7) -> 5a, 5b (7x7x1024) -> avg
    pool 7x7/1 -> dropout 40% -> linear `num_classes`; ReLU after every conv. The max pools round up (ceil_mode,
    as in Caffe) to get the 56/28/14/7 maps of the table. The average pool covers the whole last map (7x7 at
    224x224; smaller inputs get a smaller window).

    aux_logits=True adds the two auxiliary classifiers on 4a and 4d (training option; see GoogLeNet).
    lrn=True adds the local response normalizations of Figure 3 (after pool1 and after conv2), which Table 1
    omits. Default init: "xavier" (Glorot uniform, as the Caffe reference model), zero biases.
    """
    rng = generator(rng, seed)
    h, w = image_size(input_size)
    kw = dict(dtype=dtype)
    layers = dict(conv1=nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, **kw), relu1=nn.ReLU(),
                  pool1=nn.MaxPool2d(3, 2, ceil_mode=True))
    if lrn:
        layers["norm1"] = nn.LocalResponseNorm(**LRN_PAPER)
    layers.update(conv2_reduce=nn.Conv2d(64, 64, 1, **kw), relu2_reduce=nn.ReLU(),
                  conv2=nn.Conv2d(64, 192, 3, padding=1, **kw), relu2=nn.ReLU())
    if lrn:
        layers["norm2"] = nn.LocalResponseNorm(**LRN_PAPER)
    layers["pool2"] = nn.MaxPool2d(3, 2, ceil_mode=True)
    channels = 192
    shape = shape_through(layers.values(), (1, in_channels, h, w))
    for name, widths in INCEPTION.items():
        if name in ("4a", "5a"):  # Caffe's names: pool3 before 4a, pool4 before 5a, pool5 the average pool
            pool = layers[f"pool{int(name[0]) - 1}"] = nn.MaxPool2d(3, 2, ceil_mode=True)
            shape = pool.output_shape(shape)
        layers[f"inception_{name}"] = block = inception(channels, *widths, **kw)
        shape = block.output_shape(shape)
        channels = shape[1]
        if aux_logits and name in ("4a", "4d"):
            layers[f"aux{1 if name == '4a' else 2}"] = SideBranch(_aux_head(channels, shape, num_classes, rng,
                                                                           dtype))
    layers.update(pool5=nn.AvgPool2d((shape[2], shape[3]), 1), flatten=nn.Flatten(),
                  dropout=dropout(dropout_p, rng), fc=nn.Linear(channels, num_classes, **kw))
    model = GoogLeNet(**layers)
    init_weights(model, rng, init)
    return finish(model, "googlenet", (in_channels, h, w), init)
