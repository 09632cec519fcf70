"""The value function V(D, G) as losses on D's pre-sigmoid logits.

log D(x) = -softplus(-l) and log(1 - D(x)) = -softplus(l), so no log of a sigmoid is ever taken
and logits of +-50 (or more) stay finite.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor, scale: float = 0.5, real_label: float = 1.0) -> Tensor:
    """-scale * [mean log D(x) + mean log(1 - D(G(z)))]: D ascends V. The official code uses scale 0.5.

    real_label < 1 is one-sided label smoothing (Salimans et al. 2016): the real term becomes the cross
    entropy with target real_label, -[a log D(x) + (1 - a) log(1 - D(x))]; generated data keep target 0.
    """
    real_term = F.softplus(-real_logits).mean()
    if real_label != 1.0:
        real_term = real_label * real_term + (1.0 - real_label) * F.softplus(real_logits).mean()
    return scale * (real_term + F.softplus(fake_logits).mean())


def minimax(fake_logits: Tensor) -> Tensor:
    """G minimises mean log(1 - D(G(z))): the value function as written."""
    return -F.softplus(fake_logits).mean()


def nonsaturating(fake_logits: Tensor) -> Tensor:
    """G maximises mean log D(G(z)) (paper section 3)."""
    return F.softplus(-fake_logits).mean()


# loss.generator -> G's loss: the one list of generator losses (each has conf/loss/<name>.yaml).
GENERATOR_LOSSES = {"minimax": minimax, "nonsaturating": nonsaturating}


def generator_loss(fake_logits: Tensor, kind: str) -> Tensor:
    """G's loss `kind` (GENERATOR_LOSSES) on D's logits of generated data."""
    if kind not in GENERATOR_LOSSES:
        raise ValueError(f"unknown loss.generator {kind!r}: choose one of {', '.join(GENERATOR_LOSSES)}")
    return GENERATOR_LOSSES[kind](fake_logits)
