"""Sample quality (advnets/metrics/quality.py): the committed MNIST classifier, FID, KID, coverage, Inception offline."""

import math
import shutil

import pytest
import torch
from torch import nn

from advnets.errors import UserError
from advnets.metrics.mnist_classifier import WEIGHTS, accuracy, load_mnist_classifier
from advnets.metrics.quality import SampleQuality
from conftest import run_script
from test_cifar10 import write_cifar


@pytest.fixture(scope="module")
def mnist(data_dir):
    from advnets.data.mnist import MNISTDataModule

    data = MNISTDataModule({"root": str(data_dir)}, 0)
    return data.load_splits(), data.load_labels()


@pytest.fixture(scope="module")
def test_quality(mnist):
    """SampleQuality on the committed classifier with the 10,000 test images as the real set."""
    quality = SampleQuality(load_mnist_classifier(), kid_subsets=20, kid_subset_size=1000)
    quality.update_real(mnist[0]["test"])
    return quality


def scored(quality, images):
    quality.update_fake(images)
    result = quality.compute()
    quality.reset()
    return result


def test_classifier_loads_and_reaches_99_percent_on_the_test_set(mnist):
    images, labels = mnist
    assert accuracy(load_mnist_classifier(), images["test"], labels["test"]) >= 0.99


def test_modified_classifier_file_is_refused(tmp_path):
    copy = tmp_path / WEIGHTS.name
    shutil.copyfile(WEIGHTS, copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(UserError, match="SHA-256 .* the file was modified"):
        load_mnist_classifier(copy)
    with pytest.raises(UserError, match="not found"):
        load_mnist_classifier(tmp_path / "missing.pt")


@pytest.mark.slow
def test_fid_zero_on_itself_small_between_test_halves_large_for_noise_and_blur(test_quality, mnist):
    test = mnist[0]["test"]
    itself = scored(test_quality, test)
    assert abs(itself.fid) < 1e-9 * float(torch.trace(test_quality.fid.real_features_cov_sum)) / len(test)
    assert itself.classes_covered == 10 and itself.class_kl < 0.01 and itself.n_real == 10000

    # Random halves: the official ones differ (the first 5,000 test digits are the cleaner writers').
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    first, second = test[order[:5000]], test[order[5000:]]
    halves = SampleQuality(test_quality.extractor, kid_subsets=20, kid_subset_size=1000)
    halves.update_real(first)
    between = scored(halves, second)
    noise = scored(halves, torch.rand(5000, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    blurred = scored(halves, nn.functional.avg_pool2d(second, 3, stride=1, padding=1))
    assert 0 < between.fid < 0.001 * noise.fid and blurred.fid > 20 * between.fid
    assert abs(between.kid) < 3 * between.kid_std and noise.kid > 1000 * max(abs(between.kid), between.kid_std)
    assert noise.classes_covered < 10 and noise.class_kl > 10 * between.class_kl
    assert int(test_quality.fid.real_features_num_samples) == 10000  # the real features survived every reset


class Identity(nn.Module):
    """A stand-in network: the features are the input itself; it predicts no classes."""

    num_features = 8

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # SampleQuality looks up the device of the parameters

    def features_and_logits(self, x):
        return x, x


def test_kid_is_unbiased_on_sets_from_one_distribution():
    """Over independent pairs of sets from one distribution KID averages 0; the biased MMD estimate does not."""
    gen = torch.Generator().manual_seed(0)
    kids, biased = [], []
    for _ in range(20):
        real, fake = torch.randn(2, 200, 8, generator=gen)
        quality = SampleQuality(Identity(), kid_subsets=5, kid_subset_size=200)  # each subset: both whole sets
        quality.update_real(real)
        kids.append(scored(quality, fake).kid)
        k = lambda a, b: (a @ b.T / 8 + 1) ** 3  # KID's kernel  # noqa: E731
        biased.append(float(k(real, real).mean() + k(fake, fake).mean() - 2 * k(real, fake).mean()))
    mean = sum(kids) / len(kids)
    se = math.sqrt(sum((x - mean) ** 2 for x in kids) / (len(kids) - 1) / len(kids))
    assert abs(mean) < 3 * se < sum(biased) / len(biased)


class StandInClassifier(nn.Module):
    """Predicts class c for an image whose pixels all equal c / 10."""

    num_features = 1
    num_classes = 10

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def features_and_logits(self, x):
        c = (x.flatten(1)[:, 0] * 10).round().long()
        return x.flatten(1)[:, :1], nn.functional.one_hot(c, 10).float()


def test_coverage_counts_known_predictions():
    counts = [30, 30, 20, 10, 5, 3, 2, 0, 0, 0]
    images = torch.cat([torch.full((n, 1, 4, 4), c / 10) for c, n in enumerate(counts)])
    quality = SampleQuality(StandInClassifier(), kid_subsets=2, kid_subset_size=50)
    quality.update_real(images.flip(0))
    result = scored(quality, images)
    assert result.histogram == pytest.approx([n / 100 for n in counts])
    assert result.classes_covered == 5  # at least half the uniform share: 5 of 100 samples
    assert result.class_kl == pytest.approx(sum(n / 100 * math.log(n / 100 * 10) for n in counts if n))
    assert result.inception_score > 1


@pytest.mark.slow
def test_inception_offline_without_weights_is_one_clear_error(tmp_path):
    write_cifar(tmp_path)
    proc = run_script(
        "eval.py",
        "reference=true_data",
        "dataset=cifar10",
        "dataset.download=false",
        "dataset.check_md5=false",
        f"paths.data_dir={tmp_path}",
        "logger=wandb",
        f"hydra.run.dir={tmp_path / 'eval'}",
        "n_samples=10",
        timeout=120,
        # offline: every download goes to a closed port; torch's cache is empty
        env={
            "TORCH_HOME": str(tmp_path / "torch"),
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "https_proxy": "http://127.0.0.1:9",
            "NO_PROXY": "",
            "no_proxy": "",
        },
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: the Inception FID needs weights-inception-2015-12-05-6726825d.pth")
    assert f"put it in {tmp_path / 'torch' / 'hub' / 'checkpoints'}/" in line and "quality.inception_weights=" in line
    written = {p.name for p in (tmp_path / "eval").rglob("*")} - {
        ".hydra",
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
        "eval.log",
    }
    assert written == set()
