import math

import torch
from omegaconf import OmegaConf

from advnets.module import GAN, draw_noise
from advnets.nets import Maxout, apply_max_col_norm
from conftest import compose


def count(module):
    return sum(p.numel() for p in module.parameters())


def linear(n_in, n_out):
    return n_in * n_out + n_out


def test_mnist_parameter_counts_match_the_paper():
    module = GAN(OmegaConf.to_container(compose(), resolve=True))
    assert count(module.generator) == linear(100, 1200) + linear(1200, 1200) + linear(1200, 784)
    assert count(module.discriminator) == linear(784, 240 * 5) + linear(240, 240 * 5) + linear(240, 1)


def test_mnist_nets_structure_and_init():
    module = GAN(OmegaConf.to_container(compose(), resolve=True))
    g, d = module.generator, module.discriminator
    acts = [type(m).__name__ for m in g.net]
    assert acts == ["Linear", "ReLU", "Linear", "ReLU", "Linear", "Sigmoid"]
    for layer in (g.net[0], g.net[2], g.net[4]):
        assert layer.weight.abs().max() <= 0.05 and layer.weight.abs().max() > 0.04
    dropouts = [m.p for m in d.net if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.2, 0.5, 0.5]  # before every layer, the output layer included
    for m in d.modules():
        if isinstance(m, torch.nn.Linear):
            assert m.weight.abs().max() <= 0.005 and torch.all(m.bias == 0)


def test_output_bias_from_marginals():
    module = GAN(OmegaConf.to_container(compose(), resolve=True))
    mean = torch.full((1, 28, 28), 0.25, dtype=torch.float64)
    mean[0, 0, 0] = 0.0  # clipped to 1e-7
    module.generator.init_output_bias(mean)
    bias = module.generator.output_layer.bias
    assert math.isclose(bias[1].item(), math.log(0.25 / 0.75), rel_tol=1e-6)
    assert math.isclose(bias[0].item(), math.log(1e-7 / (1 - 1e-7)), rel_tol=1e-5)


def test_maxout_takes_max_over_contiguous_pieces():
    m = Maxout(2, units=2, pieces=3)
    with torch.no_grad():
        m.linear.weight.copy_(torch.tensor([[1.0, 0], [2, 0], [3, 0], [0, -1], [0, -2], [0, -3]]))
        m.linear.bias.zero_()
    assert m(torch.tensor([[1.0, 1.0]])).tolist() == [[3.0, -1.0]]


def test_noise_distributions():
    g = torch.Generator().manual_seed(0)
    u = draw_noise(20000, 100, "uniform", g, "cpu")
    assert u.abs().max() <= math.sqrt(3) and abs(u.var().item() - 1) < 0.01
    n = draw_noise(20000, 100, "normal", g, "cpu")
    assert abs(n.var().item() - 1) < 0.01 and n.abs().max() > math.sqrt(3)


def test_max_col_norm_bounds_every_unit():
    net = torch.nn.Sequential(torch.nn.Linear(50, 40), Maxout(40, 10, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(100)
    apply_max_col_norm(net, 1.9365)
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            assert m.weight.norm(dim=1).max() <= 1.9365 + 1e-5


def test_bias_irange_draws_uniform_biases_and_spreads_the_kinks_of_1d_nets():
    from advnets.nets.mlp import init_linear

    torch.manual_seed(0)
    layer = torch.nn.Linear(1, 5000)
    init_linear(layer, {"irange": 1.0, "bias_irange": 3.0})
    b = layer.bias.detach()
    assert b.abs().max() <= 3.0 and abs(b.mean().item()) < 0.15 and abs(b.std().item() - 3.0 / math.sqrt(3)) < 0.05
    init_linear(layer, {"irange": 1.0, "bias": 0.25})
    assert torch.all(layer.bias == 0.25)
    # The line's nets (conf/paper/maxout_line.yaml): G's first ReLUs bend inside the noise's range, not all at 0.
    module = GAN(OmegaConf.to_container(compose("experiment=figure1"), resolve=True))
    first = module.generator.net[0]
    kinks = (-first.bias / first.weight.squeeze(1)).detach()
    inside = kinks.abs() < math.sqrt(3)
    assert inside.sum() >= 8 and len(set(kinks[inside].tolist())) == int(inside.sum())
