"""CIFAR-10: tiny files in torchvision's python format go through the real DataModule."""

import pickle

import numpy as np
import pytest
import torch

from advnets.data import DataError, build_datamodule
from advnets.figures import display
from conftest import compose

PER_BATCH = 12


def write_cifar(root, per_batch=PER_BATCH):
    """cifar-10-batches-py with data_batch_1..5, test_batch, batches.meta (uint8 rows of 3072, CHW)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        data[0] = i  # a constant image: preprocessing must not divide by zero
        with open(folder / name, "wb") as f:
            pickle.dump(
                {
                    "batch_label": name,
                    "labels": list(rng.integers(0, 10, per_batch)),
                    "data": data,
                    "filenames": [f"{name}_{j}.png" for j in range(per_batch)],
                },
                f,
            )
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {
                "label_names": [
                    "airplane",
                    "automobile",
                    "bird",
                    "cat",
                    "deer",
                    "dog",
                    "frog",
                    "horse",
                    "ship",
                    "truck",
                ],
                "num_cases_per_batch": per_batch,
                "num_vis": 3072,
            },
            f,
        )
    return folder


def cifar(root, *overrides):
    cfg = compose(
        f"paths.data_dir={root}",
        "dataset=cifar10",
        "dataset.download=false",
        "dataset.check_md5=false",
        f"dataset.n_train={4 * PER_BATCH}",
        *overrides,
    )
    dm = build_datamodule(cfg.dataset, seed=0)
    dm.setup("fit")
    return dm


def test_cifar_splits_and_preprocessing(tmp_path):
    folder = write_cifar(tmp_path)
    s = cifar(tmp_path).splits
    assert [len(s[k]) for k in ("train", "valid", "test")] == [4 * PER_BATCH, PER_BATCH, PER_BATCH]
    for x in s.values():
        flat = x.flatten(1)
        flat = flat[flat.abs().sum(1) > 0]  # row 0 of each batch is constant and stays 0
        assert len(flat) == len(x) - len(x) // PER_BATCH
        assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32
        assert flat.mean(1).abs().max() < 1e-4 and torch.allclose(flat.norm(dim=1), torch.full((len(flat),), 55.0))
    assert s["train"][0].abs().max() == 0
    # valid = rows 4*PER_BATCH.. (data_batch_5), in torchvision's CHW layout
    raw = torch.from_numpy(pickle.load(open(folder / "data_batch_5", "rb"))["data"][1].astype(np.float32))
    raw = (raw - raw.mean()) * 55 / (raw - raw.mean()).norm()
    assert torch.allclose(s["valid"][1].flatten(), raw, atol=1e-4)
    shown = display(s["valid"][1:4])
    assert shown.min() >= 0 and shown.max() <= 1 and torch.isclose(shown.flatten(1).max(1).values, torch.ones(3)).all()


def test_cifar_md5_checked_by_default(tmp_path):
    write_cifar(tmp_path)
    with pytest.raises(DataError, match="corrupt"):
        cifar(tmp_path, "dataset.check_md5=true")


def test_cifar_missing_names_files(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match="missing.*test_batch"):
        cifar(tmp_path)
