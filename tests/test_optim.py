import math

import pytest
import torch

from advnets.optim import ClassicMomentum, build_optimizer, momentum_at, start_epoch


def test_classic_momentum_matches_hand_computation_with_decaying_lr():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = ClassicMomentum([w], lr=0.1, momentum=0.5, lr_decay=1.1, min_lr=1e-6)
    grads = [torch.tensor([0.3, -0.2]), torch.tensor([-1.0, 0.5]), torch.tensor([0.7, 0.7]), torch.tensor([0.0, 2.0])]
    v = [0.0, 0.0]
    expected = [1.0, -2.0]
    for n, g in enumerate(grads):
        w.grad = g.double()
        opt.step()
        lr = 0.1 / 1.1**n  # the n-th update (0-based) uses lr0 / decay^n
        for i in range(2):
            v[i] = 0.5 * v[i] - lr * g[i].item()
            expected[i] += v[i]
        assert w.tolist() == pytest.approx(expected, abs=1e-15)
    assert opt.param_groups[0]["updates"] == 4
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 / 1.1**4)


def test_lr_floor_and_state_round_trip():
    w = torch.nn.Parameter(torch.zeros(3))
    opt = ClassicMomentum([w], lr=0.1, lr_decay=10.0, min_lr=1e-6)
    for _ in range(8):
        w.grad = torch.ones(3)
        opt.step()
    assert opt.param_groups[0]["lr"] == 1e-6
    clone = ClassicMomentum([torch.nn.Parameter(w.detach().clone())], lr=0.1, lr_decay=10.0, min_lr=1e-6)
    clone.load_state_dict(opt.state_dict())
    assert clone.param_groups[0]["updates"] == 8
    assert torch.equal(next(iter(clone.state.values()))["velocity"], next(iter(opt.state.values()))["velocity"])


def test_differs_from_torch_sgd_once_lr_changes():
    # torch.optim.SGD keeps lr out of the buffer: w -= lr * (mu * b + g). Classic momentum puts lr in v.
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    ours = ClassicMomentum([a], lr=0.1, momentum=0.5, lr_decay=2.0)
    theirs = torch.optim.SGD([b], lr=0.1, momentum=0.5)
    for n in range(2):
        a.grad, b.grad = torch.ones(1), torch.ones(1)
        ours.step()
        theirs.param_groups[0]["lr"] = 0.1 / 2.0**n
        theirs.step()
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "epoch,mu", [(1, 0.5), (2, 0.5 + 0.2 / 249), (125, 0.5 + 0.2 * 124 / 249), (250, 0.7), (400, 0.7)]
)
def test_momentum_ramp(epoch, mu):
    assert math.isclose(momentum_at(epoch, 0.5, 0.7, 250), mu, rel_tol=1e-12)
    cfg = {
        "name": "momentum",
        "lr": 0.1,
        "lr_decay": 1.000004,
        "min_lr": 1e-6,
        "momentum_start": 0.5,
        "momentum_end": 0.7,
        "momentum_saturate_epoch": 250,
    }
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    start_epoch(opt, cfg, epoch)
    assert math.isclose(opt.param_groups[0]["momentum"], mu, rel_tol=1e-12)


def test_adam_is_fused_and_follows_adams_formula():
    """The default optimiser runs torch's fused kernel (one pass over each tensor: the cheaper step of
    benchmarks/train_throughput.py --step-costs) and makes Adam's update, the bias-corrected moments written out
    here, to float32 rounding over 20 steps. (No torch.optim.Adam of torch's own here: its step, once hooked by torch,
    would run every step hook of this process's Adams twice.)"""
    torch.manual_seed(0)
    w0 = torch.randn(300)
    grads = [torch.randn(300) for _ in range(20)]
    cfg = {"name": "adam", "lr": 2e-3, "betas": [0.5, 0.999]}
    w = torch.nn.Parameter(w0.clone())
    opt = build_optimizer([w], cfg)
    assert opt.param_groups[0]["fused"] is True
    expected, m, v = w0.double(), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        w.grad = g.clone()
        version = w._version
        opt.step()
        assert w._version > version  # the fast path's bf16 weight casts are cached on it
        m = 0.5 * m + 0.5 * g.double()
        v = 0.999 * v + 0.001 * g.double() ** 2
        expected = expected - 2e-3 * (m / (1 - 0.5**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-8)
    assert torch.allclose(w.detach().double(), expected, rtol=0, atol=1e-6)
    assert not torch.equal(w.detach(), w0)  # it moved: 20 steps of lr 2e-3 are 100 times the tolerance
