"""Shared fixtures: real MNIST files in a temporary data dir, composed configs, the real command."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from advnets.config import mnist_mirror

REPO = Path(__file__).resolve().parents[1]
MNIST_RAW = mnist_mirror()  # conf/paths/default.yaml: ADVNETS_MNIST_MIRROR, or the copy beside the checkout


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data dir holding MNIST/raw: copied from the MNIST mirror, or downloaded by torchvision where it is absent."""
    root = tmp_path_factory.mktemp("data")
    if MNIST_RAW.is_dir():
        shutil.copytree(MNIST_RAW, root / "MNIST" / "raw")
    else:
        from torchvision.datasets import MNIST

        for train in (True, False):
            MNIST(root, train=train, download=True)
    return root


def compose(*overrides: str, output_dir: str | Path = "/tmp/advnets-test-run"):
    """The real config from conf/, as train.py composes it (hydra: interpolations resolvable)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import advnets.config  # noqa: F401  (registers the repo_root resolver)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as in train.py, whose config has no hydra node
    return cfg


def bare_trainer(root: str | Path, **options):
    """A CPU Trainer for a test's own short fit: one epoch, no logger, checkpoints, progress bar or validation,
    unless `options` (any Trainer argument: max_steps, precision, callbacks, limit_val_batches=None...) say
    otherwise."""
    import pytorch_lightning as pl

    defaults = dict(
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
        default_root_dir=root,
    )
    return pl.Trainer(**{**defaults, **options})


# What a fresh clone holds at its top level before the tests, besides dot-files: the tests (and every command they run)
# write into run folders under tmp paths, or under outputs/ (paths.log_dir), never beside the sources.
TOP_LEVEL_OUTPUTS_ALLOWED = {"outputs", "data"}


@pytest.fixture(scope="session", autouse=True)
def nothing_written_at_the_top_level():
    """No test, and no command a test runs, leaves a file or folder at the repository's top level (samples/ and
    figures/ once appeared there: a Trainer without default_root_dir writes into the working directory)."""
    before = {p.name for p in REPO.iterdir()}
    yield
    new = {p.name for p in REPO.iterdir()} - before - TOP_LEVEL_OUTPUTS_ALLOWED
    assert not {n for n in new if not n.startswith(".")}, f"written outside a run folder: {sorted(new)}"


def run_script(script: str, *args: str, env: dict | None = None, timeout: float = 600, cwd: Path = REPO):
    """Run `python src/<script> args...` as a user would, W&B offline; returns the CompletedProcess."""
    full_env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PYTHONUNBUFFERED": "1",
        "HYDRA_FULL_ERROR": "0",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, str(REPO / "src" / script), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tiny_run(data_dir: Path, batches: int) -> list[str]:
    """Overrides for a run of one short epoch with cheap Parzen estimates and sample-quality metrics."""
    return [
        f"paths.data_dir={data_dir}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={batches}",
        "parzen.val_samples=200",
        "parzen.test_samples=200",
        "quality.val_samples=200",
        "quality.test_samples=200",
        "trainer.enable_progress_bar=false",
    ]


def wandb_offline_run(run_dir: Path) -> Path:
    """The offline W&B run of the run (or sweep job) in run_dir: its folder's only one, or, in a sweep's shared
    wandb/ folder, the one named by the id its newest checkpoint's config holds (advnets.loggers.name_wandb_run), the
    newest part of it if it was resumed."""
    import torch

    from advnets.config import wandb_folder

    runs = sorted(Path(wandb_folder(str(run_dir)), "wandb").glob("offline-run-*"))
    if Path(wandb_folder(str(run_dir))) == run_dir and len(runs) == 1:
        return runs[0]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    run_id = ckpt["hyper_parameters"]["config"]["logger"]["wandb"]["id"]
    return [r for r in runs if r.name.endswith(f"-{run_id}")][-1]  # a resumed run's newest part


def wandb_inspect(run_dir: Path, *flags: str, offline_run: Path | None = None) -> str:
    """`wandb leet inspect FLAGS` of run_dir's offline W&B run (or of `offline_run`)."""
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "wandb"),
            "leet",
            "inspect",
            *flags,
            str(offline_run or wandb_offline_run(run_dir)),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def wandb_records(offline_run: Path) -> list[dict]:
    """Every record of an offline W&B run (`wandb leet inspect --json`)."""
    return [json.loads(line) for line in wandb_inspect(None, "--json", offline_run=offline_run).splitlines()]


def leet_screen(wandb_dir: Path, cols: int = 200, rows: int = 50, timeout: float = 30) -> list[str]:
    """What W&B's own dashboard, `wandb leet <wandb_dir>`, shows in a terminal of cols x rows once it has drawn its
    runs list: the screen's lines, rendered by a terminal emulator (pyte) from the program's output in a
    pseudo-terminal (pexpect)."""
    import time

    import pexpect
    import pyte

    screen = pyte.Screen(cols, rows)
    stream = pyte.ByteStream(screen)
    child = pexpect.spawn(
        str(Path(sys.executable).parent / "wandb"),
        ["leet", str(wandb_dir)],
        dimensions=(rows, cols),
        env={**os.environ, "TERM": "xterm-256color"},
    )
    try:
        end = time.monotonic() + timeout
        drawn = None
        while time.monotonic() < end:
            try:
                stream.feed(child.read_nonblocking(1 << 16, timeout=0.5))
            except pexpect.TIMEOUT:
                if drawn is not None and time.monotonic() > drawn + 1.5:  # drawn, and nothing new since
                    break
            if drawn is None and any("Runs [" in line for line in screen.display):
                drawn = time.monotonic()
        return [line.rstrip() for line in screen.display]
    finally:
        # `wandb leet` draws through a child of its own (wandb-core), in its process group: end the group, not just
        # the `wandb` wrapper, which a kill can take before it ends its child (one outlived the suite in CI).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.close(force=True)


def processes_naming(text: str) -> list[str]:
    """The command lines of this machine's processes that contain `text` (from /proc; zombies have none)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in line:
                found.append(line)
    return found


def wandb_summary(run_dir: Path | None, offline_run: Path | None = None) -> dict:
    """The run's state, config and last metric values."""
    return json.loads(wandb_inspect(run_dir, "--summary", "--json", offline_run=offline_run))


def wandb_run_record(run_dir: Path) -> dict:
    """The run record: id, display name, group."""
    for line in wandb_inspect(run_dir, "--json").splitlines():
        record = json.loads(line)
        if record.get("type") == "run":
            return record["run"]
    raise AssertionError(f"no run record in {run_dir}")


# Tiny nets without dropout or R1 and a cheap per-epoch estimate: real fits of a few batches that check the
# training schedule (EMA, lr anneal) rather than the nets.
TINY_FIT = [
    "model.generator.layers=[{units:8,activation:relu,irange:0.05}]",
    "model.discriminator.layers=[{units:4,pieces:2,irange:0.005}]",
    "stabilisers.r1_gamma=null",
    "model.discriminator.input_dropout=0",
    "model.discriminator.hidden_dropout=0",
    "quality.features=null",
    "parzen.val_samples=50",
    "trainer.limit_val_batches=1",
]
