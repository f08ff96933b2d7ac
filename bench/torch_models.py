"""The networks of fastconv.models written as plain PyTorch modules, for the whole-network benchmark.

Each builder reproduces the architecture `fastconv.models.get_model(name)` builds with its default options --
same layers in the same order, same shapes, same parameter count -- and names every submodule as fastconv does,
so a parameter's dotted name (``features.conv1.weight``, ``layer1.0.res.body.bn2.running_var``) is the same in
both and `load_fastconv_weights` can copy a fastconv model into its torch twin. Nothing here imports fastconv.

    lenet5      ReLU, 2x2 average pooling, C3 fully connected to S2 (fastconv's modernized LeNet-5)
    alexnet     one tower 96-256-384-384-256, 227x227, max pool then LRN (size 5, alpha 5e-4, beta 0.75, k 2)
    vgg16       configuration D
    googlenet   Table 1 of the paper: no LRN, no auxiliary classifiers, ceil-mode max pools
    resnet50    bottleneck blocks with the stride on the first 1x1 conv (the paper's v1), projection shortcuts

ReLUs are in place (as torchvision writes them): the strongest ordinary torch definition of each network.
`export_onnx` writes a model with the TorchScript exporter, LRN as one ONNX LRN node.
"""
from collections import OrderedDict

import torch
from torch import nn

# fastconv.models.alexnet.LRN_PAPER: the paper's alpha 1e-4 for an undivided sum is 5e-4 in torch's convention
LRN = dict(size=5, alpha=5e-4, beta=0.75, k=2.0)


def _seq(**named):
    return nn.Sequential(OrderedDict(named))


def _relu():
    return nn.ReLU(inplace=True)


def _flat_size(make_features, input_shape):
    """Elements per sample after `make_features()` on a (C, H, W) input, by a dry run on the meta device."""
    with torch.device("meta"):
        return make_features()(torch.empty((1,) + tuple(input_shape))).numel()


def _hw(input_size):
    return (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)


# ------------------------------------------------------------------------------------------------- LeNet-5

def lenet5(num_classes=10, in_channels=1, input_size=32):
    def features():
        return _seq(c1=nn.Conv2d(in_channels, 6, 5), relu1=_relu(), s2=nn.AvgPool2d(2, 2),
                    c3=nn.Conv2d(6, 16, 5), relu3=_relu(), s4=nn.AvgPool2d(2, 2),
                    c5=nn.Conv2d(16, 120, 5), relu5=_relu())
    flat = _flat_size(features, (in_channels,) + _hw(input_size))
    return _seq(features=features(),
                classifier=_seq(flatten=nn.Flatten(), f6=nn.Linear(flat, 84), relu6=_relu(),
                                output=nn.Linear(84, num_classes)))


# ------------------------------------------------------------------------------------------------- AlexNet

def _fc_head(in_features, num_classes, p, dropout_first):
    """FC6-FC7-FC8; dropout before FC6 and FC7 (AlexNet) or after the ReLUs of FC6 and FC7 (VGG)."""
    if dropout_first:
        layers = dict(flatten=nn.Flatten(), drop6=nn.Dropout(p), fc6=nn.Linear(in_features, 4096), relu6=_relu(),
                      drop7=nn.Dropout(p), fc7=nn.Linear(4096, 4096), relu7=_relu())
    else:
        layers = dict(flatten=nn.Flatten(), fc6=nn.Linear(in_features, 4096), relu6=_relu(), drop6=nn.Dropout(p),
                      fc7=nn.Linear(4096, 4096), relu7=_relu(), drop7=nn.Dropout(p))
    layers["fc8"] = nn.Linear(4096, num_classes)
    return _seq(**layers)


def alexnet(num_classes=1000, in_channels=3, input_size=227, dropout_p=0.5):
    def features():
        return _seq(conv1=nn.Conv2d(in_channels, 96, 11, stride=4), relu1=_relu(),
                    pool1=nn.MaxPool2d(3, 2), norm1=nn.LocalResponseNorm(**LRN),
                    conv2=nn.Conv2d(96, 256, 5, padding=2), relu2=_relu(),
                    pool2=nn.MaxPool2d(3, 2), norm2=nn.LocalResponseNorm(**LRN),
                    conv3=nn.Conv2d(256, 384, 3, padding=1), relu3=_relu(),
                    conv4=nn.Conv2d(384, 384, 3, padding=1), relu4=_relu(),
                    conv5=nn.Conv2d(384, 256, 3, padding=1), relu5=_relu(),
                    pool5=nn.MaxPool2d(3, 2))
    flat = _flat_size(features, (in_channels,) + _hw(input_size))
    return _seq(features=features(), classifier=_fc_head(flat, num_classes, dropout_p, dropout_first=True))


