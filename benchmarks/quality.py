#!/usr/bin/env python
"""Time the sample-quality metrics (advnets/metrics/quality.py) on MNIST: `python benchmarks/quality.py`.

Full set (eval.py and the end of training): 10,000 samples against the 10,000 test images: the
classifier on the samples, FID, KID (quality.kid_subsets subsets of quality.kid_subset_size), the
classifier's Inception Score and the coverage; the test images' features are computed once per
process and timed apart. Per validation epoch: quality.val_samples samples against the 10,000
validation images, for G and its EMA. Real training images stand in for samples: the cost does not
depend on what the images show. Run with OMP_NUM_THREADS=1 for the one-thread figures. Times are
the process's CPU seconds (on one thread: the wall time on an idle core), so that a busy machine does
not inflate them; the wall time of the whole run is printed at the end.

    python benchmarks/quality.py [--data-dir DIR] [--repeats 3]
    python benchmarks/quality.py --tiny      # a second or so: 500 samples, 5 KID subsets (for tests)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def timed(fn, repeats: int) -> tuple[float, object]:
    """The fastest of `repeats` calls (CPU seconds) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        out = fn()
        best = min(best, time.process_time() - start)
    return best, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("ADVNETS_DATA_DIR", REPO / "data")))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    wall = time.perf_counter()

    import torch
    from omegaconf import OmegaConf

    from advnets.config import mnist_mirror
    from advnets.data.mnist import MNISTDataModule
    from advnets.metrics.mnist_classifier import load_mnist_classifier
    from advnets.metrics.quality import SampleQuality

    # The settings train.py gets on MNIST: conf/quality/default.yaml, its sample counts from conf/dataset/mnist.yaml.
    cfg = OmegaConf.create(
        {
            "dataset": OmegaConf.load(REPO / "conf" / "dataset" / "mnist.yaml"),
            "quality": OmegaConf.load(REPO / "conf" / "quality" / "default.yaml"),
        }
    ).quality
    n_full, n_val, subsets, val_subsets = 10000, int(cfg.val_samples), int(cfg.kid_subsets), int(cfg.val_kid_subsets)
    repeats = args.repeats
    if args.tiny:
        n_full, n_val, subsets, val_subsets, repeats = 500, 200, 5, 2, 1
    splits = MNISTDataModule({"root": str(args.data_dir), "raw_mirror": str(mnist_mirror())}, 0).load_splits()
    samples = splits["train"][torch.randperm(50000, generator=torch.Generator().manual_seed(0))[:n_full]]
    classifier = load_mnist_classifier()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); features: the MNIST classifier")

    def quality(subsets: int) -> SampleQuality:
        return SampleQuality(classifier, subsets, int(cfg.kid_subset_size))

    full = quality(subsets)
    t_real, _ = timed(lambda: full.update_real(splits["test"][:n_full]), 1)

    def one_set(q: SampleQuality, images) -> dict[str, float]:
        times = {}
        start = time.process_time()
        q.update_fake(images)
        times["features"] = time.process_time() - start
        for name, metric in (("FID", q.fid), ("KID", q.kid), ("IS", q.inception_score), ("coverage", q.coverage)):
            q.kid.subset_size = min(q.kid_subset_size, len(images))
            start = time.process_time()
            metric.compute()
            times[name] = time.process_time() - start
        q.reset()
        return times

    runs = [one_set(full, samples) for _ in range(repeats)]
    best = {k: min(r[k] for r in runs) for k in runs[0]}
    total = sum(best.values())
    print(
        f"full set: {n_full} samples against {n_full} test images: {total:.2f} s "
        f"(samples' features {best['features']:.2f} s, FID {best['FID']:.3f} s, KID {best['KID']:.2f} s "
        f"({subsets} subsets of {min(int(cfg.kid_subset_size), n_full)}), IS {best['IS']:.3f} s, "
        f"coverage {best['coverage']:.3f} s); the test images' features, once: {t_real:.2f} s"
    )

    val = quality(val_subsets)
    t_val_real, _ = timed(lambda: val.update_real(splits["valid"][: max(n_full, n_val)]), 1)
    runs = [one_set(val, samples[:n_val]) for _ in range(repeats)]
    per_g = min(sum(r.values()) for r in runs)
    print(
        f"per validation epoch: {n_val} samples against {max(n_full, n_val)} validation images, KID over "
        f"{val_subsets} subsets: {per_g:.2f} s per generator, {2 * per_g:.2f} s for G and its EMA; the validation "
        f"images' features, once per "
        f"process: {t_val_real:.2f} s"
    )
    print(f"(CPU seconds; the whole run took {time.perf_counter() - wall:.0f} s of wall time)")


if __name__ == "__main__":
    main()
