"""The one place checkpoints are written: a file with a checkpoint's name is always complete.

Lightning's own save stages each checkpoint in TMPDIR (a small disk on many clusters) and moves it into place,
a copy across file systems that a full disk or a kill leaves truncated under the final name, with no fsync.
Here a checkpoint is written to a hidden temporary file in its own folder, flushed and fsynced, renamed onto its
name (atomic within a file system) and the folder fsynced, so the rename itself survives a crash. TMPDIR is
never used. `last.ckpt` is a link replaced by a rename too, and the checkpoint it pointed to is removed only
once it points to the new one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

PARTIAL_SUFFIX = ".partial"  # a checkpoint being written: `.<name>.partial`, hidden and never matched by *.ckpt


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; `filename` is the checkpoint's name, and no file of that name was
    changed (nor anything partial left)."""


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new name in `folder` durable (the file's own fsync does not cover its folder entry)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def partial_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's CheckpointIO plugin, writing every checkpoint in place atomically (see the module's doc)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        partial = partial_name(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as file:
                self.write(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
            fsync_folder(path.parent)
        except BaseException as e:
            partial.unlink(missing_ok=True)
            failed = os_error_in(e)
            if failed is None:
                raise
            raise CheckpointWriteError(failed.errno, failed.strerror, str(path)) from e
        remove_leftover_partials(path.parent)

    def remove_checkpoint(self, path) -> None:
        # Lightning's asks fsspec whether the path exists first, which a dangling link does not: it stayed.
        Path(path).unlink(missing_ok=True)

    def write(self, checkpoint: dict[str, Any], file: IO[bytes]) -> None:
        """Serialise `checkpoint` into the open temporary file (the tests replace this to make faults)."""
        import torch

        torch.save(checkpoint, file)


def os_error_in(error: BaseException | None) -> OSError | None:
    """The OSError behind `error` (torch.save reports a full disk as a RuntimeError of its zip writer, raised
    while handling the OSError), else None."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def remove_leftover_partials(folder: Path) -> None:
    """Temporary files of saves killed mid-write. Only this run writes here (advnets.run_lock), and its own
    save has just ended, so every one left is debris."""
    for leftover in folder.glob(f".*{PARTIAL_SUFFIX}"):
        leftover.unlink(missing_ok=True)


def link_atomically(target: Path, link: Path) -> None:
    """Point `link` at `target` (a relative symlink), replacing what was there in one rename: at every moment
    `link` is the old checkpoint or the new one, never missing."""
    new_link = partial_name(link)
    new_link.unlink(missing_ok=True)
    os.symlink(os.path.relpath(target, link.parent), new_link)
    os.replace(new_link, link)
    fsync_folder(link.parent)


class AtomicLastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose `last.ckpt` link is replaced atomically, and whose outdated checkpoints are removed
    only after `last.ckpt` points to the new one (Lightning removes the old file first, then removes the link and
    makes a new one: a kill in between leaves `last.ckpt` dangling)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._outdated: list[str] = []

    @property
    def state_key(self) -> str:
        # Lightning files this callback's state under its class name: ModelCheckpoint's, so that checkpoints
        # written before this class (and by it) restore each other's.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    @staticmethod
    def _link_checkpoint(trainer, filepath: str, linkpath: str) -> None:
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            link_atomically(Path(filepath), Path(linkpath))
        trainer.strategy.barrier()

    def _remove_checkpoint(self, trainer, filepath: str) -> None:
        if self.save_last:
            self._outdated.append(filepath)  # removed by _save_last_checkpoint, once last.ckpt has moved on
        else:
            super()._remove_checkpoint(trainer, filepath)

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        outdated, self._outdated = self._outdated, []
        for filepath in outdated:
            super()._remove_checkpoint(trainer, filepath)
