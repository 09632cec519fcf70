"""Algorithm 1 and the simultaneous update, counted on a real Trainer over real MNIST batches."""

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from advnets.data import build_datamodule
from advnets.module import GAN
from conftest import bare_trainer, compose


class Recorder(pl.Callback):
    """Real batches as they arrive; `recording` turns off when the training steps are over."""

    def __init__(self):
        self.batches = []
        self.recording = True

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batches.append(batch.clone())

    def on_train_epoch_end(self, trainer, module):
        # Callbacks run before the module's hook, so the sample grid and figures drawn after
        # the last step are not mistaken for training draws.
        self.recording = False


def fit(data_dir, tmp_path, *overrides, batches=30):
    # The paper's SGD: its param groups count the updates (checked below).
    cfg = compose(f"paths.data_dir={data_dir}", "logger=none", "optimizer=momentum", *overrides, output_dir=tmp_path)
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    events = []  # ("noise", z) / ("G", None) / ("D", None) in call order, during the training steps
    recorder = Recorder()
    real_noise = module.noise

    def record(kind, z=None):
        if recorder.recording:
            events.append((kind, z))

    def noise(n, generator=None, device=None):
        z = real_noise(n, generator, device)
        record("noise", z.clone())
        return z

    module.noise = noise
    module.generator.register_forward_hook(lambda *a: record("G"))
    module.discriminator.register_forward_hook(lambda *a: record("D"))
    trainer = bare_trainer(tmp_path, limit_train_batches=batches, callbacks=[recorder])
    trainer.fit(module, datamodule=build_datamodule(cfg.dataset, cfg.seed))
    return module, trainer, events, recorder.batches


@pytest.mark.slow
def test_algorithm_1_with_k_3(data_dir, tmp_path):
    module, trainer, events, batches = fit(data_dir, tmp_path, "k=3")
    d_opt, g_opt = trainer.optimizers
    assert (module.d_updates, module.g_updates) == (30, 10)
    assert (d_opt.param_groups[0]["updates"], g_opt.param_groups[0]["updates"]) == (30, 10)
    assert trainer.global_step == 40  # Lightning counts every optimizer step: k + 1 per iteration
    # Every D update sees a different real minibatch of the batch size.
    assert len(batches) == 30 and all(b.shape == (100, 1, 28, 28) for b in batches)
    fingerprints = {tuple(b.flatten(1).sum(1).tolist()) for b in batches}
    assert len(fingerprints) == 30
    # Per D step: noise, G, D(real), D(fake). Per G step: noise, G, D(fake). G steps after every 3rd D step.
    kinds = [k for k, _ in events]
    d_step, g_step = ["noise", "G", "D", "D"], ["noise", "G", "D"]
    assert kinds == ((d_step * 3) + g_step) * 10
    noises = [z for k, z in events if k == "noise"]
    for i in range(10):
        d_noise, g_noise = noises[4 * i + 2], noises[4 * i + 3]
        assert g_noise.shape == (100, 100) and not torch.equal(d_noise, g_noise)
    assert len({tuple(z[0].tolist()) for z in noises}) == len(noises)  # fresh noise every time


@pytest.mark.slow
def test_simultaneous_updates_both_nets_from_one_forward_pass(data_dir, tmp_path):
    module, trainer, events, batches = fit(data_dir, tmp_path, "schedule=simultaneous", "k=1")
    assert (module.d_updates, module.g_updates) == (30, 30)
    d_opt, g_opt = trainer.optimizers
    assert (d_opt.param_groups[0]["updates"], g_opt.param_groups[0]["updates"]) == (30, 30)
    assert [k for k, _ in events] == ["noise", "G", "D", "D"] * 30
