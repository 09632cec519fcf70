"""TFD: a small file in the original .mat format goes through the real DataModule."""

import numpy as np
import pytest
import torch
from scipy.io import loadmat, savemat

from advnets.data import DataError, build_datamodule
from conftest import compose

N, N_UNLABELED = 300, 120


def write_tfd(path, size=48, drop=None, images_shape=None, valid_rows=None):
    """Fields and dtypes as in TFD_48x48.mat: unlabeled rows shared by all folds, the rest rotated.
    `valid_rows`: fold 0's valid split holds only that many rows (the others go to its train split)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, size, size), dtype=np.uint8)
    images[0, 0, 0], images[1, 0, 0] = 0, 255
    folds = np.zeros((N, 5), dtype=np.uint8)
    labelled = np.arange(N - N_UNLABELED)
    for f in range(5):  # per fold: 60% train, 20% valid, 20% test of the labelled rows
        part = (labelled + 36 * f) % 180
        folds[N_UNLABELED:, f] = np.where(part < 108, 1, np.where(part < 144, 2, 3))
    if valid_rows is not None:
        valid = np.flatnonzero(folds[:, 0] == 2)
        folds[valid[valid_rows:], 0] = 1
    labs_ex = np.where(folds[:, :1] == 0, -1, rng.integers(1, 8, (N, 1))).astype(np.int16)
    labs_id = rng.integers(1, 200, (N, 1)).astype(np.int32)
    mat = {
        "images": images if images_shape is None else images.reshape(images_shape),
        "folds": folds,
        "labs_ex": labs_ex,
        "labs_id": labs_id,
    }
    if drop:
        del mat[drop]
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), mat)
    return mat


def tfd(data_dir, *overrides):
    cfg = compose(f"paths.data_dir={data_dir}", "dataset=tfd", *overrides)
    dm = build_datamodule(cfg.dataset, seed=0)
    dm.setup("fit")
    return dm


@pytest.mark.slow
def test_tfd_splits_per_fold(tmp_path):
    mat = write_tfd(tmp_path / "TFD" / "TFD_48x48.mat")
    assert loadmat(str(tmp_path / "TFD" / "TFD_48x48.mat"))["images"].dtype == np.uint8
    for fold in range(5):
        dm = tfd(tmp_path, f"dataset.fold={fold}")
        s = dm.splits
        col = mat["folds"][:, fold]
        assert [len(s[k]) for k in ("train", "valid", "test")] == [N_UNLABELED, (col == 2).sum(), (col == 3).sum()]
        assert dm.shape == (1, 48, 48) and s["train"].shape[1:] == (1, 48, 48)
        assert torch.equal(s["valid"][0, 0], torch.from_numpy(mat["images"][col == 2][0]).float() / 255)
    assert s["train"].min() == 0 and s["train"].max() == 1 and s["train"].dtype == torch.float32
    full = tfd(tmp_path, "dataset.train_split=full_train").splits["train"]
    assert len(full) == 144


def test_tfd_96(tmp_path):
    write_tfd(tmp_path / "TFD" / "TFD_96x96.mat", size=96)
    dm = tfd(tmp_path, "dataset.image_size=96")
    assert dm.splits["train"].shape == (N_UNLABELED, 1, 96, 96) and dm.shape == (1, 96, 96)


def test_tfd_missing_file_names_path(tmp_path):
    with pytest.raises(DataError, match=r"TFD/TFD_48x48.mat.*licensed.*obtain"):
        tfd(tmp_path)


@pytest.mark.parametrize("drop", ["folds", "images", "labs_ex"])
def test_tfd_missing_field(tmp_path, drop):
    write_tfd(tmp_path / "TFD" / "TFD_48x48.mat", drop=drop)
    with pytest.raises(DataError, match=f"lacks field.*{drop}"):
        tfd(tmp_path)


def test_tfd_wrong_shape(tmp_path):
    write_tfd(tmp_path / "TFD" / "TFD_48x48.mat", images_shape=(N, 48 * 48))
    with pytest.raises(DataError, match=r"'images' has shape \(300, 2304\)"):
        tfd(tmp_path)
    with pytest.raises(DataError, match="image_size=96"):
        write_tfd(tmp_path / "TFD" / "TFD_96x96.mat")
        tfd(tmp_path, "dataset.image_size=96")


@pytest.mark.parametrize("valid_rows, sizes", [(None, (12, 24)), (2, (1, 1)), (3, (1, 2))])
def test_small_valid_split_divided_for_the_per_epoch_estimate(tmp_path, valid_rows, sizes):
    """Fewer valid rows than parzen_val_select + parzen_val_points (500 + 1000): divided 1:2, at least one each."""
    write_tfd(tmp_path / "TFD" / "TFD_48x48.mat", valid_rows=valid_rows)
    dm = tfd(tmp_path)
    assert dm.parzen_val_sizes() == sizes
    select, points = (sum(len(b) for b in loader) for loader in dm.val_dataloader())
    assert (select, points) == sizes


def test_valid_split_of_one_row_is_refused(tmp_path):
    write_tfd(tmp_path / "TFD" / "TFD_48x48.mat", valid_rows=1)
    with pytest.raises(DataError, match=r"valid split of tfd \(fold 0\) has 1 row: .* needs at least 2"):
        tfd(tmp_path)
