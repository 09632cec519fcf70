#!/usr/bin/env python
"""Kill loop: SIGKILL a training run again and again, resume it each time, and check that nothing is lost.

A run of 3-batch epochs (a checkpoint about every second) is killed `--kills` times: at a random moment of its
life (start-up, training, a save), and every fourth time inside a save (its writer paused after 1 MB of the
checkpoint, tests/test_reliability.FaultyCheckpointWrites). After each kill every `*.ckpt` of the run must
load, the newest must be at least as far as the one before, and the same command with
`ckpt_path=<run>/checkpoints/last.ckpt` must start (the lock of the killed process is gone). Finally the run
is resumed to its end and compared, bit for bit, with the same run never interrupted (weights, G's average,
both optimisers' states, counters) and its CSV log read as one run (src/report.py) with the uninterrupted
one's: no row twice or different. (Not yet every row: Lightning writes an epoch's last rows after its checkpoint,
so a kill between the two loses them; the lost steps are printed.)

    OMP_NUM_THREADS=1 python benchmarks/kill_loop.py                 # 20 kills, about 6 minutes on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/kill_loop.py --kills 40 --epochs 300
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]

from advnets.config import mnist_mirror  # noqa: E402
from report import read_metrics  # noqa: E402
from test_reliability import EXACT, QUICK, faulty_writes, same_training  # noqa: E402

PAUSED_AFTER = 2**20


def command(data_dir: Path, run_dir: Path, epochs: int, *extra: str) -> list[str]:
    quick = [a for a in QUICK if not a.startswith("logger=")]
    return [
        sys.executable,
        str(REPO / "src" / "train.py"),
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={run_dir.parent}",
        f"hydra.run.dir={run_dir}",
        *quick,
        "logger=csv",
        "trainer.limit_train_batches=3",
        f"trainer.max_epochs={epochs}",
        *EXACT,
        *extra,
    ]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))


def checkpoints_all_load(folder: Path) -> tuple[int, int]:
    """(how many *.ckpt there are, the d_updates of the furthest), after loading every one of them."""
    steps = [
        torch.load(p, map_location="cpu", weights_only=True)["counters"]["d_updates"] for p in folder.glob("*.ckpt")
    ]
    return len(steps), max(steps, default=-1)


def wait_inside_save(proc: subprocess.Popen, folder: Path, timeout: float = 120) -> bool:
    """Wait until the process is paused inside a save (its temporary file holds PAUSED_AFTER bytes)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any(p.stat().st_size == PAUSED_AFTER for p in folder.glob(".*.partial") if p.exists()):
            return True
        time.sleep(0.1)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/advnets-kill-loop"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    shutil.rmtree(args.out, ignore_errors=True)
    data_dir = args.out / "data"
    shutil.copytree(mnist_mirror(), data_dir / "MNIST" / "raw")

    reference = args.out / "uninterrupted"
    done = subprocess.run(command(data_dir, reference, args.epochs), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

    run_dir = args.out / "killed"
    folder = run_dir / "checkpoints"
    last = folder / "last.ckpt"
    furthest, inside_saves, kills = -1, 0, 0
    while kills < args.kills:
        resume = [f"ckpt_path={last}"] if last.exists() else []
        inside = kills % 4 == 3
        fault = [faulty_writes(1, PAUSED_AFTER, "pause")] if inside else []
        proc = start(command(data_dir, run_dir, args.epochs, *resume, *fault), args.out / f"life{kills}.log")
        if inside:
            assert wait_inside_save(proc, folder), (args.out / f"life{kills}.log").read_text()[-3000:]
            inside_saves += 1
        else:
            time.sleep(rng.uniform(2.0, 10.0))
        if proc.poll() is not None:
            assert proc.returncode == 0, (args.out / f"life{kills}.log").read_text()[-3000:]
            print(f"the run ended before kill {kills + 1}: use more --epochs")
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        count, newest = checkpoints_all_load(folder) if folder.is_dir() else (0, -1)
        assert newest >= furthest, f"kill {kills}: the newest checkpoint went back from {furthest} to {newest}"
        furthest = newest
        print(
            f"kill {kills:2d}{' (inside a save)' if inside else ''}: {count} checkpoints, all load; newest at "
            f"D update {newest}"
        )

    final = subprocess.run(
        command(data_dir, run_dir, args.epochs, f"ckpt_path={last}"), cwd=REPO, capture_output=True, text=True
    )
    assert final.returncode == 0, final.stderr[-3000:]
    same_training(reference / "checkpoints" / "last.ckpt", last)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "train/elapsed_s"} for r in rows]  # noqa: E731
    killed, uninterrupted = drop(read_metrics(run_dir)), drop(read_metrics(reference))
    assert all(row in uninterrupted for row in killed)  # no row twice (read as one run), none different
    # Lightning writes an epoch's last rows (its last step, its end-of-epoch metrics) after the epoch's checkpoint:
    # a kill in between loses them, and the resume starts after them.
    lost = [int(row["step"]) for row in uninterrupted if row not in killed]
    print(
        f"{kills} SIGKILLs ({inside_saves} inside a save): every checkpoint loaded after each, every restart resumed; "
        f"the resumed run ends bit for bit as the uninterrupted one; its CSV log holds no row twice and lacks "
        f"{len(lost)} of {len(uninterrupted)} rows (steps {lost or 'none'})"
    )


if __name__ == "__main__":
    main()
