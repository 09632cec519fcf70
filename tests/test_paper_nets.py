"""The paper's nets for every new model x dataset pair: sizes, shapes, and real training steps on tiny files."""

import pytest
import torch
from omegaconf import OmegaConf

from advnets.data import build_datamodule
from advnets.module import GAN
from conftest import bare_trainer, compose
from test_cifar10 import PER_BATCH, write_cifar
from test_tfd import write_tfd


def count(module):
    return sum(p.numel() for p in module.parameters())


def linear(n_in, n_out):
    return n_in * n_out + n_out


def conv(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


G_FC = linear(100, 8000) + linear(8000, 8000)
PAIRS = {  # (model, dataset): (data shape, G parameters, D parameters), from the paper's layer sizes
    ("maxout", "tfd"): (
        (1, 48, 48),
        G_FC + linear(8000, 2304),
        linear(2304, 6000) + linear(1200, 6000) + linear(1200, 1),
    ),
    ("maxout", "cifar10"): (
        (3, 32, 32),
        G_FC + linear(8000, 3072),
        linear(3072, 8000) + linear(1600, 8000) + linear(1600, 1),
    ),
    ("conv", "cifar10"): (
        (3, 32, 32),
        G_FC + 80 * 3 * 5 * 5 + 3 * 32 * 32,
        conv(3, 64, 8) + conv(32, 64, 8) + conv(32, 384, 5) + linear(192 * 5 * 5, 2500) + linear(500, 1),
    ),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_data")
    write_tfd(root / "TFD" / "TFD_48x48.mat")
    write_cifar(root)
    return root


def config(data_dir, model, dataset, *overrides, output_dir="/tmp/advnets-test-run"):
    return compose(
        f"paths.data_dir={data_dir}",
        f"model={model}",
        f"dataset={dataset}",
        "logger=none",
        "dataset.download=false" if dataset == "cifar10" else "dataset.fold=0",
        "dataset.check_md5=false" if dataset == "cifar10" else "dataset.train_split=unlabeled",
        f"dataset.n_train={4 * PER_BATCH}" if dataset == "cifar10" else "dataset.image_size=48",
        *overrides,
        output_dir=output_dir,
    )


@pytest.mark.slow
@pytest.mark.parametrize("model,dataset", list(PAIRS))
def test_paper_nets_sizes_and_steps(data_dir, tmp_path, model, dataset):
    shape, g_params, d_params = PAIRS[(model, dataset)]
    cfg = config(data_dir, model, dataset, "dataset.batch_size=16", output_dir=tmp_path)
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    assert (count(module.generator), count(module.discriminator)) == (g_params, d_params)
    z = module.noise(4, torch.Generator().manual_seed(0), device="cpu")
    assert module.generator(z).shape == (4, *shape) and module.discriminator(torch.rand(4, *shape)).shape == (4,)
    before = [p.detach().clone() for p in module.parameters()]
    trainer = bare_trainer(tmp_path, max_epochs=None, max_steps=4)
    trainer.fit(module, datamodule=build_datamodule(cfg.dataset, cfg.seed))
    assert (module.d_updates, module.g_updates) == (2, 2)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert sum(not torch.equal(a, b) for a, b in zip(before, module.parameters())) > len(before) // 2
    c = cfg.model.max_col_norm
    if c:  # TFD: every unit's incoming weights within the max column norm after the updates
        # (the trained nets: G's EMA averages from G's unconstrained initial weights, norm ~2.6 > c here)
        for m in [*module.generator.modules(), *module.discriminator.modules()]:
            if isinstance(m, torch.nn.Linear):
                assert m.weight.norm(dim=1).max() <= c + 1e-4


def test_conv_discriminator_sizes_follow_the_paper(data_dir):
    module = GAN(OmegaConf.to_container(config(data_dir, "conv", "cifar10"), resolve=True))
    d = module.discriminator
    x = torch.zeros(2, 3, 32, 32)
    sizes = []
    for layer in d.features:
        x = layer(x)
        if not isinstance(layer, torch.nn.Dropout):
            sizes.append(tuple(x.shape[1:]))
    assert sizes == [(32, 16, 16), (32, 7, 7), (192, 5, 5)]  # 32 -> 33 -> 16, 16 -> 15 -> 7, 7 -> 9 -> 5
    assert module.generator.hidden_shape == (80, 10, 10)
    assert module.generator.output_layer.bias.shape == (3, 32, 32)  # untied: one bias per position


def test_max_col_norm_covers_conv_filters():
    from advnets.nets import apply_max_col_norm

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5), torch.nn.ConvTranspose2d(8, 3, 5, stride=3))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(100)
    apply_max_col_norm(net, 0.5)
    assert net[0].weight.flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
    assert net[1].weight.transpose(0, 1).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
