"""How a run is launched: inside a multirun (its sweep), and the DDP ranks Lightning starts by re-running it."""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig


def _multirun_job():
    """Hydra's config of this process when it is a multirun job; None otherwise."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get() if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN else None


def sweep_name() -> str | None:
    """In a multirun job, the name of its sweep folder (e.g. '2026-11-25_22-50-01.123456'); else None."""
    job = _multirun_job()
    return None if job is None else Path(job.sweep.dir).name


def multirun_job_overrides() -> list[str] | None:
    """In a multirun job, its own overrides (Hydra's hydra.overrides.task); else None."""
    job = _multirun_job()
    return None if job is None else list(job.overrides.task)


def ranks_rerun_command(trainer_args: dict) -> bool:
    """Whether Lightning starts the other DDP ranks by re-running this process's command line.

    True for `strategy=ddp*` with several processes per node, unless torchrun or SLURM started the ranks.
    """
    import pytorch_lightning as pl

    from advnets.lightning_internals import starts_ranks_by_rerunning_the_command

    strategy = pl.Trainer(**trainer_args, logger=False, enable_checkpointing=False).strategy
    return (
        starts_ranks_by_rerunning_the_command(strategy)
        and strategy.num_processes > 1
        and not strategy.cluster_environment.creates_processes_externally
    )


def run_job_alone(cfg: DictConfig, script: Path) -> None:
    """Run this multirun job as a single run of `script`, in its own process and its own job folder.

    Lightning's DDP launcher re-runs the command line for every rank: in a multirun job that would be
    the whole sweep (or a joblib worker's command), so a DDP job restarts as `python script <its
    overrides> hydra.run.dir=<its folder>`, whose ranks Lightning then starts as for any single run.
    """
    import subprocess

    from hydra.core.hydra_config import HydraConfig

    from advnets.run_lock import release_run_folder

    hc = HydraConfig.get()
    command = [
        sys.executable,
        str(script),
        *hc.overrides.task,
        f'hydra.run.dir="{hc.runtime.output_dir}"',
        "hydra.output_subdir=null",
    ]  # the sweep already wrote this job's .hydra/
    if "wandb" in cfg.logger and not cfg.logger.wandb.group:
        command.append(f"logger.wandb.group={sweep_name()}")
    release_run_folder(Path(hc.runtime.output_dir))  # the command below takes it
    code = subprocess.run(command).returncode
    if code:
        sys.exit(code)
