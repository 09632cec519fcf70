"""Stabilisers of D's update, each off by default (the paper has none); see docs/stability.md.

- `R1Penalty`: gamma/2 * E_x ||grad_x D(x)||^2 on real data, D(x) the logit (Mescheder et al. 2018,
  "Which training methods for GANs do actually converge?"), gamma constant or annealed linearly from a start.
- `InstanceNoise`: Gaussian noise on every input of D, real and generated, its std annealed linearly
  to 0 (Sonderby et al. 2017, "Amortised MAP inference for image super-resolution").
- One-sided label smoothing (Salimans et al. 2016) is `loss.real_label` (advnets.losses), and the two
  time-scale rule (Heusel et al. 2017) is `optimizer.d_lr` / `optimizer.g_lr` (advnets.optim).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


class R1Penalty:
    """gamma/2 * mean over the batch of ||grad_x D(x)||^2, differentiable w.r.t. D's weights.

    With `start`, gamma is annealed: start * (1 - t) + gamma * t, t = min(1, G updates / anneal_updates). A
    strong penalty trains fastest in the first epochs and a weak one best later (docs/stability.md).

    With `every` > 1 it is lazy (StyleGAN2's R1 interval): taken on every `every`-th D update only, as
    `every` x gamma, so that its expected gradient is the same at about 1/every of its cost (its double backward
    is about a sixth of an Algorithm 1 iteration with the paper's nets)."""

    # gamma, start > 0 and anneal_updates, every >= 1: checked with the run config (advnets.config)
    def __init__(self, gamma: float, start: float | None = None, anneal_updates: int = 1, every: int = 1):
        self.gamma, self.start, self.anneal_updates, self.every = float(gamma), start, int(anneal_updates), int(every)

    def due(self, d_updates: int) -> bool:
        """Whether the D update after `d_updates` of them takes the penalty: the 1st, the (every + 1)-th, ..."""
        return d_updates % self.every == 0

    def gamma_at(self, g_updates: int) -> float:
        if self.start is None:
            return self.gamma
        t = min(1.0, g_updates / self.anneal_updates)
        return float(self.start) * (1.0 - t) + self.gamma * t

    def factor(self, g_updates: int) -> float:
        """The penalty's factor on E||grad_x D(x)||^2: gamma/2 (annealed), times the interval (lazy R1)."""
        return 0.5 * self.every * self.gamma_at(g_updates)

    def logits_and_penalty(self, discriminator: nn.Module, real: Tensor, g_updates: int = 0) -> tuple[Tensor, Tensor]:
        """D's logits on `real` and the penalty after `g_updates` G updates, from one forward pass (same
        dropout masks)."""
        real = real.detach().requires_grad_()
        logits = discriminator(real)
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        return logits, self.factor(g_updates) * grad.pow(2).flatten(1).sum(1).mean()


class InstanceNoise:
    """x + N(0, std^2), std = std0 * (1 - G updates / anneal_updates), 0 from then on."""

    def __init__(self, std: float, anneal_updates: int):  # std > 0, anneal_updates >= 1: advnets.config checks them
        self.std0, self.anneal_updates = float(std), int(anneal_updates)

    def std(self, g_updates: int) -> float:
        return self.std0 * max(0.0, 1.0 - g_updates / self.anneal_updates)

    def __call__(self, x: Tensor, g_updates: int, generator: torch.Generator) -> Tensor:
        std = self.std(g_updates)
        if std == 0.0:
            return x
        return x + std * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def build_stabilisers(cfg: Mapping) -> tuple[R1Penalty | None, InstanceNoise | None]:
    """The `stabilisers` config block as objects (None: off; checkpoints of code older than the block have none)."""
    gamma, std = cfg.get("r1_gamma"), cfg.get("instance_noise_std")
    start = cfg.get("r1_gamma_start")
    return (
        R1Penalty(
            float(gamma),
            None if start is None else float(start),
            int(cfg.get("r1_anneal_updates") or 1),
            int(cfg.get("r1_every") or 1),
        )
        if gamma is not None
        else None,
        InstanceNoise(float(std), int(cfg["instance_noise_anneal_updates"])) if std is not None else None,
    )
