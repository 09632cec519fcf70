"""The paper's networks, built from the `model` config and the data shape."""

from advnets.nets.mlp import Generator, MaxoutDiscriminator, Maxout, apply_max_col_norm, build_discriminator, build_generator

__all__ = ["Generator", "MaxoutDiscriminator", "Maxout", "apply_max_col_norm", "build_discriminator", "build_generator"]
