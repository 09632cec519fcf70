"""The paper's networks, built from the `model` config and the data shape (`model.name` picks the family)."""

from collections.abc import Mapping, Sequence

from torch import nn

from advnets.nets import conv, mlp
from advnets.nets.mlp import Generator, Maxout, MaxoutDiscriminator, apply_max_col_norm


def build_generator(model_cfg: Mapping, shape: Sequence[int]) -> nn.Module:
    if model_cfg.get("name") == "conv":
        return conv.build_conv_generator(model_cfg, shape)
    return mlp.build_generator(model_cfg, shape)


def build_discriminator(model_cfg: Mapping, shape: Sequence[int]) -> nn.Module:
    if model_cfg.get("name") == "conv":
        return conv.build_conv_discriminator(model_cfg, shape)
    return mlp.build_discriminator(model_cfg, shape)


__all__ = ["Generator", "MaxoutDiscriminator", "Maxout", "apply_max_col_norm", "build_discriminator", "build_generator"]
