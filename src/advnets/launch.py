"""How a run is launched: inside a multirun (its sweep), and the DDP ranks Lightning starts by re-running it."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig


def sweep_name() -> str | None:
    """In a multirun job, the name of its sweep folder (e.g. '2026-11-25_22-50-01.123456'); else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir).name
    return None


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
