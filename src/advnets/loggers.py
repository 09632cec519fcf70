"""The loggers of a run: W&B (offline unless asked) and CSV, both in the run folder; a resume continues them."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from advnets.errors import UserError
from advnets.launch import sweep_name


def run_name(cfg: DictConfig) -> str:
    """The W&B run name: the config's, else the command-line overrides (e.g. 'k=2,loss=minimax')."""
    from hydra.core.hydra_config import HydraConfig

    name = cfg.logger.wandb.name
    if name:
        return str(name)
    if HydraConfig.initialized():
        dirname = HydraConfig.get().job.override_dirname
        if dirname:
            return dirname
    return "defaults"


def log_image(module, key: str, images: list, **kwargs) -> None:
    """Log `images` (tensors or PNG paths) as `key` at the module's global step, to each of its loggers that takes
    images (W&B; the CSV logger takes none)."""
    for logger in module.loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=key, images=images, step=module.trainer.global_step, **kwargs)


def wandb_run_id(run_folder: Path) -> str | None:
    """The id of the W&B run already logged in `run_folder` (wandb/[offline-]run-<time>-<id>), else None."""
    runs = sorted(run_folder.glob("wandb/*run-*-*"), key=lambda p: p.name.rsplit("-", 2)[-2])
    return runs[-1].name.rsplit("-", 1)[1] if runs else None


def build_loggers(cfg: DictConfig, continue_wandb_id: str | None = None) -> list:
    """W&B and/or CSV as `cfg.logger` asks. `continue_wandb_id`: a resumed run logs into that W&B run
    (its steps go on from the checkpoint's); the CSV logger writes the next csv/version_N of the folder."""
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    loggers = []
    if "wandb" in cfg.logger:
        w = cfg.logger.wandb
        Path(w.save_dir).mkdir(parents=True, exist_ok=True)
        # The jobs of one sweep share a group, so the dashboard shows them side by side.
        loggers.append(
            WandbLogger(
                project=w.project,
                name=run_name(cfg),
                group=w.group or sweep_name(),
                tags=list(w.tags),
                save_dir=w.save_dir,
                mode=wandb_mode(w),
                id=continue_wandb_id,
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        )
    if "csv" in cfg.logger:
        loggers.append(CSVLogger(save_dir=cfg.logger.csv.save_dir, name=cfg.logger.csv.name))
    return loggers


def wandb_mode(w: DictConfig) -> str:
    """`w.mode`, except `online` without a reachable W&B server: then offline, with a warning (bounded wait)."""
    import os
    import socket
    from urllib.parse import urlparse

    if w.mode != "online":
        return str(w.mode)
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=float(w.connect_timeout)
        ).close()
        return "online"
    except OSError as e:
        if not w.offline_fallback:
            raise UserError(
                f"W&B server {url.hostname} unreachable ({e}); set WANDB_MODE=offline or "
                f"logger.wandb.offline_fallback=true"
            ) from None
        print(
            f"warning: W&B server {url.hostname} unreachable ({e}): logging offline to {w.save_dir}/wandb; "
            f"upload later with `wandb sync {w.save_dir}/wandb/offline-run-*`",
            file=sys.stderr,
        )
        os.environ["WANDB_MODE"] = "offline"
        return "offline"


def finish_wandb() -> None:
    """Close the W&B run (also after a failure), so the next job of a multirun gets its own run."""
    wandb = sys.modules.get("wandb")  # never imported: no W&B run to close (and wandb may not be installed)
    if wandb is not None and wandb.run is not None:
        wandb.finish()
