"""Data sets held as tensors, batched by index slices of a per-epoch permutation.

The paper's data sets are small (MNIST 50,000 x 784 floats is 157 MB), so the whole training split
lives as one tensor on the training device and a batch is `x[indices]`: no worker processes, no
per-sample collation, no host-to-device copy per step. `dataset.on_device=false` feeds the very same
index batches through a standard DataLoader instead, for data that would not fit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from advnets.errors import UserError


class DataError(UserError):
    """Missing or malformed data files; the message names the path and what to do."""


class EpochBatchSampler:
    """Index batches of a permutation drawn from (seed, epoch); ranks take interleaved shares.

    Rank r of w gets positions r, r + w, ... of the epoch's permutation, and the last partial batch is kept (the
    paper's code drops nothing either). Every rank gets the same number of rows, ceil(n / w), and so of batches: when
    w does not divide n, the permutation is extended by its own first rows (as torch's DistributedSampler pads), so
    that no rank takes a training step the others do not (under DDP that step's all-reduce would wait for ever). One
    process (w = 1) takes every row exactly once. `pad=False` (evaluation, whose metrics gather every rank's share
    and whose loop makes no collective call per batch): disjoint shares covering every row once, which may differ by
    one row. A run resumed mid-epoch (`resume_at`) takes the rest of that epoch's batches, in the same order.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        pad: bool = True,
    ):
        # batch_size >= 1: checked with the run config (advnets.config)
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.pad = rank, world_size, shuffle, pad
        self.epoch = 0
        self.skip = 0  # batches at the start of `epoch` already trained on before a resume
        # Lightning calls set_epoch on `loader.sampler` and `loader.batch_sampler.sampler`, not on
        # the batch sampler itself; pointing `sampler` here makes it reach us through either path.
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.skip = 0
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, batches_taken: int) -> None:
        self.epoch, self.skip = int(epoch), int(batches_taken)

    def indices(self) -> Tensor:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.arange(self.n)
        if self.pad:  # fewer than world_size rows, from the start of the permutation
            order = torch.cat([order, order[: self.share() * self.world_size - self.n]])
        return order[self.rank :: self.world_size]

    def share(self) -> int:
        """The rows this rank takes per epoch: the same on every rank (pad), else its own of the n rows."""
        return -(-self.n // self.world_size) if self.pad else len(range(self.rank, self.n, self.world_size))

    def batches(self, device: torch.device | None = None) -> Iterator[Tensor]:
        """This epoch's index batches (after a resume, the rest of them), on `device`: the rank's share is moved
        there once per epoch, not batch by batch (each copy from the host would be a wait on a GPU). A generator:
        the permutation is drawn at the first batch, after Lightning has set the epoch."""
        indices = self.indices()
        if device is not None:
            indices = indices.to(device)
        yield from indices.split(self.batch_size)[self.skip :]

    def __iter__(self) -> Iterator[Tensor]:
        return self.batches()

    def __len__(self) -> int:
        return -(-self.share() // self.batch_size)


class _ResumableBatches:
    """Counts the batches handed out in the current epoch, for Lightning to save in checkpoints.

    Lightning saves `state_dict()` of the training loader with every checkpoint and, when it resumes
    mid-epoch, gives it back to `load_state_dict()`; the sampler then skips the batches already
    trained on. (Training loaders have a length, so Lightning fetches no batch ahead: the count at a
    batch's end includes that batch and no other.)
    """

    batch_sampler: EpochBatchSampler
    taken = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.epoch, "batches_taken": self.taken}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.resume_at(state["epoch"], state["batches_taken"])

    def _counted(self, batches: Iterator) -> Iterator:
        self.taken = self.batch_sampler.skip
        for batch in batches:
            self.taken += 1
            yield batch


class TensorBatches(_ResumableBatches):
    """An iterable of `data[idx]` over a batch sampler: the device-resident DataLoader."""

    def __init__(self, data: Tensor, batch_sampler: EpochBatchSampler):
        self.data = data
        self.batch_sampler = batch_sampler
        self.sampler = batch_sampler

    def __iter__(self) -> Iterator[Tensor]:
        return self._counted(self.data[idx] for idx in self.batch_sampler.batches(self.data.device))

    def __len__(self) -> int:
        return len(self.batch_sampler)


class ResumableDataLoader(_ResumableBatches, DataLoader):
    """The DataLoader path (dataset.on_device=false), resumable mid-epoch like TensorBatches."""

    def __iter__(self) -> Iterator:
        return self._counted(self._batches())

    def _batches(self) -> Iterator:  # a generator, so the sampler runs after Lightning has set the epoch
        yield from DataLoader.__iter__(self)


class _Rows(Dataset):
    def __init__(self, data: Tensor):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Tensor:
        return self.data[i]


class TensorDataModule(pl.LightningDataModule):
    """Splits `train`, `valid`, `test` as float tensors (N, C, H, W); subclasses load them.

    Validation and test each give two loaders, read by the module's Parzen metric: loader 0 holds
    the points sigma is selected on, loader 1 the points it is scored on (see conf/dataset/*.yaml).
    """

    def __init__(self, cfg: dict[str, Any], seed: int):
        super().__init__()
        self.cfg = dict(cfg)
        self.seed = int(seed)
        self.batch_size = int(self.cfg.get("batch_size", 100))
        self.shape = tuple(self.cfg["shape"]) if "shape" in self.cfg else None
        self.splits: dict[str, Tensor] = {}

    # --- for subclasses --------------------------------------------------------------------------
    def load_splits(self) -> dict[str, Tensor]:
        raise NotImplementedError

    # --- Lightning -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self.load_splits()
        if stage == "fit":
            self.parzen_val_sizes()  # a valid split too small for the per-epoch estimate is refused here

    def parzen_val_sizes(self) -> tuple[int, int]:
        """The valid rows the per-epoch estimate (val/parzen_ll) picks sigma on, and the next ones it scores.

        `parzen_val_select` and `parzen_val_points` rows; a valid split with fewer rows than the two
        together is divided in the same proportion (500 and 1000: the first third picks sigma, the
        other two thirds are scored), at least one row each. Fewer than 2 rows cannot be divided.
        """
        n = len(self.splits["valid"])
        select, points = int(self.cfg["parzen_val_select"]), int(self.cfg["parzen_val_points"])
        if n >= select + points:
            return select, points
        if n < 2:
            fold = f" (fold {self.cfg['fold']})" if "fold" in self.cfg else ""
            raise DataError(
                f"the valid split of {self.cfg.get('name')}{fold} has {n} row{'' if n == 1 else 's'}: "
                f"the per-epoch Parzen estimate needs at least 2 (sigma is picked on some, the others are "
                f"scored); use a fold or data set with a larger valid split"
            )
        select = min(max(1, round(n * select / (select + points))), n - 1)
        return select, n - select

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def train_dataloader(self):
        rank, world = self._rank_world()
        sampler = EpochBatchSampler(len(self.splits["train"]), self.batch_size, self.seed, rank, world)
        if self.cfg.get("on_device", True):
            self.splits["train"] = self.splits["train"].to(self._device())
            return TensorBatches(self.splits["train"], sampler)
        return ResumableDataLoader(
            _Rows(self.splits["train"]),
            batch_sampler=sampler,
            num_workers=int(self.cfg.get("num_workers", 0)),
            pin_memory=self._device().type == "cuda",
        )

    def _points(self, points: Tensor) -> TensorBatches:
        # Every rank scores its own share; the Parzen metric gathers the shares before computing.
        rank, world = self._rank_world()
        sampler = EpochBatchSampler(
            len(points), int(self.cfg.get("eval_batch_size", 1000)), 0, rank, world, shuffle=False, pad=False
        )
        return TensorBatches(points, sampler)

    def val_dataloader(self):
        n_select, n_points = self.parzen_val_sizes()
        valid = self.splits["valid"]
        return [self._points(valid[:n_select]), self._points(valid[n_select : n_select + n_points])]

    def test_dataloader(self):
        n_select = self.cfg.get("parzen_select")
        select = self.splits["valid"] if n_select is None else self.splits["valid"][: int(n_select)]
        return [self._points(select), self._points(self.splits["test"])]

    def pixel_mean(self) -> Tensor:
        """The mean training image: G's sigmoid output bias starts at its logit."""
        self.setup("fit")
        return self.splits["train"].mean(dim=0)
