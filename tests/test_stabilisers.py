"""The stabilisers and the EMA of G against their formulas, and the collapse rule."""

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from advnets.ema import GeneratorEMA
from advnets.guards import CollapseMonitor
from advnets.losses import discriminator_loss
from advnets.module import GAN
from advnets.stabilisers import InstanceNoise, R1Penalty
from conftest import compose

TINY = [
    "model.generator.layers=[{units: 16, activation: relu, irange: 0.05}]",
    "model.discriminator.layers=[{units: 8, pieces: 2, irange: 0.05}]",
]


def test_r1_on_a_linear_discriminator_is_half_gamma_times_the_squared_weight_norm():
    torch.manual_seed(0)
    d = nn.Sequential(nn.Flatten(), nn.Linear(12, 1)).double()
    real = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    for gamma in (0.1, 1.0, 10.0):
        logits, penalty = R1Penalty(gamma).logits_and_penalty(d, real)
        w = d[1].weight
        assert torch.allclose(logits, d(real))
        assert math.isclose(penalty.item(), gamma / 2 * w.pow(2).sum().item(), rel_tol=1e-12)
        # Differentiable w.r.t. D's weights: d/dw gamma/2 ||w||^2 = gamma w.
        (grad,) = torch.autograd.grad(penalty, w)
        assert torch.allclose(grad, gamma * w, rtol=1e-12)


def test_r1_schedule_falls_linearly_from_its_start_to_gamma_and_stays_there():
    r1 = R1Penalty(0.1, start=1.0, anneal_updates=1000)
    for n, expected in ((0, 1.0), (250, 0.775), (500, 0.55), (999, 0.1009), (1000, 0.1), (5000, 0.1)):
        assert r1.gamma_at(n) == pytest.approx(expected, rel=1e-12), n
    assert R1Penalty(0.1).gamma_at(0) == R1Penalty(0.1).gamma_at(10**6) == 0.1
    # The penalty uses the scheduled gamma: on a linear D, gamma_at(n) / 2 * ||w||^2.
    w = torch.tensor([[3.0, -4.0]])
    d = lambda x: x @ w.T  # noqa: E731
    real = torch.randn(5, 2)
    for n in (0, 500, 2000):
        _, penalty = r1.logits_and_penalty(d, real, n)
        assert float(penalty) == pytest.approx(r1.gamma_at(n) / 2 * 25.0, rel=1e-6)


def test_lazy_r1_is_taken_on_every_nth_d_update_at_n_times_gamma():
    """StyleGAN2's lazy R1: D updates 1, 1 + n, 1 + 2n, ... (counted from 0 before the update) take the penalty,
    n gamma / 2 ||w||^2 on a linear D, so its mean over updates is the every-update penalty's."""
    w = torch.tensor([[3.0, -4.0]])
    d = lambda x: x @ w.T  # noqa: E731
    lazy = R1Penalty(0.1, every=4)
    assert [d_updates for d_updates in range(10) if lazy.due(d_updates)] == [0, 4, 8]
    assert all(R1Penalty(0.1).due(n) for n in range(5))
    _, penalty = lazy.logits_and_penalty(d, torch.randn(5, 2))
    assert float(penalty) == pytest.approx(4 * 0.1 / 2 * 25.0, rel=1e-6)


def test_r1_on_a_quadratic_discriminator_matches_the_per_sample_gradient():
    # D(x) = sum(a * x^2): grad_x = 2 a x, so the penalty is gamma/2 * mean_i sum_j (2 a_j x_ij)^2.
    a = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    real = torch.tensor([[1.0, 2.0, -1.0], [0.0, 0.5, 2.0]], dtype=torch.float64)
    _, penalty = R1Penalty(2.0).logits_and_penalty(lambda x: (a * x * x).sum(1, keepdim=True), real)
    expected = 1.0 * ((2 * a * real) ** 2).sum(1).mean()
    assert math.isclose(penalty.item(), expected.item(), rel_tol=1e-12)


