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


@pytest.mark.parametrize("group, options", [("dataset", "mnist"), ("model", "maxout"),
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
