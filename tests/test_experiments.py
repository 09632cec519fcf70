"""conf/experiment/: the official settings of each paper run, and TFD stage 2 loading stage 1's generator
and resuming."""

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from advnets.data import build_datamodule
from advnets.errors import UserError
from advnets.module import GAN
from conftest import bare_trainer, compose
from test_tfd import write_tfd

EXPECTED = {  # experiment: (dataset, model, lr0, batch, max epochs, max col norm)
    "mnist": ("mnist", "maxout", 0.1, 100, -1, None),
    "tfd_stage1": ("tfd", "maxout", 0.05, 100, 50, 1.9365),
    "tfd_stage2": ("tfd", "maxout", 0.05, 100, 22, 1.9365),
    "cifar10_fc": ("cifar10", "maxout", 0.025, 100, -1, None),
    "cifar10_conv": ("cifar10", "conv", 0.004, 128, -1, None),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_experiment_settings(name):
    cfg = compose(f"experiment={name}")
    got = (
        cfg.dataset.name,
        cfg.model.name,
        cfg.optimizer.lr,
        cfg.dataset.batch_size,
        cfg.trainer.max_epochs,
        cfg.model.max_col_norm,
    )
    assert got == EXPECTED[name]
    assert cfg.schedule == "simultaneous" and cfg.loss.d_scale == 0.5 and cfg.loss.generator == "nonsaturating"
    assert cfg.model.noise == ("uniform" if name == "mnist" else "normal")


SMALL_1 = "model.generator.layers=[{units:64,activation:relu,irange:0.05},{units:128,activation:sigmoid,irange:0.05,bias:-2.0}]"
SMALL_2 = (
    "model.generator.layers=[{units:32,activation:relu,irange:0.05},{units:100,activation:sigmoid,irange:0.05,"
    "bias:-2.0},{units:64,activation:relu,irange:0.05},{units:128,activation:sigmoid,irange:0.05,bias:-2.0}]"
)


def fit(cfg, tmp_path, steps, callbacks=()):
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    trainer = bare_trainer(tmp_path, max_epochs=None, max_steps=steps, callbacks=list(callbacks))
    trainer.fit(module, datamodule=build_datamodule(cfg.dataset, cfg.seed))
    return module, trainer


@pytest.mark.slow
def test_stage_2_loads_stage_1_generator(tmp_path):
    write_tfd(tmp_path / "TFD" / "TFD_48x48.mat")
    common = (f"paths.data_dir={tmp_path}", "logger=none", "dataset.batch_size=20")
    stage1, trainer = fit(compose("experiment=tfd_stage1", SMALL_1, *common, output_dir=tmp_path), tmp_path, 4)
    trainer.save_checkpoint(tmp_path / "stage1.ckpt")
    old = [m for m in stage1.generator.net if isinstance(m, torch.nn.Linear)]

    class KeepsStage1(pl.Callback):
        def on_train_start(self, trainer, module):  # after setup: the output bias was not reset
            new = [m for m in module.generator.net if isinstance(m, torch.nn.Linear)]
            assert len(new) == 5 and new[1].bias.eq(-2).all() and new[0].weight.shape == (32, 100)
            for a, b in zip(old, new[2:]):
                assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
            self.checked = True

    check = KeepsStage1()
    cfg = compose(
        "experiment=tfd_stage2",
        SMALL_2,
        f"model.generator.init_from={tmp_path / 'stage1.ckpt'}",
        *common,
        output_dir=tmp_path / "s2",
    )
    stage2, trainer2 = fit(cfg, tmp_path / "s2", 2, [check])
    assert check.checked and stage2.d_updates == 1  # a fresh D, trained from scratch
    assert not torch.equal(stage2.discriminator.net[1].linear.weight, stage1.discriminator.net[1].linear.weight)
    # A stage-2 checkpoint loads (as eval.py loads it) after the stage-1 file is gone.
    trainer2.save_checkpoint(tmp_path / "stage2.ckpt")
    (tmp_path / "stage1.ckpt").unlink()
    loaded = GAN.load_from_checkpoint(tmp_path / "stage2.ckpt", map_location="cpu", weights_only=True)
    for key, value in stage2.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_stage_2_without_checkpoint_says_what_to_pass(tmp_path):
    cfg = compose("experiment=tfd_stage2", SMALL_2)
    with pytest.raises(UserError, match="init_from must name a stage-1 checkpoint"):
        GAN(OmegaConf.to_container(cfg, resolve=True))


def fit_epochs(cfg, root, epochs, ckpt_path=None):
    """A fit of whole epochs from weights drawn after torch.manual_seed(0), checkpointed as train.py does."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    trainer = bare_trainer(
        root,
        max_epochs=epochs,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)],
    )
    trainer.fit(module, datamodule=build_datamodule(cfg.dataset, cfg.seed), ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.slow
def test_tfd_stage_2_resumes_exactly_without_the_stage_1_file(tmp_path):
    """A stage-2 run resumed from its epoch-1 checkpoint, after the stage-1 checkpoint it was started from is
    deleted, ends with the weights, optimiser state and counters of an uninterrupted 2-epoch stage-2 run."""
    write_tfd(tmp_path / "TFD" / "TFD_48x48.mat")
    common = (
        f"paths.data_dir={tmp_path}",
        "logger=none",
        "dataset.batch_size=20",
        "model.discriminator.layers=[{units:8,pieces:5,irange:0.005}]",
    )
    _, stage1 = fit_epochs(compose("experiment=tfd_stage1", SMALL_1, *common), tmp_path / "s1", 1)
    stage1.save_checkpoint(tmp_path / "stage1.ckpt")
    cfg = compose("experiment=tfd_stage2", SMALL_2, f"model.generator.init_from={tmp_path / 'stage1.ckpt'}", *common)
    straight, _ = fit_epochs(cfg, tmp_path / "straight", 2)
    fit_epochs(cfg, tmp_path / "first", 1)
    (tmp_path / "stage1.ckpt").unlink()
    resumed, _ = fit_epochs(cfg, tmp_path / "resumed", 2, ckpt_path=tmp_path / "first" / "checkpoints" / "last.ckpt")
    assert (resumed.d_updates, resumed.g_updates) == (straight.d_updates, straight.g_updates) == (12, 12)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    a, b = (
        torch.load(p / "checkpoints" / "last.ckpt", weights_only=True)
        for p in (tmp_path / "straight", tmp_path / "resumed")
    )
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"]):
        assert sa["param_groups"] == sb["param_groups"]
        for i, state in sa["state"].items():
            assert all(torch.equal(v, sb["state"][i][k]) for k, v in state.items())
