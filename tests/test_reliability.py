"""Faults a user meets, through the real command: bad input, divergence, preemption, resume."""

from __future__ import annotations

import shlex

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from conftest import REPO, compose, run_script


@pytest.fixture
def log_dir(tmp_path):
    """An outputs folder holding an earlier run, which no refused command may touch."""
    earlier = tmp_path / "outputs" / "runs" / "earlier"
    (earlier / "checkpoints").mkdir(parents=True)
    (earlier / "checkpoints" / "note.txt").write_text("earlier run")
    return tmp_path / "outputs"


def snapshot(folder):
    """Every path under `folder`, with the modification times of the earlier run's files."""
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_mtime_ns if "earlier" in p.parts else 0) for p in folder.rglob("*")
    )


def refused(log_dir, *args, data_dir=None, logger="none", env=None):
    """Run train.py with bad input: status 2, one `error:` line, no traceback, earlier run intact, nothing
    left behind (no run folder, no W&B run)."""
    before = snapshot(log_dir)
    data = [f"paths.data_dir={data_dir}"] if data_dir else []
    loggers = [f"logger={logger}"] if logger else []
    proc = run_script("train.py", f"paths.log_dir={log_dir}", *loggers, *data, *args, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert snapshot(log_dir) == before
    return errors[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "group, options",
    [("dataset", "cifar10, line, mnist, tfd"), ("model", "conv, maxout"), ("loss", "minimax, nonsaturating")],
)
def test_unknown_group_option_lists_the_options(log_dir, group, options):
    msg = refused(log_dir, f"{group}=nope")
    assert f"unknown {group} 'nope': choose one of {options}" in msg
    assert [p.name for p in (log_dir / "runs").iterdir()] == ["earlier"]  # refused before Hydra made a folder


@pytest.mark.slow
@pytest.mark.parametrize(
    "arg, text",
    [
        ("k=0", "k must be an integer >= 1"),
        ("k=2.5", "k must be an integer >= 1"),
        ("dataset.batch_size=0", "dataset.batch_size must be >= 1"),
        ("optimizer.lr=0", "optimizer.lr must be > 0"),
        ("optimizer.lr=-0.1", "optimizer.lr must be > 0"),
    ],
)
def test_bad_numbers(log_dir, arg, text):
    assert text in refused(log_dir, arg)


@pytest.mark.slow
def test_k_with_the_simultaneous_schedule(log_dir):
    """The simultaneous step makes one D and one G update per minibatch: a k there would be ignored."""
    msg = refused(log_dir, "experiment=mnist", "k=5")
    assert msg == (
        "error: schedule=simultaneous makes one D and one G update per minibatch, so k must be 1 there, "
        "got k=5; k D-steps per G-step is Algorithm 1: schedule=alternating"
    )


@pytest.mark.slow
def test_output_folder_not_writable(log_dir, tmp_path):
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    msg = refused(log_dir, f"hydra.run.dir={blocked / 'run'}")
    assert "cannot be written" in msg and str(blocked / "run") in msg


@pytest.mark.slow
def test_gpu_asked_on_a_machine_without_one(log_dir):
    msg = refused(log_dir, "trainer=gpu", env={"CUDA_VISIBLE_DEVICES": ""})  # no GPU, whatever the machine
    assert msg.startswith("error: trainer=gpu (trainer.accelerator=gpu) asks for a GPU, but this machine has none")
    assert "use trainer=cpu" in msg


@pytest.mark.slow
def test_fp16_on_a_gpu_is_refused_in_one_line_before_any_folder(log_dir):
    """The same line on a machine with or without a GPU (the precision is checked before the GPU is looked for)."""
    msg = refused(log_dir, "trainer=gpu", "trainer.precision=16-mixed")
    assert msg.startswith("error: trainer.precision=16-mixed trains in fp16 (trainer.accelerator=gpu)")


@pytest.mark.slow
def test_missing_tfd_file_leaves_no_run_folder_and_no_wandb_run(log_dir, tmp_path):
    # The default loggers (W&B and CSV): the data is checked before either starts.
    msg = refused(log_dir, "dataset=tfd", data_dir=tmp_path / "empty", logger=None)
    assert f"TFD file not found: {tmp_path / 'empty' / 'TFD' / 'TFD_48x48.mat'}" in msg


@pytest.mark.slow
def test_tfd_valid_split_too_small(log_dir, tmp_path):
    from test_tfd import write_tfd

    write_tfd(tmp_path / "TFD" / "TFD_48x48.mat", valid_rows=1)
    msg = refused(log_dir, "dataset=tfd", data_dir=tmp_path)
    assert msg == (
        "error: the valid split of tfd (fold 0) has 1 row: the per-epoch Parzen estimate needs at least 2 "
        "(sigma is picked on some, the others are scored); use a fold or data set with a larger valid split"
    )


@pytest.mark.slow
def test_missing_mnist_files_named(log_dir, tmp_path):
    empty = tmp_path / "empty"
    msg = refused(log_dir, "dataset.raw_mirror=null", "dataset.download=false", data_dir=empty)
    assert f"MNIST files missing in {empty / 'MNIST' / 'raw'}" in msg and "train-images-idx3-ubyte.gz" in msg


@pytest.mark.slow
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


@pytest.mark.slow
def test_checkpoint_missing(log_dir, tmp_path):
    msg = refused(log_dir, f"ckpt_path={tmp_path / 'nope.ckpt'}")
    assert f"checkpoint not found: {tmp_path / 'nope.ckpt'}" in msg


@pytest.mark.slow
def test_checkpoint_truncated(log_dir, tmp_path):
    path = fake_checkpoint(tmp_path / "t.ckpt")
    path.write_bytes(path.read_bytes()[:200])
    msg = refused(log_dir, f"ckpt_path={path}")
    assert f"checkpoint {path} cannot be read (truncated, or not a checkpoint" in msg


@pytest.mark.slow
def test_eval_refuses_a_truncated_checkpoint_in_one_line(tmp_path):
    path = fake_checkpoint(tmp_path / "t.ckpt")
    path.write_bytes(path.read_bytes()[:200])
    proc = run_script("eval.py", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'eval'}", "logger=none")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: checkpoint {path} cannot be read (truncated, or not a")
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow
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


