"""The paper's convolutional CIFAR-10 nets (official cifar10_convolutional.yaml).

G: z -> fully connected layers (mlp.py specs) -> reshape (channels, h, w) -> transposed conv to the
data's channels (no padding) with an untied, per-position output bias. h and w follow from the data
shape: h = (H - kernel) / stride + 1, so the last fully connected layer must have channels*h*w units.
D: conv-maxout layers (conv to channels*pieces maps, max over each group of pieces, ceil-mode
max-pooling) -> maxout layers -> one logit; every size follows from the data shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from advnets.nets.mlp import ACTIVATIONS, Maxout, init_linear


def init_uniform(layer: nn.Module, irange: float) -> None:
    with torch.no_grad():
        layer.weight.uniform_(-irange, irange)
        if layer.bias is not None:
            layer.bias.zero_()


class UntiedDeconv(nn.Module):
    """Transposed convolution without a shared bias, plus one bias per output position (C, H, W)."""

    def __init__(self, in_channels: int, shape: Sequence[int], kernel: int, stride: int, irange: float):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, shape[0], kernel, stride=stride, bias=False)
        init_uniform(self.deconv, irange)
        self.bias = nn.Parameter(torch.zeros(*shape))

    def forward(self, x: Tensor) -> Tensor:
        return self.deconv(x) + self.bias


class ConvGenerator(nn.Module):
    def __init__(self, noise_dim: int, shape: Sequence[int], layers: Sequence[Mapping], deconv: Mapping):
        super().__init__()
        self.shape = tuple(shape)
        channels, kernel, stride = int(deconv["channels"]), int(deconv["kernel"]), int(deconv["stride"])
        sides = [(s - kernel) / stride + 1 for s in self.shape[1:]]
        if not all(s == int(s) and s > 0 for s in sides):
            raise ValueError(f"a kernel {kernel}, stride {stride} transposed conv cannot give {self.shape}")
        self.hidden_shape = (channels, *map(int, sides))
        if not layers or int(layers[-1]["units"]) != math.prod(self.hidden_shape):
            raise ValueError(
                f"the last generator layer must have {math.prod(self.hidden_shape)} units "
                f"(= {' x '.join(map(str, self.hidden_shape))}) for data of shape {self.shape}"
            )
        modules: list[nn.Module] = []
        width = noise_dim
        for spec in layers:
            linear = nn.Linear(width, int(spec["units"]))
            init_linear(linear, spec)
            modules += [linear, ACTIVATIONS[spec["activation"]]()]
            width = int(spec["units"])
        self.fc = nn.Sequential(*modules)
        self.output_layer = UntiedDeconv(channels, self.shape, kernel, stride, float(deconv["irange"]))
        self.output_activation = ACTIVATIONS[deconv.get("activation", "linear")]()

    def init_output_bias(self, pixel_mean: Tensor) -> None:
        """The official conv G has no marginal bias init (linear output on contrast-normalised data)."""

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).view(z.shape[0], *self.hidden_shape)
        return self.output_activation(self.output_layer(h))


class ConvMaxout(nn.Module):
    """Conv to channels * pieces maps, max over each contiguous group of pieces, then ceil-mode max-pooling."""

    def __init__(self, in_channels: int, spec: Mapping):
        super().__init__()
        self.channels, self.pieces = int(spec["channels"]), int(spec["pieces"])
        self.conv = nn.Conv2d(
            in_channels, self.channels * self.pieces, int(spec["kernel"]), padding=int(spec.get("pad", 0))
        )
        init_uniform(self.conv, float(spec["irange"]))
        self.pool = nn.MaxPool2d(int(spec["pool"]), int(spec["pool_stride"]), ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        y = y.view(y.shape[0], self.channels, self.pieces, *y.shape[2:]).amax(dim=2)
        return self.pool(y)


class ConvMaxoutDiscriminator(nn.Module):
    def __init__(
        self,
        shape: Sequence[int],
        conv_layers: Sequence[Mapping],
        layers: Sequence[Mapping],
        output_irange: float,
        input_dropout: float,
        hidden_dropout: float,
    ):
        super().__init__()
        modules: list[nn.Module] = []
        channels = int(shape[0])
        for i, spec in enumerate(conv_layers):
            modules += [nn.Dropout(input_dropout if i == 0 else hidden_dropout), ConvMaxout(channels, spec)]
            channels = int(spec["channels"])
        self.features = nn.Sequential(*modules)
        with torch.no_grad():
            self.feature_shape = tuple(self.features(torch.zeros(1, *shape)).shape[1:])
        width = math.prod(self.feature_shape)
        head: list[nn.Module] = [nn.Flatten()]
        for spec in layers:
            maxout = Maxout(width, int(spec["units"]), int(spec["pieces"]))
            init_linear(maxout.linear, spec)
            head += [nn.Dropout(hidden_dropout), maxout]
            width = int(spec["units"])
        out = nn.Linear(width, 1)
        init_linear(out, {"irange": output_irange})
        head += [nn.Dropout(hidden_dropout), out]
        self.head = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        """Pre-sigmoid logits, shape (B,)."""
        return self.head(self.features(x)).squeeze(-1)


def build_conv_generator(model_cfg: Mapping, shape: Sequence[int]) -> nn.Module:
    g = model_cfg["generator"]
    return ConvGenerator(int(model_cfg["noise_dim"]), shape, g["layers"], g["deconv"])


def build_conv_discriminator(model_cfg: Mapping, shape: Sequence[int]) -> nn.Module:
    d = model_cfg["discriminator"]
    return ConvMaxoutDiscriminator(
        shape,
        d["conv_layers"],
        d["layers"],
        float(d["output_irange"]),
        float(d["input_dropout"]),
        float(d["hidden_dropout"]),
    )
