"""Parzen-window log-likelihood: closed forms, a float64 brute force, the protocol, the Metric,
the true-data reference on real MNIST, and the benchmark's --tiny mode."""

from __future__ import annotations

import copy
import math
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import advnets.metrics.parzen as parzen_mod
from advnets.metrics import (
    SIGMAS,
    ParzenLogLikelihood,
    ParzenResult,
    parzen_log_likelihood,
    parzen_protocol,
    parzen_sigma_search,
)

REPO = Path(__file__).resolve().parents[1]
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def brute_force(points: torch.Tensor, centres: torch.Tensor, sigmas) -> torch.Tensor:
    """(len(sigmas), N): direct broadcasting of the differences, all in float64."""
    x = points.reshape(len(points), -1).double()
    mu = centres.reshape(len(centres), -1).double()
    dist = torch.cat([((xs[:, None, :] - mu[None, :, :]) ** 2).sum(-1) for xs in x.split(16)])
    rows = []
    for s in torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1).tolist():
        rows.append(
            torch.logsumexp(-dist / (2 * s * s), dim=1) - math.log(len(mu)) - x.shape[1] * (math.log(s) + LOG_SQRT_2PI)
        )
    return torch.stack(rows)


def assert_close(actual, expected, rtol=1e-9, atol=0.0):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


@pytest.fixture
def screen_spy(monkeypatch):
    """Records what the float32 screen answered for each block (True: used; False: fell back)."""
    calls: list[bool] = []
    original = parzen_mod._Block.screened

    def spy(self, *args, **kwargs):
        answer = original(self, *args, **kwargs)
        calls.append(answer)
        return answer

    monkeypatch.setattr(parzen_mod._Block, "screened", spy)
    return calls


@pytest.fixture
def few_spy(monkeypatch):
    """Records which sigmas the float64 path summed over a few entries only, block by block."""
    calls: list[set] = []
    original = parzen_mod._Block._few_entries

    def spy(self, *args, **kwargs):
        answer = original(self, *args, **kwargs)
        calls.append(answer)
        return answer

    monkeypatch.setattr(parzen_mod._Block, "_few_entries", spy)
    return calls


def test_sigma_grid_is_the_papers():
    assert SIGMAS.dtype == torch.float64 and SIGMAS.shape == (10,)
    expected = torch.tensor([10 ** (-1 + k / 9) for k in range(10)], dtype=torch.float64)
    assert_close(SIGMAS, expected, rtol=1e-14)


# --- closed forms ----------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.1, 0.2783, 1.0, 3.0])
def test_one_centre_closed_form(sigma):
    d, r = 784, 1.7
    g = torch.Generator().manual_seed(1)
    centre = torch.rand(1, d, generator=g, dtype=torch.float64)
    direction = torch.randn(3, d, generator=g, dtype=torch.float64)
    radii = torch.tensor([0.0, r, 2 * r], dtype=torch.float64)
    points = centre + radii[:, None] * direction / direction.norm(dim=1, keepdim=True)
    expected = -(radii**2) / (2 * sigma**2) - d * math.log(sigma * math.sqrt(2 * math.pi))
    assert_close(parzen_log_likelihood(points, centre, sigma), expected, rtol=1e-11)


def test_point_equidistant_from_every_centre_closed_form():
    d, r = 30, 0.7
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, d, generator=g, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    centres = torch.cat([x + r * eye, x - r * eye])  # 2d centres, all at distance r
    expected = torch.tensor(
        [-(r**2) / (2 * s**2) - d * math.log(s * math.sqrt(2 * math.pi)) for s in SIGMAS.tolist()],
        dtype=torch.float64,
    )
    got = parzen_sigma_search(x, centres, chunk_size=7)
    assert got.shape == (10, 1) and got.dtype == torch.float64
    assert_close(got[:, 0], expected, rtol=1e-11)


