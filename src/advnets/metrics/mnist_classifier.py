"""The fixed MNIST feature extractor of the sample-quality metrics (advnets/metrics/quality.py).

Inception v3 on 28x28 digits is a poor fit and needs a download, so MNIST's FID, KID, Inception Score
and mode coverage are computed on a small classifier shared by everyone: its weights are committed
beside this file (`mnist_classifier.pt`) with their SHA-256 pinned here, and a file that does not
match is refused, so that every user's numbers come from the same features and are comparable.
They are classifier-based figures, not comparable with the Inception FIDs of papers.

`python src/train_classifier.py` made the file: `train_mnist_classifier` on MNIST training rows
0..49,999 (the GAN's training rows), Adam, 5 epochs, seed 0; its accuracy on the official test set
is printed by the script and checked by tests/test_quality.py.

The net is three strided convolutions (no pooling: several times faster on a CPU than pooled ones
of the same accuracy), so the per-epoch metrics stay cheap. Features: the 128 ReLU units before the
last layer; predictions: its 10 logits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from advnets.errors import UserError
from advnets.nets import eval_mode

WEIGHTS = Path(__file__).with_name("mnist_classifier.pt")
SHA256 = "f17520213fb5edd5d29496205ad9af09a451c44a396b21686c48d199c65b52ac"
FEATURES = 128
CLASSES = 10


class MNISTClassifier(nn.Module):
    """Images (N, 1, 28, 28) or (N, 784) with pixels in [0, 1] (the data modules' scale) -> 10 logits."""

    num_features = FEATURES
    num_classes = CLASSES

    def __init__(self) -> None:
        super().__init__()

        def conv(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, kernel, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.body = nn.Sequential(
            *conv(1, 16, 4),
            *conv(16, 32, 4),
            *conv(32, 64, 3),  # 14x14, 7x7, 4x4
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(64 * 4 * 4, FEATURES),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURES, CLASSES)

    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The 128 features and the 10 logits of each image, from one pass."""
        features = self.body(images.reshape(-1, 1, 28, 28).float())
        return features, self.head(features)

    def forward(self, images: Tensor) -> Tensor:
        return self.features_and_logits(images)[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_mnist_classifier(path: Path | str = WEIGHTS, expected_sha256: str = SHA256) -> MNISTClassifier:
    """The committed classifier in eval mode, without gradients; refused when the file's SHA-256 differs."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"MNIST classifier weights not found: {path}; restore them with `git checkout -- {path.name}` "
            f"in {path.parent}"
        )
    found = sha256(path)
    if found != expected_sha256:
        raise UserError(
            f"MNIST classifier weights {path} have SHA-256 {found[:16]}..., expected "
            f"{expected_sha256[:16]}...: the file was modified; restore it (git checkout) so that "
            f"FIDs stay comparable"
        )
    model = MNISTClassifier()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch: int = 2000) -> float:
    """The fraction of `images` whose largest logit is their label."""
    with eval_mode(model):
        correct = sum(
            int((model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
            for i in range(0, len(images), batch)
        )
    return correct / len(images)


def train_mnist_classifier(
    images: Tensor,
    labels: Tensor,
    epochs: int = 5,
    batch_size: int = 128,
    max_lr: float = 3e-3,
    seed: int = 0,
    after_epoch: Callable[[int, MNISTClassifier], None] | None = None,
) -> MNISTClassifier:
    """A fresh classifier trained with Adam and a one-cycle lr schedule on (images, labels).

    Every epoch reshuffles from `seed` and moves each image by up to one pixel along each axis: strided
    convolutions are not shift invariant by themselves, and the shifts are worth ~0.3% test accuracy.
    """
    torch.manual_seed(seed)
    model = MNISTClassifier()
    optimizer = torch.optim.Adam(model.parameters())
    steps = epochs * -(-len(images) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(len(images), generator=gen).split(batch_size):
            loss = nn.functional.cross_entropy(model(shifted(images[idx], gen)), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if after_epoch is not None:
            after_epoch(epoch, model)
    return model.eval()


def shifted(images: Tensor, generator: torch.Generator, k: int = 1) -> Tensor:
    """Each image (N, 1, H, W) moved by a random whole number of pixels in [-k, k] along each axis, zeros shifted in."""
    n, _, h, w = images.shape
    padded = nn.functional.pad(images, (k, k, k, k))
    dy, dx = torch.randint(0, 2 * k + 1, (2, n, 1), generator=generator)
    rows, cols = torch.arange(h) + dy, torch.arange(w) + dx  # (N, H), (N, W): each image's window
    return padded[torch.arange(n)[:, None, None], 0, rows[:, :, None], cols[:, None, :]].unsqueeze(1)
