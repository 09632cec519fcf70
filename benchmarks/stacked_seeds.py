#!/usr/bin/env python
"""Several seeds in one process (issue 45, item 4): the default's training step for S seeds stacked, against S
processes of one seed each.

The step is the default's (conf/train.yaml, composed by Hydra from conf/): Algorithm 1 with k = 1, a D update on a
real minibatch and freshly drawn noise, with R1 (gamma/2 E||grad_x D(x)||^2 on the real batch, from the same forward
pass, lazy with stabilisers.r1_every as advnets.stabilisers.R1Penalty takes it), then a G update on fresh noise with
the non-saturating loss (advnets.losses), each net stepped by the optimiser advnets.optim.build_optimizer builds
(the default: fused Adam), then G's average (advnets.ema.ema_beta's decay and ramp-up) and G's gradient norm. It is
written with torch.func: S seeds' G and D (built by advnets.nets from their own seeds) stacked with
`stack_module_state`, run by `functional_call` under `vmap(..., randomness="different")` (each seed its own dropout
masks), R1 by a `grad` nested in the D loss's `grad`, and one optimiser per net over the stacked weights: Adam is
elementwise and the seeds step together, so one Adam over (S, ...) tensors is S Adams, its step count (and so its
bias corrections) the same for every seed (tests/test_stacked_seeds.py checks the stacked step against the eager
one, seed by seed). Interleaved `--repeats` times, medians printed:

  (a) the stacked step, S seeds in one process (--threads threads, default S; on cuda: one GPU);
  (b) S processes at once, each running the same functional step (the stacked code with S = 1) for one seed on one
      thread (on cuda: all on the same GPU);
  (c) S processes at once, each running the eager step of one seed (plain modules, autograd, the project's optimiser,
      R1Penalty and GeneratorEMA: module.py's update without Lightning), one thread each.

Each row is samples per second summed over the seeds (real samples of D's updates: S x batch x iters over the
wall time from the first process's timed start to the last one's end), after `--warmup` untimed steps. a/b > 1:
stacking pays against processes running the same code; a/c > 1: it pays against what the project does now (one
process a seed). On a CPU the cores bound both: (b) and (c) with S <= cores are the baseline to beat. On a GPU,
where one seed of these small nets leaves the device mostly idle, (a) should grow with S.

Not measured: Lightning's per-step work (hooks, logging, the noise and dropout generators reseeded per batch), the
data loading (the batches are index gathers from a synthetic on-device tensor of MNIST's shape, as the default's
on-device data) and the fast path (fp32 only). Not reproduced: the module's per-seed random streams (every seed's
masks here come from the one global generator, through vmap), so a stacked seed does not draw what
`src/train.py seed=s` draws, and a resume would not be exact.

    python benchmarks/stacked_seeds.py                                        # CPU: S=2, batch 100, 3 repeats
    python benchmarks/stacked_seeds.py --device cuda --seeds-per-process 8   # one GPU
    python benchmarks/stacked_seeds.py --smoke                                # a few tiny steps (the tests)
    python benchmarks/stacked_seeds.py stabilisers.r1_every=1                 # any Hydra override of conf/train.yaml
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.func import functional_call, grad, stack_module_state, vmap  # noqa: E402

from advnets.ema import GeneratorEMA, ema_beta  # noqa: E402
from advnets.losses import discriminator_loss, generator_loss  # noqa: E402
from advnets.nets import build_discriminator, build_generator  # noqa: E402
from advnets.noise import draw_noise  # noqa: E402
from advnets.optim import build_optimizer  # noqa: E402
from advnets.stabilisers import build_stabilisers  # noqa: E402

SHAPE = (1, 28, 28)  # MNIST, the default's data set
DATA_ROWS = 10_000  # the synthetic training set each process gathers its batches from


# --- the config --------------------------------------------------------------------------------------------------
def compose(*overrides: str) -> dict:
    """The parts of the default's config (conf/train.yaml and `overrides`) that the step reads, resolved, as plain
    data: the child processes get it as JSON."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    import advnets.config  # noqa: F401  (its resolvers)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=list(overrides))
    keys = ("model", "optimizer", "stabilisers", "loss", "k", "schedule", "seed")
    config = {
        key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in keys
    }
    config["batch_size"] = int(cfg.dataset.batch_size)
    config["dataset"] = str(cfg.dataset.name)
    config["precision"] = str(cfg.trainer.precision)
    check_supported(config)
    return config


