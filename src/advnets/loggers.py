"""The loggers of a run: W&B (offline unless asked) and CSV, both in the run folder; a resume continues them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from advnets.errors import UserError
from advnets.launch import sweep_name


def run_name(cfg: DictConfig) -> str:
    """The W&B run name: the config's, else the job's overrides without bookkeeping (e.g. 'k=2,loss=minimax';
    advnets.config.NOT_IN_RUN_NAME), else 'defaults'."""
    from hydra.core.hydra_config import HydraConfig

    name = cfg.logger.wandb.name
    if name:
        return str(name)
    if HydraConfig.initialized():
        dirname = HydraConfig.get().job.override_dirname
        if dirname:
            return dirname
    return "defaults"


def experiment_name() -> str | None:
    """The `experiment=` option this run was composed with, if any (a tag of its W&B run)."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None


def name_wandb_run(cfg: DictConfig, resumed: dict | None = None) -> None:
    """Write into cfg.logger.wandb the W&B run this run logs to, so that its config (W&B's, the checkpoints')
    says it: a resumed run (`resumed`: its checkpoint's config) continues its own run (id, name and group); a
    new one gets a new id, its name (run_name) and, in a multirun, its sweep as the group. The experiment is a tag."""
    if "wandb" not in cfg.logger:
        return
    import secrets
    import string

    w = cfg.logger.wandb
    before = ((resumed or {}).get("logger") or {}).get("wandb") or {}
    if before.get("id"):
        w.id, w.name, w.group = before["id"], before["name"], before["group"]
    else:
        w.id = w.id or "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's form
        w.name = run_name(cfg)
        w.group = w.group or sweep_name()
    experiment = experiment_name()
    if experiment and experiment not in w.tags:
        w.tags = [*w.tags, experiment]


def log_image(module, key: str, images: list, **kwargs) -> None:
    """Log `images` (tensors or PNG paths) as `key` at the module's global step, to each of its loggers that takes
    images (W&B; the CSV logger takes none)."""
    for logger in module.loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=key, images=images, step=module.trainer.global_step, **kwargs)


def build_loggers(cfg: DictConfig) -> list:
    """W&B and/or CSV as `cfg.logger` asks: W&B as the run named by name_wandb_run (a resumed run logs into its
    checkpoint's W&B run, its steps going on from the checkpoint's), CSV into the next csv/version_N of the folder."""
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    from advnets.lightning_internals import leave_out_retired_wandb_setting

    loggers = []
    if "wandb" in cfg.logger:
        w = cfg.logger.wandb
        Path(w.save_dir).mkdir(parents=True, exist_ok=True)
        # The jobs of one sweep share a group and a folder, so the dashboard shows them side by side.
        wandb_logger = WandbLogger(
            project=w.project,
            name=run_name(cfg),  # name_wandb_run's, else built here (tests, benchmarks)
            group=w.group or sweep_name(),
            tags=list(w.tags),
            job_type="train",
            save_dir=w.save_dir,
            mode=wandb_mode(w),
            id=w.id,
            config=OmegaConf.to_container(cfg, resolve=True),
        )
        leave_out_retired_wandb_setting(wandb_logger)
        loggers.append(wandb_logger)
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


class DashboardAxes(pl.Callback):
    """The x axis of the W&B charts: val/* and test/* against G updates (their val/g_updates, test/g_updates), so
    that runs of different k meet at equal G updates; train/* stay on Lightning's trainer/global_step (optimiser
    steps). W&B's own x-axis menu offers train/elapsed_s (wall time) for equal-time comparisons."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        from pytorch_lightning.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                for stage_ in ("val", "test"):
                    logger.experiment.define_metric(f"{stage_}/g_updates")
                    logger.experiment.define_metric(f"{stage_}/*", step_metric=f"{stage_}/g_updates")


def finish_wandb() -> None:
    """Close the W&B run (also after a failure), so the next job of a multirun gets its own run."""
    wandb = sys.modules.get("wandb")  # never imported: no W&B run to close (and wandb may not be installed)
    if wandb is not None and wandb.run is not None:
        wandb.finish()
