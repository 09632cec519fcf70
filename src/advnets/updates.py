"""The fast path's updates compiled (model.compile_updates=true): each net's optimiser step, G's average and the
bf16 casts of the new weights as one torch.compile'd function per net, in place of the eager passes over the
weights (ClassicMomentum's three `_foreach` passes or Adam's per-tensor ops, GeneratorEMA's lerp, and the copy
`precision.cast` makes of each weight at its next forward pass).

Inductor fuses them into one loop over each tensor, which reads the weight, its gradient and its state once. It
also contracts and reorders their arithmetic (a * b + c as one fused multiply-add, a division as a multiplication
by the reciprocal), so the weights it gives are within a few float32 ulps of the eager update's, not equal to them
(tests/test_compiled_updates.py bounds the difference); the eager update stays the reference, and the fallback
where compiling is not available. The values that change during a run (the decayed lr, the momentum ramp, Adam's
bias corrections, the average's ramp-up) enter as 0-dim tensors, so one compiled function serves the whole run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor, nn

from advnets import precision

log = logging.getLogger(__name__)
COMPILE = dict(fullgraph=True, dynamic=False)


def momentum_update(params, grads, velocities, lr: Tensor, mu: Tensor, averaged, weight: Tensor) -> list[Tensor]:
    """ClassicMomentum's step, v = mu v - lr g; w += v, then the average's lerp towards the new w; returns each new
    w in bf16."""
    for p, g, v in zip(params, grads, velocities):
        v.mul_(mu).sub_(g * lr)
        p.add_(v)
    return _average_and_cast(params, averaged, weight)


def adam_update(
    params, grads, exp_avgs, exp_avg_sqs, betas, eps, step_size: Tensor, bias_correction2_sqrt: Tensor, averaged, weight
) -> list[Tensor]:
    """torch.optim.Adam's step (its single-tensor arithmetic: m <- lerp(m, g, 1 - beta1), s <- beta2 s +
    (1 - beta2) g^2, w <- w - step_size m / (sqrt(s) / sqrt(1 - beta2^t) + eps)), then as momentum_update."""
    beta1, beta2 = betas
    for p, g, m, s in zip(params, grads, exp_avgs, exp_avg_sqs):
        m.lerp_(g, 1 - beta1)
        s.mul_(beta2).add_(g * g * (1 - beta2))
        p.sub_(step_size * m / (s.sqrt() / bias_correction2_sqrt + eps))
    return _average_and_cast(params, averaged, weight)


def _average_and_cast(params, averaged, weight: Tensor) -> list[Tensor]:
    for a, p in zip(averaged, params):
        a.lerp_(p, weight)
    return [p.to(precision.DTYPE) for p in params]


_compiled: dict[str, Callable] = {}


def compiled(update: Callable) -> Callable:
    """`update` compiled once per process (Inductor; one graph per net's list of shapes)."""
    if update.__name__ not in _compiled:
        _compiled[update.__name__] = torch.compile(update, **COMPILE)
    return _compiled[update.__name__]


class CompiledUpdate:
    """One net's update on the fast path: its optimiser's step calls `run(momentum_update or adam_update, ...)` in
    place of its eager arithmetic. `average` (G's GeneratorEMA, whose update n the compiled function folds in,
    `next_update()` giving n) is None for D. The bf16 casts it returns fill the fast path's cast cache, so the next
    forward pass makes none."""

    def __init__(self, net: nn.Module, average=None, next_update: Callable[[], int] | None = None):
        # Each parameter's layer and name, for the cast cache (precision.cast's key).
        self.layers = {id(p): (m, name) for m in net.modules() for name, p in m.named_parameters(recurse=False)}
        self.average, self.next_update = average, next_update
        # Each of the net's parameters -> its average (GeneratorEMA's copy of the net: the same order).
        self.averaged = {} if average is None else dict(zip(map(id, net.parameters()), average.generator.parameters()))
        self.eager = False  # set when compiling failed: the optimiser's own eager step from then on

    def _averaged(self, params) -> tuple[list[Tensor], Tensor]:
        if self.average is None:
            return [], torch.zeros(())
        n = self.next_update()
        self.average.folded_through = n  # GeneratorEMA.update(n) finds it done
        return [self.averaged[id(p)] for p in params], torch.tensor(self.average.weight(n), dtype=torch.float32)

    def run(self, update: Callable, params, *args) -> bool:
        """Whether the compiled `update` ran (False: compiling is not available here; the caller steps eagerly)."""
        if self.eager:
            return False
        averaged, weight = self._averaged(params)
        try:
            casts = compiled(update)(params, *args, averaged, weight)
        except Exception as error:  # noqa: BLE001 - Inductor's failures (no C++ compiler...) have many types
            log.warning("model.compile_updates: compiling the update failed (%s); the eager update is used", error)
            self.eager = True
            if self.average is not None:
                self.average.folded_through = None
            return False
        for p, cast in zip(params, casts):
            precision.put_cast(*self.layers[id(p)], p, cast)
        return True


def attach(module, d_optimizer, g_optimizer) -> None:
    """Give both optimisers of a GAN module their compiled update, where model.compile_updates asks for it on the
    fast path. Not with model.max_col_norm: it rescales the weights after the step, and the casts and the average
    must see the rescaled weights, so that run keeps the eager update."""
    model = module.cfg.model
    if not model.get("compile_updates"):
        return
    if not module.fast_path or model.get("max_col_norm"):
        why = "model.max_col_norm rescales the weights after it" if module.fast_path else "not on the fast path"
        log.info("model.compile_updates: the eager update is used (%s)", why)
        return
    d_optimizer.compiled_update = CompiledUpdate(module.discriminator)
    g_optimizer.compiled_update = CompiledUpdate(module.generator, module.generator_ema, lambda: module.g_updates + 1)