def check_supported(cfg: dict) -> None:
    """Refuse the settings this functional step does not reproduce, rather than time something else."""
    model, stab = cfg["model"], cfg["stabilisers"] or {}
    refused = {
        "dataset": cfg["dataset"] != "mnist",
        "model.name": model["name"] != "maxout",  # the conv nets' batch norm has buffers vmap would update
        "schedule": cfg["schedule"] != "alternating",
        "stabilisers.instance_noise_std": stab.get("instance_noise_std") is not None,
        "model.max_col_norm": bool(model.get("max_col_norm")),
        "model.compile": bool(model.get("compile")) or bool(model.get("compile_updates")),
        "optimizer.anneal_epochs": bool(cfg["optimizer"].get("anneal_epochs")),
        "trainer.precision": cfg["precision"] not in ("auto", "32-true", "32"),  # fp32 only (no fast path)
    }
    bad = [key for key, is_bad in refused.items() if is_bad]
    if bad:
        raise SystemExit(
            f"error: not reproduced by the functional step: {', '.join(bad)} (the default's settings only)"
        )


def build_nets(cfg: dict, seed: int, device: str) -> tuple[nn.Module, nn.Module]:
    """One seed's G and D, as the module builds them (G first, then D, from the seeded global generator)."""
    torch.manual_seed(seed)
    g = build_generator(cfg["model"], SHAPE).to(device)
    d = build_discriminator(cfg["model"], SHAPE).to(device)
    return g, d


class Algorithm1:
    """Algorithm 1's loop, shared by the stacked and the eager step: a D update, and a G update after every k-th."""

    k: int
    d_updates: int

    def step(self, real: Tensor, z_d: Tensor, z_g: Tensor) -> None:
        self.discriminator_step(real, z_d)
        if self.d_updates % self.k == 0:
            self.generator_step(z_g)


