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
