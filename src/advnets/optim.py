"""The one place optimisers are built: the paper's SGD with classic momentum, or Adam."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor


class ClassicMomentum(torch.optim.Optimizer):
    """pylearn2's SGD: v = mu * v - lr * grad; w += v, with lr = max(lr0 / decay^n, min_lr).

    n is the number of updates this optimiser has made; it lives in the param group (`updates`)
    so it is saved in checkpoints with the velocities and the decay continues after a resume.
    torch.optim.SGD differs once lr changes: it keeps lr out of the velocity buffer.
    """

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.5,
                 lr_decay: float = 1.000004, min_lr: float = 1e-6):
        super().__init__(params, dict(lr=lr, lr0=lr, momentum=momentum, lr_decay=lr_decay,
                                      min_lr=min_lr, updates=0))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = max(group["lr0"] / group["lr_decay"] ** group["updates"], group["min_lr"])
            params = [p for p in group["params"] if p.grad is not None]
            velocities = []
            for p in params:
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p)
                velocities.append(state["velocity"])
            if params:
                torch._foreach_mul_(velocities, group["momentum"])
                torch._foreach_add_(velocities, [p.grad for p in params], alpha=-lr)
                torch._foreach_add_(params, velocities)
            group["updates"] += 1
            # The lr the next update will use, which is what a logger wants to show.
            group["lr"] = max(group["lr0"] / group["lr_decay"] ** group["updates"], group["min_lr"])
        return loss


def momentum_at(epoch: int, start: float, end: float, saturate_epoch: int) -> float:
    """Linear ramp of mu from `start` in epoch 1 to `end` from `saturate_epoch` on (epochs 1-based)."""
    frac = min(max((epoch - 1) / max(saturate_epoch - 1, 1), 0.0), 1.0)
    return start + (end - start) * frac


def _momentum(params: Iterable[Tensor], cfg: Mapping, lr: float) -> torch.optim.Optimizer:
    return ClassicMomentum(params, lr=lr, momentum=float(cfg["momentum_start"]), lr_decay=float(cfg["lr_decay"]),
                           min_lr=float(cfg["min_lr"]))


def _adam(params: Iterable[Tensor], cfg: Mapping, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, betas=tuple(cfg["betas"]))


# optimizer.name -> builder: the one list of optimisers (each has conf/optimizer/<name>.yaml). The lr ranges are
# checked once, in advnets.config.check_config.
OPTIMIZERS = {"momentum": _momentum, "adam": _adam}


def build_optimizer(params: Iterable[Tensor], cfg: Mapping, lr: float | None = None) -> torch.optim.Optimizer:
    """The optimiser `cfg` names; `lr` (this net's own, e.g. optimizer.d_lr) replaces cfg.lr when given."""
    if cfg["name"] not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer.name {cfg['name']!r}: choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[cfg["name"]](params, cfg, float(cfg["lr"] if lr is None else lr))


def start_epoch(optimizer: torch.optim.Optimizer, cfg: Mapping, epoch: int) -> None:
    """Apply the per-epoch momentum schedule (a no-op for optimisers without one)."""
    if isinstance(optimizer, ClassicMomentum):
        mu = momentum_at(epoch, cfg["momentum_start"], cfg["momentum_end"], cfg["momentum_saturate_epoch"])
        for group in optimizer.param_groups:
            group["momentum"] = mu
