"""Each net's update against an independent float64 computation, on a real Trainer and the real optimisers.

D gets weights large enough (irange 0.1 / 0.5 instead of the paper's 0.005) that one D step changes G's
gradient by far more than the tolerance: a G step taken from the wrong D (the updated one in the
simultaneous update, the old one in Algorithm 1), not taken, or taken with the wrong sign cannot pass.
Dropout is set to p = 0 so that a second forward pass repeats the module's, and R1 is off
(stabilisers.r1_gamma=null): these are the paper's updates, v = mu v - lr grad; w += v.
"""

from __future__ import annotations

import copy

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from advnets.data import EpochBatchSampler, TensorBatches
from advnets.module import GAN
from conftest import bare_trainer, compose

SMALL = [
    "logger=none",
    "model.noise_dim=10",
    "model.generator.layers=[{units:16,activation:relu,irange:0.5}]",
    "model.generator.output.irange=0.5",
    "model.discriminator.layers=[{units:8,pieces:2,irange:0.1}]",
    "model.discriminator.output_irange=0.5",
    "model.ema_decay=null",
    "stabilisers.r1_gamma=null",
    "optimizer=momentum",  # the paper's updates (Adam's: tests/test_wiring.py)
]
LR0, DECAY, MU = 0.1, 1.000004, 0.5  # the paper's lr0 and decay; mu in epoch 1
TOL = 1e-4  # relative to the largest expected change; float32 rounding is ~5e-6 of it here
BATCH, STEPS = 8, 2


def snapshot(module: GAN, optimizers) -> dict:
    return {
        "G": {n: p.detach().clone() for n, p in module.generator.named_parameters()},
        "D": {n: p.detach().clone() for n, p in module.discriminator.named_parameters()},
        "velocity": [{i: s["velocity"].clone() for i, s in enumerate(opt.state.values())} for opt in optimizers],
    }


class StepRecorder(pl.Callback):
    """Events in call order: ("batch", x), ("noise", z), ("D_pre"/"D_post"/"G_pre"/"G_post", snapshot)."""

    def __init__(self, events: list):
        self.events = events

    def on_train_start(self, trainer, module):
        for name, opt in zip("DG", trainer.optimizers):
            opt.register_step_pre_hook(
                lambda o, a, k, name=name: self.events.append((f"{name}_pre", snapshot(module, trainer.optimizers)))
            )
            opt.register_step_post_hook(
                lambda o, a, k, name=name: self.events.append((f"{name}_post", snapshot(module, trainer.optimizers)))
            )

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.events.append(("batch", batch.clone()))


