#!/usr/bin/env python
"""Training throughput: the project (Lightning + Hydra config) against the plain PyTorch loops.

The paper's MNIST configuration (alternating schedule, k = 1, batch 100, the paper's nets and
optimiser rule) for a fixed number of iterations, in one process:
  (a) the project: train.py's Trainer, GAN module and MNIST DataModule, W&B logging on (offline);
  (b) the plain loop most GAN code uses: torchvision MNIST through a standard DataLoader;
  (c) the same plain loop over the data already held as one tensor (the eager-mode limit).
a, b and c alternate `--repeats` times; the median samples per second of each is printed with the
ratios a/b and a/c and the peak memory. `--scaling` adds samples per second of (a) for batch sizes
50..400 and for 1 vs 2 threads; `--features` times bf16 mixed precision, torch.compile and a
larger batch. `--fast-path` times the project's defaults (Algorithm 1, k = 1, R1, EMA of G) in fp32,
with trainer.precision=bf16-mixed (the fast path, advnets.precision), with model.compile=true, with both, and
with model.compile_updates=true (the fast path's updates compiled, advnets.updates), interleaved `--repeats` times; it prints each one's median samples/s and ratio to fp32, then a
profile (top ops by self CPU time) of the fastest and, on a CPU, where the time of fp32's batch and of the
fastest's goes, with what 2x fp32 would leave the fastest for its work other than matmuls.

    python benchmarks/train_throughput.py                  # CPU, 300 iterations, 3 repeats
    python benchmarks/train_throughput.py --device cuda    # on a GPU
    python benchmarks/train_throughput.py --tiny           # a few iterations (the test suite runs this)
    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py --fast-path --logger none   # the fast path's rows
    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py --step-costs --logger none  # what each cheaper step buys

(a) runs the paper's Algorithm 1 like (b) and (c): no R1 penalty, no EMA of G (the project's defaults
add both; `--defaults` times those instead).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402


def compose(*overrides: str, output_dir: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import advnets.config  # noqa: F401  (the repo_root resolver)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = output_dir
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


class _Timer:
    """Times the training batches only (not start-up, validation or the end-of-epoch images)."""

    def __init__(self):
        import pytorch_lightning as pl

        class Callback(pl.Callback):
            def on_train_batch_start(cb, trainer, *args):
                if trainer.fit_loop.epoch_loop.batch_idx == 0 and self.start is None:
                    if trainer.strategy.root_device.type == "cuda":
                        torch.cuda.synchronize()
                    self.start = time.perf_counter()

            def on_train_batch_end(cb, trainer, *args):
                self.batches += 1
                if self.batches == self.total:
                    if trainer.strategy.root_device.type == "cuda":
                        torch.cuda.synchronize()
                    self.end = time.perf_counter()

        self.callback = Callback()
        self.start = self.end = None
        self.batches = 0
        self.total = 0


# (a) as (b) and (c) run it: the paper's update, without the default R1 penalty and EMA of G.
# The plain loops' updates: the paper's SGD (the default trains with Adam), no R1, no EMA.
LIKE_PLAIN = ["stabilisers.r1_gamma=null", "model.ema_decay=null", "optimizer=momentum"]
OPTIONS = {"extra": LIKE_PLAIN, "logger": []}  # set from the command line in main()


# Where a step's time goes, by kind of work: the profiled ops' self CPU time (time_shares). The profiler names the
# per-tensor ops that the optimisers' _foreach calls run on a CPU (add_, mul_), so a kind is named by what its
# ops do, not by who calls them.
MATMULS = "matmuls (mm, addmm)"
TIME_SHARES = {
    MATMULS: ("aten::mm", "aten::addmm"),
    "copies (casts, row-major gy^T)": ("aten::copy_",),
    "in-place adds (updates, grad sums)": ("aten::add_", "aten::mul_"),
    "EMA of G (lerp_)": ("aten::lerp_",),
    "maxout (max and its backward)": ("aten::max", "aten::amax", "aten::scatter", "aten::scatter_", "aten::gather"),
    "dropout masks": ("aten::random_", "aten::bernoulli_", "aten::ge"),
    # model.compile_updates (and model.compile): Inductor's C++ kernels run inside these ranges, not as aten ops.
    "compiled graphs (Inductor kernels)": ("## Call CompiledFxGraph*", "Torch-Compiled Region*"),
}


def _names(key: str, ops: tuple[str, ...]) -> bool:
    """Whether the profiled op `key` is one of `ops` (a name ending in * is a prefix)."""
    return any(key.startswith(op[:-1]) if op.endswith("*") else key == op for op in ops)


def time_shares(events, batches: int, seconds: float) -> dict[str, float]:
    """ms a batch of each TIME_SHARES kind of work (the profiled ops' self CPU time), of the ops it does not name
    ("other ops"), of the wall time outside any op ("outside the ops": Python, autograd's engine, Lightning) and
    of the whole batch (wall, profiled)."""
    self_us = {e.key: e.self_cpu_time_total for e in events}
    ms = {
        kind: sum(us for key, us in self_us.items() if _names(key, ops)) / batches / 1e3
        for kind, ops in TIME_SHARES.items()
    }
    ops_ms = sum(self_us.values()) / batches / 1e3
    ms["other ops"] = ops_ms - sum(ms.values())
    ms["outside the ops"] = seconds / batches * 1e3 - ops_ms
    ms["batch"] = seconds / batches * 1e3
    return ms


def where_the_time_goes(columns: dict[str, dict[str, float]]) -> str:
    """The `time_shares` of each profiled row side by side: ms a batch and share of the batch. With two rows, fp32
    first and the fast path last, also the budget of 2x: what half fp32's batch leaves the fast path for its work
    other than matmuls, and the ratios it cannot pass: doing that work as fp32 does, and with matmuls that cost
    nothing."""
    names = list(columns)
    lines = [f"  {'ms a batch (profiled)':<36}" + "".join(f" {name:>24}" for name in names)]
    for kind in next(iter(columns.values())):  # time_shares' order: the kinds, then the batch
        cells = "".join(f" {c[kind]:18.1f} {c[kind] / c['batch']:5.0%}" for c in columns.values())
        lines.append(f"  {kind:<36}{cells}")
    if len(columns) == 2:
        fp32, fast = columns.values()
        half = fp32["batch"] / 2
        rest_fp32, rest_fast = fp32["batch"] - fp32[MATMULS], fast["batch"] - fast[MATMULS]
        lines += [
            f"  2x fp32 is {half:.1f} ms a batch; the fast path's matmuls take {fast[MATMULS]:.1f} of it, which leaves "
            f"{half - fast[MATMULS]:.1f} ms for the rest: the fast path spends {rest_fast:.1f} on it, fp32 {rest_fp32:.1f}",
            f"  at most x{fp32['batch'] / (rest_fp32 + fast[MATMULS]):.2f} of fp32 with the rest as fp32 does it, "
            f"x{fp32['batch'] / rest_fast:.2f} with the matmuls free (profiled times)",
        ]
    return "\n".join(lines)


class _Profile:
    """A torch.profiler trace of `batches` training batches after `skip` (compilation and warm-up)."""

    def __init__(self, skip: int, batches: int):
        import pytorch_lightning as pl

        self.table = ""
        self.shares: dict[str, float] = {}

        class Callback(pl.Callback):
            def on_train_batch_start(cb, trainer, module, batch, batch_idx):
                if batch_idx == skip:
                    activities = [torch.profiler.ProfilerActivity.CPU]
                    if trainer.strategy.root_device.type == "cuda":
                        activities.append(torch.profiler.ProfilerActivity.CUDA)
                    cb.prof = torch.profiler.profile(activities=activities)
                    cb.prof.__enter__()
                    cb.start = time.perf_counter()

            def on_train_batch_end(cb, trainer, module, outputs, batch, batch_idx):
                if batch_idx == skip + batches - 1:
                    seconds = time.perf_counter() - cb.start
                    cb.prof.__exit__(None, None, None)
                    cuda = trainer.strategy.root_device.type == "cuda"
                    events = cb.prof.key_averages()
                    self.table = events.table(
                        sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                        row_limit=15,
                        max_name_column_width=45,
                    )
                    self.shares = time_shares(events, batches, seconds)

        self.callback = Callback()


def run_project(iters: int, batch: int, device: str, data_dir: str, extra: list[str] = (), callbacks=()) -> float:
    """(a): samples per second through the project's Trainer, module and DataModule."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from advnets.config import trainer_arguments
    from advnets.data import build_datamodule
    from advnets.loggers import build_loggers, finish_wandb
    from advnets.module import GAN
    from advnets.precision import fp32_means_fp32
    from advnets.progress import progress_callbacks

    fp32_means_fp32()  # as src/train.py
    iters = min(iters, 50_000 // batch)  # one epoch at most (MNIST's 50,000 training rows), full batches only
    out = tempfile.mkdtemp(prefix="advnets-bench-")
    cfg = compose(
        f"paths.data_dir={data_dir}",
        f"dataset.batch_size={batch}",
        "test_after_fit=false",
        f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
        # fp32 unless a row asks for another precision: (a) is compared with the plain fp32 loop (b), and
        # trainer.precision=auto would take bf16 on a CPU with AMX.
        "trainer.precision=32-true",
        *OPTIONS["extra"],
        *OPTIONS["logger"],
        *extra,
        output_dir=out,
    )
    pl.seed_everything(0, verbose=False)
    datamodule = build_datamodule(cfg.dataset, cfg.seed)
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    timer = _Timer()
    timer.total = iters
    trainer_args = {
        **trainer_arguments(cfg),
        "max_epochs": 1,
        "limit_train_batches": iters,
        "limit_val_batches": 0,
        "enable_progress_bar": True,
    }
    try:
        trainer = pl.Trainer(
            **trainer_args,
            logger=build_loggers(cfg) or False,
            callbacks=[
                ModelCheckpoint(**cfg.callbacks.checkpoint),
                timer.callback,
                *callbacks,
                *progress_callbacks(True, cfg.callbacks.progress.every_s),  # off a terminal, as src/train.py's
            ],
        )
        trainer.fit(module, datamodule=datamodule)
    finally:
        finish_wandb()
        shutil.rmtree(out, ignore_errors=True)
    return iters * batch / (timer.end - timer.start)


def plain_nets(device: str):
    """The paper's MNIST nets and optimiser, built by the same code as the project's."""
    from advnets.nets import build_discriminator, build_generator
    from advnets.optim import ClassicMomentum

    cfg = compose(output_dir="/tmp/advnets-bench-unused")
    model = OmegaConf.to_container(cfg.model, resolve=True)
    torch.manual_seed(0)
    g, d = build_generator(model, (1, 28, 28)).to(device), build_discriminator(model, (1, 28, 28)).to(device)
    return g, d, ClassicMomentum(g.parameters(), lr=0.1), ClassicMomentum(d.parameters(), lr=0.1)


def plain_step(g, d, g_opt, d_opt, real, device):
    """One iteration of the loop most GAN code has: a D step, then a G step (D's grads computed and discarded)."""
    m = real.shape[0]
    z = (torch.rand(m, 100, device=device) * 2 - 1) * 3**0.5
    fake = g(z).detach()
    d_loss = 0.5 * (F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean())
    d_opt.zero_grad()
    d_loss.backward()
    d_opt.step()
    z = (torch.rand(m, 100, device=device) * 2 - 1) * 3**0.5
    g_loss = F.softplus(-d(g(z))).mean()
    g_opt.zero_grad()
    g_loss.backward()
    g_opt.step()


def run_plain_dataloader(iters: int, batch: int, device: str, data_dir: str, workers: int) -> float:
    """(b): torchvision MNIST through a standard DataLoader."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    mnist = datasets.MNIST(data_dir, train=True, download=False, transform=transforms.ToTensor())
    loader = DataLoader(
        Subset(mnist, range(50000)),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=device == "cuda",
        drop_last=False,
    )
    g, d, g_opt, d_opt = plain_nets(device)
    done, start = 0, None
    while done < iters:
        for x, _ in loader:
            if done == 0:
                start = _sync_time(device)
            plain_step(g, d, g_opt, d_opt, x.to(device, non_blocking=True), device)
            done += 1
            if done == iters:
                break
    return iters * batch / (_sync_time(device) - start)


def run_plain_tensor(iters: int, batch: int, device: str, data_dir: str) -> float:
    """(c): the same loop over the data as one tensor on the device, batches as index slices."""
    from torchvision import datasets

    data = (datasets.MNIST(data_dir, train=True, download=False).data[:50000].float() / 255).unsqueeze(1).to(device)
    g, d, g_opt, d_opt = plain_nets(device)
    perm = torch.randperm(len(data), device=device)
    start = _sync_time(device)
    for i in range(iters):
        j = (i * batch) % len(data)
        plain_step(g, d, g_opt, d_opt, data[perm[j : j + batch]], device)
    return iters * batch / (_sync_time(device) - start)


def _sync_time(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_memory(device: str) -> str:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = f"peak host RSS {rss:.0f} MiB (whole process)"
    if device == "cuda":
        text += f", peak GPU allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    return text


def prepare_data(data_dir: str | None) -> str:
    """A data dir with MNIST unpacked (copied from the MNIST mirror, conf/paths/, when present)."""
    from advnets.config import mnist_mirror
    from advnets.data.mnist import MNISTDataModule

    data_dir = data_dir or os.environ.get("ADVNETS_DATA_DIR") or str(REPO / "data")
    dm = MNISTDataModule({"root": data_dir, "batch_size": 100, "raw_mirror": str(mnist_mirror())}, seed=0)
    dm.prepare_data()
    return data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of (b)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--scaling", action="store_true", help="batch sizes 50..400 and 1 vs 2 threads")
    parser.add_argument("--features", action="store_true", help="bf16, torch.compile, larger batch")
    parser.add_argument(
        "--fast-path",
        action="store_true",
        help="only the defaults in fp32, bf16-mixed, compiled and both, and a profile of the fastest",
    )
    parser.add_argument(
        "--precisions",
        action="store_true",
        help="--fast-path: only the fp32 and bf16-mixed rows, no profile (benchmarks/device_check.sh speed)",
    )
    parser.add_argument(
        "--compile-mode",
        default=None,
        help="--fast-path: torch.compile mode of the compiled rows (reduce-overhead: CUDA graphs)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=30,
        help="--fast-path: batches before the timed ones (torch.compile compiles in the first)",
    )
    parser.add_argument(
        "--step-costs",
        action="store_true",
        help="the defaults with the step's changes one by one (fused Adam, lazy R1, no R1), in --precision",
    )
    parser.add_argument(
        "--precision", default="auto", help="--step-costs: trainer.precision of its rows (32-true: fp32)"
    )
    parser.add_argument("--tiny", action="store_true", help="a few iterations, one repeat")
    parser.add_argument("--defaults", action="store_true", help="(a) with the project's defaults (R1, EMA of G)")
    parser.add_argument("--logger", default=None, help="(a)'s logger option, e.g. csv (default: W&B offline + CSV)")
    args = parser.parse_args()
    from advnets.lightning_internals import keep_noise_out_of_logs

    keep_noise_out_of_logs()  # as src/train.py: Lightning's litlogger tip and known warnings
    OPTIONS["extra"] = [] if args.defaults else LIKE_PLAIN
    OPTIONS["logger"] = [f"logger={args.logger}"] if args.logger else []
    if args.tiny:
        args.iters, args.repeats = 5, 1
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    data_dir = prepare_data(args.data_dir)
    print(
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.iters} iterations of batch {args.batch}, {args.repeats} repeats",
        flush=True,
    )
    if args.fast_path:
        fast_path_rows(args, data_dir)
        return
    if args.step_costs:
        step_cost_rows(args, data_dir)
        return

    speeds: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    for _ in range(args.repeats):
        speeds["a"].append(run_project(args.iters, args.batch, args.device, data_dir))
        speeds["b"].append(run_plain_dataloader(args.iters, args.batch, args.device, data_dir, args.workers))
        speeds["c"].append(run_plain_tensor(args.iters, args.batch, args.device, data_dir))
    med = {k: statistics.median(v) for k, v in speeds.items()}
    names = {
        "a": f"project (Trainer + module + DataModule, {args.logger or 'W&B offline'})",
        "b": f"plain loop, torchvision DataLoader ({args.workers} workers)",
        "c": "plain loop, data as one tensor",
    }
    for k in "abc":
        print(f"({k}) {names[k]:<58} {med[k]:9.0f} samples/s  runs: {', '.join(f'{v:.0f}' for v in speeds[k])}")
    print(f"a/b = {med['a'] / med['b']:.3f}   a/c = {med['a'] / med['c']:.3f}")
    print(peak_memory(args.device), flush=True)

    if args.scaling:
        for batch in (50, 100, 200, 400):
            print(
                f"scaling: batch {batch:4d}: {run_project(args.iters, batch, args.device, data_dir):9.0f} samples/s",
                flush=True,
            )
        if args.device == "cpu":
            threads = torch.get_num_threads()
            for n in (1, 2):
                torch.set_num_threads(n)
                print(
                    f"scaling: {n} thread(s), batch {args.batch}: "
                    f"{run_project(args.iters, args.batch, args.device, data_dir):9.0f} samples/s",
                    flush=True,
                )
            torch.set_num_threads(threads)

    if args.features:
        features = {
            "default": [],
            "bf16-mixed": ["trainer.precision=bf16-mixed"],
            "torch.compile": ["model.compile=true"],
            "batch 400, lr x4": ["optimizer.lr=0.4"],
        }
        for name, extra in features.items():
            batch = 400 if name.startswith("batch") else args.batch
            print(
                f"feature: {name:<18} {run_project(args.iters, batch, args.device, data_dir, extra):9.0f} samples/s",
                flush=True,
            )


FP32_ROW = "fp32 (32-true)"  # the rows' reference: each prints its ratio to this one
FAST_PATH_ROWS = {
    FP32_ROW: ["trainer.precision=32-true"],
    "bf16-mixed (fast path)": ["trainer.precision=bf16-mixed"],
    "fp32 + model.compile": ["trainer.precision=32-true", "model.compile=true"],
    "bf16-mixed + model.compile": ["trainer.precision=bf16-mixed", "model.compile=true"],
    # The updates compiled (advnets/updates.py): the optimisers' steps, G's average and the bf16 casts fused.
    "bf16-mixed + compile_updates": ["trainer.precision=bf16-mixed", "model.compile_updates=true"],
}

# --precisions: the two precisions alone (on a GPU bf16-mixed is Lightning's autocast, on a CPU the fast path).
PRECISION_ROWS = {FP32_ROW: FAST_PATH_ROWS[FP32_ROW], "bf16-mixed": ["trainer.precision=bf16-mixed"]}


def fast_path_rows_for(compile_mode: str | None) -> dict[str, list[str]]:
    """FAST_PATH_ROWS, the compiled ones in torch.compile's `compile_mode` (e.g. reduce-overhead) when given."""
    if not compile_mode:
        return FAST_PATH_ROWS
    return {
        name.replace("model.compile", f"compile {compile_mode}"): [
            o.replace("model.compile=true", f"model.compile={compile_mode}") for o in extra
        ]
        for name, extra in FAST_PATH_ROWS.items()
    }


def matmul_rates(device: str, rows: int = 100, width: int = 1200, repeats: int = 50) -> dict[str, float]:
    """GFLOP/s of a (rows x width) by (width x width) matmul, D's and G's hidden layer at batch 100, in fp32
    and bf16: what the fast path can gain, before any overhead (on a CPU without bf16 matrix units, bf16 is
    emulated and slower)."""
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(rows, width, device=device, dtype=dtype)
        b = torch.randn(width, width, device=device, dtype=dtype)
        for _ in range(5):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        rates[str(dtype).removeprefix("torch.")] = (
            2 * rows * width * width * repeats / (time.perf_counter() - start) / 1e9
        )
    return rates


def fast_path_rows(args, data_dir: str) -> None:
    """The defaults (R1, EMA of G: OPTIONS["extra"] is empty) in the four precisions, interleaved.

    Each row also gives samples per CPU second of this process: on a machine whose other core is busy the
    wall-clock rate moves with the neighbours' load, the CPU-time rate much less (one thread: the two agree
    on an idle machine)."""
    OPTIONS["extra"] = []
    if args.device == "cpu":
        from advnets.precision import cpu_bf16_units

        rates = matmul_rates("cpu")
        print(
            f"cpu: {torch.backends.cpu.get_cpu_capability()}, bf16 matrix units: {cpu_bf16_units() or 'none'}; "
            f"100 x 1200 by 1200 x 1200 matmul: fp32 {rates['float32']:.0f} GFLOP/s, bf16 {rates['bfloat16']:.0f} "
            f"GFLOP/s (x{rates['bfloat16'] / rates['float32']:.2f})",
            flush=True,
        )
    rows = PRECISION_ROWS if args.precisions else fast_path_rows_for(args.compile_mode)
    speeds: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
    for _ in range(args.repeats):
        for name, extra in rows.items():
            try:
                speeds[name].append(_timed_after_warmup(args, data_dir, extra))
            except Exception as error:  # e.g. CUDA graphs under manual optimisation: the other rows still run
                print(f"run: {name:<28} failed: {type(error).__name__}: {str(error)[:300]}", flush=True)
                continue
            print(
                f"run: {name:<28} {speeds[name][-1][0]:7.0f} samples/s, {speeds[name][-1][1]:7.0f} per CPU s",
                flush=True,
            )
    med = {
        name: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
        for name, v in speeds.items()
        if v
    }
    print(
        f"the defaults (Algorithm 1, k=1, R1 gamma 0.1, EMA of G), batch {args.batch}, {args.iters} batches timed "
        f"after {args.warmup} warm-up ones (compilation), median of {args.repeats}:"
    )
    print_rows("fast-path", med, args.batch, FP32_ROW, " of fp32")
    if args.precisions:
        return
    # The fastest per CPU second on a CPU (the neighbours' load moves wall time), per second on a GPU.
    fastest = max(med, key=lambda name: med[name][0 if args.device == "cuda" else 1])
    batches = min(args.iters, 50)
    profiles = {}
    # On a CPU fp32 too: where the fastest saves time, and where not. On a GPU the ops' CPU time is the launches.
    for name in dict.fromkeys([FP32_ROW, fastest] if args.device == "cpu" else [fastest]):
        profiles[name] = _Profile(skip=args.warmup, batches=batches)
        run_project(args.warmup + batches, args.batch, args.device, data_dir, rows[name], [profiles[name].callback])
    print(f"profile of the fastest ({fastest}), {batches} batches:\n{profiles[fastest].table}", flush=True)
    if args.device == "cpu":
        shares = {name: profile.shares for name, profile in profiles.items()}
        print(f"where the time goes:\n{where_the_time_goes(shares)}", flush=True)


FOR_LOOP_ADAM, GRADIENTS_KEPT, FAST_PATH_MASKS = "for-loop Adam", "gradients kept", "fast path's masks"

# --step-costs: what each change of the step buys, on the defaults (Adam, R1 0.1, the EMA of G) in the precision
# trainer.precision=auto picks on this machine. name: (overrides, how the step differs from today's: step_as).
STEP_COST_ROWS = {
    "for-loop Adam, R1 (before)": (["stabilisers.r1_every=1"], FOR_LOOP_ADAM),
    "fused Adam, R1": (["stabilisers.r1_every=1"], None),
    "fused Adam, lazy R1 every 4 (default)": (["stabilisers.r1_every=4"], None),
    "the default, gradients kept": (["stabilisers.r1_every=4"], GRADIENTS_KEPT),
    # In fp32 only (the fast path has them already): not kept, as fp32 runs would no longer draw their masks.
    "the default, fast path's masks, max": (["stabilisers.r1_every=4"], FAST_PATH_MASKS),
    "fused Adam, no R1 (the floor)": (["stabilisers.r1_gamma=null"], None),
    # The official code's update: G's forward pass and D's on the samples serve both nets' gradients, so an
    # iteration (one D and one G update, as Algorithm 1's with k = 1) does about a quarter less arithmetic.
    "the default, simultaneous update": (["stabilisers.r1_every=4", "schedule=simultaneous"], None),
}


@contextlib.contextmanager
def step_as(change: str | None):
    """The defaults' step as it is (None) or with one `change`: FOR_LOOP_ADAM, advnets.optim.Adam as it was before
    (torch's for-loop implementation on a CPU); GRADIENTS_KEPT, the module's zero_grad(set_to_none=True) zeroing
    the gradients in place (the buffers kept between steps, the backward adds into them); FAST_PATH_MASKS, fp32's
    dropout and maxout as the fast path draws and takes them (16 random bits a unit, torch.max)."""
    from advnets import optim, precision

    saved = optim.Adam.__init__, torch.optim.Optimizer.zero_grad, precision.dropout, precision.maxout
    original, zero_grad = saved[:2]

    def for_loop(self, params, lr, betas):
        torch.optim.Adam.__init__(self, params, lr=lr, betas=betas, foreach=False)
        self.compiled_update = None

    if change == FOR_LOOP_ADAM:
        optim.Adam.__init__ = for_loop
    elif change == GRADIENTS_KEPT:
        torch.optim.Optimizer.zero_grad = lambda self, set_to_none=True: zero_grad(self, set_to_none=False)
    elif change == FAST_PATH_MASKS:
        precision.dropout, precision.maxout = precision.fast_path_dropout, precision.fast_path_maxout
    try:
        yield
    finally:
        optim.Adam.__init__, torch.optim.Optimizer.zero_grad, precision.dropout, precision.maxout = saved


def step_cost_rows(args, data_dir: str) -> None:
    """STEP_COST_ROWS interleaved `--repeats` times; medians and ratios to the first row."""
    from advnets.precision import resolve_precision

    OPTIONS["extra"] = []
    precision = resolve_precision(args.precision, "cpu" if args.device == "cpu" else "gpu", "maxout")
    speeds: dict[str, list[tuple[float, float, float]]] = {name: [] for name in STEP_COST_ROWS}
    for _ in range(args.repeats):
        for name, (extra, change) in STEP_COST_ROWS.items():
            with step_as(change):
                speeds[name].append(_timed_after_warmup(args, data_dir, [f"trainer.precision={precision}", *extra]))
            wall, cpu, faults = speeds[name][-1]
            print(f"run: {name:<37} {wall:7.0f} samples/s, {cpu:7.0f} per CPU s, {faults:6.0f} page faults/batch")
    med = {name: tuple(statistics.median(x[i] for x in v) for i in (0, 1)) for name, v in speeds.items()}
    print(
        f"the defaults (Algorithm 1, k=1, Adam, R1 gamma 0.1, EMA of G) in {precision}, batch {args.batch}, "
        f"{args.iters} batches timed after {args.warmup}, median of {args.repeats}:"
    )
    print_rows("step-costs", med, args.batch, next(iter(med)))
    faults = {name: statistics.median(x[2] for x in v) for name, v in speeds.items()}
    print("minor page faults per batch (median): " + ", ".join(f"{n} {f:.0f}" for n, f in faults.items()))


def print_rows(kind: str, med: dict[str, tuple[float, float]], batch: int, reference: str, of: str = "") -> None:
    """One line a row: median samples/s and per CPU second, each with its ratio to the `reference` row's."""
    wall0, cpu0 = med[reference]
    for name, (wall, cpu) in med.items():
        # k = 1: one iteration is one D update and one G update.
        print(
            f"{kind}: {name:<37} {wall:7.0f} samples/s  {wall / batch:6.1f} D+G updates/s  "
            f"x{wall / wall0:4.2f}{of} | {cpu:7.0f} per CPU s  x{cpu / cpu0:4.2f}{of}",
            flush=True,
        )


def _timed_after_warmup(args, data_dir: str, extra: list[str]) -> tuple[float, float, float]:
    """(samples per second, samples per CPU second, minor page faults per batch) over batches
    warmup..warmup+iters-1 of one run."""
    import pytorch_lightning as pl

    first, last = args.warmup, args.warmup + args.iters
    marks: dict[int, tuple[float, float]] = {}

    class Marks(pl.Callback):
        def on_train_batch_end(cb, trainer, module, outputs, batch, batch_idx):
            if batch_idx + 1 in (first, last):
                if args.device == "cuda":
                    torch.cuda.synchronize()
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                marks[batch_idx + 1] = (time.perf_counter(), time.process_time(), faults)

    run_project(last, args.batch, args.device, data_dir, extra, callbacks=[Marks()])
    samples = args.iters * args.batch
    (wall0, cpu0, faults0), (wall1, cpu1, faults1) = marks[first], marks[last]
    return samples / (wall1 - wall0), samples / (cpu1 - cpu0), (faults1 - faults0) / args.iters


if __name__ == "__main__":
    main()
