"""One real two-epoch fit on real MNIST (every training row, k = 2), recorded step by step and checked
against formulas: the lr decay and momentum ramp of both optimisers, fresh data and noise every epoch,
G's output bias from the training pixels, and the rows of the per-epoch Parzen estimate.

Small nets without dropout (the schedules and the data path do not depend on them) and batches of 2,500 keep
two whole epochs cheap.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from advnets.data import EpochBatchSampler, build_datamodule
from advnets.module import GAN
from conftest import bare_trainer, compose
from parzen_reference import protocol

K, BATCH, N_TRAIN = 2, 2500, 50000
BATCHES = N_TRAIN // BATCH  # per epoch
VAL_SAMPLES = 200
SMALL = [
    "model.generator.layers=[{units:8,activation:relu,irange:0.05}]",
    "model.discriminator.layers=[{units:4,pieces:2,irange:0.005}]",
    "stabilisers.r1_gamma=null",
    "model.discriminator.input_dropout=0",
    "model.discriminator.hidden_dropout=0",
    "optimizer=momentum",  # its lr decay and momentum ramp are checked below
]


class Recorder(pl.Callback):
    """What the fit did, as it did it: index batches, received batches, noise, optimiser steps, val centres."""

    def __init__(self):
        self.indices = []  # (sampler epoch, index tensor) as the training batch sampler yielded them
        self.received_rows_match = []  # per training batch: the batch the module got == train[indices]
        self.noise = []  # (epoch, first rows of every draw during the training steps)
        self.steps = []  # (net, epoch, momentum in effect, updates after, lr after)
        self.centres = {}  # epoch -> {which: centres of the per-epoch Parzen estimate}
        self.parzen = {}  # epoch -> {which: ParzenResult}
        self.training = self.validating = False

    def on_train_start(self, trainer, module):
        self.bias = module.generator.output_layer.bias.detach().clone()
        for net, opt in zip("DG", trainer.optimizers):
            group = opt.param_groups[0]
            opt.register_step_pre_hook(lambda o, a, k: setattr(self, "_momentum", o.param_groups[0]["momentum"]))
            opt.register_step_post_hook(
                lambda o, a, k, net=net: self.steps.append(
                    (
                        net,
                        trainer.current_epoch + 1,
                        self._momentum,
                        o.param_groups[0]["updates"],
                        o.param_groups[0]["lr"],
                    )
                )
            )
            assert group["updates"] == 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.training = True
        rows = trainer.datamodule.splits["train"][self.indices[-1][1]]
        self.received_rows_match.append(torch.equal(batch, rows))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.training = False

    def on_validation_start(self, trainer, module):
        self.validating = True
        self.centres[trainer.current_epoch + 1] = {}

    def on_validation_end(self, trainer, module):
        self.validating = False
        self.parzen[trainer.current_epoch + 1] = dict(module.evaluation.last_parzen)


@pytest.fixture(scope="module")
def fit(data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real_fit")
    cfg = compose(
        f"paths.data_dir={data_dir}",
        "logger=none",
        f"k={K}",
        f"dataset.batch_size={BATCH}",
        f"parzen.val_samples={VAL_SAMPLES}",
        *SMALL,
        "quality.features=null",  # only the Parzen estimate draws samples at validation here
        output_dir=tmp,
    )
    torch.manual_seed(0)
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    rec = Recorder()
    real_noise, real_sample = module.noise, module.sample

    def noise(n, generator=None, device=None):
        z = real_noise(n, generator, device)
        if rec.training:
            rec.noise.append((module.current_epoch + 1, z[:4].clone()))
        return z

    def sample(n, generator=None, batch=2000, which="raw"):
        x = real_sample(n, generator, batch, which)
        if rec.validating:
            rec.centres[module.current_epoch + 1][which] = x.clone()
        return x

    module.noise, module.sample = noise, sample
    real_batches = EpochBatchSampler.batches  # what TensorBatches and the sampler's __iter__ both draw from

    def recording_batches(sampler, device=None):
        for idx in real_batches(sampler, device):
            if sampler.shuffle:  # the training batches (the Parzen points are read in order)
                rec.indices.append((sampler.epoch, idx.clone()))
            yield idx

    trainer = bare_trainer(tmp, max_epochs=2, limit_val_batches=None, num_sanity_val_steps=0, callbacks=[rec])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(EpochBatchSampler, "batches", recording_batches)
        trainer.fit(module, datamodule=build_datamodule(cfg.dataset, cfg.seed))
    return SimpleNamespace(module=module, trainer=trainer, cfg=cfg, rec=rec)


@pytest.fixture(scope="module")
def mnist_rows(data_dir):
    """MNIST's 60,000 training images as rows of float32 pixels / 255 (as float64), read by torchvision, not advnets."""
    from torchvision.datasets import MNIST

    return (MNIST(data_dir, train=True).data.flatten(1).float() / 255).double()