# --- the stacked step --------------------------------------------------------------------------------------------
class StackedGAN(Algorithm1):
    """S seeds' G and D with their optimisers and G's average, every tensor stacked over a leading seed dimension.

    `step(real, z_d, z_g)` is one training step for every seed (real: (S, B, *shape); z_d, z_g: (S, B, noise_dim),
    the D update's and the G update's noise), as GAN.training_step with schedule=alternating."""

    def __init__(self, cfg: dict, generators: list[nn.Module], discriminators: list[nn.Module]):
        for net in (*generators, *discriminators):
            if next(net.buffers(), None) is not None:
                raise ValueError("nets with buffers are not stacked here (maxout nets have none)")
        self.seeds = len(generators)
        self.k = int(cfg["k"])
        self.loss = cfg["loss"]
        self.r1, _ = build_stabilisers(cfg["stabilisers"] or {})
        self.decay, self.rampup = cfg["model"].get("ema_decay"), cfg["model"].get("ema_rampup")
        # Weightless copies whose forward `functional_call` runs with a seed's weights (train mode: dropout on).
        self.g_base = copy.deepcopy(generators[0]).to("meta").train()
        self.d_base = copy.deepcopy(discriminators[0]).to("meta").train()
        # Plain leaf tensors (no autograd history); torch.func differentiates them, the optimisers step them.
        self.g = {k: v.detach() for k, v in stack_module_state(generators)[0].items()}
        self.d = {k: v.detach() for k, v in stack_module_state(discriminators)[0].items()}
        opt = cfg["optimizer"]
        self.d_opt = build_optimizer(list(self.d.values()), opt, opt.get("d_lr"))
        self.g_opt = build_optimizer(list(self.g.values()), opt, opt.get("g_lr"))
        self.ema = {k: v.clone() for k, v in self.g.items()} if self.decay else None  # GeneratorEMA.reset
        self.d_updates = self.g_updates = 0
        self.record: dict[str, Tensor] = {}  # per seed (S,): d_loss, d_real, d_fake, r1_penalty, g_loss, g_grad_norm

    def generator(self, params: dict[str, Tensor], z: Tensor) -> Tensor:
        return functional_call(self.g_base, params, (z,))

    def discriminator(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.d_base, params, (x,))

    def discriminator_step(self, real: Tensor, z: Tensor) -> None:
        with torch.no_grad():
            fake = vmap(self.generator, randomness="different")(self.g, z)
        r1_due = self.r1 is not None and self.r1.due(self.d_updates)
        r1_scale = self.r1.factor(self.g_updates) if r1_due else 0.0
        d_scale, real_label = float(self.loss["d_scale"]), float(self.loss.get("real_label", 1.0))

        def loss_of(params, real, fake):  # one seed's D loss (vmapped over seeds)
            if r1_due:

                def logits_of(x):
                    logits = self.discriminator(params, x)
                    return logits.sum(), logits

                # D's input gradient and its logits from one forward pass (the same dropout masks), as R1Penalty.
                x_grad, real_logits = grad(logits_of, has_aux=True)(real)
                penalty = r1_scale * x_grad.pow(2).flatten(1).sum(1).mean()
            else:
                real_logits, penalty = self.discriminator(params, real), torch.zeros((), device=real.device)
            fake_logits = self.discriminator(params, fake)
            loss = discriminator_loss(real_logits, fake_logits, d_scale, real_label) + penalty
            aux = (loss, torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean(), penalty)
            return loss, aux

        grads, (loss, d_real, d_fake, penalty) = vmap(grad(loss_of, has_aux=True), randomness="different")(
            self.d, real, fake
        )
        self._apply(self.d_opt, self.d, grads)
        self.d_updates += 1
        self.record.update(d_loss=loss, d_real=d_real, d_fake=d_fake)
        if r1_due:
            self.record["r1_penalty"] = penalty

    def generator_step(self, z: Tensor) -> None:
        kind = self.loss["generator"]

        def loss_of(g_params, d_params, z):  # D's weights are constants here: no gradient is taken for them
            loss = generator_loss(self.discriminator(d_params, self.generator(g_params, z)), kind)
            return loss, loss

        grads, loss = vmap(grad(loss_of, has_aux=True), randomness="different")(self.g, self.d, z)
        # GAN._measure_generator_gradient, per seed: the norm of G's whole gradient.
        self.record["g_grad_norm"] = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads.values()]), dim=0
        )
        self._apply(self.g_opt, self.g, grads)
        self.g_updates += 1
        if self.ema is not None:  # GeneratorEMA.update(G, n), every seed's average at once (elementwise)
            weight = 1.0 - ema_beta(self.g_updates, float(self.decay), self.rampup)
            torch._foreach_lerp_(list(self.ema.values()), list(self.g.values()), weight)
        self.record["g_loss"] = loss

    @staticmethod
    def _apply(optimizer: torch.optim.Optimizer, params: dict[str, Tensor], grads: dict[str, Tensor]) -> None:
        for name, p in params.items():
            p.grad = grads[name]
        optimizer.step()
        for p in params.values():
            p.grad = None  # zero_grad(set_to_none=True), as the module's

    def seed_state(self, s: int) -> dict[str, dict[str, Tensor]]:
        """Seed s's weights: G, D and G's average."""
        out = {"g": {k: v[s] for k, v in self.g.items()}, "d": {k: v[s] for k, v in self.d.items()}}
        if self.ema is not None:
            out["ema"] = {k: v[s] for k, v in self.ema.items()}
        return out


# --- the eager step of one seed (the reference) ---------------------------------------------------------------------
class EagerGAN(Algorithm1):
    """One seed's step as advnets.module.GAN takes it with schedule=alternating (its _discriminator_step and
    _generator_step), without Lightning: plain modules and autograd, the project's optimiser, R1Penalty, losses and
    GeneratorEMA."""

    def __init__(self, cfg: dict, g: nn.Module, d: nn.Module):
        self.g, self.d = g.train(), d.train()
        self.k = int(cfg["k"])
        self.loss = cfg["loss"]
        self.r1, _ = build_stabilisers(cfg["stabilisers"] or {})
        opt, model = cfg["optimizer"], cfg["model"]
        self.d_opt = build_optimizer(d.parameters(), opt, opt.get("d_lr"))
        self.g_opt = build_optimizer(g.parameters(), opt, opt.get("g_lr"))
        self.ema = (
            GeneratorEMA(g, float(model["ema_decay"]), model.get("ema_rampup")) if model.get("ema_decay") else None
        )
        if self.ema is not None:
            self.ema.reset(g)
        self.d_updates = self.g_updates = 0
        self.record: dict[str, Tensor] = {}

    def discriminator_step(self, real: Tensor, z: Tensor) -> None:
        with torch.no_grad():
            fake = self.g(z)
        if self.r1 is not None and self.r1.due(self.d_updates):
            real_logits, penalty = self.r1.logits_and_penalty(self.d, real, self.g_updates)
            self.record["r1_penalty"] = penalty.detach()
        else:
            real_logits, penalty = self.d(real), 0.0
        fake_logits = self.d(fake)
        loss = discriminator_loss(
            real_logits, fake_logits, float(self.loss["d_scale"]), float(self.loss.get("real_label", 1.0))
        )
        loss = loss + penalty
        self.d_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.d_opt.step()
        self.d_updates += 1
        self.record.update(
            d_loss=loss.detach(),
            d_real=torch.sigmoid(real_logits.detach()).mean(),
            d_fake=torch.sigmoid(fake_logits.detach()).mean(),
        )

    def generator_step(self, z: Tensor) -> None:
        fake = self.g(z)
        fake_in = fake.detach().requires_grad_()
        loss = generator_loss(self.d(fake_in), self.loss["generator"])
        (fake_grad,) = torch.autograd.grad(loss, fake_in)
        self.g_opt.zero_grad(set_to_none=True)
        fake.backward(fake_grad)
        grads = [p.grad for p in self.g.parameters() if p.grad is not None]
        self.record["g_grad_norm"] = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        self.g_opt.step()
        self.g_updates += 1
        if self.ema is not None:
            self.ema.update(self.g, self.g_updates)
        self.record["g_loss"] = loss.detach()