# -------------------------------------------------------------------------------------------------- VGG-16

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg16(num_classes=1000, in_channels=3, input_size=224, dropout_p=0.5):
    def features():
        layers, c = {}, in_channels
        for b, block in enumerate(VGG16_BLOCKS, start=1):
            for i, filters in enumerate(block, start=1):
                layers[f"conv{b}_{i}"] = nn.Conv2d(c, filters, 3, padding=1)
                layers[f"relu{b}_{i}"] = _relu()
                c = filters
            layers[f"pool{b}"] = nn.MaxPool2d(2, 2)
        return _seq(**layers)
    flat = _flat_size(features, (in_channels,) + _hw(input_size))
    return _seq(features=features(), classifier=_fc_head(flat, num_classes, dropout_p, dropout_first=False))


# ----------------------------------------------------------------------------------------------- GoogLeNet

# name -> (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), Table 1 of Szegedy et al.
INCEPTION = OrderedDict([
    ("3a", (64, 96, 128, 16, 32, 32)), ("3b", (128, 128, 192, 32, 96, 64)),
    ("4a", (192, 96, 208, 16, 48, 64)), ("4b", (160, 112, 224, 24, 64, 64)), ("4c", (128, 128, 256, 24, 64, 64)),
    ("4d", (112, 144, 288, 32, 64, 64)), ("4e", (256, 160, 320, 32, 128, 128)),
    ("5a", (256, 160, 320, 32, 128, 128)), ("5b", (384, 192, 384, 48, 128, 128)),
])


class Concat(nn.Module):
    """Every branch sees the input; their outputs are joined on channels."""

    def __init__(self, **branches):
        super().__init__()
        for name, branch in branches.items():
            self.add_module(name, branch)

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.children()], dim=1)


def inception(c_in, n1, n3r, n3, n5r, n5, pool_proj):
    def conv(a, b, k):
        return nn.Conv2d(a, b, k, padding=k // 2)
    return Concat(**{
        "1x1": _seq(conv=conv(c_in, n1, 1), relu=_relu()),
        "3x3": _seq(reduce=conv(c_in, n3r, 1), relu_reduce=_relu(), conv=conv(n3r, n3, 3), relu=_relu()),
        "5x5": _seq(reduce=conv(c_in, n5r, 1), relu_reduce=_relu(), conv=conv(n5r, n5, 5), relu=_relu()),
        "pool_proj": _seq(pool=nn.MaxPool2d(3, 1, padding=1), conv=conv(c_in, pool_proj, 1), relu=_relu()),
    })


def googlenet(num_classes=1000, in_channels=3, input_size=224, dropout_p=0.4):
    def trunk():
        layers = dict(conv1=nn.Conv2d(in_channels, 64, 7, stride=2, padding=3), relu1=_relu(),
                      pool1=nn.MaxPool2d(3, 2, ceil_mode=True),
                      conv2_reduce=nn.Conv2d(64, 64, 1), relu2_reduce=_relu(),
                      conv2=nn.Conv2d(64, 192, 3, padding=1), relu2=_relu(),
                      pool2=nn.MaxPool2d(3, 2, ceil_mode=True))
        c = 192
        for name, widths in INCEPTION.items():
            if name in ("4a", "5a"):
                layers[f"pool{int(name[0]) - 1}"] = nn.MaxPool2d(3, 2, ceil_mode=True)
            layers[f"inception_{name}"] = inception(c, *widths)
            c = widths[0] + widths[2] + widths[4] + widths[5]
        return layers, c
    layers, channels = trunk()
    with torch.device("meta"):  # the average pool spans the whole last map (7x7 at 224x224)
        meta_layers, _ = trunk()
        last = _seq(**meta_layers)(torch.empty((1, in_channels) + _hw(input_size))).shape[2:]
    layers.update(pool5=nn.AvgPool2d(tuple(last), 1), flatten=nn.Flatten(), dropout=nn.Dropout(dropout_p),
                  fc=nn.Linear(channels, num_classes))
    return _seq(**layers)


# ----------------------------------------------------------------------------------------------- ResNet-50

class Residual(nn.Module):
    """body(x) + shortcut(x), the shortcut being the identity when None."""

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


def _conv_bn(layers, suffix, c_in, c_out, k, stride):
    layers[f"conv{suffix}"] = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False)
    layers[f"bn{suffix}"] = nn.BatchNorm2d(c_out)