def ramp(epoch: int) -> float:
    """conf/optimizer/momentum.yaml: 0.5 in epoch 1 to 0.7 in epoch 250, linearly."""
    return 0.5 + (0.7 - 0.5) * min(epoch - 1, 249) / 249


@pytest.mark.slow
def test_momentum_and_lr_follow_their_schedules_in_a_real_fit(fit):
    """After two epochs with k = 2, each optimiser's momentum is the ramp's value for epoch 2 and its lr is
    lr0 / 1.000004^(its own update count): 40 for D, 20 for G. Every step used the ramp's momentum for its
    epoch and advanced its own count by one."""
    d_opt, g_opt = fit.trainer.optimizers
    assert (fit.module.d_updates, fit.module.g_updates) == (2 * BATCHES, 2 * BATCHES // K)
    for opt, count in ((d_opt, 2 * BATCHES), (g_opt, 2 * BATCHES // K)):
        group = opt.param_groups[0]
        assert group["updates"] == count
        assert math.isclose(group["lr"], 0.1 / 1.000004**count, rel_tol=1e-12)
        assert math.isclose(group["momentum"], ramp(2), rel_tol=1e-12) and ramp(2) != ramp(1)
    for net, per_epoch in (("D", BATCHES), ("G", BATCHES // K)):
        steps = [s for s in fit.rec.steps if s[0] == net]
        assert [s[1] for s in steps] == [1] * per_epoch + [2] * per_epoch
        assert [s[3] for s in steps] == list(range(1, 2 * per_epoch + 1))
        for _, epoch, momentum, updates, lr in steps:
            assert math.isclose(momentum, ramp(epoch), rel_tol=1e-12)
            assert math.isclose(lr, 0.1 / 1.000004**updates, rel_tol=1e-12)


@pytest.mark.slow
def test_every_training_row_once_per_epoch_in_a_fresh_order(fit):
    """The training batch sampler's indices: each epoch a permutation of rows 0..49,999 (each exactly once),
    a different one in epoch 2; the batches the module trained on are exactly those rows."""
    rec = fit.rec
    assert [e for e, _ in rec.indices] == [0] * BATCHES + [1] * BATCHES
    orders = [torch.cat([idx for e, idx in rec.indices if e == epoch]) for epoch in (0, 1)]
    for order in orders:
        assert torch.equal(order.sort().values, torch.arange(N_TRAIN))
    assert (orders[0] == orders[1]).sum() < 100  # ~1 of 50,000 positions agree by chance
    assert rec.received_rows_match == [True] * 2 * BATCHES


@pytest.mark.slow
def test_fresh_noise_for_every_step_of_both_epochs(fit):
    """Every D step (20 an epoch) and G step (10) draws new noise, and epoch 2 draws none that epoch 1 drew."""
    draws = fit.rec.noise
    assert [e for e, _ in draws] == [1] * (BATCHES + BATCHES // K) + [2] * (BATCHES + BATCHES // K)
    firsts = {tuple(z[0].tolist()) for _, z in draws}
    assert len(firsts) == len(draws)
    epoch_1 = torch.cat([z for e, z in draws if e == 1])
    epoch_2 = torch.cat([z for e, z in draws if e == 2])
    assert torch.cdist(epoch_1, epoch_2).min() > 0


@pytest.mark.slow
def test_output_bias_is_the_logit_of_the_training_pixel_mean(fit, mnist_rows):
    """When a fresh fit starts, G's sigmoid output bias is log(p / (1 - p)) of the mean of training rows
    0..49,999, p clipped to [1e-7, 1 - 1e-7] (pixels that are 0 in every image)."""
    p = mnist_rows[:N_TRAIN].mean(0).clamp(1e-7, 1 - 1e-7)
    expected = torch.log(p / (1 - p))
    assert (p == 1e-7).sum() > 0  # the clipped branch is exercised
    torch.testing.assert_close(fit.rec.bias.double(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("epoch", [1, 2])
def test_per_epoch_parzen_uses_the_documented_validation_rows(fit, mnist_rows, epoch):
    """val/parzen_ll (G and its EMA): sigma picked on MNIST training rows 50,000..50,499
    (dataset.parzen_val_select = 500), scored on rows 50,500..51,499 (parzen_val_points = 1,000), the
    centres the estimate drew; equal to the protocol computed directly from those rows."""
    select, points = mnist_rows[50000:50500], mnist_rows[50500:51500]
    results, centres = fit.rec.parzen[epoch], fit.rec.centres[epoch]
    assert set(results) == set(centres) == {"raw", "ema"}
    for which, result in results.items():
        assert centres[which].shape == (VAL_SAMPLES, 1, 28, 28)
        expected = protocol(centres[which], select, points)
        assert (result.n_samples, result.n_points) == (VAL_SAMPLES, 1000)
        assert math.isclose(result.sigma, expected["sigma"], rel_tol=1e-12)
        assert math.isclose(result.ll, expected["ll"], rel_tol=1e-9)
        assert math.isclose(result.se, expected["se"], rel_tol=1e-7)
