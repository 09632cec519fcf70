"""An exponential moving average of G's weights (Yazici et al. 2019), sampled from instead of G when asked.

After every G update: w_ema <- decay * w_ema + (1 - decay) * w, for every parameter; buffers are
copied. It starts from G's weights when a fresh fit starts and lives in the module's state_dict
(`generator_ema.*`), so checkpoints hold it and a resume continues it exactly. It changes nothing
in training: D only ever sees the raw G.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class GeneratorEMA(nn.Module):
    def __init__(self, generator: nn.Module, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"model.ema_decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.generator = copy.deepcopy(generator).requires_grad_(False)

    @torch.no_grad()
    def reset(self, generator: nn.Module) -> None:
        """Start the average at G's current weights."""
        self.generator.load_state_dict(generator.state_dict())

    @torch.no_grad()
    def update(self, generator: nn.Module) -> None:
        averaged = list(self.generator.parameters())
        torch._foreach_lerp_(averaged, [p.detach() for p in generator.parameters()], 1.0 - self.decay)
        for mine, theirs in zip(self.generator.buffers(), generator.buffers()):
            mine.copy_(theirs)
