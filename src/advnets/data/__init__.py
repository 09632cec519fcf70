"""Batches of real data: one DataModule per data set (images as tensors; the real line sampled fresh)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from advnets.data.batches import DataError, EpochBatchSampler, TensorBatches, TensorDataModule


def build_datamodule(cfg: Mapping[str, Any], seed: int):
    """The DataModule named by `cfg.name` (conf/dataset/<name>.yaml)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    name = cfg.get("name")
    if name == "mnist":
        from advnets.data.mnist import MNISTDataModule

        return MNISTDataModule(cfg, seed)
    if name == "tfd":
        from advnets.data.tfd import TFDDataModule

        return TFDDataModule(cfg, seed)
    if name == "cifar10":
        from advnets.data.cifar10 import CIFAR10DataModule

        return CIFAR10DataModule(cfg, seed)
    if name == "line":
        from advnets.data.line import LineDataModule

        return LineDataModule(cfg, seed)
    raise DataError(f"unknown dataset {name!r}: choose mnist, tfd, cifar10 or line")


__all__ = ["DataError", "EpochBatchSampler", "TensorBatches", "TensorDataModule", "build_datamodule"]
