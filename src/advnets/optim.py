"""The one place optimisers are built (the paper's SGD with classic momentum, or Adam) and their
schedules applied: the momentum ramp per epoch, the optional lr anneal per batch, and the config's
values on a resumed optimiser."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from advnets.updates import adam_update, momentum_update


class ClassicMomentum(torch.optim.Optimizer):
    """pylearn2's SGD: v = mu * v - lr * grad; w += v, with lr = max(lr0 / decay^n, min_lr).

    n is the number of updates this optimiser has made; it lives in the param group (`updates`)
    so it is saved in checkpoints with the velocities and the decay continues after a resume.
    torch.optim.SGD differs once lr changes: it keeps lr out of the velocity buffer.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        momentum: float = 0.5,
        lr_decay: float = 1.000004,
        min_lr: float = 1e-6,
    ):
        # lr_scale: the anneal's factor on top of the decay (1: none; see anneal_lr).
        super().__init__(
            params, dict(lr=lr, lr0=lr, momentum=momentum, lr_decay=lr_decay, min_lr=min_lr, updates=0, lr_scale=1.0)
        )
        # The fast path's compiled update (advnets.updates.CompiledUpdate; model.compile_updates), or None: eager.
        self.compiled_update = None

    @staticmethod
    def lr_at(group: dict, updates: int) -> float:
        return max(group["lr0"] / group["lr_decay"] ** updates, group["min_lr"]) * group.get("lr_scale", 1.0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = self.lr_at(group, group["updates"])
            params = [p for p in group["params"] if p.grad is not None]
            velocities = []
            for p in params:
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p)
                velocities.append(state["velocity"])
            grads = [p.grad for p in params]
            if params and not self._compiled_step(params, grads, velocities, lr, group["momentum"]):
                torch._foreach_mul_(velocities, group["momentum"])
                torch._foreach_add_(velocities, grads, alpha=-lr)
                torch._foreach_add_(params, velocities)
            group["updates"] += 1
            # The lr the next update will use, which is what a logger wants to show.
            group["lr"] = self.lr_at(group, group["updates"])
        return loss

    def _compiled_step(self, params, grads, velocities, lr: float, mu: float) -> bool:
        if self.compiled_update is None:
            return False
        as_tensor = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
        return self.compiled_update.run(momentum_update, params, grads, velocities, as_tensor(lr), as_tensor(mu))


class Adam(torch.optim.Adam):
    """torch.optim.Adam (its state and checkpoints), whose step can be the fast path's compiled update.

    Fused: the whole update in one pass over each tensor (torch's fused kernel, CPU and GPU), the same formula as
    the default for-loop implementation to float32 rounding, which on a CPU makes about ten passes over memory
    (7.9 against 1.2 ms a step for G's weights on one thread; benchmarks/train_throughput.py --step-costs)."""

    def __init__(self, params: Iterable[Tensor], lr: float, betas: tuple[float, float]):
        super().__init__(params, lr=lr, betas=betas, fused=True)
        self.compiled_update = None  # as ClassicMomentum's

    @torch.no_grad()
    def step(self, closure=None):
        if self.compiled_update is None or self.compiled_update.eager:
            return self._fused_step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self.state[p] for p in params]
            for p, state in zip(params, states):
                if not state:  # as torch.optim.Adam starts a parameter's state
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            # One step count for the group (its parameters are all stepped together), in float64 as Adam's.
            t = float(states[0]["step"]) + 1
            beta1, beta2 = group["betas"]
            step_size = torch.tensor(group["lr"] / (1 - beta1**t), dtype=torch.float32)
            bias_correction2_sqrt = torch.tensor((1 - beta2**t) ** 0.5, dtype=torch.float32)
            ran = self.compiled_update.run(
                adam_update,
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                (float(beta1), float(beta2)),
                float(group["eps"]),
                step_size,
                bias_correction2_sqrt,
            )
            if not ran:
                return self._fused_step(closure)
            for state in states:
                state["step"] += 1
        return loss

    def _fused_step(self, closure):
        loss = super().step(closure)
        # The fused kernel writes the weights without moving their version counters, on which the fast path caches
        # each weight's bf16 cast (advnets.precision): without this it would go on using the weights of before.
        torch.autograd.graph.increment_version(
            [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        )
        return loss


def momentum_at(epoch: int, start: float, end: float, saturate_epoch: int) -> float:
    """Linear ramp of mu from `start` in epoch 1 to `end` from `saturate_epoch` on (epochs 1-based)."""
    frac = min(max((epoch - 1) / max(saturate_epoch - 1, 1), 0.0), 1.0)
    return start + (end - start) * frac


def _momentum(params: Iterable[Tensor], cfg: Mapping, lr: float) -> torch.optim.Optimizer:
    return ClassicMomentum(
        params,
        lr=lr,
        momentum=float(cfg["momentum_start"]),
        lr_decay=float(cfg["lr_decay"]),
        min_lr=float(cfg["min_lr"]),
    )


def _adam(params: Iterable[Tensor], cfg: Mapping, lr: float) -> torch.optim.Optimizer:
    adam = Adam(params, lr=lr, betas=tuple(cfg["betas"]))
    for group in adam.param_groups:  # saved with the state, like ClassicMomentum's lr0 and lr_scale
        group.update(base_lr=lr, lr_scale=1.0)
    return adam


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


def anneal_factor(progress: float, max_epochs: int, anneal_epochs: int | None) -> float:
    """The lr factor after `progress` epochs (fractional) of a run of max_epochs: 1 until the last
    anneal_epochs, then linearly down to 0 at max_epochs (null anneal_epochs: always 1)."""
    if not anneal_epochs:
        return 1.0
    return min(1.0, max(0.0, (max_epochs - progress) / anneal_epochs))


def current_lr(optimizer: torch.optim.Optimizer, group: dict) -> float:
    """The lr the group's next update uses: the decayed lr0 (ClassicMomentum) or base_lr (Adam), times lr_scale."""
    if isinstance(optimizer, ClassicMomentum):
        return ClassicMomentum.lr_at(group, group["updates"])
    return group["base_lr"] * group["lr_scale"]


def anneal_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Scale every group's lr by `factor` (anneal_factor's)."""
    for group in optimizer.param_groups:
        group["lr_scale"] = factor
        group["lr"] = current_lr(optimizer, group)


def apply_config(optimizer: torch.optim.Optimizer, cfg: Mapping, lr: float | None = None) -> list[str]:
    """Give a restored optimiser the values `cfg` asks for (a resume with changed optimizer.* settings);
    its state (velocities, moments, update count) is kept. Returns what changed, as 'key: old -> new'."""
    lr = float(cfg["lr"] if lr is None else lr)
    wanted = (
        {"lr0": lr, "lr_decay": float(cfg["lr_decay"]), "min_lr": float(cfg["min_lr"])}
        if isinstance(optimizer, ClassicMomentum)
        else {"base_lr": lr, "betas": tuple(cfg["betas"])}
    )
    changed = set()
    for group in optimizer.param_groups:
        group.setdefault("lr_scale", 1.0)
        if not isinstance(optimizer, ClassicMomentum):
            group.setdefault("base_lr", group["lr"])  # an Adam saved before base_lr existed
        for key, value in wanted.items():
            old = tuple(group[key]) if isinstance(group[key], (list, tuple)) else group[key]
            if old != value:
                changed.add(f"{key} {old} -> {value}")
                group[key] = value
        group["lr"] = current_lr(optimizer, group)
    return sorted(changed)
