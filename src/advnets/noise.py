"""The noise G is fed, `model.noise`: each kind's sampler, the one list of kinds config.py checks against."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def uniform(n: int, dim: int, generator: torch.Generator, device: torch.device | str) -> Tensor:
    """U(-sqrt 3, sqrt 3)^dim: unit variance, as the normal kind."""
    return (torch.rand(n, dim, generator=generator, device=device) * 2 - 1) * math.sqrt(3.0)


def normal(n: int, dim: int, generator: torch.Generator, device: torch.device | str) -> Tensor:
    """N(0, I)."""
    return torch.randn(n, dim, generator=generator, device=device)


NOISES = {"uniform": uniform, "normal": normal}


def draw_noise(n: int, dim: int, kind: str, generator: torch.Generator, device: torch.device | str) -> Tensor:
    """The one place noise is drawn: n vectors of `dim` of the kind NOISES names."""
    if kind not in NOISES:
        raise ValueError(f"unknown model.noise {kind!r}: choose one of {', '.join(NOISES)}")
    return NOISES[kind](n, dim, generator, device)
