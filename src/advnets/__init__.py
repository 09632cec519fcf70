"""advnets: Generative Adversarial Nets (Goodfellow et al., 2014), reproduced."""

__version__ = "0.1.0"
