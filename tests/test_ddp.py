"""`python src/train.py trainer=ddp_cpu`: 2 CPU processes (gloo), run as a user runs it.

Each rank records what it did through RankProbe, a callback the test adds with `callbacks.extra`
(the subprocess finds it on PYTHONPATH): the first noise it drew, its counters, its final parameters.
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


class RankProbe(pl.Callback):
    """Writes <folder>/rank<r>.pt: the first D step's noise, the counters and parameters at the end of
    training, and the sizes the final Parzen estimate saw."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.first_z = None
        self.record = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.first_z is None:  # what the first D step is about to draw: a copy of the noise generator
            gen = torch.Generator(device=module.device)
            gen.set_state(module._noise_gen.get_state())
            self.first_z = module.noise(8, gen)

    def on_train_end(self, trainer, module) -> None:
        self.record = {"world_size": trainer.world_size, "z": self.first_z, "counters": (module.d_updates, module.g_updates),
                       "params": {n: p.detach().clone() for n, p in module.named_parameters()}}

    def on_test_end(self, trainer, module) -> None:
        self.record["parzen"] = (module.last_parzen["raw"].n_samples, module.last_parzen["raw"].n_points)
        self.record["quality"] = (module.last_quality["raw"].n_samples, module.last_quality["raw"].n_real)
        torch.save(self.record, self.folder / f"rank{trainer.global_rank}.pt")


@pytest.fixture(scope="module")
def ddp_run(data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    run_dir = tmp / "run"
    probe = f"callbacks.extra=[{{_target_:test_ddp.RankProbe,folder:'{tmp}'}}]"
    proc = run_script("train.py", "trainer=ddp_cpu", f"k={K}", *tiny_run(data_dir, BATCHES), probe,
                      f"hydra.run.dir={run_dir}", env={"PYTHONPATH": str(REPO / "tests"), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return run_dir, ranks


def test_ranks_end_with_identical_parameters(ddp_run):
    run_dir, (rank0, rank1) = ddp_run
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["params"].keys() == rank1["params"].keys()
    # The ranks saw different batches and noise: equal weights mean both nets' gradients were averaged.
    for name, p in rank0["params"].items():
        assert torch.equal(p, rank1["params"][name]), name
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for name, p in rank0["params"].items():
        assert torch.equal(p, ckpt["state_dict"][name]), name


def test_each_rank_draws_its_own_noise(ddp_run):
    _, (rank0, rank1) = ddp_run
    assert rank0["z"].shape == (8, 100)
    assert not torch.allclose(rank0["z"], rank1["z"])


def test_counters_follow_the_k_schedule(ddp_run):
    run_dir, ranks = ddp_run
    # Every rank takes BATCHES batches of its own share: BATCHES D steps, one G step after every K-th.
    for rank in ranks:
        assert rank["counters"] == (BATCHES, BATCHES // K)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["counters"] == {"d_updates": BATCHES, "g_updates": BATCHES // K}


def test_only_rank_zero_writes(ddp_run):
    run_dir, _ = ddp_run
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        f"epoch=0-step={BATCHES + BATCHES // K}.ckpt", "last.ckpt"]
    assert [p.name for p in (run_dir / "csv").iterdir()] == ["version_0"]
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == ["epoch_0001.png"]
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # One test estimate, logged once.
    test_ll = [float(r["test/parzen_ll"]) for r in rows if r["test/parzen_ll"]]
    assert len(test_ll) == 1 and math.isfinite(test_ll[0])


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
