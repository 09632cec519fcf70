"""`python src/train.py` as a user runs it: real MNIST, real Trainer, W&B offline, then a resume."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_script

TRAIN_KEYS = ["train/d_loss", "train/g_loss", "train/d_real", "train/d_fake", "train/d_updates",
              "train/g_updates", "train/lr", "train/momentum"]


def wandb_summary(run_dir: Path) -> dict:
    (offline,) = list((run_dir / "wandb").glob("offline-run-*"))
    out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json", str(offline)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    proc = run_script("train.py", f"paths.data_dir={data_dir}", "trainer.max_epochs=1",
                      "trainer.limit_train_batches=30", "trainer.log_every_n_steps=10", "k=2",
                      "parzen.val_samples=500", "parzen.test_samples=1000", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_run_writes_checkpoint_and_samples(trained):
    assert (trained / "checkpoints" / "last.ckpt").is_file()
    assert (trained / "samples" / "epoch_0001.png").is_file()
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["counters"] == {"d_updates": 30, "g_updates": 15}
    assert ckpt["state_dict"]["fixed_z"].shape == (100, 100)


def test_wandb_offline_run_holds_the_keys(trained):
    summary = wandb_summary(trained)
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    values = summary["summary"]
    for key in TRAIN_KEYS + ["val/parzen_ll", "test/parzen_ll", "test/parzen_se", "test/parzen_sigma"]:
        assert key in values, key
    assert values["train/d_updates"] == 30 and values["train/g_updates"] == 15
    assert 0 < values["train/d_real"] < 1 and 0 < values["train/d_fake"] < 1
    assert values["train/momentum"] == 0.5
    assert values["train/lr"] == pytest.approx(0.1 / 1.000004**30)
    assert values["samples"]["_type"].startswith("images")
    assert summary["config"]["k"] == 2 and summary["config"]["dataset"]["name"] == "mnist"
    assert "k=2" in summary["name"]


def test_resume_from_checkpoint_runs(trained, data_dir, tmp_path):
    proc = run_script("train.py", f"paths.data_dir={data_dir}", "trainer.max_epochs=2", "trainer.limit_train_batches=30",
                      "k=2", f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}", "logger=csv", "test_after_fit=false",
                      "parzen.val_samples=500", f"hydra.run.dir={tmp_path / 'resumed'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["counters"] == {"d_updates": 60, "g_updates": 30}
    d_state = ckpt["optimizer_states"][0]["param_groups"][0]
    assert d_state["updates"] == 60