@pytest.mark.parametrize("a, b, sigma", [(0.3, 0.5, 0.2), (0.1, 2.0, 0.1), (1.0, 1.5, 1.0)])
def test_two_centres_closed_form(a, b, sigma):
    d = 12
    x = torch.full((1, d), 0.25, dtype=torch.float64)
    e = torch.eye(d, dtype=torch.float64)
    centres = torch.cat([x + a * e[0], x + b * e[5]])
    ea, eb = -(a**2) / (2 * sigma**2), -(b**2) / (2 * sigma**2)
    top = max(ea, eb)  # log(0.5 (e^ea + e^eb)), written so that it cannot underflow
    log_mean = top + math.log(0.5 * (math.exp(ea - top) + math.exp(eb - top)))
    expected = log_mean - d * math.log(sigma * math.sqrt(2 * math.pi))
    got = parzen_log_likelihood(x, centres, sigma)
    assert math.isclose(got.item(), expected, rel_tol=1e-11)


# --- against a float64 brute force ------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_brute_force_on_random_data(dtype, screen_spy, few_spy):
    g = torch.Generator().manual_seed(3)
    centres = torch.rand(500, 784, generator=g).to(dtype)
    points = torch.rand(150, 784, generator=g).to(dtype)
    expected = brute_force(points, centres, SIGMAS)
    for chunk in (97, 4096):
        got = parzen_sigma_search(points, centres, chunk_size=chunk)
        assert got.dtype == torch.float64 and got.shape == (10, 150)
        assert_close(got, expected)
        for k in (0, 9):
            assert_close(parzen_log_likelihood(points, centres, SIGMAS[k], chunk_size=chunk), expected[k])
    # the float32 screen served the small sigmas, the float64 matmul the whole grid, where the
    # small sigmas were summed over the few entries that matter and the large ones densely
    assert True in screen_spy and False in screen_spy
    assert any(0 < len(few) < 10 for few in few_spy)


def test_matches_brute_force_with_clustered_data_and_image_shapes(screen_spy):
    """MNIST-like: 4-D float32 images in [0, 1], centres clustered around a few prototypes."""
    g = torch.Generator().manual_seed(4)
    protos = torch.rand(150, 1, 28, 28, generator=g)
    centres = (protos.repeat(4, 1, 1, 1) + 0.05 * torch.randn(600, 1, 28, 28, generator=g)).clamp(0, 1)
    points = (protos.repeat(2, 1, 1, 1)[:240] + 0.05 * torch.randn(240, 1, 28, 28, generator=g)).clamp(0, 1)
    expected = brute_force(points, centres, SIGMAS)
    got = parzen_sigma_search(points, centres, chunk_size=100)
    assert_close(got, expected)
    assert_close(parzen_sigma_search(points.flatten(1), centres.flatten(1), chunk_size=100), got, rtol=0.0)
    for k, chunk in ((0, 77), (0, 300), (5, 300), (9, 77)):
        assert_close(parzen_log_likelihood(points, centres, SIGMAS[k], chunk_size=chunk), expected[k])
    assert True in screen_spy


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_screen_off_when_float32_matmuls_may_be_reduced_precision(precision, screen_spy):
    g = torch.Generator().manual_seed(5)
    centres, points = torch.rand(300, 784, generator=g), torch.rand(40, 784, generator=g)
    expected = brute_force(points, centres, [0.1])[0]
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(precision)
        got = parzen_log_likelihood(points, centres, 0.1)
    finally:
        torch.set_float32_matmul_precision(previous)
    assert screen_spy == []
    assert_close(got, expected)
    assert_close(parzen_log_likelihood(points, centres, 0.1), expected)
    assert screen_spy and all(screen_spy)


