"""Callbacks that end training cleanly: on divergence (non-finite values), on SIGTERM/SIGINT and at a time limit."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from advnets.errors import Preempted, TrainingDiverged
from advnets.lightning_internals import logs_this_step, write_step_metrics_now


def last_good_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest checkpoint this run wrote, else the one it resumed from."""
    cb = trainer.checkpoint_callback
    return (cb.last_model_path if cb is not None else None) or trainer.ckpt_path or None


class DivergenceGuard(pl.Callback):
    """Stops training when a loss (of the module's step_record) or a parameter is NaN or infinite, before any
    checkpoint holds it.

    Every step's losses are checked where they are, without reading a value back (a read stalls a GPU at every
    step): the first non-finite one is recorded on the device with the D and G updates it came at. The record is read
    at every step that logs (trainer.log_every_n_steps), at each epoch's end and before every checkpoint save; the parameters
    are checked at the last two (between them, a non-finite weight makes the next step's losses non-finite)."""

    LOSSES = ("d_loss", "g_loss")

    def __init__(self) -> None:
        self._first_bad: torch.Tensor | None = None  # [index in LOSSES, D update, G update]; index -1: none yet

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        record = pl_module.step_record
        if not any(k in record for k in self.LOSSES):
            return
        device = next(record[k] for k in self.LOSSES if k in record).device
        if self._first_bad is None or self._first_bad.device != device:
            self._first_bad = torch.full((3,), -1, dtype=torch.long, device=device)
        none = torch.zeros((), dtype=torch.bool, device=device)
        bad = torch.stack([~torch.isfinite(record[k]).all() if k in record else none for k in self.LOSSES])
        # Made on the device (fills, not copies from the host): the index of the first bad loss and the counters.
        counters = (pl_module.d_updates, pl_module.g_updates)
        here = torch.stack([bad.long().argmax(), *(torch.full_like(self._first_bad[0], n) for n in counters)])
        self._first_bad = torch.where(bad.any() & (self._first_bad[0] < 0), here, self._first_bad)
        if logs_this_step(pl_module):  # a step that reads values anyway, to log them
            self._check(trainer, pl_module, f"epoch {trainer.current_epoch + 1}, batch {batch_idx + 1}")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module, f"end of epoch {trainer.current_epoch + 1}", parameters=True)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.training:
            self._check(trainer, pl_module, "before a checkpoint save", parameters=True)

    def _check(self, trainer, pl_module, when: str, parameters: bool = False) -> None:
        what, d, g = None, pl_module.d_updates, pl_module.g_updates
        if self._first_bad is not None and int(self._first_bad[0]) >= 0:  # the one read
            index, d, g = self._first_bad.tolist()
            what = self.LOSSES[index]
        if what is None and parameters:
            # One read: a sum is non-finite when any element is (or the weights have blown up anyway).
            sums = torch.stack([p.detach().float().sum() for p in pl_module.parameters()])
            what = None if torch.isfinite(sums).all() else "parameters"
        if what is None:
            return
        ckpt = last_good_checkpoint(trainer)
        where = f"{ckpt} (unchanged)" if ckpt else "none saved yet"
        raise TrainingDiverged(
            f"training diverged: non-finite {what} at D update {d}, G update {g} (found at {when}); last good "
            f"checkpoint: {where}; try a lower optimizer.lr"
        )


def parse_max_time(max_time) -> float | None:
    """`trainer.max_time` in seconds: "DD:HH:MM:SS" (Lightning's format), or {days: .., hours: .., ...}."""
    if max_time is None:
        return None
    if isinstance(max_time, str):
        days, hours, minutes, seconds = (int(x) for x in max_time.split(":"))
        return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    units = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
    return float(sum(units[k] * float(v) for k, v in dict(max_time).items()))