# --- the timed loops ------------------------------------------------------------------------------------------------
def sync_time(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    return time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on the machine


class Batches:
    """Each seed's real minibatches (index gathers from a synthetic on-device training set, each seed its own
    permutation) and the D and G updates' noise, drawn where they are used, as the module draws them."""

    def __init__(self, cfg: dict, seeds: list[int], batch: int, device: str):
        gen = torch.Generator().manual_seed(12345)
        self.data = torch.rand(DATA_ROWS, *SHAPE, generator=gen).to(device)
        self.perms = torch.stack([torch.randperm(DATA_ROWS, generator=gen) for _ in seeds]).to(device)
        self.noise = torch.Generator(device=device).manual_seed(seeds[0])
        self.model, self.batch, self.seeds, self.device = cfg["model"], batch, len(seeds), device
        self.i = 0

    def pixel_mean(self) -> Tensor:
        return self.data.mean(0)

    def next(self) -> tuple[Tensor, Tensor, Tensor]:
        j = (self.i * self.batch) % (DATA_ROWS - self.batch + 1)
        self.i += 1
        real = self.data[self.perms[:, j : j + self.batch]]
        z_d, z_g = (
            draw_noise(
                self.seeds * self.batch, int(self.model["noise_dim"]), self.model["noise"], self.noise, self.device
            ).view(self.seeds, self.batch, -1)
            for _ in range(2)
        )
        return real, z_d, z_g


def build(kind: str, cfg: dict, seeds: list[int], batch: int, device: str):
    """The (a)/(b) stacked step of `seeds`, or (c)'s eager step of one seed, and its batches."""
    batches = Batches(cfg, seeds, batch, device)
    nets = [build_nets(cfg, s, device) for s in seeds]
    for g, _ in nets:  # GAN.setup: G's sigmoid output bias at the logit of the mean training pixel
        g.init_output_bias(batches.pixel_mean())
    if kind == "eager":
        ((g, d),) = nets
        eager = EagerGAN(cfg, g, d)
        return (lambda real, z_d, z_g: eager.step(real[0], z_d[0], z_g[0])), batches
    stacked = StackedGAN(cfg, [g for g, _ in nets], [d for _, d in nets])
    return stacked.step, batches


def timed(step, batches: Batches, iters: int, warmup: int, device: str, ready=None) -> tuple[float, float]:
    """Start and end (monotonic clock) of `iters` steps after `warmup` untimed ones; `ready()` is called between."""
    for _ in range(warmup):
        step(*batches.next())
    sync_time(device)
    if ready is not None:
        ready()
    start = sync_time(device)
    for _ in range(iters):
        step(*batches.next())
    return start, sync_time(device)


def run_in_process(cfg: dict, args) -> float:
    """(a): samples/s of the stacked step of S seeds in this process."""
    seeds = list(range(args.first_seed, args.first_seed + args.seeds_per_process))
    step, batches = build("stacked", cfg, seeds, args.batch, args.device)
    start, end = timed(step, batches, args.iters, args.warmup, args.device)
    return len(seeds) * args.batch * args.iters / (end - start)


def run_processes(kind: str, cfg_path: str, args) -> float:
    """(b) or (c): S processes of one seed each, started together after each one's warm-up; samples/s summed over
    them (all their samples over the wall time from the first start to the last end)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    options = ["--config-json", cfg_path, "--device", args.device, "--batch", str(args.batch)]
    options += ["--iters", str(args.iters), "--warmup", str(args.warmup)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--single", kind, "--first-seed", str(seed), *options],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for seed in range(args.first_seed, args.first_seed + args.seeds_per_process)
    ]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a --single {kind} process failed (exit status {p.wait()})")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        spans = []
        for p in procs:
            line = p.stdout.readline().split()
            if not line or line[0] != "done":
                raise RuntimeError(f"a --single {kind} process failed (exit status {p.wait()})")
            spans.append((float(line[1]), float(line[2])))
    finally:
        for p in procs:
            p.stdin.close()
            p.wait()
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    return len(procs) * args.batch * args.iters / (end - start)


def single(args) -> None:
    """A child of (b) or (c): one seed on one thread; warms up, says `ready`, waits for `go`, prints its span."""
    torch.set_num_threads(1)
    cfg = json.loads(Path(args.config_json).read_text())
    step, batches = build(args.single, cfg, [args.first_seed], args.batch, args.device)

    def ready():
        print("ready", flush=True)
        sys.stdin.readline()

    start, end = timed(step, batches, args.iters, args.warmup, args.device, ready)
    print(f"done {start} {end}", flush=True)


ROWS = {
    "a": "(a) stacked, {S} seeds in one process ({threads})",
    "b": "(b) functional, {S} processes x 1 seed (1 thread each)",
    "c": "(c) eager (the project's step), {S} processes x 1 seed (1 thread each)",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/train.yaml (the default's: none)")
    parser.add_argument("--seeds-per-process", type=int, default=2, help="S")
    parser.add_argument("--batch", type=int, default=None, help="default: the default's (dataset.batch_size)")
    parser.add_argument("--iters", type=int, default=200, help="timed steps a row")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the rows (medians printed)")
    parser.add_argument("--threads", type=int, default=None, help="(a)'s torch threads (default S)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--first-seed", type=int, default=0, help="the seeds are first-seed .. first-seed + S - 1")
    parser.add_argument("--rows", default="abc", help="which rows to run (a, b, c)")
    parser.add_argument("--smoke", action="store_true", help="tiny: batch 8, 3 steps after 1, one repeat")
    parser.add_argument("--single", choices=["stacked", "eager"], help=argparse.SUPPRESS)
    parser.add_argument("--config-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from advnets.precision import fp32_means_fp32

    fp32_means_fp32()  # as src/train.py: no TF32 on a GPU
    if args.single:
        return single(args)
    if args.smoke:
        args.batch, args.iters, args.warmup, args.repeats = args.batch or 8, 3, 1, 1
    cfg = compose(*args.overrides)
    args.batch = args.batch or cfg["batch_size"]
    S = args.seeds_per_process
    threads = args.threads or S
    torch.set_num_threads(threads)
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else None
    print(
        f"device {gpu or 'cpu'}, torch {torch.__version__}, {os.cpu_count()} CPUs; seeds: {S}, batch {args.batch}, "
        f"{args.iters} steps after {args.warmup}, {args.repeats} repeats; r1_gamma {cfg['stabilisers']['r1_gamma']} "
        f"every {cfg['stabilisers'].get('r1_every', 1)}, optimizer {cfg['optimizer']['name']}, "
        f"ema_decay {cfg['model'].get('ema_decay')}",
        flush=True,
    )
    names = {r: ROWS[r].format(S=S, threads=f"{threads} thread{'s' if threads > 1 else ''}") for r in args.rows}
    rates: dict[str, list[float]] = {r: [] for r in args.rows}
    with tempfile.TemporaryDirectory(prefix="advnets-stacked-") as tmp:
        cfg_path = str(Path(tmp) / "config.json")
        Path(cfg_path).write_text(json.dumps(cfg))
        for repeat in range(1, args.repeats + 1):
            for row in args.rows:
                if row == "a":
                    rate = run_in_process(cfg, args)
                else:
                    rate = run_processes("stacked" if row == "b" else "eager", cfg_path, args)
                rates[row].append(rate)
                print(f"run {repeat}: {names[row]}: {rate:.0f} samples/s", flush=True)
    medians = {row: statistics.median(r) for row, r in rates.items()}
    for row, median in medians.items():
        print(f"{names[row]}: {median:.0f} samples/s (median of {args.repeats}), summed over {S} seeds")
    ratios = [f"a/{row} = {medians['a'] / medians[row]:.3f}" for row in "bc" if "a" in medians and row in medians]
    if ratios:
        print("  ".join(ratios))


if __name__ == "__main__":
    main()
