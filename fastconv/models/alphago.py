"""The policy network of AlphaGo (Silver et al. 2016, "Mastering the game of Go with deep neural networks and
tree search", Methods: the SL policy network)."""
import numpy as np

from .. import nn
from ._build import finish, generator, image_size, init_weights


class PositionBias(nn.Module):
    """Adds a separate learned bias to every position of a (C, H, W) map: y[n] = x[n] + bias, bias (C, H, W)
    (initialized to zero)."""

    def __init__(self, channels, height, width, dtype=np.float32):
        super().__init__()
        self.add_param("bias", np.zeros((channels, height, width), dtype=dtype))

    def output_shape(self, input_shape):
        if tuple(input_shape[1:]) != self.params["bias"].shape:
            raise ValueError(f"PositionBias{self.params['bias'].shape} got input {tuple(input_shape)}")
        return tuple(input_shape)

    def forward(self, x):
        if x.ndim != 4 or x.shape[1:] != self.params["bias"].shape:
            raise ValueError(f"PositionBias{self.params['bias'].shape} expects (N, "
                             f"{', '.join(map(str, self.params['bias'].shape))}) input, got {x.shape}")
        if x.dtype != self.params["bias"].dtype:
            raise TypeError(f"PositionBias: input dtype {x.dtype} differs from bias dtype "
                            f"{self.params['bias'].dtype}")
        return x + self.params["bias"]

    def backward(self, dy):
        if self.trainable("bias"):
            self.grads["bias"] += dy.sum(axis=0)
        return dy if self.need_input_grad else None

    def extra_repr(self):
        return "x".join(map(str, self.params["bias"].shape))


def alphago_policy(k=192, in_channels=48, board_size=19, layers=13, softmax=True, init="he", seed=0, rng=None,
                   dtype=np.float32, input_size=None):
    """The 13-layer SL policy network: 19x19x48 feature planes -> probabilities of the 361 moves.

    conv1 `k` 5x5 pad 2 + ReLU, conv2 .. conv12 `k` 3x3 pad 1 + ReLU (every map stays 19x19), conv13 1x1 to one
    filter without bias, then a separate bias for each of the 361 positions (PositionBias), flattened, and a
    softmax over the positions. k=192 (the match version): 3,882,793 parameters.

    softmax=False leaves the 361 logits, for training with CrossEntropyLoss (which applies the softmax itself).
    `layers` counts the convolutions (13 in the paper). `input_size` (square) is another name for `board_size`.
    Default init: He normal (the paper does not say).
    """
    if input_size is not None:
        h, w = image_size(input_size)
        if h != w:
            raise ValueError(f"the Go board is square; got input_size {input_size!r}")
        board_size = h
    if layers < 2:
        raise ValueError(f"the policy network needs at least 2 conv layers, got layers={layers}")
    rng = generator(rng, seed)
    body = {"conv1": nn.Conv2d(in_channels, k, 5, padding=2, dtype=dtype), "relu1": nn.ReLU()}
    for i in range(2, layers):
        body[f"conv{i}"] = nn.Conv2d(k, k, 3, padding=1, dtype=dtype)
        body[f"relu{i}"] = nn.ReLU()
    body[f"conv{layers}"] = nn.Conv2d(k, 1, 1, bias=False, dtype=dtype)
    body["position_bias"] = PositionBias(1, board_size, board_size, dtype=dtype)
    body["flatten"] = nn.Flatten()
    if softmax:
        body["softmax"] = nn.Softmax()
    model = nn.Sequential(**body)
    init_weights(model, rng, init)
    return finish(model, "alphago_policy", (in_channels, board_size, board_size), init)