def test_one_sided_label_smoothing_at_known_logits():
    def softplus(v):
        return math.log1p(math.exp(v))

    real, fake = torch.tensor([2.0, -1.0], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)
    a = 0.9
    real_term = sum(a * softplus(-v) + (1 - a) * softplus(v) for v in (2.0, -1.0)) / 2  # BCE with target a
    expected = 0.5 * (real_term + softplus(0.5))
    assert math.isclose(discriminator_loss(real, fake, 0.5, real_label=a).item(), expected, rel_tol=1e-12)
    # At logit 0 the cross entropy is log 2 for any target; the minimiser of the real term is logit(a).
    assert math.isclose(
        discriminator_loss(torch.zeros(1), torch.full((1,), -1e9), 1.0, a).item(), math.log(2), rel_tol=1e-6
    )
    logit = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    for _ in range(2000):
        (g,) = torch.autograd.grad(
            discriminator_loss(logit, torch.full((1,), -50.0, dtype=torch.float64), 1.0, a), logit
        )
        logit = (logit - 1.0 * g).detach().requires_grad_()
    assert math.isclose(torch.sigmoid(logit).item(), a, rel_tol=1e-6)
    # real_label 1 is the paper's loss, bit for bit.
    assert discriminator_loss(real, fake, 0.5, 1.0).item() == discriminator_loss(real, fake, 0.5).item()


def test_instance_noise_std_anneals_linearly_to_zero():
    noise = InstanceNoise(0.2, anneal_updates=1000)
    assert [noise.std(t) for t in (0, 250, 500, 1000, 5000)] == pytest.approx([0.2, 0.15, 0.1, 0.0, 0.0])
    x = torch.zeros(200_000)
    gen = torch.Generator().manual_seed(0)
    assert noise(x, 500, gen).std().item() == pytest.approx(0.1, rel=0.01)
    assert noise(x, 1000, gen) is x  # annealed away: the batch itself, no draw
    a = noise(x, 0, torch.Generator().manual_seed(3))
    assert torch.equal(a, noise(x, 0, torch.Generator().manual_seed(3)))  # drawn from the given generator


def test_ema_update_follows_its_formula():
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    ema = GeneratorEMA(g, decay=0.9)
    before = [p.clone() for p in ema.generator.parameters()]
    with torch.no_grad():
        for p in g.parameters():
            p.add_(torch.randn_like(p))
    ema.update(g, 1)
    for avg, old, new in zip(ema.generator.parameters(), before, g.parameters()):
        assert torch.allclose(avg, 0.9 * old + 0.1 * new, rtol=1e-12, atol=0)
        assert not avg.requires_grad
    ema.reset(g)
    assert all(torch.equal(a, b) for a, b in zip(ema.generator.parameters(), g.parameters()))


def _module(tmp_path, *overrides):
    cfg = compose("logger=none", *TINY, *overrides, output_dir=tmp_path)
    return GAN(OmegaConf.to_container(cfg, resolve=True))


class _Opt:
    """The Lightning optimizer wrapper's two calls, over a real optimiser."""

    def __init__(self, opt):
        self.optimizer = opt

    def zero_grad(self, set_to_none=True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self):
        self.optimizer.step()


