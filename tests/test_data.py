"""The MNIST data module on the real files, and the device-resident batches against a DataLoader."""

import pytest
import torch

from advnets.data import DataError, EpochBatchSampler, build_datamodule
from conftest import compose


@pytest.fixture(scope="module")
def mnist(data_dir):
    dm = build_datamodule(compose(f"paths.data_dir={data_dir}").dataset, seed=0)
    dm.setup("fit")
    return dm


def test_mnist_splits(mnist):
    from torchvision.datasets import MNIST

    s = mnist.splits
    assert [len(s[k]) for k in ("train", "valid", "test")] == [50000, 10000, 10000]
    assert s["train"].shape[1:] == (1, 28, 28) and s["train"].dtype == torch.float32
    assert s["train"].min() == 0 and s["train"].max() == 1
    raw = MNIST(mnist.cfg["root"], train=True).data
    assert torch.equal(s["valid"][0, 0], raw[50000].float() / 255)  # valid = training rows 50000..59999
    assert torch.equal(s["train"][-1, 0], raw[49999].float() / 255)


def loader_batches(dm, on_device: bool, epoch: int):
    dm.cfg = {**dm.cfg, "on_device": on_device, "batch_size": 128}
    dm.batch_size = 128
    loader = dm.train_dataloader()
    loader.batch_sampler.set_epoch(epoch)
    return list(loader)


def test_device_batches_equal_dataloader_batches(mnist):
    for epoch in (0, 3):
        tensor_path = loader_batches(mnist, True, epoch)
        dataloader_path = loader_batches(mnist, False, epoch)
        assert len(tensor_path) == len(dataloader_path) == 391  # 50000 / 128, the last partial batch kept
        assert tensor_path[-1].shape[0] == 50000 - 390 * 128 == dataloader_path[-1].shape[0]
        for a, b in zip(tensor_path, dataloader_path):
            assert torch.equal(a, b)
    # A new permutation every epoch, and every training row exactly once per epoch.
    assert not torch.equal(loader_batches(mnist, True, 0)[0], loader_batches(mnist, True, 1)[0])
    total = torch.cat(loader_batches(mnist, True, 2)).sum(dim=(1, 2, 3)).sort().values
    assert torch.allclose(total, mnist.splits["train"].sum(dim=(1, 2, 3)).sort().values)


@pytest.mark.parametrize("n, batch", [(1001, 100), (50_001, 100), (7, 3), (12, 5)])
def test_training_ranks_take_the_same_number_of_batches(n, batch):
    """Every rank of every world size takes as many batches as its len() says and as the other ranks (under DDP a
    rank with one batch more would wait for ever in that step's all-reduce: 50,001 rows on 2 GPUs gave 251 against
    250), every row at least once, and fewer than world_size rows twice (taken again from the permutation's start);
    one process takes every row once."""
    for world in (1, 2, 3, 4):
        ranks = [EpochBatchSampler(n, batch, seed=3, rank=r, world_size=world) for r in range(world)]
        for s in ranks:
            s.set_epoch(5)
        batches = [list(s) for s in ranks]
        assert len({len(b) for b in batches}) == 1 and [len(b) for b in batches] == [len(s) for s in ranks], world
        assert len({sum(len(i) for i in b) for b in batches}) == 1, world  # and the same number of rows
        rows = torch.cat([torch.cat(b) for b in batches]).tolist()
        assert set(rows) == set(range(n)) and len(rows) - n == (-n) % world, world


def test_evaluation_ranks_share_the_points_disjointly():
    """pad=False (the Parzen points, gathered by the metric): every point exactly once."""
    ranks = [EpochBatchSampler(1001, 100, seed=3, rank=r, world_size=2, shuffle=False, pad=False) for r in (0, 1)]
    idx = [torch.cat(list(s)) for s in ranks]
    assert len(idx[0]) == 501 and len(idx[1]) == 500 and [len(s) for s in ranks] == [6, 5]
    assert sorted(torch.cat(idx).tolist()) == list(range(1001))


def test_tensor_batches_move_each_epochs_indices_to_the_data_once():
    """One copy of the rank's share of the permutation to the data's device per epoch, not one per batch (on a
    GPU each is a copy from the host and a wait)."""
    from torch.overrides import TorchFunctionMode

    from advnets.data import TensorBatches

    class CountMoves(TorchFunctionMode):
        moves = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.Tensor.to:
                CountMoves.moves += 1
            return func(*args, **(kwargs or {}))

    data = torch.arange(50.0)
    loader = TensorBatches(data, EpochBatchSampler(50, 10, seed=0))
    with CountMoves():
        batches = list(loader)
    assert len(batches) == 5 and torch.equal(torch.cat(batches).sort().values, data)
    assert CountMoves.moves == 1


def test_missing_mnist_names_the_folder(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv

    monkeypatch.setattr(tv.MNIST, "mirrors", ["http://127.0.0.1:9/"])  # torchvision would download when online
    cfg = compose(f"paths.data_dir={tmp_path}", "dataset.raw_mirror=null").dataset
    dm = build_datamodule(cfg, seed=0)
    with pytest.raises(DataError, match=str(tmp_path / "MNIST" / "raw")) as e:
        dm.prepare_data()
    assert "train-images-idx3-ubyte.gz" in str(e.value) and "t10k-labels-idx1-ubyte.gz" in str(e.value)


@pytest.mark.parametrize("on_device", [True, False])
def test_training_loader_resumes_mid_epoch(mnist, on_device):
    """Lightning saves the training loader's state_dict() with a checkpoint and gives it back on a mid-epoch
    resume: the new loader then yields the rest of that epoch's batches, and the next epoch in full."""
    first = loader_batches(mnist, on_device, 3)
    loader = mnist.train_dataloader()
    loader.batch_sampler.set_epoch(3)
    taken = iter(loader)
    for _ in range(5):
        next(taken)
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches_taken": 5}
    resumed = mnist.train_dataloader()
    resumed.load_state_dict(state)
    resumed.batch_sampler.set_epoch(3)  # as Lightning does before the epoch
    rest = list(resumed)
    assert len(rest) == len(first) - 5 and all(torch.equal(a, b) for a, b in zip(rest, first[5:]))
    assert resumed.state_dict() == {"epoch": 3, "batches_taken": len(first)}
    resumed.batch_sampler.set_epoch(4)
    assert len(list(resumed)) == len(first)
