"""One writer per run folder: a lock on <run>/.run.lock, held for the life of the process.

Two commands resuming one run (two terminals, a requeued job beside a manual restart) would both train into the
same folder: duplicate CSV versions and W&B runs, checkpoints overwriting each other. The lock is taken before
anything is written there (Hydra's .hydra/ files and train.log included), and the second command refuses in one
line naming the holder. It is an fcntl lock, which the OS releases when the process ends, even by SIGKILL: no
stale lock is ever left to delete.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from advnets.errors import UserError, user_errors
from advnets.locks import try_lock

LOCK_NAME = ".run.lock"

_held: dict[Path, int] = {}  # run folder -> the open descriptor holding its lock (closed when the process ends)


def holder_line() -> str:
    """Who holds a lock: written into the lock file for a refused second command to quote."""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    return f"pid {os.getpid()} on host {socket.gethostname()}, started {started}"


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def is_other_rank() -> bool:
    """Whether this process is a DDP rank other than 0 (started by Lightning, torchrun or SLURM): rank 0 holds
    the lock for all of them."""
    return any(os.environ.get(name, "0") != "0" for name in RANK_VARIABLES)


def hold_run_folder(folder: Path) -> None:
    """Take the lock of `folder` for this process, or raise a UserError naming the process that holds it."""
    folder = folder.expanduser().absolute()
    if folder in _held or is_other_rank():
        return
    path = folder / LOCK_NAME
    fd = try_lock(path)
    if fd is None:
        holder = path.read_text().strip() or "another process"
        raise UserError(
            f"run folder {folder} is in use by {holder}; wait for it to end (or stop it), then run this command again"
        )
    os.ftruncate(fd, 0)
    os.pwrite(fd, (holder_line() + "\n").encode(), 0)
    _held[folder] = fd


def release_run_folder(folder: Path) -> None:
    """Hand the lock of `folder` on (to a command this process starts for the same folder)."""
    fd = _held.pop(folder.expanduser().absolute(), None)
    if fd is not None:
        os.close(fd)


class RunFolderLock(Callback):
    """A Hydra callback (conf/train.yaml, after ResumeInRunFolder, which chooses a resumed run's folder): locks
    the run folder before Hydra writes anything into it, and each multirun job's folder as that job starts."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # hydra.run.dir's ${now:...} is resolved once and cached: the folder Hydra then makes is this one.
        with user_errors():
            hold_run_folder(Path(OmegaConf.select(config, "hydra.run.dir")))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        with user_errors():
            hold_run_folder(Path(config.hydra.runtime.output_dir))
