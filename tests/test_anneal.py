"""The lr anneal (optimizer.anneal_epochs) and optimiser settings changed on resume, in real fits on MNIST:
the lr every update used against its formula, and a run resumed with an anneal against the same run
annealed from the start."""

from __future__ import annotations

import logging

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from advnets.data import build_datamodule
from advnets.module import GAN
from advnets.optim import ClassicMomentum, anneal_factor
from conftest import TINY_FIT, bare_trainer, compose

BATCH, BATCHES = 2500, 20  # 20 batches an epoch
LR0, DECAY = 0.1, 1.000004
# The paper's SGD: the anneal multiplies its decayed lr (Adam's lr has no decay to compose with).
SMALL = [*TINY_FIT, "model.ema_decay=null", "optimizer=momentum"]


def test_anneal_factor_closed_form():
    assert [anneal_factor(p, 10, 4) for p in (0, 6, 7, 9.5, 10)] == [1.0, 1.0, 0.75, 0.125, 0.0]
    assert anneal_factor(9.9, 10, None) == 1.0


def test_classic_momentum_step_uses_the_scaled_lr():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = ClassicMomentum([w], lr=0.1, momentum=0.5, lr_decay=2.0)
    opt.param_groups[0]["lr_scale"] = 0.25
    w.grad = torch.tensor([3.0, 1.0], dtype=torch.float64)
    opt.step()  # v = -0.1 * 0.25 * g from zero velocity
    assert torch.equal(w.detach(), torch.tensor([1.0 - 0.075, -2.0 - 0.025], dtype=torch.float64))
    assert opt.param_groups[0]["lr"] == 0.1 / 2.0 * 0.25  # the next update's


class LrRecorder(pl.Callback):
    """(net, epoch, batch, updates before, lr) of every optimiser step, read as the step begins."""

    def __init__(self):
        self.steps = []

    def on_train_start(self, trainer, module):
        for net, opt in zip("DG", trainer.optimizers):
            opt.register_step_pre_hook(
                lambda o, a, k, net=net: self.steps.append(
                    (
                        net,
                        trainer.current_epoch,
                        self.batch,
                        o.param_groups[0]["updates"],
                        ClassicMomentum.lr_at(o.param_groups[0], o.param_groups[0]["updates"]),
                    )
                )
            )

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batch = batch_idx


def fit(cfg, tmp, max_epochs, ckpt_path=None, callbacks=()):
    pl.seed_everything(cfg.seed, verbose=False)  # as train.py: the same initial weights
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    trainer = bare_trainer(
        tmp, max_epochs=max_epochs, limit_val_batches=None, num_sanity_val_steps=0, callbacks=list(callbacks)
    )
    trainer.fit(module, datamodule=build_datamodule(cfg.dataset, cfg.seed), ckpt_path=ckpt_path)
    return module, trainer


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    """An annealed 2-epoch run, and the same run stopped after epoch 1 without an anneal and resumed with it."""
    tmp = tmp_path_factory.mktemp("anneal")
    base = [f"paths.data_dir={data_dir}", "logger=none", "k=2", f"dataset.batch_size={BATCH}", *SMALL]
    annealed_cfg = compose(*base, "optimizer.anneal_epochs=1", "trainer.max_epochs=2", output_dir=tmp)
    rec = LrRecorder()
    annealed, _ = fit(annealed_cfg, tmp, 2, callbacks=[rec])
    _, first = fit(compose(*base, output_dir=tmp), tmp, 1)
    first.save_checkpoint(tmp / "epoch1.ckpt")
    resumed, _ = fit(annealed_cfg, tmp, 2, ckpt_path=str(tmp / "epoch1.ckpt"))
    return annealed, resumed, rec.steps


def test_every_update_uses_the_decayed_lr_times_the_anneal(runs):
    _, _, steps = runs
    assert len(steps) == 2 * BATCHES + 2 * BATCHES // 2  # k = 2: 40 D and 20 G updates
    for net, epoch, batch, updates, lr in steps:
        factor = min(1.0, (2 - (epoch + batch / BATCHES)) / 1)  # epoch 1 (0-based 0): 1; epoch 2: 1 -> 1/20
        assert lr == pytest.approx(LR0 / DECAY**updates * factor, rel=1e-12), (net, epoch, batch)
    assert steps[-1][4] == pytest.approx(LR0 / DECAY ** steps[-1][3] / BATCHES, rel=1e-12)


def test_resuming_with_an_anneal_ends_where_the_run_annealed_from_the_start_ends(runs):
    annealed, resumed, _ = runs
    for a, b in zip(annealed.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_applies_changed_optimizer_settings_and_says_so(data_dir, tmp_path, caplog):
    base = [f"paths.data_dir={data_dir}", "logger=none", f"dataset.batch_size={BATCH}", *SMALL]
    _, first = fit(compose(*base, output_dir=tmp_path), tmp_path, 1)
    first.save_checkpoint(tmp_path / "epoch1.ckpt")
    rec = LrRecorder()
    with caplog.at_level(logging.INFO, logger="advnets.module"):
        module, trainer = fit(
            compose(*base, "optimizer.d_lr=0.01", "optimizer.lr_decay=1.0001", output_dir=tmp_path),
            tmp_path,
            2,
            ckpt_path=str(tmp_path / "epoch1.ckpt"),
            callbacks=[rec],
        )
    d_steps = [s for s in rec.steps if s[0] == "D"]
    g_steps = [s for s in rec.steps if s[0] == "G"]
    assert d_steps[0][3] == BATCHES  # the update count goes on from the checkpoint's
    for _, _, _, updates, lr in d_steps:
        assert lr == pytest.approx(0.01 / 1.0001**updates, rel=1e-12)
    for _, _, _, updates, lr in g_steps:  # G keeps lr0 0.1, with the new decay
        assert lr == pytest.approx(0.1 / 1.0001**updates, rel=1e-12)
    messages = [r.getMessage() for r in caplog.records if "Resumed" in r.getMessage()]
    assert messages == [
        "Resumed D optimiser with this command's settings: lr0 0.1 -> 0.01, lr_decay 1.000004 -> 1.0001",
        "Resumed G optimiser with this command's settings: lr_decay 1.000004 -> 1.0001",
    ]
