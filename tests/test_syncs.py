"""Training steps that log nothing read no tensor's value back to the host (each such read stalls a GPU).

Counted on the CPU, where the same code runs: `aten::_local_scalar_dense` is what `float(t)`, `t.item()`, `bool(t)`
and `t.tolist()` of one element dispatch to on any device. Reads of torch.optim's own step counters (kept on the
CPU by design, whatever the device of the weights) are left out."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from advnets.data import EpochBatchSampler, TensorBatches
from advnets.guards import CollapseMonitor, DivergenceGuard, PreemptionHandler
from advnets.lightning_internals import logs_this_step
from advnets.module import GAN
from conftest import bare_trainer, compose

TINY = [
    "model.generator.layers=[{units: 16, activation: relu, irange: 0.05}]",
    "model.discriminator.layers=[{units: 8, pieces: 2, irange: 0.05}]",
]


class CountReads(TorchDispatchMode):
    def __init__(self, optimizer_steps: set[int]):
        super().__init__()
        self.reads, self.optimizer_steps = 0, optimizer_steps

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and id(args[0]) not in self.optimizer_steps:
            self.reads += 1
        return func(*args, **(kwargs or {}))


class ReadsPerStep(pl.Callback):
    """Counts the reads from the start of each training batch to the end of the last callback's batch-end hook
    (put it last), for the batches that log nothing."""

    def __init__(self):
        self.silent, self.logged, self.mode = [], [], None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        steps = {id(s["step"]) for opt in module.optimizers() for s in opt.optimizer.state.values() if "step" in s}
        self.mode = CountReads(steps)
        self.mode.__enter__()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.mode.__exit__(None, None, None)
        (self.logged if logs_this_step(module) else self.silent).append(self.mode.reads)


@pytest.mark.parametrize("schedule", ["alternating", "simultaneous"])
def test_steps_that_log_nothing_read_no_value(tmp_path, schedule):
    """The defaults' step (Adam, R1, the EMA of G) with the callbacks train.py adds that act at every batch."""
    module = GAN(OmegaConf.to_container(compose(*TINY, f"schedule={schedule}"), resolve=True))
    x = torch.rand(120, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    counter = ReadsPerStep()
    callbacks = [DivergenceGuard(), CollapseMonitor(), PreemptionHandler(max_time_s=3600.0), counter]
    trainer = bare_trainer(tmp_path, log_every_n_steps=5, callbacks=callbacks)
    trainer.fit(module, train_dataloaders=TensorBatches(x, EpochBatchSampler(120, 10, seed=0)))
    assert len(counter.silent) == 10 and len(counter.logged) == 2
    assert counter.silent == [0] * 10
    assert all(n > 0 for n in counter.logged)  # the counter sees reads: a logged step reads its values


def test_ranks_agree_on_preemption_only_at_the_steps_that_log():
    """Under DDP the stop decision is an all-reduce and a read: made at the steps that log, not at every batch (a
    Trainer of 2 ranks whose strategy records the collective calls; the first three steps do not log)."""
    from types import SimpleNamespace

    calls = []
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: calls.append(decision) or decision)
    trainer = SimpleNamespace(
        world_size=2, strategy=strategy, _logger_connector=SimpleNamespace(should_update_logs=False)
    )
    module = SimpleNamespace(_trainer=trainer)
    handler = PreemptionHandler()
    for logs in (False, False, False, True, False):
        trainer._logger_connector.should_update_logs = logs
        handler.on_train_batch_end(trainer, module, None, None, 0)
    assert calls == [False]
