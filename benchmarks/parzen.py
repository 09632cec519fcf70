#!/usr/bin/env python
"""Time the full MNIST Parzen protocol: advnets' estimator vs a port of the official parzen_ll.py.

The protocol (Goodfellow et al. 2014, Table 1): 10,000 centres ("samples"), sigma picked on
logspace(-1, 0, 10) by the mean log-likelihood of the first 1,000 validation images (MNIST
training rows 50000..50999), then the mean log-likelihood of the 10,000 test images and its
standard error.

The port follows the official script (pylearn2 era, Theano floatX=float32): for each sigma,
batches of 100 points, the differences x[:, None, :] - mu[None, :, :] broadcast to every centre
(a 100 x 10,000 x 784 float32 array, 3.1 GB), divided by sigma, squared, summed, then a
log-mean-exp; nothing is shared between sigmas. The port's only liberty: in-place operations,
so that one such array is alive at a time. It takes ~20 minutes on 2 CPU cores for the whole
protocol, so it is timed on a fraction of the work (the first ``--port-fraction`` of the
selection points for every sigma and of the test points) and scaled linearly; the two
estimators are compared on that same fraction.

    python benchmarks/parzen.py                  # full size, centres = real images + noise
    python benchmarks/parzen.py --centres s.pt   # centres from a file (e.g. 10,000 G samples)
    python benchmarks/parzen.py --tiny           # a few seconds, synthetic data (for tests)
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
try:
    from advnets.metrics import SIGMAS, parzen_log_likelihood, parzen_protocol, parzen_sigma_search
except ImportError:  # not installed: run from the checkout
    sys.path.insert(0, str(REPO / "src"))
    from advnets.metrics import SIGMAS, parzen_log_likelihood, parzen_protocol, parzen_sigma_search

TOLERANCE = 0.01  # nats: the port and ours must agree to this on the same fraction


# --- the port of the official parzen_ll.py --------------------------------------------------------
def port_parzen(x: torch.Tensor, mu: torch.Tensor, sigma: float) -> torch.Tensor:
    """theano_parzen(mu, sigma)(x): log p of a batch, all float32 like the original."""
    a = x[:, None, :] - mu[None, :, :]  # (B, M, d)
    a.div_(sigma)
    a.square_()
    e = a.sum(2).mul_(-0.5)  # -0.5 * (a ** 2).sum(2)
    del a
    top = e.max(1, keepdim=True).values  # log_mean_exp
    log_mean = top[:, 0] + torch.log(torch.exp(e - top).mean(1))
    z = mu.shape[1] * math.log(sigma * math.sqrt(math.pi * 2))
    return log_mean - z


def port_get_nll(x: torch.Tensor, mu: torch.Tensor, sigma: float, batch_size: int) -> torch.Tensor:
    return torch.cat([port_parzen(x[i : i + batch_size], mu, sigma) for i in range(0, len(x), batch_size)])


def port_protocol(centres, select, test, sigmas: list[float], batch_size: int):
    """cross_validate_sigma, then get_nll on the test set: (ll, se, sigma, per-sigma select means)."""
    select_means = [float(port_get_nll(select, centres, s, batch_size).mean()) for s in sigmas]
    sigma = sigmas[max(range(len(sigmas)), key=select_means.__getitem__)]  # numpy.argmax
    ll = port_get_nll(test, centres, sigma, batch_size)
    return float(ll.mean()), float(ll.std(correction=0)) / math.sqrt(len(ll)), sigma, select_means


# --- memory --------------------------------------------------------------------------------------
def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _maxrss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class PeakMemory:
    """Peak memory of a phase above its start: resident set size sampled every 2 ms from
    /proc/self/statm (sees torch's allocations, unlike tracemalloc), and on CUDA
    torch.cuda.max_memory_allocated."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rss_mib: float | None = None
        self.cuda_mib: float | None = None

    @contextmanager
    def measure(self):
        start = _rss_bytes()
        peak = [start or 0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.002):
                now = _rss_bytes() or 0
                peak[0] = max(peak[0], now)

        thread = threading.Thread(target=sample, daemon=True)
        if start is not None:
            thread.start()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            cuda_start = torch.cuda.memory_allocated(self.device)
        try:
            yield self
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                self.cuda_mib = (torch.cuda.max_memory_allocated(self.device) - cuda_start) / 2**20
            if start is not None:
                stop.set()
                thread.join()
                peak[0] = max(peak[0], _rss_bytes() or 0)
                self.rss_mib = (peak[0] - start) / 2**20

    def describe(self) -> str:
        parts = []
        if self.rss_mib is not None:
            parts.append(f"+{self.rss_mib:,.0f} MiB RSS")
        if self.cuda_mib is not None:
            parts.append(f"+{self.cuda_mib:,.0f} MiB CUDA")
        return ", ".join(parts) or "n/a"


# --- data ----------------------------------------------------------------------------------------
def shared_mnist_raw() -> Path:
    from advnets.config import mnist_mirror

    return mnist_mirror()


def load_mnist(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) as float32 rows in [0, 1]. The raw .gz files are copied from the MNIST mirror (conf/paths/) when
    data_dir lacks them; torchvision checks their MD5s, unpacks them (or downloads them)."""
    from torchvision.datasets import MNIST

    raw = data_dir / "MNIST" / "raw"
    source = shared_mnist_raw()
    if source.is_dir():
        raw.mkdir(parents=True, exist_ok=True)
        for archive in source.glob("*.gz"):
            if not (raw / archive.name).exists():
                shutil.copy(archive, raw / archive.name)
    train = MNIST(data_dir, train=True, download=True).data
    test = MNIST(data_dir, train=False, download=True).data
    return train.flatten(1).float() / 255, test.flatten(1).float() / 255


def load_centres(path: Path, n: int) -> torch.Tensor:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        keys = [k for k in ("samples", "centres") if k in obj]
        if not keys:
            raise SystemExit(f"{path}: a dict needs a 'samples' or 'centres' tensor, has {list(obj)}")
        obj = obj[keys[0]]
    if not isinstance(obj, torch.Tensor):
        raise SystemExit(f"{path}: expected a tensor (N, ...) of samples, got {type(obj).__name__}")
    if len(obj) < n:
        raise SystemExit(f"{path}: {len(obj)} samples, fewer than --samples {n}")
    return obj[:n].flatten(1).float()


def tiny_data(seed: int):
    """Synthetic "images": 784-dim points around 60 random prototypes in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(60, 784, generator=g)

    def draw(n: int) -> torch.Tensor:
        idx = torch.randint(len(protos), (n,), generator=g)
        return (protos[idx] + 0.2 * torch.randn(n, 784, generator=g)).clamp(0, 1)

    return draw(400), draw(60), draw(150)


# --- main ----------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=REPO / "data",
        help="folder holding (or to receive) MNIST/raw/*.gz (default: <repo>/data)",
    )
    parser.add_argument(
        "--centres",
        type=Path,
        default=None,
        help="a .pt file: tensor (N, ...) of samples, or a dict with 'samples'/'centres'",
    )
    parser.add_argument("--samples", type=int, default=10_000, help="number of centres (default 10000)")
    parser.add_argument(
        "--noise", type=float, default=0.1, help="without --centres: std of the Gaussian noise added to the real images"
    )
    parser.add_argument(
        "--port-fraction",
        type=float,
        default=0.05,
        help="fraction of the select and test points the port is timed on (default 0.05)",
    )
    parser.add_argument("--port-batch-size", type=int, default=100, help="the official script's -b (100)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of our full protocol (--tiny: 1)")
    parser.add_argument("--chunk-size", type=int, default=None, help="our chunk_size (default: the library's)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's); on a busy machine 1 can beat 2",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="small synthetic sizes, runs in seconds")
    args = parser.parse_args(argv)
    if not 0 < args.port_fraction <= 1:
        parser.error("--port-fraction must be in (0, 1]")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU visible to torch")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kw = {} if args.chunk_size is None else {"chunk_size": args.chunk_size}

    if args.tiny:
        centres, select, test = tiny_data(args.seed)
        port_fraction = 1.0 if args.port_fraction == parser.get_default("port_fraction") else args.port_fraction
        what = f"{len(centres)} synthetic 784-dim points around 60 random prototypes (--tiny)"
        data_note = f"select: {len(select)}, test: {len(test)} synthetic points (--tiny)"
    else:
        port_fraction = args.port_fraction
        train, test = load_mnist(args.data_dir)
        select = train[50000:51000]
        g = torch.Generator().manual_seed(args.seed)
        if args.centres is not None:
            centres = load_centres(args.centres, args.samples)
            what = f"{len(centres)} samples from {args.centres}"
        else:
            rows = torch.randperm(50000, generator=g)[: args.samples]
            noise = args.noise * torch.randn(len(rows), train.shape[1], generator=g)
            centres = (train[rows] + noise).clamp(0, 1)
            what = (
                f"{len(centres)} stand-in 'samples': random MNIST training images (rows 0..49999, "
                f"seed {args.seed}) + N(0, {args.noise}^2) noise, clipped to [0, 1]"
            )
        data_note = f"select: {len(select)} (training rows 50000..50999), test: {len(test)} (official test set)"
    centres, select, test = (t.to(device=device, dtype=torch.float32) for t in (centres, select, test))
    sigmas = SIGMAS.tolist()
    threads = f"{torch.get_num_threads()} threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else "load n/a"
    print(
        f"device: {device.type} ({threads}, {os.cpu_count()} CPUs, {load}), torch {torch.__version__}, "
        f"float32 matmul precision {torch.get_float32_matmul_precision()}"
    )
    print(f"centres: {what}, d = {centres.shape[1]}")
    print(f"data: {data_note}; sigma grid logspace(-1, 0, 10)")
    sys.stdout.flush()

    # ours: the full protocol
    mem_ours = PeakMemory(device)
    times, cpu_times = [], []
    with mem_ours.measure():
        for _ in range(1 if args.tiny else max(1, args.repeats)):
            cpu_start = time.process_time()
            elapsed, result = timed(lambda: parzen_protocol(centres, select, test, **kw), device)
            times.append(elapsed)
            cpu_times.append(time.process_time() - cpu_start)
    t_search, _ = timed(lambda: parzen_sigma_search(select, centres, **kw), device)
    t_test, _ = timed(lambda: parzen_log_likelihood(test, centres, result.sigma, **kw), device)
    t_ours = min(times)
    print(
        f"ours: full protocol {t_ours:.2f} s (best of {len(times)}: "
        f"{', '.join(f'{t:.2f}' for t in times)} s; CPU time of the process, all threads: "
        f"{', '.join(f'{t:.2f}' for t in cpu_times)} s); parts: sigma search on {len(select)} points "
        f"{t_search:.2f} s, test set at one sigma {t_test:.2f} s"
    )
    print(f"ours: ll = {result.ll:.4f} +- {result.se:.4f} nats, sigma = {result.sigma:.4f}")
    sys.stdout.flush()

    # the port, on a fraction of the work; ours on the same fraction
    n_sel = max(1, math.ceil(port_fraction * len(select)))
    n_test = max(1, math.ceil(port_fraction * len(test)))
    sel_f, test_f = select[:n_sel], test[:n_test]
    mem_port = PeakMemory(device)
    with mem_port.measure():
        t_port, (p_ll, p_se, p_sigma, p_means) = timed(
            lambda: port_protocol(centres, sel_f, test_f, sigmas, args.port_batch_size), device
        )
    work_full = len(sigmas) * len(select) + len(test)  # point evaluations of the whole protocol
    work_done = len(sigmas) * n_sel + n_test
    t_port_full = t_port * work_full / work_done
    print(
        f"port: measured {t_port:.2f} s on {work_done / work_full:.1%} of the work ({n_sel} select "
        f"points x {len(sigmas)} sigmas + {n_test} test points, batches of <= {args.port_batch_size}); "
        f"scaled to the full protocol: {t_port_full:.1f} s ({t_port_full / 60:.1f} min)"
    )
    print(f"port: on that fraction ll = {p_ll:.4f} +- {p_se:.4f} nats, sigma = {p_sigma:.4f}")

    ours_means = parzen_sigma_search(sel_f, centres, **kw).mean(1).tolist()
    o_frac = parzen_protocol(centres, sel_f, test_f, **kw)
    o_at_port_sigma = float(parzen_log_likelihood(test_f, centres, p_sigma, **kw).mean())
    d_means = max(abs(a - b) for a, b in zip(ours_means, p_means))
    d_ll = o_frac.ll - p_ll
    ok = o_frac.sigma == p_sigma and abs(d_ll) <= TOLERANCE and d_means <= TOLERANCE
    print(
        f"agreement: same fraction, ours ll = {o_frac.ll:.4f} (sigma {o_frac.sigma:.4f}) vs port "
        f"{p_ll:.4f} (sigma {p_sigma:.4f}): difference {d_ll:+.2e} nats; per-sigma select means "
        f"max |difference| {d_means:.2e} nats; ours at the port's sigma {o_at_port_sigma:.4f}"
        f" -> {'OK' if ok else 'MISMATCH'} (tolerance {TOLERANCE} nats)"
    )
    t_median = sorted(times)[len(times) // 2]
    print(
        f"speed-up: port (scaled) / ours = {t_port_full:.1f} s / {t_ours:.2f} s = {t_port_full / t_ours:.0f}x "
        f"(with our median run, {t_median:.2f} s: {t_port_full / t_median:.0f}x)"
    )
    if hasattr(os, "getloadavg"):
        print(
            "load average at the end: {:.2f} {:.2f} {:.2f} (on a shared machine other processes inflate the "
            "timings)".format(*os.getloadavg())
        )
    print(
        f"peak memory: ours {mem_ours.describe()}, port {mem_port.describe()} (each above its own "
        f"start; RSS sampled every 2 ms from /proc/self/statm); whole process ru_maxrss "
        f"{_maxrss_mib():,.0f} MiB (includes the data and both)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
