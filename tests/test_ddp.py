"""`python src/train.py trainer=ddp_cpu`: 2 CPU processes (gloo), run as a user runs it.

Each rank records what it did through RankProbe, a callback the test adds with `callbacks.extra`
(the subprocess finds it on PYTHONPATH): its first two training batches, the noise they drew (with the
global RNG state at that moment, which dropout draws from), the instance noise added to each input of D
and the dropout mask of D's first layer, both nets' parameters around them, the Parzen centres it drew for
the final estimate, its counters and its final parameters.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from conftest import REPO, compose, run_script, tiny_run

BATCHES, K = 20, 2
# Small nets (the DDP machinery does not depend on their size), and a D whose initial weights are large enough
# that G's first step is far above float32 rounding (at the paper's 0.005 it moves G's weights by ~1e-8).
NETS = [
    "model.generator.layers=[{units:64,activation:relu,irange:0.05}]",
    "model.discriminator.layers=[{units:32,pieces:5,irange:0.1}]",
    "model.discriminator.output_irange=0.5",
]
# Every random stream on: G's noise, dropout (the paper's, on by default) and instance noise.
INSTANCE_NOISE = 0.1


def nets(module) -> dict:
    return {
        n: p.detach().clone()
        for net in ("generator", "discriminator")
        for n, p in getattr(module, net).named_parameters(prefix=net)
    }


class RankProbe(pl.Callback):
    """Writes <folder>/rank<r>.pt (see the module docstring)."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.step = None  # the 0-based training batch of epoch 1 being recorded, else None
        self.record = {"batches": [], "noise": [], "params": [], "centres": [], "instance_noise": [], "masks": []}

    def on_train_start(self, trainer, module) -> None:
        real_noise, real_sample, real_d_input = module.noise, module.sample, module._d_input

        def d_input(x):
            out = real_d_input(x)
            if self.step is not None:
                self.record["instance_noise"].append((self.step, (out - x).detach().clone()))
            return out

        def mask(layer, args, out):
            if self.step is not None and len(self.record["masks"]) == self.step:
                self.record["masks"].append((out != 0).clone())

        module._d_input = d_input
        next(m for m in module.discriminator.modules() if isinstance(m, torch.nn.Dropout)).register_forward_hook(mask)

        def noise(n, generator=None, device=None):
            rng = torch.get_rng_state()
            z = real_noise(n, generator, device)
            if self.step is not None:
                self.record["noise"].append((self.step, z.clone(), rng))
            return z

        def sample(n, generator=None, batch=2000, which="raw"):
            x = real_sample(n, generator, batch, which)
            if trainer.testing:
                self.record["centres"].append((which, x.clone()))
            return x

        module.noise, module.sample = noise, sample

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.current_epoch == 0 and batch_idx < 2:
            self.step = batch_idx
            self.record["batches"].append(batch.clone())
            self.record["params"].append(nets(module))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.step == 1:
            self.record["params"].append(nets(module))
        self.step = None

    def on_train_end(self, trainer, module) -> None:
        self.record.update(
            {
                "world_size": trainer.world_size,
                "counters": (module.d_updates, module.g_updates),
                "final": {n: p.detach().clone() for n, p in module.named_parameters()},
            }
        )

    def on_test_end(self, trainer, module) -> None:
        parzen, quality = module.evaluation.last_parzen["raw"], module.evaluation.last_quality["raw"]
        self.record["parzen"] = (parzen.n_samples, parzen.n_points)
        self.record["quality"] = (quality.n_samples, quality.n_real)
        torch.save(self.record, self.folder / f"rank{trainer.global_rank}.pt")


