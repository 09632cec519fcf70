"""What train.py and eval.py share: config checks, the logger and trainer they build, user errors."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]
if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))


class UserError(Exception):
    """A problem the user can fix; reported as one line, without a traceback."""

    exit_code = 2


class TrainingDiverged(UserError):
    """A non-finite loss or parameter; the message names the update count and the last good checkpoint."""

    exit_code = 3


class Preempted(Exception):
    """SIGTERM or SIGINT arrived; `ckpt` was saved at the batch boundary that followed."""

    def __init__(self, signum: int, ckpt: str):
        import signal

        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum, self.ckpt = signum, ckpt


def resume_command(ckpt: str) -> str:
    """This command line again, resuming from `ckpt`."""
    import shlex

    args = [a for a in sys.argv[1:] if not a.startswith("ckpt_path=")]
    return shlex.join(["python", "src/train.py", *args, f"ckpt_path={ckpt}"])


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn known, fixable problems into `error: <what to fix>` on stderr and exit status 2."""
    try:
        yield
    except UserError as e:  # advnets.data.DataError too
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Preempted as e:
        print(f"{e}: checkpoint saved to {e.ckpt}; resume with:\n  {resume_command(e.ckpt)}", file=sys.stderr)
        sys.exit(128 + e.signum)


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


def run_name(cfg: DictConfig) -> str:
    """The W&B run name: the config's, else the command-line overrides (e.g. 'k=2,loss=minimax')."""
    from hydra.core.hydra_config import HydraConfig

    name = cfg.logger.get("wandb", {}).get("name")
    if name:
        return str(name)
    if HydraConfig.initialized():
        dirname = HydraConfig.get().job.override_dirname
        if dirname:
            return dirname
    return "defaults"


def sweep_name() -> str | None:
    """In a multirun job, the name of its sweep folder (e.g. '2026-11-25_22-50-01.123456'); else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return None


def build_loggers(cfg: DictConfig) -> list:
    from pytorch_lightning.loggers import CSVLogger, WandbLogger

    loggers = []
    if "wandb" in cfg.logger:
        w = cfg.logger.wandb
        Path(w.save_dir).mkdir(parents=True, exist_ok=True)
        # The jobs of one sweep share a group, so the dashboard shows them side by side.
        loggers.append(WandbLogger(project=w.project, name=run_name(cfg), group=w.group or sweep_name(), tags=list(w.tags),
                                   save_dir=w.save_dir, mode=wandb_mode(w),
                                   config=OmegaConf.to_container(cfg, resolve=True)))
    if "csv" in cfg.logger:
        loggers.append(CSVLogger(save_dir=cfg.logger.csv.save_dir, name=cfg.logger.csv.name))
    return loggers


def ranks_rerun_command(trainer_cfg: DictConfig) -> bool:
    """Whether Lightning starts the other DDP ranks by re-running this process's command line.

    True for `strategy=ddp*` with several processes per node, unless torchrun or SLURM started the ranks.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

    strategy = pl.Trainer(**trainer_cfg, logger=False, enable_checkpointing=False).strategy
    return (isinstance(strategy.launcher, _SubprocessScriptLauncher) and strategy.num_processes > 1
            and not strategy.cluster_environment.creates_processes_externally)


def run_job_alone(cfg: DictConfig, script: Path) -> None:
    """Run this multirun job as a single run of `script`, in its own process and its own job folder.

    Lightning's DDP launcher re-runs the command line for every rank: in a multirun job that would be
    the whole sweep (or a joblib worker's command), so a DDP job restarts as `python script <its
    overrides> hydra.run.dir=<its folder>`, whose ranks Lightning then starts as for any single run.
    """
    import subprocess

    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    command = [sys.executable, str(script), *hc.overrides.task, f'hydra.run.dir="{hc.runtime.output_dir}"',
               "hydra.output_subdir=null"]  # the sweep already wrote this job's .hydra/
    if "wandb" in cfg.logger and not cfg.logger.wandb.group:
        command.append(f"logger.wandb.group={sweep_name()}")
    code = subprocess.run(command).returncode
    if code:
        sys.exit(code)