def test_far_points_stay_finite_at_small_sigma():
    g = torch.Generator().manual_seed(6)
    centres = torch.rand(500, 784, generator=g)
    points = torch.rand(20, 784, generator=g) + 50.0  # squared distances ~ 2e6: exp(-1e8) = 0
    dist = ((points[:, None, :].double() - centres[None].double()) ** 2).sum(-1)
    naive = torch.log(torch.exp(-dist / (2 * 0.1**2)).mean(1))
    assert torch.isinf(naive).all()  # what a naive log(mean(exp)) gives
    got = parzen_log_likelihood(points, centres, 0.1, chunk_size=128)
    assert torch.isfinite(got).all()
    assert_close(got, brute_force(points, centres, [0.1])[0])
    # the nearest centre dominates: log p ~ -min_j D / (2 sigma^2) - d log(sigma sqrt(2 pi))
    leading = -dist.min(1).values / (2 * 0.1**2) - 784 * math.log(0.1 * math.sqrt(2 * math.pi))
    assert ((got - leading) <= 0).all() and ((got - leading) > -math.log(500) - 1e-6).all()


def test_input_checks():
    x, mu = torch.rand(5, 3), torch.rand(7, 3)
    assert parzen_log_likelihood(x, mu, torch.tensor(0.5)).shape == (5,)
    assert parzen_log_likelihood(x[:, 0], mu[:, 0], 0.5).shape == (5,)  # (N,) = N points of d = 1
    with pytest.raises(ValueError):
        parzen_log_likelihood(x, torch.rand(7, 4), 0.5)
    with pytest.raises(ValueError):
        parzen_log_likelihood(x, mu, [0.1, 0.2])
    with pytest.raises(ValueError):
        parzen_log_likelihood(x, mu, 0.0)
    with pytest.raises(ValueError):
        parzen_sigma_search(x, mu, chunk_size=0)
    with pytest.raises(ValueError):
        parzen_log_likelihood(x, mu[:0], 0.5)


