"""Seeing what a ConvNet learned: every technique of "Visualizing and Understanding ConvNets" on any fastconv model.

Each technique is a function on an in-memory model that returns arrays; `images` turns arrays into pictures and
PNG files, `gallery.write_gallery` writes them all with an index.html, and ``fastconv visualize`` runs them from
the command line.

    filters          filter_grid(model, layer)                       the kernels as a picture
    top patches      top_patches(model, images, layer, units, k)     the K patches that excite each unit most
    embedding        embed(model, images, layer) -> (N, 2)           t-SNE of a layer's codes
    occlusion        occlusion(model, image, target)                 class probability under a sliding square
    saliency         saliency(model, image, target)                  |d score / d image|, max over channels
    three rules      neuron_backward(model, image, layer, unit)      plain / deconvnet / guided backprop
    class models     class_model(model, classes), maximize(...)      gradient ascent on the image (+ Yosinski)
    inversion        invert(model, layer, image)                     the image whose code matches, with priors
    receptive field  receptive_field(model, layer)                   which input pixels a unit can see

Layers are the dotted names of ``model.named_modules()`` ("features.conv5", "classifier.fc7"). The building
blocks -- `activations` / `forward_to` (a forward pass up to a layer) and `gradient_to_input` (backward from a
layer under a ReLU rule) -- are public too; `inspecting(model, rule)` is the context they run in (eval mode,
no parameter gradients, the ReLU rule; all restored afterwards).

Images are (C, H, W) or (N, C, H, W) float arrays of the model's input shape, preprocessed as the model expects.
Optional packages: Pillow (PNG files, extra ``images``), scikit-learn or openTSNE (t-SNE, extra ``data``),
matplotlib (the labelled t-SNE plot, extra ``plot``), tqdm (progress bars).
"""
from ._core import (RULES, activations, forward_to, get_layer, gradient_to_input, inspecting, layer_names,
                    output_shapes, score_layer)
from .embedding import embed, layer_codes, scatter_plot, thumbnail_map, tsne
from .filters import conv_layers, filter_grid
from .gradients import NeuronBackward, Saliency, class_scores, neuron_backward, saliency
from .occlusion import Occlusion, occlusion
from .optimize import Inversion, Maximized, class_model, invert, invert_layers, maximize
from .patches import TopPatches, render_top_patches, top_patches
from .receptive import ReceptiveField, crop, receptive_field, receptive_fields

__all__ = ["RULES", "activations", "forward_to", "get_layer", "gradient_to_input", "inspecting", "layer_names",
           "output_shapes", "score_layer", "embed", "layer_codes", "scatter_plot", "thumbnail_map", "tsne",
           "conv_layers", "filter_grid", "NeuronBackward", "Saliency", "class_scores", "neuron_backward",
           "saliency", "Occlusion", "occlusion", "Inversion", "Maximized", "class_model", "invert",
           "invert_layers", "maximize", "TopPatches", "render_top_patches", "top_patches", "ReceptiveField",
           "crop", "receptive_field", "receptive_fields"]
