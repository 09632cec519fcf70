"""Callbacks that end training cleanly: on divergence (non-finite values) and on SIGTERM/SIGINT."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch

from advnets.run import Preempted, TrainingDiverged


def last_good_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest checkpoint this run wrote, else the one it resumed from."""
    cb = trainer.checkpoint_callback
    return (cb.last_model_path if cb is not None else None) or trainer.ckpt_path or None


class DivergenceGuard(pl.Callback):
    """After every batch: stop if a loss or a parameter is NaN or infinite (before anything is saved)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        losses = {k: v for k, v in getattr(pl_module, "_last", {}).items() if k.endswith("_loss")}
        bad = [k for k, v in losses.items() if not torch.isfinite(v).all()]
        if not bad:
            # One sync: a sum is non-finite when any element is (or the weights have blown up anyway).
            sums = torch.stack([p.detach().float().sum() for p in pl_module.parameters()])
            if not torch.isfinite(sums).all():
                bad = ["parameters"]
        if bad:
            ckpt = last_good_checkpoint(trainer)
            where = f"{ckpt} (unchanged)" if ckpt else "none saved yet"
            raise TrainingDiverged(
                f"training diverged: non-finite {', '.join(bad)} at D update {pl_module.d_updates}, G update "
                f"{pl_module.g_updates} (epoch {trainer.current_epoch + 1}, batch {batch_idx + 1}); last good "
                f"checkpoint: {where}; try a lower optimizer.lr")


class PreemptionHandler(pl.Callback):
    """SIGTERM/SIGINT set a flag; the next batch end saves <checkpoints>/last.ckpt and raises Preempted.

    Installed before `trainer.fit`, so Lightning's own SIGTERM handler (which it composes with ours)
    still runs too, and SLURM's requeue signal (SIGUSR1) stays Lightning's.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._notify)

    def _notify(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: stop now
        self.signum = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.signum is None:
            return
        dirpath = Path(trainer.checkpoint_callback.dirpath)
        path, tmp = dirpath / "last.ckpt", dirpath / ".last.ckpt.partial"
        trainer.save_checkpoint(tmp)  # then renamed: a kill during the save leaves the old last.ckpt whole
        if trainer.is_global_zero:
            os.replace(tmp, path)
        raise Preempted(self.signum, str(path))
