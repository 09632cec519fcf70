"""Data on the real line with a known density (the paper's Figure 1 as an experiment): fresh samples per batch.

Algorithm 1 samples a fresh minibatch from p_data for every D step. Here p_data is a mixture of
Gaussians (one component: a Gaussian), so every batch is drawn anew, and the density, its CDF and
the mass of any interval are known exactly: advnets.metrics.theory measures p_g, D* and the JSD
against them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from advnets.data.batches import DataError, EpochBatchSampler, TensorBatches, _ResumableBatches
from advnets.seeds import derive_seed


class GaussianMixture:
    """sum_i w_i N(mean_i, std_i^2) on the real line; weights are normalised."""

    def __init__(self, components: Sequence[Mapping[str, float]]):
        if not components:
            raise DataError("dataset.density needs at least one component {weight, mean, std}")
        for c in components:
            if float(c.get("std", 0)) <= 0 or float(c.get("weight", 0)) <= 0:
                raise DataError(f"dataset.density: every component needs weight > 0 and std > 0, got {dict(c)}")
        weights = torch.tensor([float(c["weight"]) for c in components], dtype=torch.float64)
        self.weights = weights / weights.sum()
        self.means = torch.tensor([float(c["mean"]) for c in components], dtype=torch.float64)
        self.stds = torch.tensor([float(c["std"]) for c in components], dtype=torch.float64)

    def pdf(self, x: Tensor) -> Tensor:
        z = (x.double()[..., None] - self.means) / self.stds
        return (self.weights * torch.exp(-0.5 * z * z) / (self.stds * math.sqrt(2 * math.pi))).sum(-1)

    def cdf(self, x: Tensor) -> Tensor:
        z = (x.double()[..., None] - self.means) / self.stds
        return (self.weights * 0.5 * torch.erfc(-z / math.sqrt(2))).sum(-1)

    def bin_masses(self, edges: Tensor) -> Tensor:
        """P(edges[i] <= x < edges[i+1]); the mass beyond the grid is added to its end bins."""
        cdf = self.cdf(edges)
        masses = cdf.diff()
        masses[0] += cdf[0]
        masses[-1] += 1 - cdf[-1]
        return masses

    def mean(self) -> float:
        return float((self.weights * self.means).sum())

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n draws as an (n, 1) float tensor."""
        component = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        normal = torch.randn(n, generator=generator, dtype=torch.float64)
        return (self.means[component] + self.stds[component] * normal).float()[:, None]


def grid_edges(grid: Mapping[str, Any]) -> Tensor:
    """The edges of `dataset.grid`'s bins ({low, high, bins}), float64: the data module's grid points and
    the theory metrics' quadrature share them."""
    if not float(grid["low"]) < float(grid["high"]) or int(grid["bins"]) < 2:
        raise DataError(f"dataset.grid needs low < high and bins >= 2, got {dict(grid)}")
    return torch.linspace(float(grid["low"]), float(grid["high"]), int(grid["bins"]) + 1, dtype=torch.float64)


class FreshBatches(_ResumableBatches):
    """`batches_per_epoch` minibatches, each drawn from the density with a seed of (seed, epoch, batch row).

    The batch sampler only counts (it hands out row numbers 0..n-1, each rank its own); the rows
    name the seeds, so every rank draws its own data and a run resumed mid-epoch draws what it would have.
    """

    def __init__(self, density: GaussianMixture, batch_sampler: EpochBatchSampler):
        self.density = density
        self.batch_sampler = batch_sampler
        self.sampler = batch_sampler

    def __iter__(self) -> Iterator[Tensor]:
        seed, epoch = self.batch_sampler.seed, self.batch_sampler.epoch
        return self._counted(
            self.density.sample(len(rows), torch.Generator().manual_seed(derive_seed(seed, epoch, int(rows[0]))))
            for rows in self.batch_sampler
        )

    def __len__(self) -> int:
        return len(self.batch_sampler)


class LineDataModule(pl.LightningDataModule):
    """Fresh training batches from `dataset.density`; validation and test hand the grid's bin centres once."""

    def __init__(self, cfg: dict[str, Any], seed: int):
        super().__init__()
        self.cfg = dict(cfg)
        self.seed = int(seed)
        self.batch_size = int(self.cfg.get("batch_size", 100))
        self.density = GaussianMixture(self.cfg["density"])
        self.edges = grid_edges(self.cfg["grid"])
        if int(self.cfg.get("batches_per_epoch", 0)) < 1:
            raise DataError(f"dataset.batches_per_epoch must be >= 1, got {self.cfg.get('batches_per_epoch')}")

    @property
    def centres(self) -> Tensor:
        return (self.edges[:-1] + self.edges[1:]) / 2

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> FreshBatches:
        rank, world = self._rank_world()
        n = int(self.cfg["batches_per_epoch"]) * self.batch_size * world
        return FreshBatches(self.density, EpochBatchSampler(n, self.batch_size, self.seed, rank, world, shuffle=False))

    def _grid_points(self) -> TensorBatches:
        # The evaluation needs no data (p_data is known); one batch of the bin centres runs Lightning's loop.
        points = self.centres.float()[:, None]
        return TensorBatches(points, EpochBatchSampler(len(points), len(points), 0, shuffle=False))

    def val_dataloader(self) -> TensorBatches:
        return self._grid_points()

    def test_dataloader(self) -> TensorBatches:
        return self._grid_points()

    def pixel_mean(self) -> Tensor:
        """The mean of the data (the image data sets' mean image), shape (1,)."""
        return torch.tensor([self.density.mean()])