def test_module_d_step_adds_r1_and_g_step_updates_the_ema(tmp_path):
    module = _module(
        tmp_path,
        "stabilisers.r1_gamma=1.0",
        "stabilisers.r1_every=1",  # gamma itself on this first D update (the default's lazy R1 takes 4 gamma)
        "model.ema_decay=0.5",
        "model.ema_rampup=null",
        "optimizer=momentum",  # its first step is w - lr grad (checked below)
        "optimizer.d_lr=0.05",
        "optimizer.g_lr=0.02",
    )
    module.manual_backward = lambda loss, *args: loss.backward(*args)
    module.discriminator.eval()  # no dropout: the same D on every pass
    d_opt, g_opt = (build for build in module.configure_optimizers())
    assert (d_opt.param_groups[0]["lr"], g_opt.param_groups[0]["lr"]) == (0.05, 0.02)  # two time scales
    module._noise_gen = torch.Generator().manual_seed(1)
    real = torch.rand(6, 1, 28, 28)

    # D's gradient is that of the 0.5-scaled loss plus gamma/2 E||grad_x D(x)||^2, computed here independently.
    z = module.noise(6, torch.Generator().manual_seed(1))
    fake = module.generator(z).detach()
    x = real.clone().requires_grad_()
    logits = module.discriminator(x)
    (gx,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    loss = discriminator_loss(logits, module.discriminator(fake), 0.5) + 0.5 * gx.pow(2).flatten(1).sum(1).mean()
    expected = torch.autograd.grad(loss, list(module.discriminator.parameters()))
    d_before = [p.clone() for p in module.discriminator.parameters()]
    module._discriminator_step(real, _Opt(d_opt))
    for p, old, grad in zip(module.discriminator.parameters(), d_before, expected):
        # ClassicMomentum's first step from zero velocity: w - lr * grad.
        assert torch.allclose(p, old - 0.05 * grad, rtol=1e-4, atol=1e-7)
    assert "r1_penalty" in module.step_record

    module.generator_ema.reset(module.generator)
    g_before = [p.clone() for p in module.generator.parameters()]
    module._generator_step(6, _Opt(g_opt))
    for avg, old, new in zip(module.generator_ema.generator.parameters(), g_before, module.generator.parameters()):
        assert not torch.equal(old, new)
        assert torch.allclose(avg, 0.5 * old + 0.5 * new, rtol=1e-6, atol=1e-8)


def test_collapse_is_marked_after_consecutive_epochs_only():
    logged = []
    module = SimpleNamespace(step_record={}, log_dict=lambda d, **kw: logged.append(d))
    trainer = SimpleNamespace(current_epoch=0, should_stop=False, strategy=SimpleNamespace(world_size=1))
    monitor = CollapseMonitor(d_real_above=0.99, d_fake_below=0.01, epochs=2, stop=True)

    def epoch(pairs):
        monitor.on_train_epoch_start(trainer, module)
        for d_real, d_fake in pairs:
            module.step_record = {"d_real": torch.tensor(d_real), "d_fake": torch.tensor(d_fake)}
            monitor.on_train_batch_end(trainer, module, None, None, 0)
        monitor.on_train_epoch_end(trainer, module)
        trainer.current_epoch += 1
        return logged[-1]

    # Epoch means: (0.995, 0.005) won; then one batch pulls D(x)'s mean under 0.99; then two won epochs.
    assert epoch([(0.999, 0.001), (0.991, 0.009)])["train/collapsed"] == 0.0
    assert epoch([(0.999, 0.001), (0.97, 0.001)])["train/collapsed"] == 0.0  # mean D(x) 0.9845: streak broken
    assert epoch([(0.995, 0.005)])["train/collapsed"] == 0.0
    last = epoch([(0.999, 0.002), (0.998, 0.003)])
    assert last["train/collapsed"] == 1.0 and monitor.collapsed_at == 4 and trainer.should_stop
    assert last["train/epoch_d_real"] == pytest.approx(0.9985) and last["train/epoch_d_fake"] == pytest.approx(0.0025)
    # It stays marked, and survives a checkpoint.
    assert epoch([(0.5, 0.5)])["train/collapsed"] == 1.0
    restored = CollapseMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert restored.collapsed_at == 4


def test_collapse_under_label_smoothing_is_measured_against_d_real_target():
    """With D's real target 0.9 a D that has won sits at D(x) = 0.9: 0.99 of the target (0.891) marks it."""
    module = SimpleNamespace(step_record={}, log_dict=lambda d, **kw: None)
    trainer = SimpleNamespace(current_epoch=0, should_stop=False, strategy=SimpleNamespace(world_size=1))
    smoothed, plain = CollapseMonitor(real_label=0.9), CollapseMonitor()
    assert smoothed.d_real_above == pytest.approx(0.891) and plain.d_real_above == 0.99
    for _ in range(2):
        for monitor in (smoothed, plain):
            monitor.on_train_epoch_start(trainer, module)
            module.step_record = {"d_real": torch.tensor(0.9), "d_fake": torch.tensor(0.002)}
            monitor.on_train_batch_end(trainer, module, None, None, 0)
            monitor.on_train_epoch_end(trainer, module)
        trainer.current_epoch += 1
    assert smoothed.collapsed_at == 2 and plain.collapsed_at is None
