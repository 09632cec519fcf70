"""The one module that reaches into Lightning: the private APIs the project uses, and the lines it keeps out of logs.

Each function names what it asks of Lightning, so a Lightning release that moves a private attribute breaks
here and nowhere else; pyproject.toml bounds pytorch-lightning to the releases this was written against.
"""

from __future__ import annotations

import logging
import warnings


def logs_this_step(module) -> bool:
    """Whether Lightning writes the metrics `module` logs in this training step (every trainer.log_every_n_steps);
    False for a module no trainer is fitting."""
    trainer = module._trainer  # module.trainer raises without one
    return trainer is not None and trainer._logger_connector.should_update_logs


def write_step_metrics_now(trainer) -> None:
    """Write this batch's step metrics to the loggers now (Lightning does it after the batch-end hooks)."""
    trainer._logger_connector.update_train_step_metrics()


def leave_out_retired_wandb_setting(logger) -> None:
    """Pass W&B no `anonymous` setting: WandbLogger always passes one (None unless asked), and W&B, which has retired
    it, warns whenever it is passed ("The anonymous setting has no effect") in every run."""
    logger._wandb_init.pop("anonymous", None)


def lightning_precision_name(precision: str | int | None) -> str | None:
    """A Trainer precision in Lightning's own name for it (32 and "32" are 32-true, "bf16" is bf16-mixed, "16" is
    16-mixed), as the Trainer converts it, with its warning for the discouraged aliases and its error for a value
    it does not know; None (the Trainer's default) stays None."""
    from lightning_fabric.connector import _convert_precision_to_unified_args

    return _convert_precision_to_unified_args(precision)


def starts_ranks_by_rerunning_the_command(strategy) -> bool:
    """Whether the strategy's launcher starts the other ranks by running this process's command line again."""
    from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

    return isinstance(strategy.launcher, _SubprocessScriptLauncher)


# Lines Lightning and its dependencies print in every run that say nothing about it, matched by their text so
# that every other warning and log line still shows.
NOISE_LOG_LINES = ("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",)
NOISE_WARNINGS = (
    # torch >= 2.10 deprecates LeafSpec, which pytorch_lightning.utilities._pytree (2.6) still uses.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # A short epoch (trainer.limit_train_batches below log_every_n_steps): the module logs the epoch's last values
    # itself (GAN.on_train_epoch_end), so the warning that the epoch goes unlogged is not true of this project.
    r"The number of training batches \(\d+\) is smaller than the logging interval",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOISE_LOG_LINES)


def keep_noise_out_of_logs() -> None:
    """Drop NOISE_LOG_LINES and NOISE_WARNINGS from this process's output (idempotent)."""
    log = logging.getLogger("pytorch_lightning.utilities.rank_zero")  # rank_zero_info's logger
    if not any(isinstance(f, _DropNoise) for f in log.filters):
        log.addFilter(_DropNoise())
    for message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
