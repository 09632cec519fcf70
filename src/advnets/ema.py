"""An exponential moving average of G's weights (Yazici et al. 2019), sampled from beside G.

After the n-th G update (n = 1, 2, ...): w_ema <- beta_n * w_ema + (1 - beta_n) * w, for every
parameter; buffers are copied. At full horizon beta_n = `decay`, whose half-life is
h = ln(1/2) / ln(decay) G updates. With a ramp-up r (StyleGAN2-ADA's ema_rampup) the half-life
after n updates is min(h, r * n), so beta_n = 0.5 ** (1 / min(h, r * n)): the average never holds
more than a fraction of the updates made so far and forgets the random start, which a constant
0.9999 does not (0.9999^15000 = 22% of the initial weights are still in it after 15,000 updates).
Without a ramp-up beta_n = decay.

It starts from G's weights when a fresh fit starts and lives in the module's state_dict
(`generator_ema.*`), so checkpoints hold it and a resume continues it exactly. It changes nothing
in training: D only ever sees the raw G.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def ema_beta(n: int, decay: float, rampup: float | None) -> float:
    """The weight of the old average at the n-th G update (n >= 1)."""
    if rampup is None:
        return decay
    half_life = min(math.log(0.5) / math.log(decay), rampup * n)
    return 0.5 ** (1.0 / half_life)


class GeneratorEMA(nn.Module):
    def __init__(self, generator: nn.Module, decay: float, rampup: float | None = None):
        super().__init__()
        # The ranges are checked once, with the rest of the config (advnets.config.check_additions).
        self.decay = float(decay)
        self.rampup = None if rampup is None else float(rampup)
        self.generator = copy.deepcopy(generator).requires_grad_(False)
        # The latest G update already folded in by G's compiled update (advnets.updates), which update() skips.
        self.folded_through: int | None = None

    @torch.no_grad()
    def reset(self, generator: nn.Module) -> None:
        """Start the average at G's current weights."""
        self.generator.load_state_dict(generator.state_dict())

    def weight(self, n: int) -> float:
        """The weight of G's weights in the average after its n-th update, 1 - beta_n."""
        return 1.0 - ema_beta(n, self.decay, self.rampup)

    @torch.no_grad()
    def update(self, generator: nn.Module, n: int) -> None:
        """Fold in G's weights after its n-th update."""
        if self.folded_through != n:
            averaged = list(self.generator.parameters())
            torch._foreach_lerp_(averaged, [p.detach() for p in generator.parameters()], self.weight(n))
        for mine, theirs in zip(self.generator.buffers(), generator.buffers()):
            mine.copy_(theirs)