@pytest.fixture(scope="module")
def ddp_run(data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    run_dir = tmp / "run"
    probe = f"callbacks.extra=[{{_target_:test_ddp.RankProbe,folder:'{tmp}'}}]"
    proc = run_script(
        "train.py",
        "trainer=ddp_cpu",
        # fp32: the checks below replay the ranks' steps and dropout masks in fp32 (trainer.precision=auto would
        # take the bf16 fast path, with its own masks, on a CPU with AMX).
        "trainer.precision=32-true",
        # The paper's SGD: its first step is -lr0 times the gradient, which the replay below checks.
        "optimizer=momentum",
        f"k={K}",
        *tiny_run(data_dir, BATCHES),
        *NETS,
        probe,
        f"stabilisers.instance_noise_std={INSTANCE_NOISE}",
        f"hydra.run.dir={run_dir}",
        env={"PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return run_dir, ranks


@pytest.mark.slow
def test_ranks_end_with_identical_parameters(ddp_run):
    run_dir, (rank0, rank1) = ddp_run
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["final"].keys() == rank1["final"].keys()
    # The ranks saw different batches and noise, yet their weights stay equal (the mean is checked below).
    for name, p in rank0["final"].items():
        assert torch.equal(p, rank1["final"][name]), name
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for name, p in rank0["final"].items():
        assert torch.equal(p, ckpt["state_dict"][name]), name


@pytest.mark.slow
def test_each_rank_trains_on_its_own_batches_and_noise(ddp_run):
    """In the real fit, the ranks' first batches are different images and every noise draw differs."""
    _, (rank0, rank1) = ddp_run
    for a, b in zip(rank0["batches"], rank1["batches"]):
        assert a.shape == b.shape == (100, 1, 28, 28) and torch.cdist(a.flatten(1), b.flatten(1)).min() > 0
    # Batch 1: a D step; batch 2: a D step, then the G step (k = 2).
    assert [s for s, _, _ in rank0["noise"]] == [s for s, _, _ in rank1["noise"]] == [0, 1, 1]
    for (_, z0, _), (_, z1, _) in zip(rank0["noise"], rank1["noise"]):
        assert z0.shape == (100, 100) and torch.cdist(z0, z1).min() > 0


def close(change: torch.Tensor, expected: torch.Tensor) -> bool:
    return bool((change - expected).abs().max() <= 1e-3 * expected.abs().max())


def flat(params: dict, prefix: str) -> torch.Tensor:
    return torch.cat([p.flatten() for n, p in params.items() if n.startswith(prefix)])


@pytest.mark.slow
def test_each_step_is_the_mean_of_the_ranks_gradients(ddp_run):
    """Each rank's first D step and first G step, recomputed in this process from what the rank recorded
    (batch, noise, dropout RNG state, parameters): the change of the weights is -lr0 times the mean of the
    two ranks' gradients, and neither their sum nor either rank's own gradient."""
    run_dir, ranks = ddp_run
    from advnets.module import GAN

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    module = GAN(ckpt["hyper_parameters"]["config"])
    lr0 = float(module.cfg.optimizer.lr)
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):  # the same weights on both ranks at every point
        assert all(torch.equal(p, b[n]) for n, p in a.items())
    before, between, after = ranks[0]["params"]  # batch 1 start, batch 2 start, batch 2 end
    assert torch.equal(flat(between, "generator"), flat(before, "generator"))  # D's steps leave G alone
    named = dict(module.named_parameters())

    def gradients(params: dict, loss_of) -> list[torch.Tensor]:
        with torch.no_grad():
            for n, p in params.items():
                named[n].copy_(p)
        out = []
        for rank in ranks:
            with torch.random.fork_rng():
                out.append(loss_of(rank))
        return out

    def d_loss(rank) -> torch.Tensor:  # D's loss of batch 1 (R1 included), with the rank's dropout masks
        _, z, rng = rank["noise"][0]  # and instance noise
        torch.set_rng_state(rng)
        with torch.no_grad():
            fake = module.generator(z)
        added = iter([eps for step, eps in rank["instance_noise"] if step == 0])
        module._d_input = lambda x: x + next(added)
        loss = module._discriminator_loss(rank["batches"][0], fake)[2]
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(module.discriminator.parameters()))])

    def g_loss(
        rank,
    ) -> torch.Tensor:  # G's non-saturating loss of its first step (batch 2), at D after batch 2's D step
        _, z, rng = rank["noise"][2]
        torch.set_rng_state(rng)
        added = [eps for step, eps in rank["instance_noise"] if step == 1][2]  # after the D step's two
        loss = torch.nn.functional.softplus(-module.discriminator(module.generator(z) + added)).mean()
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(module.generator.parameters()))])

    d_grads = gradients(before, d_loss)
    g_grads = gradients({**before, **{n: p for n, p in after.items() if n.startswith("discriminator")}}, g_loss)
    for prefix, grads, change in (
        ("discriminator", d_grads, flat(between, "discriminator") - flat(before, "discriminator")),
        ("generator", g_grads, flat(after, "generator") - flat(before, "generator")),
    ):
        mean = (grads[0] + grads[1]) / 2
        assert close(change, -lr0 * mean), (prefix, (change + lr0 * mean).abs().max() / (lr0 * mean).abs().max())
        for wrong in (-lr0 * 2 * mean, -lr0 * grads[0], -lr0 * grads[1]):
            assert not close(change, wrong), prefix


