"""The paper's networks, built from the `model` config and the data shape (`model.name` picks the family)."""

import contextlib
from collections.abc import Iterator, Mapping, Sequence

from torch import nn

from advnets.nets import conv, mlp
from advnets.nets.mlp import Generator, Maxout, MaxoutDiscriminator, apply_max_col_norm

# model.name -> (G's builder, D's builder): the one list of model families (each has conf/model/<name>.yaml).
NETS = {
    "maxout": (mlp.build_generator, mlp.build_discriminator),
    "conv": (conv.build_conv_generator, conv.build_conv_discriminator),
}


def _builders(model_cfg: Mapping):
    name = model_cfg["name"]
    if name not in NETS:
        raise ValueError(f"unknown model.name {name!r}: choose one of {', '.join(NETS)}")
    return NETS[name]


def build_generator(model_cfg: Mapping, shape: Sequence[int]) -> nn.Module:
    return _builders(model_cfg)[0](model_cfg, shape)


def build_discriminator(model_cfg: Mapping, shape: Sequence[int]) -> nn.Module:
    return _builders(model_cfg)[1](model_cfg, shape)


@contextlib.contextmanager
def eval_mode(net: nn.Module) -> Iterator[nn.Module]:
    """`net` in eval mode (no dropout) inside the block, then back in the mode it was in, also after an error."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


__all__ = [
    "NETS",
    "eval_mode",
    "Generator",
    "MaxoutDiscriminator",
    "Maxout",
    "apply_max_col_norm",
    "build_discriminator",
    "build_generator",
]