@pytest.mark.slow
def test_not_a_checkpoint(log_dir, tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"weights": torch.zeros(3)}, path)
    assert f"checkpoint {path} is not a checkpoint of src/train.py" in refused(log_dir, f"ckpt_path={path}")


@pytest.mark.slow
def test_checkpoint_of_another_experiment(log_dir, tmp_path):
    path = fake_checkpoint(tmp_path / "k2.ckpt", "k=2")
    msg = refused(log_dir, f"ckpt_path={path}", "k=1")
    assert f"checkpoint {path} is from another experiment (k: 2 there, 1 here)" in msg


@pytest.mark.slow
def test_ckpt_last_without_checkpoints(log_dir):
    msg = refused(log_dir, "ckpt_path=last")
    assert f"ckpt_path=last: no checkpoint of this experiment under {log_dir}" in msg


def test_ckpt_last_finds_newest_of_same_experiment(tmp_path):
    import os

    from advnets.checkpoints import find_last_checkpoint

    cfg = OmegaConf.to_container(compose(), resolve=True)
    paths = []
    for i, name in enumerate(["old", "new", "other"]):
        d = tmp_path / "runs" / name / "checkpoints"
        d.mkdir(parents=True)
        paths.append(fake_checkpoint(d / "last.ckpt", *(["k=3"] if name == "other" else [])))
        os.utime(paths[-1], (1000 + i, 1000 + i))
    assert find_last_checkpoint(tmp_path, cfg) == paths[1]


