"""Fully connected generators and maxout discriminators (pylearn2 layers, torch modules).

Every layer is described by a small dict from the `model` config:
  generator layer:  {units, activation: relu|sigmoid|linear, irange | sparse_init, bias | bias_irange}
  generator output: {activation, irange | sparse_init, bias: marginals | <float>}
  discriminator:    {layers: [{units, pieces, irange, bias_irange}], output_irange, input_dropout, hidden_dropout}
The output size is the data size, so the same config works on any image shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from advnets import precision

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "linear": nn.Identity}


class Linear(nn.Linear):
    """nn.Linear whose matmul runs in bf16 on the fast path (advnets.precision)."""

    def forward(self, x: Tensor) -> Tensor:
        return precision.linear(x, self)


class Dropout(nn.Dropout):
    """nn.Dropout whose masks are drawn cheaply on the fast path (advnets.precision)."""

    def forward(self, x: Tensor) -> Tensor:
        return precision.dropout(x, self.p, self.training)


def init_linear(layer: nn.Linear, spec: Mapping) -> None:
    """pylearn2 init: U(-irange, irange), or `sparse_init` N(0,1) weights per unit; bias constant, or
    U(-bias_irange, bias_irange) where that is given (not in the paper: with 1-D inputs, zero biases put
    every ReLU's and every maxout piece's kink at 0, so the nets start as two straight lines)."""
    with torch.no_grad():
        if spec.get("sparse_init"):
            # Each output unit gets exactly `sparse_init` non-zero incoming weights drawn from N(0, 1).
            n_in = layer.in_features
            count = int(spec["sparse_init"])
            layer.weight.zero_()
            for row in layer.weight:
                idx = torch.randperm(n_in)[:count]
                row[idx] = torch.randn(count)
        else:
            layer.weight.uniform_(-float(spec["irange"]), float(spec["irange"]))
        bias = spec.get("bias", 0.0)
        if spec.get("bias_irange"):
            layer.bias.uniform_(-float(spec["bias_irange"]), float(spec["bias_irange"]))
        else:
            layer.bias.fill_(0.0 if bias == "marginals" or bias is None else float(bias))


class Maxout(nn.Module):
    """Linear to units * pieces outputs, then the max over each contiguous group of `pieces`."""

    def __init__(self, in_features: int, units: int, pieces: int):
        super().__init__()
        self.units, self.pieces = units, pieces
        self.linear = Linear(in_features, units * pieces)

    def forward(self, x: Tensor) -> Tensor:
        return precision.maxout(self.linear(x), self.units, self.pieces)


class Generator(nn.Module):
    """z -> stack of linear layers -> image of `shape`."""

    def __init__(self, noise_dim: int, shape: Sequence[int], layers: Sequence[Mapping], output: Mapping):
        super().__init__()
        self.shape = tuple(shape)
        self.output_bias_from_marginals = output.get("bias") == "marginals"
        modules: list[nn.Module] = []
        width = noise_dim
        for spec in [*layers, {**output, "units": math.prod(self.shape)}]:
            linear = Linear(width, int(spec["units"]))
            init_linear(linear, spec)
            modules += [linear, ACTIVATIONS[spec["activation"]]()]
            width = int(spec["units"])
        self.net = nn.Sequential(*modules)
        self.output_layer = modules[-2]

    def init_output_bias(self, pixel_mean: Tensor) -> None:
        """Sigmoid output bias = logit of the mean training pixel, as the official code does."""
        if not self.output_bias_from_marginals:
            return
        p = pixel_mean.reshape(-1).double().clamp(1e-7, 1 - 1e-7)
        with torch.no_grad():
            self.output_layer.bias.copy_(torch.log(p) - torch.log1p(-p))

    def forward(self, z: Tensor) -> Tensor:
        return precision.fp32(self.net(z)).view(z.shape[0], *self.shape)


class MaxoutDiscriminator(nn.Module):
    """Image -> maxout layers -> one logit. Dropout on the input of every layer, the last included."""

    def __init__(
        self,
        shape: Sequence[int],
        layers: Sequence[Mapping],
        output_irange: float,
        input_dropout: float,
        hidden_dropout: float,
    ):
        super().__init__()
        modules: list[nn.Module] = []
        width = math.prod(shape)
        for i, spec in enumerate(layers):
            maxout = Maxout(width, int(spec["units"]), int(spec["pieces"]))
            init_linear(maxout.linear, spec)
            modules += [Dropout(input_dropout if i == 0 else hidden_dropout), maxout]
            width = int(spec["units"])
        head = Linear(width, 1)
        init_linear(head, {"irange": output_irange})
        modules += [Dropout(hidden_dropout if layers else input_dropout), head]
        self.net = nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        """Pre-sigmoid logits, shape (B,): the losses work on logits for stability."""
        return precision.fp32(self.net(x.reshape(x.shape[0], -1)).squeeze(-1))


def build_generator(model_cfg: Mapping, shape: Sequence[int]) -> nn.Module:
    g = model_cfg["generator"]
    return Generator(int(model_cfg["noise_dim"]), shape, g["layers"], g["output"])


def build_discriminator(model_cfg: Mapping, shape: Sequence[int]) -> nn.Module:
    d = model_cfg["discriminator"]
    return MaxoutDiscriminator(
        shape, d["layers"], float(d["output_irange"]), float(d["input_dropout"]), float(d["hidden_dropout"])
    )


@torch.no_grad()
def apply_max_col_norm(net: nn.Module, max_norm: float) -> None:
    """Rescale every unit's incoming weight vector (each maxout piece, each conv filter too) to L2 norm <= max_norm."""
    for layer in net.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            layer.weight.renorm_(2, 0, max_norm)
        elif isinstance(layer, nn.ConvTranspose2d):  # weight (in, out, kh, kw): one filter per output channel
            layer.weight.renorm_(2, 1, max_norm)
