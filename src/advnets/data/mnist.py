"""MNIST from the four original idx files: train rows 0..49,999, valid 50,000..59,999, test the t10k set."""

from __future__ import annotations

import shutil
from pathlib import Path

from torch import Tensor

from advnets.data.batches import DataError, TensorDataModule
from advnets.locks import wait_for_lock

FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
N_TRAIN = 50000


class MNISTDataModule(TensorDataModule):
    @property
    def raw_dir(self) -> Path:
        return Path(self.cfg["root"]) / "MNIST" / "raw"

    def prepare_data(self) -> None:
        """Put the files in <root>/MNIST/raw: from `raw_mirror` when given, else torchvision's download.

        Under a lock on <root>/MNIST/.prepare.lock: a second process started beside the first (two seeds, a
        sweep's jobs) waits while the first copies and unpacks the files, then finds them complete, instead of
        reading them half-written and calling them corrupt."""
        import os

        try:
            fd = wait_for_lock(self.raw_dir.parent / ".prepare.lock")
        except OSError:  # a read-only data folder: nothing can be written there, by us or anyone else
            fd = None
        try:
            self._prepare_files()
        finally:
            if fd is not None:
                os.close(fd)

    def _prepare_files(self) -> None:
        from torchvision.datasets import MNIST

        raw = self.raw_dir
        mirror = self.cfg.get("raw_mirror")
        if mirror and Path(mirror).is_dir():
            raw.mkdir(parents=True, exist_ok=True)
            for name in FILES:
                if not (raw / name).exists() and (Path(mirror) / name).exists():
                    # Copied beside and renamed: a copy cut short (a kill, a full disk) never has the name.
                    partial = raw / f".{name}.partial"
                    shutil.copyfile(Path(mirror) / name, partial)
                    partial.replace(raw / name)
        try:
            # Offline with the .gz files present this only checks their MD5 and unpacks them.
            for train in (True, False):
                MNIST(self.cfg["root"], train=train, download=self.cfg.get("download", True))
        except Exception as e:
            missing = [name for name in FILES if not (raw / name).exists()]
            if missing:
                raise DataError(
                    f"MNIST files missing in {raw}: {', '.join(missing)}; copy the original files "
                    f"there (or set dataset.raw_mirror=<folder with them>), or run once online"
                ) from None
            raise DataError(
                f"MNIST files in {raw} are unreadable or corrupt ({e}); delete them and copy the originals again"
            ) from None

    def load_splits(self) -> dict[str, Tensor]:
        train, test = self._read("data")
        return split(train.unsqueeze(1).float().div_(255), test.unsqueeze(1).float().div_(255))

    def load_labels(self) -> dict[str, Tensor]:
        """The digit of every row of each split (the classifier of advnets/metrics/mnist_classifier.py)."""
        return split(*self._read("targets"))

    def _read(self, field: str) -> tuple[Tensor, Tensor]:
        from torchvision.datasets import MNIST

        self.prepare_data()
        return tuple(getattr(MNIST(self.cfg["root"], train=train), field) for train in (True, False))


def split(train: Tensor, test: Tensor) -> dict[str, Tensor]:
    """The paper's splits: training rows 0..49,999, validation 50,000..59,999, the official test set."""
    return {"train": train[:N_TRAIN].contiguous(), "valid": train[N_TRAIN:].contiguous(), "test": test}
