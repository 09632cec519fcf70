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
