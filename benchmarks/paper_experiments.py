#!/usr/bin/env python
"""Seconds per 100 updates of each paper experiment (conf/experiment/*), full-size nets.

Data: random images of each data set's shape written in the real file formats (timing does not
depend on pixel values). Times `--updates` training iterations (one D and one G update each) after
`--warmup`, through the real Trainer and module, and prints the rate scaled to 100 updates.

    python benchmarks/paper_experiments.py [--device cuda] [--updates 10] [--only tfd_stage1 ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

EXPERIMENTS = ["mnist", "tfd_stage1", "tfd_stage2", "cifar10_fc", "cifar10_conv"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--updates", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=EXPERIMENTS)
    args = ap.parse_args()

    import pytorch_lightning as pl
    import torch
    from omegaconf import OmegaConf

    import conftest
    from advnets.data import build_datamodule
    from advnets.module import GAN
    from test_cifar10 import write_cifar
    from test_tfd import write_tfd

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, i):
            if i == args.warmup:
                if args.device == "cuda":
                    torch.cuda.synchronize()
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, i):
            if i == args.warmup + args.updates - 1:
                if args.device == "cuda":
                    torch.cuda.synchronize()
                self.seconds = time.perf_counter() - self.start

    n = args.warmup + args.updates
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        import test_tfd

        test_tfd.N, test_tfd.N_UNLABELED = 128 * n + 180, 128 * n  # enough unlabeled rows for n batches
        write_tfd(root / "TFD" / "TFD_48x48.mat")
        write_cifar(root, per_batch=26 * n)
        stage1 = None
        for name in args.only:
            extra = [f"paths.data_dir={root}", "logger=none"]
            if name.startswith("cifar10"):
                extra += ["dataset.download=false", "dataset.check_md5=false", f"dataset.n_train={104 * n}"]
            if name == "mnist":
                extra += [f"dataset.raw_mirror={conftest.MNIST_RAW}"]
            if name == "tfd_stage2":
                extra += [f"model.generator.init_from={stage1}"]
            cfg = conftest.compose(f"experiment={name}", *extra, output_dir=root / name)
            module = GAN(OmegaConf.to_container(cfg, resolve=True))
            clock = Clock()
            trainer = pl.Trainer(
                max_steps=2 * n,
                limit_val_batches=0,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                accelerator=args.device,
                devices=1,
                default_root_dir=root / name,
                callbacks=[clock],
            )
            trainer.fit(module, datamodule=build_datamodule(cfg.dataset, cfg.seed))
            if name == "tfd_stage1":
                stage1 = root / "stage1.ckpt"
                trainer.save_checkpoint(stage1)
            print(
                f"{name:14s} batch {cfg.dataset.batch_size:4d}  {100 * clock.seconds / args.updates:8.2f} s / 100 updates",
                flush=True,
            )


if __name__ == "__main__":
    main()