# --- training faults: short epochs on real MNIST ------------------------------------------------------
# On the CPU, whatever the machine: these tests assert the CPU's behaviour (bitwise resumes; a GPU's resume is part
# (a) of benchmarks/device_check.sh).
QUICK = [
    "trainer.accelerator=cpu",
    "logger=none",
    "test_after_fit=false",
    "trainer.enable_progress_bar=false",
    "parzen.val_samples=100",
    "dataset.parzen_val_select=100",
    "dataset.parzen_val_points=100",
    "quality.val_samples=100",
]
# Runs compared for bitwise equality draw from every source of randomness and carry every state a resume must
# restore: dropout, G's noise, instance noise (drawn from the same generator), R1 and G's EMA (both on by
# default); every step is logged.
EXACT = ["stabilisers.instance_noise_std=0.1", "trainer.log_every_n_steps=1"]
TESTS_ON_PATH = {"PYTHONPATH": str(REPO / "tests")}  # for callbacks.extra=[{_target_: test_reliability...}]


def train(data_dir, run_dir, *args, batches=5, log_dir=None, **kwargs):
    """train.py on `batches` batches an epoch, QUICK less what `args` set, in `run_dir` (None: Hydra's new
    folder under `log_dir`)."""
    keys = {a.split("=", 1)[0] for a in args}
    quick = [a for a in QUICK if a.split("=", 1)[0] not in keys]
    where = (
        [f"paths.log_dir={log_dir}"]
        if run_dir is None
        else [f"paths.log_dir={run_dir.parent}", f"hydra.run.dir={run_dir}"]
    )
    return run_script(
        "train.py",
        f"paths.data_dir={data_dir}",
        *where,
        *quick,
        f"trainer.limit_train_batches={batches}",
        *args,
        **kwargs,
    )


