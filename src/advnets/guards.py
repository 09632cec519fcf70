"""Callbacks that end training cleanly: on divergence (non-finite values) and on SIGTERM/SIGINT."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch

from advnets.errors import Preempted, TrainingDiverged


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


class CollapseMonitor(pl.Callback):
    """Marks a run collapsed (D has won) and optionally stops it; logs train/collapsed every epoch.

    The epoch's mean D(x) and D(G(z)) over its D updates are compared with the thresholds; `epochs`
    consecutive epochs past both mark the run collapsed, and it stays marked.
    """

    def __init__(self, d_real_above: float = 0.99, d_fake_below: float = 0.01, epochs: int = 2, stop: bool = False):
        self.d_real_above, self.d_fake_below = float(d_real_above), float(d_fake_below)
        self.epochs, self.stop = int(epochs), bool(stop)
        self.streak, self.collapsed_at = 0, None  # collapsed_at: the 1-based epoch it was marked
        self._sums = torch.zeros(3, dtype=torch.float64)  # sum D(x), sum D(G(z)), count

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sums.zero_()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last = pl_module._last
        if "d_real" in last:
            self._sums += torch.tensor([float(last["d_real"]), float(last["d_fake"]), 1.0], dtype=torch.float64)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._sums[2] == 0:
            return
        d_real, d_fake = (self._sums[:2] / self._sums[2]).tolist()
        won = trainer.strategy.reduce_boolean_decision(d_real > self.d_real_above and d_fake < self.d_fake_below,
                                                        all=False)
        self.streak = self.streak + 1 if won else 0
        if self.collapsed_at is None and self.streak >= self.epochs:
            self.collapsed_at = trainer.current_epoch + 1
        pl_module.log_dict({"train/epoch_d_real": d_real, "train/epoch_d_fake": d_fake,
                            "train/collapsed": float(self.collapsed_at is not None)},
                           on_step=False, on_epoch=True, sync_dist=True)
        if self.collapsed_at is not None and self.stop:
            trainer.should_stop = True

    def state_dict(self) -> dict:
        return {"streak": self.streak, "collapsed_at": self.collapsed_at}

    def load_state_dict(self, state_dict: dict) -> None:
        self.streak, self.collapsed_at = int(state_dict["streak"]), state_dict["collapsed_at"]
