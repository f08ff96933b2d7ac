"""The classic ConvNet case studies as ready, trainable fastconv.nn models.

    >>> from fastconv import models
    >>> net = models.get_model("alexnet", num_classes=10, seed=1)
    >>> net.input_shape                 # the (C, H, W) the architecture was drawn for
    (3, 227, 227)

Every builder takes the options that make sense for it, among: num_classes, in_channels, input_size (an int or
(H, W); the fully connected layers are sized for it), init (a scheme name, or None to leave zero weights, e.g.
before loading a checkpoint or to analyze a big model cheaply), seed or rng (a numpy Generator: every weight
and every dropout stream of the model is drawn from it, in layer order), dtype (float32 or float64).

A model is a tree of fastconv.nn modules (mostly Sequential, with Concat for inception and Residual for
ResNet), outputs logits (AlphaGo's policy: probabilities unless softmax=False), and is in training mode.
"""
import inspect

from .alexnet import alexnet, zfnet
from .alphago import PositionBias, alphago_policy
from .googlenet import GoogLeNet, SideBranch, googlenet, inception
from .lenet import lenet5
from .resnet import residual_block, resnet, resnet18, resnet34, resnet50, resnet101, resnet152
from .vgg import vgg, vgg11, vgg13, vgg16, vgg19, vgg_a, vgg_a_lrn, vgg_b, vgg_c, vgg_d, vgg_e

MODELS = {
    "lenet5": lenet5,
    "alexnet": alexnet,
    "zfnet": zfnet,
    "vgg-a": vgg_a, "vgg-a-lrn": vgg_a_lrn, "vgg-b": vgg_b, "vgg-c": vgg_c, "vgg-d": vgg_d, "vgg-e": vgg_e,
    "vgg11": vgg11, "vgg13": vgg13, "vgg16": vgg16, "vgg19": vgg19,
    "googlenet": googlenet,
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101,
    "resnet152": resnet152,
    "alphago_policy": alphago_policy,
}


def get_model(name, **options):
    """Build model `name` (a key of MODELS; case and '_'/'-' do not matter) with the builder's `options`.

    The model remembers how it was built: ``model.arch = {"name": <MODELS key>, "options": options}``, which
    fastconv.io.save records so that fastconv.load can rebuild it."""
    key = str(name).lower().replace("_", "-")
    builders = {k.replace("_", "-"): b for k, b in MODELS.items()}
    canonical = {k.replace("_", "-"): k for k in MODELS}
    if key not in builders:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    builder = builders[key]
    accepted = inspect.signature(builder).parameters  # aliases expose their generic builder's via __wrapped__
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"model {name!r} does not take option(s) {unknown}; it takes {list(accepted)}")
    model = builder(**options)
    model.arch = {"name": canonical[key], "options": dict(options)}
    return model


__all__ = ["MODELS", "get_model", "lenet5", "alexnet", "zfnet", "vgg", "vgg11", "vgg13", "vgg16", "vgg19",
           "vgg_a", "vgg_a_lrn", "vgg_b", "vgg_c", "vgg_d", "vgg_e", "googlenet", "inception", "GoogLeNet",
           "SideBranch", "resnet", "residual_block", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
           "alphago_policy", "PositionBias"]