def bottleneck(c_in, width, stride):
    """1x1 (stride) - BN - ReLU - 3x3 - BN - ReLU - 1x1 (4 width) - BN, plus identity or 1x1 + BN projection."""
    body = {}
    _conv_bn(body, 1, c_in, width, 1, stride)
    body["relu1"] = _relu()
    _conv_bn(body, 2, width, width, 3, 1)
    body["relu2"] = _relu()
    _conv_bn(body, 3, width, 4 * width, 1, 1)
    shortcut = None
    if stride != 1 or c_in != 4 * width:
        projection = {}
        _conv_bn(projection, "", c_in, 4 * width, 1, stride)
        shortcut = _seq(**projection)
    return _seq(res=Residual(_seq(**body), shortcut), relu=_relu())


def resnet50(num_classes=1000, in_channels=3, input_size=224):
    del input_size  # the global average pool takes any map size
    layers = {}
    _conv_bn(layers, 1, in_channels, 64, 7, 2)
    layers.update(relu=_relu(), maxpool=nn.MaxPool2d(3, 2, padding=1))
    c = 64
    for stage, (width, count) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        blocks = {}
        for i in range(count):
            blocks[str(i)] = bottleneck(c, width, 2 if stage > 1 and i == 0 else 1)
            c = 4 * width
        layers[f"layer{stage}"] = _seq(**blocks)
    layers.update(avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(c, num_classes))
    return _seq(**layers)


BUILDERS = {"lenet5": lenet5, "alexnet": alexnet, "vgg16": vgg16, "googlenet": googlenet, "resnet50": resnet50}


def build(name, **options):
    """The torch twin of fastconv.models.get_model(name) (default options; num_classes, in_channels and
    input_size may be given, as to fastconv's builders)."""
    if name not in BUILDERS:
        raise ValueError(f"no torch definition of {name!r}; available: {', '.join(BUILDERS)}")
    return BUILDERS[name](**options)


# ------------------------------------------------------------------------------------------ weights, export

def fastconv_arrays(fc_model):
    """{dotted name: ndarray} of a fastconv model's parameters and buffers, without copying."""
    out = {}
    for mname, m in fc_model.named_modules():
        for k, v in list(m.params.items()) + list(m.buffers.items()):
            out[f"{mname}.{k}" if mname else k] = v
    return out


def load_fastconv_weights(torch_model, fc_model):
    """Copy every parameter and buffer of the fastconv model `fc_model` into `torch_model` (the same names).

    A name missing on either side, or a shape mismatch, is a ValueError: the two definitions have drifted.
    BatchNorm's num_batches_tracked (torch only) is left alone.
    """
    theirs = fastconv_arrays(fc_model)
    ours = {k: v for k, v in torch_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    if set(theirs) != set(ours):
        raise ValueError(f"torch and fastconv models differ: only in torch {sorted(set(ours) - set(theirs))[:8]}, "
                         f"only in fastconv {sorted(set(theirs) - set(ours))[:8]}")
    with torch.no_grad():
        for name, array in theirs.items():
            if tuple(array.shape) != tuple(ours[name].shape):
                raise ValueError(f"{name}: fastconv shape {array.shape}, torch shape {tuple(ours[name].shape)}")
            ours[name].copy_(torch.from_numpy(array))
    return torch_model


class _LRNFunction(torch.autograd.Function):
    """torch's LRN in forward; one ONNX LRN node when exported (torch would trace its pad/avg-pool form)."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        return nn.functional.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size, alpha, beta, k):
        # ONNX LRN: x / (bias + alpha / size * sum of squares)^beta, torch's convention
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class _ExportLRN(nn.Module):
    def __init__(self, lrn):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = lrn.size, lrn.alpha, lrn.beta, lrn.k

    def forward(self, x):
        return _LRNFunction.apply(x, self.size, self.alpha, self.beta, self.k)


def _swap_lrn(module, make):
    """Replace every LocalResponseNorm (or _ExportLRN) child of `module`, recursively, by make(child)."""
    swapped = []
    for name, child in module.named_children():
        if isinstance(child, (nn.LocalResponseNorm, _ExportLRN)):
            setattr(module, name, make(child))
            swapped.append((module, name, child))
        else:
            swapped += _swap_lrn(child, make)
    return swapped


def export_onnx(torch_model, path, input_shape, opset=17):
    """Write `torch_model` (eval mode) to ONNX at `path`: TorchScript exporter (dynamo=False), opset 17, input
    "input" (batch, C, H, W) and output "logits" with a dynamic batch axis, LRN as ONNX LRN nodes."""
    import warnings
    torch_model.eval()
    swapped = _swap_lrn(torch_model, _ExportLRN)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(torch_model, (torch.zeros((1,) + tuple(input_shape)),), path, opset_version=opset,
                              dynamo=False, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    finally:
        for parent, name, original in swapped:
            setattr(parent, name, original)
    return path
