"""Sample quality as GAN papers measure it since 2017: FID, KID, Inception Score and mode coverage.

FID (Heusel et al. 2017), KID (Binkowski et al. 2018, mean and std over random subsets) and the
Inception Score (Salimans et al. 2016) are torchmetrics' own implementations; mode coverage is
`ModeCoverage` below: the histogram of the predicted classes of generated images, how many classes
hold at least half their uniform share, and KL(histogram || uniform). All of them look at one fixed
network (`quality.features`):

- `mnist_classifier` (MNIST's default): the project's committed classifier (mnist_classifier.py).
  These are *classifier-based* figures: comparable between runs of this project, never with the
  Inception FIDs of papers;
- `inception` (CIFAR-10's default): torchmetrics' Inception v3, the standard FID. Its weights come
  from `quality.inception_weights` or torch's cache (downloaded when online); offline without them,
  `inception_weights` raises a UserError that says where to put the file;
- TFD has no shared network: no sample-quality metrics (`features_for` gives None).

The network runs once per image: its features and logits are handed to the torchmetrics metrics
through a pass-through `feature` module (each metric would otherwise run the network again). The
real images' features are kept across resets (torchmetrics' `reset_real_features=False`): a
reference set is embedded once, and every later compute (each validation epoch, G and its EMA) only
embeds the samples.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchmetrics
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from advnets.errors import UserError

# quality.features=auto: the network each data set is measured with (none for TFD).
AUTO_FEATURES = {"mnist": "mnist_classifier", "cifar10": "inception"}
LABELS = {
    "mnist_classifier": "MNIST classifier features (classifier-based; not comparable with Inception FIDs)",
    "inception": "Inception v3 features (the standard FID)",
}
# torch-fidelity's Inception weights, which torchmetrics downloads into torch's cache when online.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


def features_for(features: str | None, dataset: str) -> str | None:
    """`quality.features` resolved for `dataset`: auto gives the data set's network (None: no metrics)."""
    if features == "auto":
        return AUTO_FEATURES.get(dataset)
    if features is not None and features not in LABELS:
        raise UserError(f"quality.features must be auto, {', '.join(LABELS)} or null, got {features!r}")
    return features


def build_extractor(features: str, inception_weights: str | None = None) -> nn.Module:
    """The network named by `features`, in eval mode: `features_and_logits(images)` and `num_features`."""
    if features == "mnist_classifier":
        from advnets.metrics.mnist_classifier import load_mnist_classifier

        return load_mnist_classifier()
    return InceptionFeatures(inception_weights_path(inception_weights))


def inception_weights_path(path: str | None) -> Path:
    """The Inception weights file: `path`, else torch's cache, downloaded there when online."""
    if path:
        found = Path(str(path)).expanduser()
        if not found.is_file():
            raise UserError(f"Inception weights not found: {found} (quality.inception_weights)")
        return found
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not cached.is_file():
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(INCEPTION_URL, str(cached), progress=False)
        except Exception as e:  # offline: URLError, socket errors, HTTP errors
            raise UserError(
                f"the Inception FID needs {INCEPTION_FILE}, which cannot be downloaded here "
                f"({type(e).__name__}): put it in {cached.parent}/ or pass "
                f"quality.inception_weights=PATH (or quality.features=null to skip these metrics)"
            ) from None
    return cached


class InceptionFeatures(nn.Module):
    """torchmetrics' Inception v3: the 2048 pool features and the 1008 logits of each image, in one pass.

    Images of any scale are shown to it as `figures.display` shows them (per-image min-max to [0, 1]
    unless already there), then as 0..255 bytes: the CIFAR-10 preprocessing of the paper removes each
    image's mean and scale, so this is the closest we get to the original pixels, for real and
    generated images alike.
    """

    num_features = 2048
    batch_size = 100  # images of 299 x 299: 1,000 at once would need ~6 GB of activations

    def __init__(self, weights: Path):
        super().__init__()
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            self.net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=["2048", "logits_unbiased"],
                feature_extractor_weights_path=str(weights),
            )
        except ModuleNotFoundError:
            raise UserError(
                "the Inception FID needs torch-fidelity: pip install torch-fidelity "
                "(or quality.features=null to skip these metrics)"
            ) from None

    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        from advnets.figures import display

        x = display(images)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        # NoTrainInceptionV3.forward returns only the first feature; this is its pass for all of them.
        features, logits = self.net._torch_fidelity_forward((x * 255).round().to(torch.uint8))
        return features.reshape(len(x), -1), logits.reshape(len(x), -1)


