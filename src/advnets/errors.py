"""User errors: a problem the user can fix is one line on stderr, `error: <what to fix>`, and no debris."""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix; reported as one line, without a traceback."""

    exit_code = 2


class TrainingDiverged(UserError):
    """A non-finite loss or parameter; the message names the update count and the last good checkpoint."""

    exit_code = 3


class StorageFull(UserError):
    """A write of the run failed (disk full, folder unwritable or gone); the message names the last good
    checkpoint and the command that resumes from it."""

    exit_code = 4


class Preempted(Exception):
    """Training stopped early on request, with `ckpt` saved at the batch boundary where it stopped.

    `reason`: the signal number (SIGTERM, SIGINT: exit 128 + signal), or a sentence (a time limit: exit 0).
    """

    def __init__(self, reason: int | str, ckpt: str | None):
        import signal

        self.signum = reason if isinstance(reason, int) else None
        super().__init__(f"stopped by {signal.Signals(reason).name}" if self.signum else f"stopped: {reason}")
        self.ckpt = ckpt

    @property
    def exit_code(self) -> int:
        return 128 + self.signum if self.signum else 0


def resume_command(ckpt: str) -> str:
    """This command line again, resuming from `ckpt`. In a multirun job, that job's own overrides as one run:
    the sweep's command line with one job's checkpoint would resume every job of the sweep from it."""
    import shlex

    from advnets.launch import multirun_job_overrides

    job = multirun_job_overrides()
    args = [a for a in (sys.argv[1:] if job is None else job) if not a.startswith("ckpt_path=")]
    return shlex.join(["python", "src/train.py", *args, f"ckpt_path={ckpt}"])


# What Hydra writes into a run folder before the task starts (and <job name>.log), and the run's lock
# (advnets.run_lock); a folder holding nothing else is this command's own.
HYDRA_START_FILES = {".hydra", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", ".run.lock"}


def remove_unused_run_folder(run_folder: Path, log_dir: Path | None = None) -> None:
    """Remove `run_folder` if it holds only what Hydra wrote when this command started, then the folders
    above it (up to `log_dir`) that are left empty. A folder with anything else in it is left as it is."""
    run_folder = run_folder.absolute()
    if not run_folder.is_dir():
        return
    for path in run_folder.rglob("*"):
        name = str(path.relative_to(run_folder))
        if name not in HYDRA_START_FILES and not (path.parent == run_folder and name.endswith(".log")):
            return
    shutil.rmtree(run_folder, ignore_errors=True)
    if log_dir is None:
        return
    log_dir, folder = log_dir.absolute(), run_folder.parent
    while (folder == log_dir or log_dir in folder.parents) and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


@contextlib.contextmanager
def user_errors(run_folder: Path | None = None, log_dir: Path | None = None) -> Iterator[None]:
    """Turn known, fixable problems into `error: <what to fix>` on stderr and exit status 2.

    `run_folder`: the folder Hydra made for this command before the task ran; a refusal removes it
    (with `log_dir`: and the folders above it left empty), unless something else was written there.
    """
    try:
        yield
    except UserError as e:  # advnets.data.DataError too
        if run_folder is not None and not isinstance(e, TrainingDiverged):
            remove_unused_run_folder(Path(run_folder), log_dir and Path(log_dir))
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Preempted as e:
        if e.ckpt is None:  # stopped before the first checkpoint: nothing to resume
            print(
                f"{e} before the first checkpoint was saved: nothing to resume; run the command again", file=sys.stderr
            )
        else:
            print(f"{e}: checkpoint saved to {e.ckpt}; resume with:\n  {resume_command(e.ckpt)}", file=sys.stderr)
        sys.exit(e.exit_code)
