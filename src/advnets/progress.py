"""Training progress as plain lines, for output that is not a terminal (SLURM, nohup, CI logs)."""

from __future__ import annotations

import sys
import time

from pytorch_lightning.callbacks import ProgressBar


class ProgressLines(ProgressBar):
    """One line every `every_s` seconds and at the end of every epoch, instead of tqdm's per-batch redraws:

        epoch 3/300 batch 120/500 (24%) 41.2 batch/s d_loss 0.612 g_loss 0.801 d_real 0.705 d_fake 0.331

    and at the end of an epoch its time and `val/parzen_ll`. Written to stderr, as tqdm's bar is.
    """

    def __init__(self, every_s: float = 30.0):
        super().__init__()
        self.every_s = float(every_s)
        self._enabled = True
        self._last_time = self._epoch_start = 0.0
        self._last_batch = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:  # a run resumed mid-epoch starts without an epoch start
        self._last_time = self._epoch_start = time.monotonic()
        self._last_batch = int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._last_time = self._epoch_start = time.monotonic()
        self._last_batch = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        if self._enabled and (now - self._last_time >= self.every_s or batch_idx + 1 == self.total_train_batches):
            self._line(trainer, pl_module, batch_idx + 1, now)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self._enabled:
            return
        val = trainer.callback_metrics.get("val/parzen_ll")
        scored = f", val/parzen_ll {float(val):.1f}" if val is not None else ""
        print(
            f"epoch {trainer.current_epoch + 1} done in {time.monotonic() - self._epoch_start:.0f} s{scored}",
            file=sys.stderr,
            flush=True,
        )

    def _line(self, trainer, pl_module, batch: int, now: float) -> None:
        total = self.total_train_batches
        rate = (batch - self._last_batch) / max(now - self._last_time, 1e-9)
        losses = " ".join(f"{k} {float(v):.3f}" for k, v in getattr(pl_module, "step_record", {}).items())
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        print(
            f"epoch {trainer.current_epoch + 1}{epochs} batch {batch}/{total} ({100 * batch / total:.0f}%) "
            f"{rate:.1f} batch/s {losses}",
            file=sys.stderr,
            flush=True,
        )
        self._last_time, self._last_batch = now, batch


def progress_callbacks(enabled: bool, every_s: float) -> list[ProgressLines]:
    """The progress callback of a Trainer whose progress is `enabled`: off a terminal (SLURM, nohup, CI, output
    redirected to a file) ProgressLines, a line at a bounded rate, instead of tqdm's bar redrawn for every batch; on a
    terminal none (Lightning's bar)."""
    return [ProgressLines(every_s)] if enabled and not sys.stderr.isatty() else []


def test_table(results: list[dict[str, float]]) -> str:
    """trainer.test's results as one table. Its test/* metrics are computed once, at the end of the test epoch, from
    both of its loaders (the validation rows that pick sigma, the test images scored), so Lightning's own table would
    repeat every one under "DataLoader 0" and "DataLoader 1"."""
    metrics = {k: v for r in results for k, v in r.items()}
    width = max(map(len, metrics), default=6)
    lines = [f"{'test metric':<{width}}  value", f"{'-' * width}  {'-' * 12}"]
    lines += [f"{k:<{width}}  {v:.6g}" for k, v in sorted(metrics.items())]
    return "\n".join(lines)