class _Given(nn.Module):
    """The `feature` module of the torchmetrics metrics here: the features were computed already."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


@dataclass  # not frozen: torchmetrics rebuilds dataclasses that compute() returns, field by field
class CoverageResult:
    """histogram: the fraction of samples predicted as each class; covered: the classes holding at least
    `min_share` of them; kl_uniform: KL(histogram || uniform) in nats (0: every class equally often)."""

    histogram: list[float]
    covered: int
    kl_uniform: float


class ModeCoverage(torchmetrics.Metric):
    """Mode coverage from a classifier's predictions: `update(logits)`, `compute()` -> CoverageResult.

    A class counts as covered when at least `min_share` of the samples are predicted as it; the
    default is half the uniform share (5% for 10 classes; on MNIST's test set the rarest digit has 8.9%).
    """

    is_differentiable = False
    full_state_update = False
    counts: Tensor

    def __init__(self, num_classes: int, min_share: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.min_share = 0.5 / self.num_classes if min_share is None else float(min_share)
        self.add_state("counts", torch.zeros(self.num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor) -> None:
        self.counts += torch.bincount(logits.argmax(1), minlength=self.num_classes)[: self.num_classes]

    def compute(self) -> CoverageResult:
        total = int(self.counts.sum())
        if total == 0:
            raise ValueError("ModeCoverage.compute: no predictions given to update()")
        share = self.counts.double() / total
        kl = float(sum(p * math.log(p * self.num_classes) for p in share.tolist() if p > 0))
        return CoverageResult(share.tolist(), int((share >= self.min_share).sum()), kl)


@dataclass(frozen=True)
class QualityResult:
    """One set of samples against the reference images. fid; kid, kid_std: mean and std over subsets;
    inception_score, inception_score_std: over 10 splits; the coverage fields for a classifier (else None)."""

    fid: float
    kid: float
    kid_std: float
    inception_score: float
    inception_score_std: float
    histogram: list[float] | None
    classes_covered: int | None
    class_kl: float | None
    n_samples: int
    n_real: int
    kid_subset_size: int

    def logged(self, prefix: str) -> dict[str, float]:
        """The scalars logged per epoch, e.g. {prefix}fid with prefix `val/` or `val/ema_`."""
        keys = ("fid", "kid", "kid_std", "inception_score", "classes_covered", "class_kl")
        return {f"{prefix}{k}": float(getattr(self, k)) for k in keys if getattr(self, k) is not None}

    def as_dict(self) -> dict:
        return asdict(self)


class SampleQuality(nn.Module):
    """FID, KID, Inception Score and (for the data set's own classifier) mode coverage of samples against real images.

    `update_real(images)` embeds reference images (kept across `reset`); `update_fake(images)` the
    samples; `compute()` gives a QualityResult; `reset()` forgets the samples only. KID's and the
    Inception Score's random subsets are drawn from `seed` (the global RNG is left as it was), so
    the same samples give the same figures.
    """

    def __init__(self, extractor: nn.Module, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0):
        super().__init__()
        self.extractor = extractor
        given = _Given(int(extractor.num_features))
        self.fid = FrechetInceptionDistance(feature=given, reset_real_features=False)
        with warnings.catch_warnings():  # "will save all extracted features in buffer": 5 MB for 10,000 MNIST samples
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            self.kid = KernelInceptionDistance(
                feature=given, subsets=int(kid_subsets), subset_size=int(kid_subset_size), reset_real_features=False
            )
            self.inception_score = InceptionScore(feature=_Given(0))
        # Coverage counts the classes of the data set: only a network trained on them has its own (MNIST's).
        classes = getattr(extractor, "num_classes", None)
        self.coverage = ModeCoverage(classes) if classes else None
        self.kid_subset_size = int(kid_subset_size)
        self.seed = int(seed)

    @property
    def has_real(self) -> bool:
        """Whether reference images were given (in this process)."""
        return int(self.fid.real_features_num_samples) > 0

    @torch.no_grad()
    def _embed(self, images: Tensor) -> tuple[Tensor, Tensor]:
        device = next(self.extractor.parameters()).device
        batch = getattr(self.extractor, "batch_size", 1000)
        parts = [
            self.extractor.features_and_logits(images[i : i + batch].to(device)) for i in range(0, len(images), batch)
        ]
        return torch.cat([f for f, _ in parts]), torch.cat([lg for _, lg in parts])

    def update_real(self, images: Tensor) -> None:
        features, _ = self._embed(images)
        self.fid.update(features.double(), real=True)
        self.kid.update(features, real=True)

    def update_fake(self, images: Tensor) -> None:
        features, logits = self._embed(images)
        self.fid.update(features.double(), real=False)
        self.kid.update(features, real=False)
        self.inception_score.update(logits)
        if self.coverage is not None:
            self.coverage.update(logits)

    def compute(self) -> QualityResult:
        with self.fid.sync_context():  # the counts over every process (one process: as they are)
            n_fake, n_real = int(self.fid.fake_features_num_samples), int(self.fid.real_features_num_samples)
        # KID's subsets can be no larger than either set (a short test run has few samples).
        self.kid.subset_size = min(self.kid_subset_size, n_fake, n_real)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            kid, kid_std = self.kid.compute()
            score, score_std = self.inception_score.compute()
        coverage = self.coverage.compute() if self.coverage is not None else None
        return QualityResult(
            fid=float(self.fid.compute()),
            kid=float(kid),
            kid_std=float(kid_std),
            inception_score=float(score),
            inception_score_std=float(score_std),
            histogram=coverage.histogram if coverage else None,
            classes_covered=coverage.covered if coverage else None,
            class_kl=coverage.kl_uniform if coverage else None,
            n_samples=n_fake,
            n_real=n_real,
            kid_subset_size=self.kid.subset_size,
        )

    def reset(self) -> None:
        for metric in (self.fid, self.kid, self.inception_score, self.coverage):
            if metric is not None:
                metric.reset()