@pytest.mark.slow
def test_every_random_stream_differs_between_ranks_and_follows_its_seed(ddp_run):
    """G's noise, the instance noise on every input of D and D's dropout masks, in each rank's first two batches:
    different on the two ranks, and each rank's what (seed, rank, epoch, batch) alone give (test_wiring's
    expected_draws), which is what a rank resumed at that batch draws (test_wiring checks a resumed run)."""
    from test_wiring import assert_draws, expected_draws

    _, ranks = ddp_run
    for rank_index, rank in enumerate(ranks):
        for batch_idx, batch in enumerate(rank["batches"]):
            got = {
                "z": [z for step, z, _ in rank["noise"] if step == batch_idx],
                "instance_noise": [eps for step, eps in rank["instance_noise"] if step == batch_idx],
                "mask": rank["masks"][batch_idx],
            }
            expected = expected_draws(0, rank_index, 1, batch_idx, tuple(batch.shape), 100, INSTANCE_NOISE, 0.2)
            assert_draws(got, expected, (rank_index, batch_idx), g_step=batch_idx == K - 1)
    for step in (0, 1):
        noise = [[eps for s, eps in rank["instance_noise"] if s == step] for rank in ranks]
        assert len(noise[0]) == len(noise[1]) == (2 if step == 0 else 3)
        for a, b in zip(*noise):
            assert a.std() > 0.09 and torch.cdist(a.flatten(1), b.flatten(1)).min() > 0
        assert ranks[0]["masks"][step].shape == (100, 784) and not torch.equal(
            ranks[0]["masks"][step], ranks[1]["masks"][step]
        )


@pytest.mark.slow
def test_ranks_draw_different_parzen_centres(ddp_run):
    """For the final estimate each rank draws its own share (100 of parzen.test_samples = 200) of centres, for
    G and for its EMA, from its own noise: the shares differ. (The Parzen estimate draws first; the sample-quality
    metrics then draw their own 100 each, G's and the EMA's.)"""
    _, (rank0, rank1) = ddp_run
    assert [w for w, _ in rank0["centres"]] == [w for w, _ in rank1["centres"]] == ["raw", "ema", "raw", "ema"]
    for (_, a), (_, b) in zip(rank0["centres"], rank1["centres"]):
        assert a.shape == b.shape == (100, 1, 28, 28)
        assert torch.cdist(a.flatten(1), b.flatten(1)).min() > 0


@pytest.mark.slow
def test_counters_follow_the_k_schedule(ddp_run):
    run_dir, ranks = ddp_run
    # Every rank takes BATCHES batches of its own share: BATCHES D steps, one G step after every K-th.
    for rank in ranks:
        assert rank["counters"] == (BATCHES, BATCHES // K)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["counters"] == {"d_updates": BATCHES, "g_updates": BATCHES // K}


@pytest.mark.slow
def test_only_rank_zero_writes(ddp_run):
    run_dir, _ = ddp_run
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        f"epoch0000-step{BATCHES + BATCHES // K}.ckpt",
        "last.ckpt",
    ]
    assert [p.name for p in (run_dir / "csv").iterdir()] == ["version_0"]
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["epoch_0001.png"]
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # One test estimate, logged once.
    test_ll = [float(r["test/parzen_ll"]) for r in rows if r["test/parzen_ll"]]
    assert len(test_ll) == 1 and math.isfinite(test_ll[0])