def wandb_mode(w: DictConfig) -> str:
    """`w.mode`, except `online` without a reachable W&B server: then offline, with a warning (bounded wait)."""
    import os
    import socket
    from urllib.parse import urlparse

    if w.mode != "online":
        return str(w.mode)
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=float(w.get("connect_timeout", 10))).close()
        return "online"
    except OSError as e:
        if not w.get("offline_fallback", True):
            raise UserError(f"W&B server {url.hostname} unreachable ({e}); set WANDB_MODE=offline or "
                            f"logger.wandb.offline_fallback=true") from None
        print(f"warning: W&B server {url.hostname} unreachable ({e}): logging offline to {w.save_dir}/wandb; "
              f"upload later with `wandb sync {w.save_dir}/wandb/offline-run-*`", file=sys.stderr)
        os.environ["WANDB_MODE"] = "offline"
        return "offline"


def finish_wandb() -> None:
    """Close the W&B run (also after a failure), so the next job of a multirun gets its own run."""
    wandb = sys.modules.get("wandb")  # never imported: no W&B run to close (and wandb may not be installed)
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def check_ckpt_path(ckpt_path) -> Path:
    """A checkpoint path that exists, or a UserError saying which path is missing."""
    if not ckpt_path:
        raise UserError("ckpt_path is required: ckpt_path=outputs/runs/<run>/checkpoints/last.ckpt")
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


# What makes two runs the same experiment: a checkpoint of another one is refused.
EXPERIMENT_KEYS = ("dataset.name", "dataset.shape", "model", "loss", "k", "schedule", "seed")


def _get(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k != "compile"}  # torch.compile keeps the weights' names
    return config


def load_checkpoint(path: Path) -> dict:
    """The checkpoint as plain tensors and containers (weights_only: never runs pickled code)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} cannot be read (truncated, or not a checkpoint: {reason[:100]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt.get("hyper_parameters", {}):
        raise UserError(f"checkpoint {path} is not a checkpoint of src/train.py (no state_dict and config in it)")
    return ckpt


def experiment_mismatch(ckpt: dict, config: dict) -> str | None:
    """The first experiment setting that differs between a checkpoint and this run, as 'key: a there, b here'."""
    saved = ckpt["hyper_parameters"]["config"]
    for key in EXPERIMENT_KEYS:
        if _get(saved, key) != _get(config, key):
            return f"{key}: {_get(saved, key)!r} there, {_get(config, key)!r} here"
    return None


def find_last_checkpoint(log_dir: Path, config: dict) -> Path:
    """The newest last.ckpt under `log_dir` written by a run of the same experiment."""
    candidates = sorted((p for p in log_dir.glob("**/checkpoints/last.ckpt") if p.exists()),  # skip dangling links
                        key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            if experiment_mismatch(load_checkpoint(path), config) is None:
                return path
        except UserError:
            continue
    others = f" ({len(candidates)} found, of other experiments or unreadable)" if candidates else ""
    raise UserError(f"ckpt_path=last: no last.ckpt of this experiment under {log_dir}{others}; "
                    f"give ckpt_path=<path to a .ckpt>")


def check_resume(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from (`last` resolved), checked to load and to match this experiment."""
    if not cfg.ckpt_path:
        return None
    config = OmegaConf.to_container(cfg, resolve=True)
    if str(cfg.ckpt_path) == "last":
        return str(find_last_checkpoint(Path(cfg.paths.log_dir), config))
    path = check_ckpt_path(cfg.ckpt_path)
    mismatch = experiment_mismatch(load_checkpoint(path), config)
    if mismatch:
        raise UserError(f"checkpoint {path} is from another experiment ({mismatch}); resume it with the same settings")
    return str(path)
