"""Paths that were tested only at unit level or not at all: Figure 2's nearest neighbours, sparse init,
max-col-norm, the divergence guard's parameter branch, sample() over several chunks, and SIGTERM during
validation (resuming a TFD stage-2 run: test_experiments.py)."""

from __future__ import annotations

import math
import os
import signal

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from advnets.data import EpochBatchSampler, TensorBatches
from advnets.figures import display, figure_2, nearest_neighbours
from advnets.module import GAN
from advnets.nets import Maxout, apply_max_col_norm
from advnets.nets.mlp import init_linear
from conftest import REPO, bare_trainer, compose, run_script

TINY = [
    "logger=none",
    "model.generator.layers=[{units:16,activation:relu,irange:0.05}]",
    "model.discriminator.layers=[{units:8,pieces:2,irange:0.005}]",
]


# --- Figure 2 ----------------------------------------------------------------------------------------------------
def test_nearest_neighbours_equal_brute_force_across_chunks():
    """nearest_neighbours with a chunk (64) smaller than the data (1,000 rows, not a multiple of it) gives
    cdist().argmin() for every query, including queries whose neighbour is in the last, partial chunk."""
    g = torch.Generator().manual_seed(0)
    data = torch.rand(1000, 1, 28, 28, generator=g)
    planted = torch.tensor([3, 64, 65, 500, 959, 960, 999])  # chunk edges and the last chunk
    queries = torch.cat(
        [
            data[planted] + 0.01 * torch.randn(len(planted), 1, 28, 28, generator=g),
            torch.rand(13, 1, 28, 28, generator=g),
        ]
    )
    expected = torch.cdist(queries.flatten(1).double(), data.flatten(1).double()).argmin(1)
    assert torch.equal(expected[: len(planted)], planted)
    for chunk in (64, 1000, 10000):
        assert torch.equal(nearest_neighbours(queries, data, chunk=chunk), expected), chunk


def test_figure_2_last_column_is_the_nearest_training_image():
    """Figure 2 on 10,500 training images (two of nearest_neighbours' default 10,000-row chunks): the image at
    the end of each row is the training image nearest (brute force) to the sample beside it."""
    g = torch.Generator().manual_seed(1)
    train = torch.rand(10500, 1, 28, 28, generator=g)
    samples = torch.rand(25, 1, 28, 28, generator=g)
    samples[4::5] = 0.98 * train[[10, 9999, 10000, 10321, 10499]] + 0.01  # each row's last sample, in [0, 1]
    expected = torch.cdist(samples[4::5].flatten(1).double(), train.flatten(1).double()).argmin(1)
    assert expected.tolist() == [10, 9999, 10000, 10321, 10499]
    canvas = figure_2(samples, train)
    x0 = 2 + 5 * 30 + 8  # after 5 samples of 28 + 2 pixels, and the wider gap before the last column
    for row, index in enumerate(expected.tolist()):
        y0 = 2 + row * 30
        assert torch.equal(canvas[:, y0 : y0 + 28, x0 : x0 + 28], display(train[index]).expand(3, 28, 28)), row


# --- initialisation and constraints ---------------------------------------------------------------------------
def test_sparse_init_gives_exactly_n_nonzero_weights_per_unit():
    """`sparse_init: 100` (TFD's output layer, built from the composed config): every output unit has exactly
    100 non-zero incoming weights, N(0, 1) distributed; also for a layer built directly with another count."""
    cfg = compose(
        "dataset=tfd",
        "model=maxout",
        "model.generator.layers=[{units:300,activation:relu,irange:0.05}]",
        "model.discriminator.layers=[{units:8,pieces:2,irange:0.005}]",
        "logger=none",
    )
    torch.manual_seed(0)
    weight = GAN(OmegaConf.to_container(cfg, resolve=True)).generator.output_layer.weight
    assert weight.shape == (48 * 48, 300)
    assert ((weight != 0).sum(1) == 100).all()
    values = weight[weight != 0]
    assert abs(values.mean().item()) < 0.01 and abs(values.std().item() - 1) < 0.01  # 230,400 draws
    layer = torch.nn.Linear(40, 7)
    init_linear(layer, {"sparse_init": 13, "bias": 0.5})
    assert ((layer.weight != 0).sum(1) == 13).all() and (layer.bias == 0.5).all()


def test_max_col_norm_keeps_rows_under_the_bound_and_directions():
    """apply_max_col_norm: every unit's incoming weights (a Linear row, each maxout piece) under the bound are
    left bit for bit; those over it get norm c in the same direction; biases are untouched."""
    c = 1.9365
    net = torch.nn.Sequential(torch.nn.Linear(30, 6), Maxout(6, 4, 3))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in (net[0], net[1].linear):
            w = torch.randn(layer.weight.shape, generator=g)
            w /= w.norm(dim=1, keepdim=True)
            scales = torch.tensor([0.2, 0.99, 3.0, 10.0] * 3)[: len(w)] * c  # under and over the bound
            layer.weight.copy_(w * scales[:, None])
            layer.bias.uniform_(-50, 50, generator=g)
    before = [p.detach().clone() for p in net.parameters()]
    apply_max_col_norm(net, c)
    for (w0, b0), layer in zip(zip(before[0::2], before[1::2]), (net[0], net[1].linear)):
        norms = w0.norm(dim=1)
        under, over = norms <= c, norms > c
        assert under.any() and over.any()
        assert torch.equal(layer.weight[under], w0[under])
        torch.testing.assert_close(layer.weight[over].norm(dim=1), torch.full((int(over.sum()),), c), rtol=1e-5, atol=0)
        torch.testing.assert_close(layer.weight[over], w0[over] * (c / norms[over])[:, None], rtol=1e-5, atol=1e-7)
        assert torch.equal(layer.bias, b0)


