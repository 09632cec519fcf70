"""Train a GAN: `python src/train.py [dataset=mnist] [model=maxout] [k=1] ...` (see conf/train.yaml)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from advnets.checkpoints import check_resume
from advnets.config import check_config, trainer_arguments
from advnets.errors import user_errors
from advnets.launch import ranks_rerun_command, run_job_alone, sweep_name
from advnets.preflight import preflight


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # A refusal removes the run folder Hydra made for this command. (A checkpoint to resume was already
    # checked, and its run folder chosen, before Hydra made any: advnets.checkpoints.ResumeInRunFolder.)
    with user_errors(Path(cfg.paths.output_dir), Path(cfg.paths.log_dir)):
        check_config(cfg)
        ckpt_path = check_resume(cfg)
        from advnets.lightning_internals import keep_noise_out_of_logs

        keep_noise_out_of_logs()  # Lightning's litlogger tip (a multirun job builds a Trainer below) and known warnings
        if sweep_name() and ranks_rerun_command(trainer_arguments(cfg)):
            run_job_alone(cfg, Path(__file__).resolve())  # DDP inside a multirun: see run_job_alone
            return
        train(cfg, ckpt_path)


def train(cfg: DictConfig, ckpt_path: str | None = None) -> None:
    import errno
    import warnings

    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from advnets.checkpoint_io import AtomicCheckpointIO, AtomicLastCheckpoint, CheckpointWriteError
    from advnets.checkpoints import load_checkpoint, write_failure
    from advnets.data import build_datamodule
    from advnets.errors import Preempted
    from advnets.guards import CollapseMonitor, DivergenceGuard, PreemptionHandler, last_good_checkpoint, parse_max_time
    from advnets.loggers import DashboardAxes, build_loggers, finish_wandb, name_wandb_run
    from advnets.module import GAN
    from advnets.precision import fp32_means_fp32, precision_line
    from advnets.progress import progress_callbacks, test_table

    trainer_args = trainer_arguments(cfg)
    fp32_means_fp32()  # 32-true is fp32 on GPUs too (cuDNN's default is TF32 convolutions); the line says so
    logging.getLogger(__name__).log(
        *precision_line(trainer_args["precision"], cfg.trainer.accelerator, asked=cfg.trainer.precision)
    )
    cfg.trainer.precision = trainer_args["precision"]  # the module's hparams and the loggers' config: what ran
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg.dataset, cfg.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")  # missing, corrupt or too small data: refused before the loggers and trainer start
    # The W&B run this run logs to, in its config (and so in its checkpoints): a resume continues its checkpoint's.
    name_wandb_run(cfg, load_checkpoint(Path(ckpt_path))["hyper_parameters"]["config"] if ckpt_path else None)
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    if ckpt_path:  # resumed in a run folder that has checkpoints already: that is expected
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    preemption = PreemptionHandler(parse_max_time(cfg.trainer.max_time))
    progress = progress_callbacks(cfg.trainer.enable_progress_bar, cfg.callbacks.progress.every_s)
    preemption.install()  # from here on SIGTERM/SIGINT stop at the next batch end with a checkpoint
    try:
        loggers = build_loggers(cfg)
        trainer = pl.Trainer(
            **trainer_args,
            logger=loggers or False,
            plugins=[AtomicCheckpointIO()],  # the one writer of checkpoints: in place, atomic, never via TMPDIR
            callbacks=[
                AtomicLastCheckpoint(**cfg.callbacks.checkpoint),
                DivergenceGuard(),
                DashboardAxes(),
                CollapseMonitor(**cfg.callbacks.collapse),
                *(instantiate(c) for c in cfg.callbacks.extra),
                *progress,
                preemption,
            ],
        )
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        except SIGTERMException:  # arrived during validation: Lightning stopped there, before our batch-end save
            raise Preempted(signal.SIGTERM, last_good_checkpoint(trainer)) from None
        if cfg.test_after_fit:
            print(test_table(trainer.test(module, datamodule=datamodule, verbose=False)))
    except OSError as e:  # Lightning has closed the loggers ("failed"); W&B is finished below
        if not isinstance(e, CheckpointWriteError) and e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise write_failure(e, Path(cfg.callbacks.checkpoint.dirpath)) from None
    finally:
        finish_wandb()


if __name__ == "__main__":
    preflight()  # unknown config options and unwritable output folders, before Hydra makes a run folder
    main()
