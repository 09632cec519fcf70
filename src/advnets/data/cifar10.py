"""CIFAR-10 in torchvision's python format: train rows 0..39,999, valid 40,000..49,999, test the test batch.

Preprocessing as the official code: per image, subtract the mean of its 3072 raw 0..255 values, then
scale it to L2 norm 55 (`dataset.norm`). Sample grids are min-max rescaled for display (figures.display).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from advnets.data.batches import DataError, TensorDataModule

FOLDER = "cifar-10-batches-py"
TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
TEST = ["test_batch"]


def global_contrast(x: Tensor, norm: float) -> Tensor:
    """Each image minus its own mean, scaled to L2 norm `norm` (all-constant images stay 0)."""
    flat = x.flatten(1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    flat = flat * (norm / flat.norm(dim=1, keepdim=True).clamp_min(1e-8))
    return flat.view_as(x)


class CIFAR10DataModule(TensorDataModule):
    @property
    def folder(self) -> Path:
        return Path(self.cfg["root"]) / FOLDER

    def prepare_data(self) -> None:
        """Download through torchvision when files are missing (and `download`), else verify MD5s if asked."""
        from torchvision.datasets import CIFAR10

        missing = [n for n in TRAIN + TEST if not (self.folder / n).is_file()]
        try:
            if missing and self.cfg.get("download", True):
                CIFAR10(self.cfg["root"], train=True, download=True)
            elif not missing and self.cfg.get("check_md5", True):
                CIFAR10(self.cfg["root"], train=True, download=False)  # checks every file's MD5
        except Exception as e:
            missing = [n for n in TRAIN + TEST if not (self.folder / n).is_file()]
            if missing:
                raise DataError(
                    f"CIFAR-10 files missing in {self.folder}: {', '.join(missing)}; run once online "
                    f"(dataset.download=true) or copy torchvision's {FOLDER} folder there"
                ) from None
            raise DataError(
                f"CIFAR-10 files in {self.folder} are corrupt ({e}); delete them and download again "
                f"(or set dataset.check_md5=false for files you made yourself)"
            ) from None
        missing = [n for n in TRAIN + TEST if not (self.folder / n).is_file()]
        if missing:
            raise DataError(
                f"CIFAR-10 files missing in {self.folder}: {', '.join(missing)}; set "
                f"dataset.download=true and run once online, or copy them there"
            )

    def read(self, names: list[str]) -> Tensor:
        arrays = []
        for name in names:
            with open(self.folder / name, "rb") as f:
                arrays.append(np.asarray(pickle.load(f, encoding="latin1")["data"], dtype=np.uint8))
        data = torch.from_numpy(np.concatenate(arrays)).float().view(-1, 3, 32, 32)
        return global_contrast(data, float(self.cfg.get("norm", 55.0)))

    def load_splits(self) -> dict[str, Tensor]:
        self.prepare_data()
        train, n = self.read(TRAIN), int(self.cfg.get("n_train", 40000))
        return {"train": train[:n].contiguous(), "valid": train[n:].contiguous(), "test": self.read(TEST)}