# --- the protocol -----------------------------------------------------------------------------
def clustered(n_centres=400, n_select=90, n_test=130, d=16, seed=7):
    """Centres and points drawn from one Gaussian mixture: the best sigma is inside the grid."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(5, d, generator=g, dtype=torch.float64)

    def draw(n):
        return means[torch.randint(5, (n,), generator=g)] + 0.15 * torch.randn(n, d, generator=g, dtype=torch.float64)

    return draw(n_centres), draw(n_select), draw(n_test)


def test_protocol_picks_the_grid_value_with_the_best_select_mean():
    centres, select, test = clustered()
    grid_means = brute_force(select, centres, SIGMAS).mean(1)
    best = int(torch.argmax(grid_means))
    assert 0 < best < 9, "test data should put the optimum inside the grid"
    test_ll = brute_force(test, centres, SIGMAS[best : best + 1])[0]
    results = [parzen_protocol(centres, select, test, chunk_size=c) for c in (6, 64, 129, 10_000)]
    for result in results:
        assert isinstance(result, ParzenResult)
        assert result.sigma == SIGMAS[best].item()
        assert math.isclose(result.ll, test_ll.mean().item(), rel_tol=1e-9)
        std0 = math.sqrt(((test_ll - test_ll.mean()) ** 2).mean().item())  # ddof 0
        assert math.isclose(result.se, std0 / math.sqrt(130), rel_tol=1e-9)
        assert (result.n_samples, result.n_points) == (400, 130)
    for other in results[1:]:  # chunk_size changes nothing beyond rounding
        assert math.isclose(other.ll, results[0].ll, rel_tol=1e-11)
        assert math.isclose(other.se, results[0].se, rel_tol=1e-9)
    custom = parzen_protocol(centres, select, test, sigmas=[0.05, 2.0])
    assert custom.sigma in (0.05, 2.0)


def test_sigma_search_independent_of_chunk_size():
    centres, select, _ = clustered(n_centres=37, n_select=15, d=40, seed=8)
    ref = parzen_sigma_search(select, centres, chunk_size=100_000)
    for chunk in (1, 2, 5, 14, 36, 37):
        # only rounding differs (the distance matrix is summed in other orders)
        assert_close(parzen_sigma_search(select, centres, chunk_size=chunk), ref, rtol=1e-11)


# --- the torchmetrics Metric -------------------------------------------------------------------
def test_metric_updates_in_pieces_equal_one_protocol_call():
    centres, select, test = clustered(n_centres=300, n_select=50, n_test=70, d=16, seed=9)
    expected = parzen_protocol(centres, select, test)
    metric = ParzenLogLikelihood()
    metric.update(select_points=select[:20].reshape(20, 4, 2, 2))  # rows are flattened
    metric.update(centres=centres[:100], test_points=test[:33])
    metric(select_points=select[20:])  # forward only updates
    metric.update(centres=centres[100:], test_points=test[33:])
    result = metric.compute()
    assert isinstance(result, ParzenResult)
    assert result == expected
    assert metric.compute() == expected  # cached
    clone = copy.deepcopy(metric)
    assert clone.compute() == expected
    assert pickle.loads(pickle.dumps(metric)).compute() == expected

    metric.reset()
    assert metric.centres == [] and metric.select_points == [] and metric.test_points == []
    with warnings.catch_warnings(), pytest.raises(ValueError, match="centres"):
        warnings.simplefilter("ignore")  # torchmetrics: compute() called before update()
        metric.compute()
    metric.update(centres=centres, select_points=select, test_points=test)
    assert metric.compute() == expected


# --- the true-data reference on real MNIST ------------------------------------------------------
def _mnist_mirror() -> Path:
    from advnets.config import mnist_mirror

    return mnist_mirror()


@pytest.fixture(scope="module")
def parzen_mnist(tmp_path_factory):
    """(train, test) MNIST images as float32 rows in [0, 1]: from the MNIST mirror (conf/paths/) when it
    exists (torchvision checks the MD5s and unpacks offline), else downloaded by torchvision."""
    from torchvision.datasets import MNIST

    root = tmp_path_factory.mktemp("parzen_mnist")
    raw = _mnist_mirror()
    if raw.is_dir():
        (root / "MNIST" / "raw").mkdir(parents=True)
        for archive in raw.glob("*.gz"):
            shutil.copy(archive, root / "MNIST" / "raw" / archive.name)
    train = MNIST(root, train=True, download=True).data
    test = MNIST(root, train=False, download=True).data
    return train.reshape(len(train), -1).float() / 255, test.reshape(len(test), -1).float() / 255


@pytest.mark.slow
def test_true_data_reference_on_mnist(parzen_mnist):
    train, test = parzen_mnist
    assert train.shape == (60000, 784) and test.shape == (10000, 784)
    g = torch.Generator().manual_seed(0)
    centres = train[:50000][torch.randperm(50000, generator=g)[:10000]]
    result = parzen_protocol(centres, train[50000:51000], test)
    assert 240.0 < result.ll < 244.0, result
    assert math.isclose(result.sigma, SIGMAS[2].item()), result  # 0.1668
    assert 1.0 < result.se < 3.0 and (result.n_samples, result.n_points) == (10000, 10000)


# --- the benchmark ------------------------------------------------------------------------------
@pytest.mark.slow
def test_benchmark_tiny_runs():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "parzen.py"), "--tiny"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for start in ("device:", "centres:", "ours:", "port:", "agreement:", "speed-up:", "peak memory:"):
        assert any(line.startswith(start) for line in out.splitlines()), f"no '{start}' line in:\n{out}"
    assert "MISMATCH" not in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_matches_brute_force_on_cuda():
    g = torch.Generator().manual_seed(10)
    centres, points = torch.rand(500, 784, generator=g), torch.rand(120, 784, generator=g)
    expected = brute_force(points, centres, SIGMAS)
    got = parzen_sigma_search(points.cuda(), centres.cuda(), chunk_size=100)
    assert got.device.type == "cuda"
    assert_close(got.cpu(), expected)