@pytest.mark.slow
def test_parzen_gathers_every_ranks_share(ddp_run):
    _, ranks = ddp_run
    # parzen.test_samples=200 centres, 100 drawn on each rank; the 10,000 MNIST test images, 5,000 on each.
    assert [rank["parzen"] for rank in ranks] == [(200, 10000), (200, 10000)]
    # The sample-quality metrics gather every rank's samples and test images the same way.
    assert [rank["quality"] for rank in ranks] == [(200, 10000), (200, 10000)]


def test_gpu_ddp_config_composes():
    trainer = compose("trainer=ddp").trainer
    assert (trainer.accelerator, trainer.devices, trainer.strategy) == ("gpu", -1, "ddp_find_unused_parameters_true")
    assert trainer.use_distributed_sampler is False  # the batches shard themselves


class _Ranks:
    """What CollapseMonitor uses of a Lightning strategy, over this process group (gloo, 2 processes)."""

    root_device = torch.device("cpu")

    def __init__(self):
        import torch.distributed as dist

        self.global_rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def reduce(self, tensor, reduce_op):
        import torch.distributed as dist

        assert reduce_op == "sum"
        dist.all_reduce(tensor)
        return tensor

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # what the monitor used before
        votes = self.reduce(torch.tensor(int(decision)), "sum")
        return bool(votes == self.world_size) if all else bool(votes > 0)


def _collapse_epoch(resume_after: int | None) -> dict:
    """This rank's CollapseMonitor over one epoch of 4 batches (this rank's D(x) and D(G(z)) differ from the other's);
    with `resume_after`, a checkpoint after that batch (rank 0's state, as Lightning writes) loaded into every rank's
    new monitor, which trains on. Returns what it logged at the epoch's end."""
    from types import SimpleNamespace

    import torch.distributed as dist

    from advnets.guards import CollapseMonitor

    rank = dist.get_rank()
    logged = {}
    module = SimpleNamespace(step_record={}, log_dict=lambda values, **kw: logged.update(values))
    trainer = SimpleNamespace(strategy=_Ranks(), current_epoch=0, should_stop=False)

    def new_monitor():
        monitor = CollapseMonitor()
        monitor.setup(trainer, module, "fit")
        monitor.on_train_epoch_start(trainer, module)
        return monitor

    monitor = new_monitor()
    for batch in range(4):
        if batch == resume_after:
            state = monitor.state_dict()  # every rank makes it (the reduction); rank 0's is saved
            saved = [state]
            dist.broadcast_object_list(saved, src=0)
            monitor = new_monitor()
            monitor.load_state_dict(saved[0])
        d_real = torch.tensor(0.999 if rank == 0 else 0.5 + 0.1 * batch)
        module.step_record = {"d_real": d_real, "d_fake": 1 - d_real}
        monitor.on_train_batch_end(trainer, module, None, None, batch)
    monitor.on_train_epoch_end(trainer, module)
    return logged


def _collapse_rank(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        torch.save({r: _collapse_epoch(r) for r in (None, 2)}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_collapse_monitor_resumed_mid_epoch_under_ddp_logs_what_the_uninterrupted_epoch_logs(tmp_path):
    """Two gloo processes: the epoch's mean D(x) and D(G(z)) are over both ranks' D updates, the same on both, and a
    resume after batch 2 from rank 0's checkpoint (the only one written) logs exactly what the uninterrupted epoch
    logs (each rank restoring rank 0's own sums would count rank 0's first batches twice and rank 1's never)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_collapse_rank, args=(port, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    straight = ranks[0][None]
    mean_real = (4 * 0.999 + sum(0.5 + 0.1 * b for b in range(4))) / 8
    assert straight["train/epoch_d_real"] == pytest.approx(mean_real, abs=1e-6)
    for rank in ranks:
        assert rank[None] == straight and rank[2] == straight
