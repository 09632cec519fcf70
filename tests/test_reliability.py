"""Faults a user meets, through the real command: bad input, divergence, preemption, resume."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose, run_script


@pytest.fixture
def log_dir(tmp_path):
    """An outputs folder holding an earlier run, which no refused command may touch."""
    earlier = tmp_path / "outputs" / "runs" / "earlier"
    (earlier / "checkpoints").mkdir(parents=True)
    (earlier / "checkpoints" / "note.txt").write_text("earlier run")
    return tmp_path / "outputs"


def snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*")
                  if "earlier" in p.parts)


def refused(log_dir, *args, data_dir=None):
    """Run train.py with bad input: non-zero status, one `error:` line, no traceback, earlier run intact."""
    before = snapshot(log_dir)
    data = [f"paths.data_dir={data_dir}"] if data_dir else []
    proc = run_script("train.py", f"paths.log_dir={log_dir}", "logger=none", *data, *args, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert snapshot(log_dir) == before
    return errors[0]


@pytest.mark.parametrize("group, options", [("dataset", "cifar10, mnist, tfd"), ("model", "conv, maxout"),
                                            ("loss", "minimax, nonsaturating")])
def test_unknown_group_option_lists_the_options(log_dir, group, options):
    msg = refused(log_dir, f"{group}=nope")
    assert f"unknown {group} 'nope': choose one of {options}" in msg
    assert [p.name for p in (log_dir / "runs").iterdir()] == ["earlier"]  # refused before Hydra made a folder


@pytest.mark.parametrize("arg, text", [("k=0", "k must be an integer >= 1"),
                                       ("dataset.batch_size=0", "dataset.batch_size must be >= 1"),
                                       ("optimizer.lr=0", "optimizer.lr must be > 0"),
                                       ("optimizer.lr=-0.1", "optimizer.lr must be > 0")])
def test_bad_numbers(log_dir, arg, text):
    assert text in refused(log_dir, arg)


def test_output_folder_not_writable(log_dir, tmp_path):
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    msg = refused(log_dir, f"hydra.run.dir={blocked / 'run'}")
    assert "cannot be written" in msg and str(blocked / "run") in msg


def test_missing_mnist_files_named(log_dir, tmp_path):
    empty = tmp_path / "empty"
    msg = refused(log_dir, "dataset.raw_mirror=null", "dataset.download=false", data_dir=empty)
    assert f"MNIST files missing in {empty / 'MNIST' / 'raw'}" in msg and "train-images-idx3-ubyte.gz" in msg


def test_corrupt_mnist_files_named(log_dir, tmp_path):
    from advnets.data.mnist import FILES

    raw = tmp_path / "bad" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES:
        (raw / name).write_bytes(b"not gzip")
    msg = refused(log_dir, "dataset.raw_mirror=null", "dataset.download=false", data_dir=tmp_path / "bad")
    assert f"MNIST files in {raw} are unreadable or corrupt" in msg


def fake_checkpoint(path, *overrides):
    """A file shaped like a checkpoint of train.py run with `overrides` (no weights needed for the checks)."""
    config = OmegaConf.to_container(compose(*overrides), resolve=True)
    torch.save({"state_dict": {}, "hyper_parameters": {"config": config}, "epoch": 1}, path)
    return path


def test_checkpoint_missing(log_dir, tmp_path):
    msg = refused(log_dir, f"ckpt_path={tmp_path / 'nope.ckpt'}")
    assert f"checkpoint not found: {tmp_path / 'nope.ckpt'}" in msg


def test_checkpoint_truncated(log_dir, tmp_path):
    path = fake_checkpoint(tmp_path / "t.ckpt")
    path.write_bytes(path.read_bytes()[:200])
    msg = refused(log_dir, f"ckpt_path={path}")
    assert f"checkpoint {path} cannot be read (truncated, or not a checkpoint" in msg


def test_checkpoint_with_pickled_code_is_not_executed(log_dir, tmp_path):
    import pickle

    path = tmp_path / "evil.ckpt"
    marker = tmp_path / "executed"
    torch.save({"x": _Evil(str(marker))}, path, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    msg = refused(log_dir, f"ckpt_path={path}")
    assert "cannot be read" in msg and not marker.exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_not_a_checkpoint(log_dir, tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"weights": torch.zeros(3)}, path)
    assert f"checkpoint {path} is not a checkpoint of src/train.py" in refused(log_dir, f"ckpt_path={path}")


def test_checkpoint_of_another_experiment(log_dir, tmp_path):
    path = fake_checkpoint(tmp_path / "k2.ckpt", "k=2")
    msg = refused(log_dir, f"ckpt_path={path}", "k=1")
    assert f"checkpoint {path} is from another experiment (k: 2 there, 1 here)" in msg


def test_ckpt_last_without_checkpoints(log_dir):
    msg = refused(log_dir, "ckpt_path=last")
    assert f"ckpt_path=last: no last.ckpt of this experiment under {log_dir}" in msg


def test_ckpt_last_finds_newest_of_same_experiment(tmp_path):
    import os

    from advnets.run import find_last_checkpoint

    cfg = OmegaConf.to_container(compose(), resolve=True)
    paths = []
    for i, name in enumerate(["old", "new", "other"]):
        d = tmp_path / "runs" / name / "checkpoints"
        d.mkdir(parents=True)
        paths.append(fake_checkpoint(d / "last.ckpt", *(["k=3"] if name == "other" else [])))
        os.utime(paths[-1], (1000 + i, 1000 + i))
    assert find_last_checkpoint(tmp_path, cfg) == paths[1]


# --- training faults: short epochs on real MNIST ------------------------------------------------------
QUICK = ["logger=none", "test_after_fit=false", "trainer.enable_progress_bar=false",
         "parzen.val_samples=100", "dataset.parzen_val_select=100", "dataset.parzen_val_points=100",
         "quality.val_samples=100"]


def train(data_dir, run_dir, *args, batches=5, **kwargs):
    quick = [a for a in QUICK if not any(a.startswith("logger=") for a in args) or not a.startswith("logger=")]
    return run_script("train.py", f"paths.data_dir={data_dir}", f"paths.log_dir={run_dir.parent}",
                      f"hydra.run.dir={run_dir}", *quick, f"trainer.limit_train_batches={batches}", *args, **kwargs)


@pytest.fixture(scope="module")
def one_epoch(data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reliability") / "one_epoch"
    proc = train(data_dir, run_dir, "trainer.max_epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir / "checkpoints" / "last.ckpt"


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(one_epoch, data_dir, tmp_path):
    # The checkpoint's optimisers get a huge lr, so the resumed run blows up in its first updates.
    ckpt = torch.load(one_epoch, map_location="cpu", weights_only=True)
    for state in ckpt["optimizer_states"]:
        state["param_groups"][0]["lr0"] = 1e30
    good = tmp_path / "good.ckpt"
    torch.save(ckpt, good)
    before = good.read_bytes()
    proc = train(data_dir, tmp_path / "diverged", "trainer.max_epochs=2", f"ckpt_path={good}")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert line.startswith("error: training diverged: non-finite ") and " at D update " in line
    assert f"last good checkpoint: {good} (unchanged)" in line
    assert good.read_bytes() == before
    assert not (tmp_path / "diverged" / "checkpoints" / "last.ckpt").exists()
    torch.load(good, map_location="cpu", weights_only=True)


def test_exact_resume_equals_uninterrupted_run(one_epoch, data_dir, tmp_path):
    straight = train(data_dir, tmp_path / "straight", "trainer.max_epochs=2")
    assert straight.returncode == 0, straight.stderr[-3000:]
    resumed = train(data_dir, tmp_path / "resumed", "trainer.max_epochs=2", f"ckpt_path={one_epoch}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (torch.load(tmp_path / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
            for name in ("straight", "resumed"))
    assert a["counters"] == b["counters"] == {"d_updates": 10, "g_updates": 10}
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"]):
        assert sa["param_groups"] == sb["param_groups"]
        for i, state in sa["state"].items():
            for name, value in state.items():
                assert torch.equal(value, sb["state"][i][name]), (i, name)


def test_lightning_sets_the_epoch_of_the_batch_sampler():
    from lightning_fabric.utilities.data import _set_sampler_epoch

    from advnets.data import EpochBatchSampler, TensorBatches

    sampler = EpochBatchSampler(10, 3, seed=0)
    loader = TensorBatches(torch.arange(10), sampler)
    first = list(loader)
    _set_sampler_epoch(loader, 1)
    assert sampler.epoch == 1 and [b.tolist() for b in loader] != [b.tolist() for b in first]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_mid_epoch_saves_a_checkpoint_and_training_resumes(data_dir, tmp_path, sig):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    run_dir = tmp_path / "preempted"
    last = run_dir / "checkpoints" / "last.ckpt"
    args = [f"paths.data_dir={data_dir}", f"paths.log_dir={tmp_path}", f"hydra.run.dir={run_dir}", *QUICK,
            "trainer.limit_train_batches=100", "trainer.max_epochs=3"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen([sys.executable, str(REPO / "src" / "train.py"), *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert last.exists(), proc.communicate()[1][-3000:]
    time.sleep(1)  # into epoch 2
    proc.send_signal(getattr(signal, sig))
    _, stderr = proc.communicate(timeout=120)
    signum = getattr(signal, sig).value
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr
    assert f"stopped by {sig}: checkpoint saved to {last}; resume with:" in stderr
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert 100 < ckpt["counters"]["d_updates"] < 200, ckpt["counters"]  # mid-epoch 2
    resumed = train(data_dir, tmp_path / "resumed", "trainer.max_epochs=2", f"ckpt_path={last}", batches=100)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert done["counters"]["d_updates"] == 200, done["counters"]  # the rest of epoch 2, not a whole epoch more


@pytest.mark.parametrize("fallback", [True, False])
def test_wandb_online_without_network(data_dir, tmp_path, fallback):
    import time

    # Nothing listens on port 9: the W&B server is unreachable, as without a network.
    env = {"WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "x" * 40}
    start = time.time()
    proc = train(data_dir, tmp_path / "run", "trainer.max_epochs=1", "logger=wandb",
                 f"logger.wandb.offline_fallback={str(fallback).lower()}", env=env, timeout=180)
    assert time.time() - start < 120
    assert "Traceback" not in proc.stderr
    if fallback:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "warning: W&B server 127.0.0.1 unreachable" in proc.stderr and "logging offline" in proc.stderr
        assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    else:
        assert proc.returncode == 2
        assert "error: W&B server 127.0.0.1 unreachable" in proc.stderr


def test_model_without_nets_for_the_dataset(tmp_path, monkeypatch):
    from advnets import preflight

    for path in ["dataset/mnist.yaml", "dataset/cifar10.yaml", "model/maxout.yaml", "paper/maxout_mnist.yaml"]:
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text("")
    monkeypatch.setattr(preflight, "CONF", tmp_path)
    (found,) = preflight.problems(["dataset=cifar10"])
    assert found.startswith("model 'maxout' has no nets for dataset 'cifar10' (conf/paper/maxout_cifar10.yaml)")
    assert "available: maxout on mnist" in found