def fit_two_steps(tmp_path, schedule: str, loss: str):
    cfg = compose(*SMALL, f"schedule={schedule}", f"loss={loss}", "k=1", output_dir=tmp_path)
    torch.manual_seed(0)
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    for m in module.discriminator.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    events: list = []
    real_noise = module.noise

    def noise(n, generator=None, device=None):
        z = real_noise(n, generator, device)
        events.append(("noise", z.clone()))
        return z

    module.noise = noise
    x = torch.rand(BATCH * STEPS, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    trainer = bare_trainer(tmp_path, callbacks=[StepRecorder(events)])
    trainer.fit(module, train_dataloaders=TensorBatches(x, EpochBatchSampler(len(x), BATCH, seed=0, shuffle=False)))
    module.noise = real_noise
    # Only what happened during the training steps (the epoch-end sample grid draws no noise through it).
    return module, cfg, events


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    cache = {}

    def get(schedule, loss):
        if (schedule, loss) not in cache:
            cache[schedule, loss] = fit_two_steps(tmp_path_factory.mktemp(f"{schedule}_{loss}"), schedule, loss)
        return cache[schedule, loss]

    return get


def float64_copy(net: torch.nn.Module, params: dict) -> torch.nn.Module:
    ref = copy.deepcopy(net).double()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(params[name])
    return ref


def flat(params: dict) -> torch.Tensor:
    return torch.cat([p.flatten() for p in params.values()]).double()


def g_gradient(module, g_params, d_params, z, loss) -> torch.Tensor:
    """d/dG of G's loss, written out: minimax mean log(1 - D(G(z))), non-saturating -mean log D(G(z))."""
    g, d = float64_copy(module.generator, g_params), float64_copy(module.discriminator, d_params)
    p = torch.sigmoid(d(g(z.double())))
    value = torch.log1p(-p).mean() if loss == "minimax" else -torch.log(p).mean()
    return torch.cat([grad.flatten() for grad in torch.autograd.grad(value, list(g.parameters()))])


def d_gradient(module, g_params, d_params, x, z) -> torch.Tensor:
    """d/dD of 0.5 * -(mean log D(x) + mean log(1 - D(G(z)))) (loss.d_scale = 0.5)."""
    g, d = float64_copy(module.generator, g_params), float64_copy(module.discriminator, d_params)
    with torch.no_grad():
        fake = g(z.double())
    value = -0.5 * (torch.log(torch.sigmoid(d(x.double()))).mean() + torch.log1p(-torch.sigmoid(d(fake))).mean())
    return torch.cat([grad.flatten() for grad in torch.autograd.grad(value, list(d.parameters()))])


def close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    return bool((actual - expected).abs().max() <= TOL * expected.abs().max())


def steps(events: list, net: str) -> list[tuple[int, int]]:
    """(index of the pre-step snapshot, index of the post-step snapshot) of every step of `net`."""
    names = [name for name, _ in events]
    return [(i, names.index(f"{net}_post", i)) for i, name in enumerate(names) if name == f"{net}_pre"]


def last_before(events: list, kind: str, index: int):
    return [value for name, value in events[:index] if name == kind][-1]


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["minimax", "nonsaturating"])
@pytest.mark.parametrize("schedule", ["alternating", "simultaneous"])
def test_generator_step_is_minus_lr_times_its_gradient_at_the_right_discriminator(fits, schedule, loss):
    """G's change = mu v - lr_n dL_G/dG (n = G's own update count), with dL_G computed independently for
    this G loss from the noise the step drew and D's parameters: the updated D in Algorithm 1 (D steps
    first), the D both gradients were taken at in the simultaneous update. The other D is outside the
    tolerance, as are no step and a step of the wrong sign."""
    module, _, events = fits(schedule, loss)
    g_steps, d_steps = steps(events, "G"), steps(events, "D")
    assert len(g_steps) == len(d_steps) == STEPS
    velocity = 0.0
    for n, ((g_pre, g_post), (d_pre, d_post)) in enumerate(zip(g_steps, d_steps)):
        before, after = events[g_pre][1]["G"], events[g_post][1]["G"]
        z = last_before(events, "noise", g_pre)  # Algorithm 1: G's own fresh noise; simultaneous: the one draw
        if schedule == "alternating":
            assert d_post < g_pre and not torch.equal(z, last_before(events, "noise", d_pre))
        d_old, d_new = events[d_pre][1]["D"], events[d_post][1]["D"]
        right, wrong = (d_new, d_old) if schedule == "alternating" else (d_old, d_new)
        lr = LR0 / DECAY**n
        expected = MU * velocity - lr * g_gradient(module, before, right, z, loss)
        alternative = MU * velocity - lr * g_gradient(module, before, wrong, z, loss)
        change = flat(after) - flat(before)
        assert close(change, expected), (n, (change - expected).abs().max() / expected.abs().max())
        assert not close(change, alternative)
        assert not close(change, torch.zeros_like(expected)) and not close(change, -expected)
        velocity = expected


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["minimax", "nonsaturating"])
@pytest.mark.parametrize("schedule", ["alternating", "simultaneous"])
def test_discriminator_step_is_its_own_and_g_step_leaves_d_untouched(fits, schedule, loss):
    """D's change = mu v - lr_n dL_D/dD for the real batch and G(z) at the parameters before D's step
    (so G's loss never reaches D's update); G's step leaves D's weights and velocities bit for bit as
    they were, and (Algorithm 1) D's step leaves G's."""
    module, _, events = fits(schedule, loss)
    velocity = 0.0
    for n, ((d_pre, d_post), (g_pre, g_post)) in enumerate(zip(steps(events, "D"), steps(events, "G"))):
        x, z = last_before(events, "batch", d_pre), last_before(events, "noise", d_pre)
        pre, post = events[d_pre][1], events[d_post][1]
        expected = MU * velocity - LR0 / DECAY**n * d_gradient(module, pre["G"], pre["D"], x, z)
        change = flat(post["D"]) - flat(pre["D"])
        assert close(change, expected), (n, (change - expected).abs().max() / expected.abs().max())
        velocity = expected
        g_before, g_after = events[g_pre][1], events[g_post][1]
        for name, p in g_before["D"].items():
            assert torch.equal(p, g_after["D"][name]), name
        for i, v in g_before["velocity"][0].items():
            assert torch.equal(v, g_after["velocity"][0][i])
        if schedule == "alternating":
            for name, p in pre["G"].items():
                assert torch.equal(p, post["G"][name]), name