@pytest.fixture(scope="module")
def one_epoch(data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reliability") / "one_epoch"
    proc = train(data_dir, run_dir, *EXACT, "trainer.max_epochs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
    """Two uninterrupted epochs, with the CSV log and the progress output (stderr is not a terminal here)."""
    run_dir = tmp_path_factory.mktemp("reliability") / "straight"
    proc = train(data_dir, run_dir, *EXACT, "trainer.max_epochs=2", "logger=csv", "trainer.enable_progress_bar=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc.stderr


def same_training(path_a, path_b) -> dict:
    """Assert two checkpoints hold the same training state, bit for bit: counters, every tensor of the state_dict
    (G, D, G's EMA, the fixed z), both optimisers' states and hyper-parameters."""
    a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in (path_a, path_b))
    assert a["counters"] == b["counters"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert any(key.startswith("generator_ema.") for key in a["state_dict"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert len(a["optimizer_states"]) == len(b["optimizer_states"]) == 2
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"]):
        assert sa["param_groups"] == sb["param_groups"]
        assert sa["state"].keys() == sb["state"].keys()
        for i, state in sa["state"].items():
            for name, value in state.items():
                assert torch.equal(value, sb["state"][i][name]), (i, name)
    return a


@pytest.mark.slow
def test_exact_resume_equals_uninterrupted_run(one_epoch, straight, data_dir, tmp_path):
    # The end-of-epoch checkpoint under its own name, pasted into ckpt_path= as it is (no `=` in it).
    epoch_ckpt = one_epoch.parent / "epoch0000-step10.ckpt"
    assert sorted(p.name for p in one_epoch.parent.iterdir()) == [epoch_ckpt.name, "last.ckpt"]
    resumed = train(data_dir, tmp_path / "resumed", *EXACT, "trainer.max_epochs=2", f"ckpt_path={epoch_ckpt}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = same_training(straight[0] / "checkpoints" / "last.ckpt", tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert done["counters"] == {"d_updates": 10, "g_updates": 10}


@pytest.fixture(scope="module")
def preempted(data_dir, tmp_path_factory):
    """A run stopped by SIGTERM at the end of batch 2 of its second epoch (of 5), then resumed with the command
    it printed: (its run folder, the counters in the checkpoint it stopped with)."""
    log_dir = tmp_path_factory.mktemp("preempted")
    stop = "callbacks.extra=[{_target_:test_reliability.StopAtBatch,epoch:2,batch:2}]"
    stopped = train(
        data_dir, None, *EXACT, "trainer.max_epochs=2", "logger=[wandb,csv]", stop, log_dir=log_dir, env=TESTS_ON_PATH
    )
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    (run_dir,) = (log_dir / "runs").iterdir()
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"stopped by SIGTERM: checkpoint saved to {last}; resume with:" in stopped.stderr
    at_stop = torch.load(last, map_location="cpu", weights_only=True)["counters"]
    command = shlex.split(stopped.stderr.split("resume with:\n", 1)[1].splitlines()[0])
    assert command[:2] == ["python", "src/train.py"] and command[-1] == f"ckpt_path={last}"
    resumed = run_script("train.py", *command[2:], env=TESTS_ON_PATH)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p.name for p in (log_dir / "runs").iterdir()] == [run_dir.name]  # continued in the same folder
    return run_dir, at_stop


@pytest.mark.slow
def test_preempted_mid_epoch_resumes_bitwise(preempted, straight):
    """The default as a user runs it (Adam at 5e-4, lazy R1 on D updates 1, 5 and 9, the long average of G, the
    default precision), stopped in the middle of an epoch (after D update 7, the next R1 due after the resume) and
    resumed: the same weights, average, Adam moments and counters as the run never
    stopped, bit for bit."""
    run_dir, at_stop = preempted
    assert at_stop == {"d_updates": 7, "g_updates": 7}  # 5 batches of epoch 1 and 2 of epoch 2
    done = same_training(straight[0] / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "last.ckpt")
    assert done["counters"] == {"d_updates": 10, "g_updates": 10}
    config = done["hyper_parameters"]["config"]
    assert config["optimizer"]["name"] == "adam"
    assert (config["model"]["ema_decay"], config["model"]["ema_rampup"]) == (0.9999, 0.5)
    assert (config["optimizer"]["lr"], config["stabilisers"]["r1_every"]) == (5e-4, 4)
    assert all(
        {"exp_avg", "exp_avg_sq", "step"} <= set(s) for o in done["optimizer_states"] for s in o["state"].values()
    )


@pytest.mark.slow
def test_resumed_run_logs_continue_the_same_curves(preempted, straight):
    from report import read_metrics

    run_dir, _ = preempted
    # CSV: the resumed part is the folder's next version; read as one run, it is the uninterrupted run's log.
    assert sorted(p.name for p in (run_dir / "csv").iterdir()) == ["version_0", "version_1"]
    rows, expected = read_metrics(run_dir), read_metrics(straight[0])
    elapsed = [r["train/elapsed_s"] for r in rows if "train/elapsed_s" in r]
    assert elapsed == sorted(elapsed)  # training time adds up across the resume
    drop = lambda rs: [{k: v for k, v in r.items() if k != "train/elapsed_s"} for r in rs]  # noqa: E731
    assert drop(rows) == drop(expected) and len(rows) == 14
    # W&B: the resumed part is the same run (same id), its steps going on where the stopped part's ended.
    segments = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and len({p.name.rsplit("-", 1)[1] for p in segments}) == 1
    steps = [wandb_steps(p) for p in segments]
    assert steps[0][-1] == 6 and steps[1][0] == 7
    assert steps[0] + steps[1] == [r["step"] for r in rows if "train/d_loss" in r]


def wandb_steps(offline_run) -> list[int]:
    """trainer/global_step (the x axis Lightning gives W&B) of the training rows an offline W&B run logged."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(offline_run)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    records = [json.loads(line) for line in out.splitlines()]
    return [
        int(r["history"]["item"]["trainer/global_step"])
        for r in records
        if r.get("type") == "history" and "train/d_loss" in r["history"]["item"]
    ]


@pytest.mark.slow
def test_progress_off_a_terminal_is_a_line_per_epoch(straight):
    _, stderr = straight
    assert "\r" not in stderr  # no bar redrawn for every batch
    lines = [line for line in stderr.splitlines() if line.startswith("epoch ")]
    assert lines[0].startswith("epoch 1/2 batch 5/5 (100%) ") and " batch/s " in lines[0]
    assert " d_loss " in lines[0] and " g_loss " in lines[0] and " d_real " in lines[0]
    assert lines[1].startswith("epoch 1 done in ") and ", val/parzen_ll " in lines[1]
    assert len(lines) == 4  # a line every callbacks.progress.every_s (30) seconds, and at each epoch's end


@pytest.mark.slow
def test_max_time_stops_mid_epoch_with_a_checkpoint(data_dir, tmp_path):
    proc = train(data_dir, tmp_path / "timed", "trainer.max_time=00:00:00:01", "trainer.max_epochs=1000", batches=50)
    last = tmp_path / "timed" / "checkpoints" / "last.ckpt"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        f"stopped: trainer.max_time (1 s of fitting in this command) reached: checkpoint saved to {last}" in proc.stderr
    )
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    (position,) = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert position["batches_taken"] == ckpt["counters"]["d_updates"] - 50 * position["epoch"]


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(one_epoch, data_dir, tmp_path):
    # Resumed with a huge lr (a resume applies this command's optimizer.* values), the run blows up in its first
    # updates.
    good = tmp_path / "good.ckpt"
    good.write_bytes(one_epoch.read_bytes())
    before = good.read_bytes()
    proc = train(
        data_dir, tmp_path / "diverged", *EXACT, "trainer.max_epochs=2", f"ckpt_path={good}", "optimizer.lr=1e30"
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert line.startswith("error: training diverged: non-finite ") and " at D update " in line
    assert f"last good checkpoint: {good} (unchanged)" in line
    assert good.read_bytes() == before
    assert not (tmp_path / "diverged" / "checkpoints" / "last.ckpt").exists()
    torch.load(good, map_location="cpu", weights_only=True)


def test_lightning_sets_the_epoch_of_the_batch_sampler():
    from lightning_fabric.utilities.data import _set_sampler_epoch

    from advnets.data import EpochBatchSampler, TensorBatches

    sampler = EpochBatchSampler(10, 3, seed=0)
    loader = TensorBatches(torch.arange(10), sampler)
    first = list(loader)
    _set_sampler_epoch(loader, 1)
    assert sampler.epoch == 1 and [b.tolist() for b in loader] != [b.tolist() for b in first]


@pytest.mark.slow
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
    args = [
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path}",
        f"hydra.run.dir={run_dir}",
        *QUICK,
        "trainer.limit_train_batches=100",
        "trainer.max_epochs=3",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "src" / "train.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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


@pytest.mark.slow
@pytest.mark.parametrize("fallback", [True, False])
def test_wandb_online_without_network(data_dir, tmp_path, fallback):
    import time

    # Nothing listens on port 9: the W&B server is unreachable, as without a network.
    env = {"WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "x" * 40}
    start = time.time()
    proc = train(
        data_dir,
        tmp_path / "run",
        "trainer.max_epochs=1",
        "logger=wandb",
        f"logger.wandb.offline_fallback={str(fallback).lower()}",
        env=env,
        timeout=180,
    )
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
    (tmp_path / "train.yaml").write_text((REPO / "conf" / "train.yaml").read_text())  # the groups and defaults
    monkeypatch.setattr(preflight, "CONF", tmp_path)
    (found,) = preflight.problems(["dataset=cifar10"])
    assert found.startswith("model 'maxout' has no nets for dataset 'cifar10' (conf/paper/maxout_cifar10.yaml)")
    assert "available: maxout on mnist" in found


class StopAtBatch(pl.Callback):
    """Sends this process SIGTERM at the end of batch `batch` (1-based) of epoch `epoch`: a preemption at a
    fixed point. (The test adds it with callbacks.extra; the subprocess finds it on PYTHONPATH.)"""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (trainer.current_epoch + 1, batch_idx + 1) == (self.epoch, self.batch):
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_a_stopped_multirun_job_prints_the_command_that_resumes_that_job_alone(data_dir, tmp_path):
    """SIGTERM in job 0 of `-m seed=0,1`: the printed command is job 0's own overrides as one run (not the sweep
    with job 0's checkpoint, which would resume every seed from it), and it continues in job 0's folder."""
    stop = "callbacks.extra=[{_target_:test_reliability.StopAtBatch,epoch:1,batch:2}]"
    stopped = train(
        data_dir,
        None,
        "-m",
        "seed=0,1",
        "trainer.max_epochs=1",
        "logger=csv",
        stop,
        "hydra.sweep.subdir=job${hydra.job.num}",
        batches=3,
        log_dir=tmp_path,
        env=TESTS_ON_PATH,
    )
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    command = shlex.split(stopped.stderr.split("resume with:\n", 1)[1].splitlines()[0])
    assert "-m" not in command and "seed=0" in command and not any(a.startswith("seed=0,") for a in command)
    (job,) = (p for p in (tmp_path / "multiruns").rglob("checkpoints") if (p / "last.ckpt").exists())
    assert command[-1] == f"ckpt_path={job / 'last.ckpt'}" and job.parent.name == "job0"
    resumed = run_script("train.py", *command[2:], env=TESTS_ON_PATH)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in job.parent.glob("csv/version_*")) == ["version_0", "version_1"]


# --- storage and concurrency faults, made for real (issue 44) ----------------------------------------------
class FaultyCheckpointWrites(pl.Callback):
    """Replaces the run's checkpoint writer with one whose `save`-th checkpoint (1-based) stops after `after_bytes`
    bytes of the file: `fault=pause` sleeps there (for a SIGKILL to land inside the save), `fault=enospc` raises
    the error of a full disk (where no small file system can be mounted). Added with callbacks.extra."""

    def __init__(self, save: int, after_bytes: int, fault: str):
        self.save, self.after_bytes, self.fault = save, after_bytes, fault

    def setup(self, trainer, pl_module, stage) -> None:
        trainer.strategy.checkpoint_io = faulty_io(self.save, self.after_bytes, self.fault)


def faulty_io(save: int, after_bytes: int, fault: str):
    import errno
    import io
    import os
    import time

    from advnets.checkpoint_io import AtomicCheckpointIO

    class FaultyIO(AtomicCheckpointIO):
        saves = 0

        def write(self, checkpoint, file) -> None:
            self.saves += 1
            if self.saves != save:
                return super().write(checkpoint, file)
            buffer = io.BytesIO()
            super().write(checkpoint, buffer)
            file.write(buffer.getvalue()[:after_bytes])
            file.flush()
            if fault == "pause":
                time.sleep(3600)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return FaultyIO()


def faulty_writes(save: int, after_bytes: int, fault: str) -> str:
    return (
        f"callbacks.extra=[{{_target_:test_reliability.FaultyCheckpointWrites,save:{save},"
        f"after_bytes:{after_bytes},fault:{fault}}}]"
    )


def test_a_checkpoint_write_that_fails_leaves_the_old_file_and_nothing_partial(tmp_path, monkeypatch):
    import errno
    import tempfile

    from advnets.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no_such_tmpdir"))  # any use of TMPDIR fails
    path = tmp_path / "checkpoints" / "epoch0001-step2.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)
    with pytest.raises(CheckpointWriteError) as failed:
        faulty_io(save=1, after_bytes=1000, fault="enospc").save_checkpoint({"step": 2, "w": torch.ones(1000)}, path)
    assert (failed.value.errno, failed.value.filename) == (errno.ENOSPC, str(path))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary file left
    assert torch.load(path, weights_only=True)["step"] == 1


def test_a_damaged_last_checkpoint_is_skipped_and_named(tmp_path, capsys):
    import os

    from advnets.checkpoints import check_resume

    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    good = fake_checkpoint(folder / "epoch0000-step5.ckpt")
    truncated = fake_checkpoint(folder / "epoch0001-step10.ckpt")
    truncated.write_bytes(truncated.read_bytes()[:300])
    os.utime(good, (1000, 1000))
    (folder / "last.ckpt").symlink_to("epoch0002-step15.ckpt")  # dangling: its file was removed
    cfg = compose(f"ckpt_path={folder / 'last.ckpt'}")
    assert check_resume(cfg) == str(good)
    assert capsys.readouterr().err.splitlines() == [
        f"warning: skipped damaged checkpoint {folder / 'last.ckpt'} (a link to a missing file)",
        f"warning: skipped damaged checkpoint {truncated} (cannot be read (truncated, or not a checkpoint: "
        "PytorchStreamReader failed reading zip archive: failed finding central directory))",
    ]


@pytest.fixture
def mount_tmpfs():
    """mount_tmpfs(folder, mib): a tmpfs of `mib` MiB mounted on `folder` (unmounted after the test), or None
    where mounting is not permitted."""
    import os
    import subprocess

    mounted = []

    def mount(folder, mib):
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return None
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(folder)], capture_output=True)
        if proc.returncode != 0:
            return None
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def every_checkpoint_loads(folder) -> list[str]:
    """The names of the *.ckpt in a checkpoints folder, after asserting that each of them loads."""
    names = sorted(p.name for p in folder.glob("*.ckpt"))
    for name in names:
        torch.load(folder / name, map_location="cpu", weights_only=True)
    return names


@pytest.mark.slow
def test_a_small_tmpdir_is_never_used(data_dir, tmp_path, mount_tmpfs):
    tmpdir = mount_tmpfs(tmp_path / "tmpdir", 20)
    if tmpdir is None:
        pytest.skip("mounting a 20 MiB tmpfs needs root (a checkpoint is 55 MB)")
    env = {"TMPDIR": str(tmpdir)}
    run_dir = tmp_path / "run"
    first = train(data_dir, run_dir, "trainer.max_epochs=1", batches=3, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    resumed = train(data_dir, run_dir, "trainer.max_epochs=2", f"ckpt_path={last}", batches=3, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert every_checkpoint_loads(run_dir / "checkpoints") == ["epoch0001-step12.ckpt", "last.ckpt"]
    assert torch.load(last, weights_only=True)["counters"]["d_updates"] == 6
    assert not any(tmpdir.iterdir())


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_and_the_printed_command_resumes_exactly(
    data_dir, tmp_path, mount_tmpfs, straight
):
    """The run folder on a 100 MiB file system: the second checkpoint (55 MB) does not fit beside the first.
    Without root, the second checkpoint's write fails with ENOSPC after 1 MB instead."""
    import re
    import subprocess

    from report import read_metrics

    disk = mount_tmpfs(tmp_path / "disk", 100)
    fault = [] if disk else [faulty_writes(save=2, after_bytes=2**20, fault="enospc")]
    run_dir = (disk or tmp_path) / "run"
    args = [*EXACT, "trainer.max_epochs=2", "logger=csv", *fault]
    full = train(data_dir, run_dir, *args, env=TESTS_ON_PATH)
    assert full.returncode == 4 and "Traceback" not in full.stderr, full.stderr[-3000:]
    (line,) = [x for x in full.stderr.splitlines() if x.startswith("error: ")]
    last, ckpt = run_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "epoch0001-step20.ckpt"
    where = re.escape(str(disk or "/"))  # the mount point
    assert re.fullmatch(
        f"error: no space left on {where}\\S* writing {re.escape(str(ckpt))}; the last good checkpoint is "
        f"{re.escape(str(last))} \\(epoch 1\\); free space, then resume with: (.*)",
        line,
    ), line
    assert every_checkpoint_loads(run_dir / "checkpoints") == ["epoch0000-step10.ckpt", "last.ckpt"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch0000-step10.ckpt", "last.ckpt"]
    if disk:
        subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[:2] == ["python", "src/train.py"] and command[-1] == f"ckpt_path={last}"
    resumed = run_script("train.py", *[a for a in command[2:] if not a.startswith("callbacks.extra")])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_training(straight[0] / "checkpoints" / "last.ckpt", last)
    drop = lambda rs: [{k: v for k, v in r.items() if k != "train/elapsed_s"} for r in rs]  # noqa: E731
    assert drop(read_metrics(run_dir)) == drop(read_metrics(straight[0]))  # each epoch once


@pytest.mark.slow
def test_a_second_writer_is_refused_and_a_kill_inside_the_save_loses_nothing(data_dir, tmp_path, straight):
    """A run paused in the middle of writing its second checkpoint: a second train.py on its folder refuses in one
    line naming it and writes nothing; SIGKILL lands inside the save; the same command then resumes, exactly."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from report import read_metrics

    run_dir = tmp_path / "run"
    args = [*EXACT, "trainer.max_epochs=2", "logger=csv"]
    first = subprocess.Popen(
        [sys.executable, str(REPO / "src" / "train.py"), f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}"]
        + [*QUICK[1:], "trainer.limit_train_batches=5", *args, faulty_writes(2, 2**20, "pause")],
        cwd=REPO,
        env={**os.environ, **TESTS_ON_PATH, "WANDB_MODE": "offline"},
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "first.err").open("w"),
    )
    partial = run_dir / "checkpoints" / ".epoch0001-step20.ckpt.partial"
    deadline = time.time() + 120
    while not (partial.exists() and partial.stat().st_size == 2**20) and first.poll() is None:
        assert time.time() < deadline
        time.sleep(0.2)
    assert first.poll() is None, (tmp_path / "first.err").read_text()[-3000:]
    before = snapshot(run_dir)
    resume = [*args, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"]
    second = train(data_dir, run_dir, *resume)
    assert second.returncode == 2, second.stderr[-3000:]
    (line,) = [x for x in second.stderr.splitlines() if x.startswith("error: ")]
    assert line.startswith(f"error: run folder {run_dir} is in use by pid {first.pid} on host {socket.gethostname()}")
    assert snapshot(run_dir) == before  # nothing written
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert partial.stat().st_size == 2**20  # killed inside the save: only the hidden temporary file is cut short
    assert every_checkpoint_loads(run_dir / "checkpoints") == ["epoch0000-step10.ckpt", "last.ckpt"]
    again = train(data_dir, run_dir, *resume)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch0001-step20.ckpt", "last.ckpt"]
    same_training(straight[0] / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "last.ckpt")
    drop = lambda rs: [{k: v for k, v in r.items() if k != "train/elapsed_s"} for r in rs]  # noqa: E731
    assert drop(read_metrics(run_dir)) == drop(read_metrics(straight[0]))  # each epoch once


@pytest.mark.slow
def test_two_first_runs_on_a_fresh_data_folder_both_train(tmp_path):
    """Both copy and unpack MNIST into the same empty folder at once: one waits for the other's lock."""
    import os
    import subprocess
    import sys

    fresh = tmp_path / "fresh_data"
    commands = [
        [
            sys.executable,
            str(REPO / "src" / "train.py"),
            f"paths.data_dir={fresh}",
            f"hydra.run.dir={tmp_path / str(s)}",
        ]
        + [*QUICK, "trainer.max_epochs=1", "trainer.limit_train_batches=1", f"seed={s}"]
        for s in (1, 2)
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    runs = [subprocess.Popen(c, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True) for c in commands]
    for run in runs:
        stderr = run.communicate(timeout=300)[1]
        assert run.returncode == 0 and "corrupt" not in stderr, stderr[-3000:]
