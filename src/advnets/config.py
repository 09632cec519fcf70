"""The run config: the `repo_root` resolver conf/ uses, and the checks that refuse settings which cannot train."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from advnets.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))

# The update schedules GAN.training_step implements (here, so that checking a config imports no Lightning).
SCHEDULES = ("alternating", "simultaneous")


def check_config(cfg: DictConfig) -> None:
    """Refuse settings that cannot train, before any work is done."""
    from advnets.losses import GENERATOR_LOSSES

    if not isinstance(cfg.k, int) or cfg.k < 1:
        raise UserError(f"k must be an integer >= 1 (discriminator steps per generator step), got {cfg.k!r}")
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.loss.generator not in GENERATOR_LOSSES:
        raise UserError(f"loss.generator must be one of {', '.join(GENERATOR_LOSSES)}, got {cfg.loss.generator!r}")
    if int(cfg.dataset.batch_size) < 1:
        raise UserError(f"dataset.batch_size must be >= 1, got {cfg.dataset.batch_size}")
    if float(cfg.optimizer.lr) <= 0:
        raise UserError(f"optimizer.lr must be > 0, got {cfg.optimizer.lr}")