class PreemptionHandler(pl.Callback):
    """Stops training at a batch end with <checkpoints>/last.ckpt saved there, which resumes exactly.

    Stops when SIGTERM/SIGINT arrived (they set a flag), or when this command has fitted for
    `max_time_s` seconds (`trainer.max_time`: Lightning's own timer would end the epoch early and save
    it as finished, losing the rest of the epoch on resume); then raises Preempted. Installed before
    `trainer.fit`, so Lightning's own SIGTERM handler (which it composes with ours) still runs too, and
    SLURM's requeue signal (SIGUSR1) stays Lightning's. Under DDP the ranks agree whether to stop at the batch
    ends of the steps that log (trainer.log_every_n_steps), so all of them save the same batch. Put it after the other callbacks: the
    checkpoint then holds what they did with the last batch.
    """

    def __init__(self, max_time_s: float | None = None) -> None:
        self.signum: int | None = None
        self.max_time_s = max_time_s
        self._start = time.monotonic()

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._notify)

    def _notify(self, signum, frame) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: stop now
        self.signum = signum

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()

    def _reason(self) -> int | str | None:
        if self.signum is not None:
            return self.signum
        if self.max_time_s is not None and time.monotonic() - self._start >= self.max_time_s:
            return f"trainer.max_time ({self.max_time_s:.0f} s of fitting in this command) reached"
        return None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        reason = self._reason()
        if trainer.world_size > 1:
            # The ranks agree at the steps that log (an all-reduce and a read: a stall on a GPU, not made at every
            # batch), so a signal waits at most trainer.log_every_n_steps batches; every rank saves the same batch.
            if not logs_this_step(pl_module):
                return
            if trainer.strategy.reduce_boolean_decision(reason is not None, all=False):
                reason = reason if reason is not None else signal.SIGTERM  # another rank got the signal
        if reason is None:
            return
        # This batch's step metrics: Lightning writes them after the batch-end hooks, which stop here.
        write_step_metrics_now(trainer)
        path = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
        trainer.save_checkpoint(path)  # atomic (advnets.checkpoint_io): a kill during the save leaves the old one
        raise Preempted(reason, str(path))


class CollapseMonitor(pl.Callback):
    """Marks a run collapsed (D has won) and optionally stops it; logs train/collapsed every epoch.

    The epoch's mean D(x) and D(G(z)) over its D updates (`d_real`, `d_fake` of the module's step_record) are compared with the thresholds; `epochs`
    consecutive epochs past both mark the run collapsed, and it stays marked. D(x)'s threshold is a fraction
    of D's target for real data (`real_label`): with label smoothing (target 0.9) a D that has won sits at
    D(x) = 0.9, never above 0.99. Under DDP the means are over every rank's D updates (the sums are reduced at the
    epoch's end), and a checkpoint holds the sums of every rank, reduced, so that a run resumed mid-epoch goes on
    with them (rank 0 restores them, the others start at 0).
    """

    def __init__(
        self,
        d_real_above: float = 0.99,
        d_fake_below: float = 0.01,
        epochs: int = 2,
        stop: bool = False,
        real_label: float = 1.0,
    ):
        self.d_real_above, self.d_fake_below = float(d_real_above) * float(real_label), float(d_fake_below)
        self.epochs, self.stop = int(epochs), bool(stop)
        self.streak, self.collapsed_at = 0, None  # collapsed_at: the 1-based epoch it was marked
        self._sums = torch.zeros(3, dtype=torch.float64)  # this rank's sum D(x), sum D(G(z)), count
        self._strategy = None  # the Trainer's, for the reduction over ranks (set in setup)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._strategy = trainer.strategy

    def _summed_over_ranks(self, strategy) -> torch.Tensor:
        """Every rank's sums added up (a collective call: every rank makes it, at an epoch's end or a save)."""
        if strategy.world_size == 1:
            return self._sums
        sums = self._sums.to(strategy.root_device, copy=True)  # a copy: the reduction is in place
        return strategy.reduce(sums, reduce_op="sum")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sums.zero_()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        last = pl_module.step_record
        if "d_real" in last:
            # Summed where D's outputs are (a read of their values would stall a GPU at every step); read at epoch end.
            d_real = last["d_real"].double()
            self._sums = self._sums.to(d_real.device)
            self._sums += torch.stack([d_real, last["d_fake"].double(), torch.ones_like(d_real)])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        d_real, d_fake, count = self._summed_over_ranks(trainer.strategy).tolist()
        if count == 0:
            return
        d_real, d_fake = d_real / count, d_fake / count
        won = d_real > self.d_real_above and d_fake < self.d_fake_below  # the same on every rank
        self.streak = self.streak + 1 if won else 0
        if self.collapsed_at is None and self.streak >= self.epochs:
            self.collapsed_at = trainer.current_epoch + 1
        pl_module.log_dict(
            {
                "train/epoch_d_real": d_real,
                "train/epoch_d_fake": d_fake,
                "train/collapsed": float(self.collapsed_at is not None),
            },
            on_step=False,
            on_epoch=True,
        )
        if self.collapsed_at is not None and self.stop:
            trainer.should_stop = True

    def state_dict(self) -> dict:  # the sums too: a run resumed mid-epoch goes on summing that epoch
        sums = self._summed_over_ranks(self._strategy) if self._strategy is not None else self._sums
        return {"streak": self.streak, "collapsed_at": self.collapsed_at, "sums": sums.tolist()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.streak, self.collapsed_at = int(state_dict["streak"]), state_dict["collapsed_at"]
        if "sums" in state_dict:
            # Every rank's sums, reduced: rank 0 carries them on and the others start at 0, so that the reduction at
            # the epoch's end counts each once, on any number of ranks.
            rank = self._strategy.global_rank if self._strategy is not None else 0
            self._sums = torch.tensor(state_dict["sums"], dtype=torch.float64) * (rank == 0)
