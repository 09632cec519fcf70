"""Toronto Face Database from the original TFD_48x48.mat / TFD_96x96.mat (licensed: users bring the file).

Fields (reference, section 5): `images` (N, s, s) uint8; `folds` (N, 5) with, per fold, 0 = unlabeled,
1 = train, 2 = valid, 3 = test; `labs_ex`, `labs_id` (N, 1). The paper trains on 'unlabeled' and
monitors 'valid'; the module's `train` split is `dataset.train_split` of `dataset.fold`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from advnets.data.batches import DataError, TensorDataModule

SPLITS = {"unlabeled": (0,), "train": (1,), "valid": (2,), "test": (3,), "full_train": (1, 2)}
FIELDS = ("images", "folds", "labs_ex", "labs_id")


def read_tfd(path: Path, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, s, s) uint8, folds (N, 5)) from the .mat file, checked field by field."""
    if not path.is_file():
        raise DataError(
            f"TFD file not found: {path}. The Toronto Face Database is licensed and has no "
            f"download: obtain TFD_{image_size}x{image_size}.mat from its owners and put it there "
            f"(or set dataset.path=<file>)"
        )
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except Exception as e:
        raise DataError(f"TFD file {path} is not a readable .mat file ({e})") from None
    missing = [f for f in FIELDS if f not in mat]
    if missing:
        raise DataError(f"TFD file {path} lacks field(s) {', '.join(missing)}; expected {', '.join(FIELDS)}")
    images, folds = mat["images"], mat["folds"]
    n = images.shape[0] if images.ndim else 0
    if images.shape != (n, image_size, image_size):
        raise DataError(
            f"TFD file {path}: 'images' has shape {images.shape}, expected (N, {image_size}, "
            f"{image_size}) for dataset.image_size={image_size}"
        )
    if folds.shape != (n, 5):
        raise DataError(f"TFD file {path}: 'folds' has shape {folds.shape}, expected ({n}, 5)")
    for f in ("labs_ex", "labs_id"):
        if mat[f].size != n:
            raise DataError(f"TFD file {path}: '{f}' has {mat[f].size} entries, expected {n}")
    return images, folds


class TFDDataModule(TensorDataModule):
    def split(self, images: np.ndarray, folds: np.ndarray, name: str) -> Tensor:
        if name not in SPLITS:
            raise DataError(f"unknown TFD split {name!r}: choose {', '.join(SPLITS)}")
        fold = int(self.cfg.get("fold", 0))
        if not 0 <= fold <= 4:
            raise DataError(f"dataset.fold must be 0..4, got {fold}")
        rows = np.isin(folds[:, fold], SPLITS[name])
        return torch.from_numpy(images[rows].astype(np.float32) / 255).unsqueeze(1).contiguous()

    def load_splits(self) -> dict[str, Tensor]:
        size = int(self.cfg.get("image_size", 48))
        images, folds = read_tfd(Path(self.cfg["path"]), size)
        return {
            "train": self.split(images, folds, self.cfg.get("train_split", "unlabeled")),
            "valid": self.split(images, folds, "valid"),
            "test": self.split(images, folds, "test"),
        }