# --- sampling ----------------------------------------------------------------------------------------------------
def test_sample_over_several_chunks():
    """sample(7, batch=3) draws its noise in chunks of 3, 3 and 1 from one generator and runs G on each: the
    same 7 images as G on 7 vectors drawn at once, for G and for its EMA; and not the same rows twice."""
    cfg = compose(*TINY, "model.ema_decay=0.5")
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    with torch.no_grad():
        for p in module.generator_ema.parameters():
            p.add_(0.1)  # the EMA differs from G
        z = module.noise(7, torch.Generator().manual_seed(4), device="cpu")
        for which, net in (("raw", module.generator), ("ema", module.generator_ema.generator)):
            out = module.sample(7, torch.Generator().manual_seed(4), batch=3, which=which)
            assert out.shape == (7, 1, 28, 28)
            torch.testing.assert_close(out, net(z), rtol=0, atol=1e-6)
            assert torch.cdist(out.flatten(1), out.flatten(1)).add(torch.eye(7)).min() > 0
        assert not torch.allclose(
            module.sample(7, torch.Generator().manual_seed(4), batch=3, which="ema"), module.generator(z)
        )


# --- the divergence guard ----------------------------------------------------------------------------------------
class PoisonAfterStep(pl.Callback):
    """After training batch `at` (its losses finite), one weight of D becomes `value`."""

    def __init__(self, at: int, value: float):
        self.at, self.value = at, value

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == self.at:
            with torch.no_grad():
                module.discriminator.net[1].linear.weight[0, 0] = self.value


@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize(
    "at, found",
    [
        # Poisoned after batch 2 of 4: D's loss of batch 3 is the first non-finite value, read at the epoch's end.
        (1, "non-finite d_loss at D update 3, G update 3 (found at end of epoch 1)"),
        # After the last batch, with every loss finite: the parameters, checked at the epoch's end.
        (3, "non-finite parameters at D update 4, G update 4 (found at end of epoch 1)"),
    ],
)
def test_divergence_guard_names_the_first_non_finite_value(tmp_path, value, at, found):
    """A weight of D turned non-finite after a step whose losses were finite stops training at the epoch's end, before
    its checkpoint, naming the first non-finite loss and its updates (read then, not at every step), or the
    parameters when every loss was finite."""
    from advnets.guards import DivergenceGuard, TrainingDiverged

    module = GAN(OmegaConf.to_container(compose(*TINY, "schedule=simultaneous"), resolve=True))
    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    trainer = bare_trainer(tmp_path, callbacks=[PoisonAfterStep(at, value), DivergenceGuard()])
    with pytest.raises(TrainingDiverged) as e:
        trainer.fit(module, train_dataloaders=TensorBatches(x, EpochBatchSampler(40, 10, seed=0)))
    assert str(e.value) == (
        f"training diverged: {found}; last good checkpoint: none saved yet; try a lower optimizer.lr"
    )


def test_divergence_guard_reads_its_record_every_log_interval(tmp_path):
    """With trainer.log_every_n_steps=2, a loss made non-finite in batch 3 of 8 stops training at batch 4."""
    from advnets.guards import DivergenceGuard, TrainingDiverged

    module = GAN(OmegaConf.to_container(compose(*TINY, "schedule=simultaneous"), resolve=True))
    x = torch.rand(80, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    trainer = bare_trainer(tmp_path, log_every_n_steps=2, callbacks=[PoisonAfterStep(1, math.nan), DivergenceGuard()])
    with pytest.raises(TrainingDiverged) as e:
        trainer.fit(module, train_dataloaders=TensorBatches(x, EpochBatchSampler(80, 10, seed=0)))
    assert "non-finite d_loss at D update 3, G update 3 (found at epoch 1, batch 4)" in str(e.value)
    assert module.d_updates == 4


# --- SIGTERM during validation --------------------------------------------------------------------------------------
class SigtermInValidation(pl.Callback):
    """Sends SIGTERM to this process at the first validation batch of `epoch` (1-based)."""

    def __init__(self, epoch: int):
        self.epoch, self.sent = int(epoch), False

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if trainer.current_epoch + 1 == self.epoch and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_sigterm_during_validation_stops_with_the_last_epoch_checkpoint(data_dir, tmp_path):
    """`python src/train.py`, SIGTERM arriving in epoch 2's validation (after its training batches): exit 143,
    no traceback, no test run, and the message names last.ckpt, which is epoch 1's checkpoint, whole (the
    interrupted epoch is not saved half-done): resuming repeats epoch 2."""
    run_dir = tmp_path / "run"
    proc = run_script(
        "train.py",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path}",
        f"hydra.run.dir={run_dir}",
        *TINY,
        "trainer.enable_progress_bar=false",
        "trainer.limit_train_batches=5",
        "trainer.max_epochs=2",
        "parzen.val_samples=100",
        "dataset.parzen_val_select=100",
        "dataset.parzen_val_points=100",
        "parzen.test_samples=100",
        "callbacks.extra=[{_target_:test_paths.SigtermInValidation,epoch:2}]",
        env={"PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"stopped by SIGTERM: checkpoint saved to {last}; resume with:" in proc.stderr
    assert f"ckpt_path={last}" in proc.stderr.splitlines()[-1]
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["counters"] == {"d_updates": 5, "g_updates": 5}
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch0000-step10.ckpt", "last.ckpt"]
