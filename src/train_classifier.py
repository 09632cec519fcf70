"""Train the fixed MNIST classifier of the sample-quality metrics: `python src/train_classifier.py`.

Trains advnets.metrics.mnist_classifier on MNIST training rows 0..49,999 (Adam, 5 epochs, seed 0,
one CPU thread: a few minutes), prints its accuracy on the official test set after every epoch and
its SHA-256, and writes it to --out (default outputs/mnist_classifier.pt, so that the committed file
is never overwritten by accident). The committed file, src/advnets/metrics/mnist_classifier.pt, was
made by this command with OMP_NUM_THREADS=1; another torch version or thread count may give other
bytes (and so another SHA-256) with the same accuracy to within a few test images.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from advnets.config import REPO_ROOT, mnist_mirror
from advnets.errors import UserError, user_errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("ADVNETS_DATA_DIR", REPO_ROOT / "data")),
        help="holds MNIST/raw (as paths.data_dir)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "outputs" / "mnist_classifier.pt")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1:
        raise UserError(f"--epochs must be >= 1, got {args.epochs}")

    import torch

    from advnets.data.mnist import MNISTDataModule
    from advnets.metrics.mnist_classifier import SHA256, WEIGHTS, accuracy, sha256, train_mnist_classifier

    data = MNISTDataModule({"root": str(args.data_dir), "raw_mirror": str(mnist_mirror())}, args.seed)
    images, labels = data.load_splits(), data.load_labels()

    def report(epoch, model):
        print(f"epoch {epoch}: test accuracy {accuracy(model, images['test'], labels['test']):.4f}", flush=True)

    model = train_mnist_classifier(
        images["train"], labels["train"], epochs=args.epochs, seed=args.seed, after_epoch=report
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    digest = sha256(args.out)
    print(
        f"test accuracy {accuracy(model, images['test'], labels['test']):.4f} "
        f"(validation rows 50000..59999: {accuracy(model, images['valid'], labels['valid']):.4f})"
    )
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB), SHA-256 {digest}")
    print(
        f"the committed {WEIGHTS.name}: "
        + (
            "the same bytes"
            if digest == SHA256
            else f"other bytes (SHA-256 {SHA256}); to replace it, copy the file there and pin the new SHA-256 in "
            f"advnets/metrics/mnist_classifier.py"
        ),
        file=sys.stderr,
    )


if __name__ == "__main__":
    with user_errors():
        main()
