#!/usr/bin/env python
"""Time to quality: how long a setting takes to reach a target quality, over seeds, as speedruns measure it.

    python benchmarks/time_to_quality.py --seeds 4300 4301 4302 4303 4304 \
        --setting "old=experiment=old_default" --setting "new="

Each (setting, seed) is one run of `python src/train.py seed=S <the setting's overrides>`, as a user runs it (its
own trainer.max_epochs, precision and everything else), plus what the measurement needs: the checkpoint of every
`--every`-th epoch kept, CSV logging only, no end-of-fit protocol (the last kept checkpoint is scored instead).
At most `--jobs` runs at once, one CPU thread each (OMP_NUM_THREADS=1), the settings interleaved seed by seed so
that each setting meets the machine's same moods. After its training, the same job scores each kept checkpoint
with the full protocol (`src/eval.py`: Parzen on 10,000 samples, FID, KID and the digits covered on 10,000), so
scoring takes no core from another job's training.

A generator reaches the target at a checkpoint when its Parzen estimate, FID and digits covered all meet it
(default: Parzen >= 220 nats, FID <= 7, 10 of 10 digits); a run reaches it at the first kept checkpoint where G or
its average does. Printed per run: the training wall time to that checkpoint (train/elapsed_s: the fit's wall
time, per-epoch validation included, not start-up or scoring), its G updates and which generator, and the run's
end (the last checkpoint's best generator); per setting, the mean +- s.e. over the runs that reached the target,
how many did not and how many collapsed (D won: the collapse flag, or the raw G covering fewer than 10 digits at
the last checkpoint). `--out` keeps every score (JSON) for docs/speed.md. A run stopped part-way is resumed from
its last.ckpt, and a checkpoint already scored is not scored again, when the same command is given again.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    parzen: float = 220.0
    fid: float = 7.0
    digits: int = 10

    def met_by(self, score: dict) -> bool:
        return score["parzen"] >= self.parzen and score["fid"] <= self.fid and score["digits"] >= self.digits

    def __str__(self) -> str:
        return f"Parzen >= {self.parzen:g}, FID <= {self.fid:g}, {self.digits}/10 digits"


@dataclass
class Checkpoint:
    epoch: int  # 1-based: the epoch the checkpoint ends
    g_updates: int
    train_seconds: float  # train/elapsed_s at the epoch's end
    scores: dict[str, dict] = field(default_factory=dict)  # generator (raw, ema) -> {parzen, fid, kid, digits}


@dataclass
class Run:
    setting: str
    seed: int
    folder: str
    job_seconds: float = 0.0  # this command's training and scoring, wall (a resumed run: this command's part)
    collapse_flag: bool = False
    checkpoints: list[Checkpoint] = field(default_factory=list)

    def first_reaching(self, target: Target) -> tuple[Checkpoint, str] | None:
        for ckpt in self.checkpoints:
            for which, score in ckpt.scores.items():
                if target.met_by(score):
                    return ckpt, which
        return None

    @property
    def collapsed(self) -> bool:
        last = self.checkpoints[-1] if self.checkpoints else None
        return self.collapse_flag or (last is not None and last.scores.get("raw", {}).get("digits", 10) < 10)


def parse_setting(text: str) -> tuple[str, list[str]]:
    name, sep, overrides = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"error: --setting {text!r}: write NAME=OVERRIDES, e.g. --setting 'old=optimizer.lr=2e-4'")
    return name, overrides.split()


def run_command(cmd: list[str], log: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    with log.open("a") as out:
        done = subprocess.run(["nice", sys.executable, *cmd], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} ... failed (exit {done.returncode}); its output: {log}")
    return time.perf_counter() - start


def epoch_rows(folder: Path) -> dict[int, dict]:
    """The last training row of each epoch (1-based) over the run's CSV versions (a resume adds a version)."""
    rows: dict[int, dict] = {}
    for metrics in sorted((folder / "csv").glob("version_*/metrics.csv")):
        with metrics.open() as f:
            for row in csv.DictReader(f):
                if row.get("train/elapsed_s"):
                    rows[int(row["epoch"]) + 1] = row
    return rows


def scores_of(eval_dir: Path) -> dict[str, dict]:
    parzen = json.loads((eval_dir / "parzen.json").read_text())
    quality = json.loads((eval_dir / "quality.json").read_text())["rows"]
    ll = {"raw": parzen["ll"], **({"ema": parzen["ema"]["ll"]} if "ema" in parzen else {})}
    return {
        which: {
            "parzen": ll[which],
            "fid": quality[which]["fid"],
            "kid": quality[which]["kid"],
            "digits": quality[which]["classes_covered"],
        }
        for which in ll
    }


def train_and_score(
    setting: str, overrides: list[str], seed: int, every: int, root: Path, eval_overrides: list[str] = ()
) -> Run:
    folder = root / setting / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "job.log"
    run = Run(setting, seed, str(folder))
    resume = [f"ckpt_path={folder}/checkpoints/last.ckpt"] if (folder / "checkpoints" / "last.ckpt").exists() else []
    finished = (folder / "finished").exists()
    if not finished:
        run.job_seconds += run_command(
            [
                "src/train.py",
                f"seed={seed}",
                *overrides,
                "logger=csv",
                "test_after_fit=false",
                "trainer.enable_progress_bar=false",
                f"callbacks.checkpoint.every_n_epochs={every}",
                "callbacks.checkpoint.save_top_k=-1",
                f"hydra.run.dir={folder}",
                *resume,
            ],
            log,
        )
        (folder / "finished").touch()
    rows = epoch_rows(folder)
    run.collapse_flag = any(float(r.get("train/collapsed") or 0) > 0 for r in rows.values())
    for ckpt_file in sorted((folder / "checkpoints").glob("epoch*-step*.ckpt")):
        epoch = int(ckpt_file.name[5:9]) + 1
        eval_dir = folder / "eval" / f"epoch_{epoch:04d}"
        if not (eval_dir / "quality.json").exists():
            run.job_seconds += run_command(
                ["src/eval.py", f"ckpt_path={ckpt_file}", "logger=none", f"hydra.run.dir={eval_dir}", *eval_overrides],
                log,
            )
        row = rows[epoch]
        run.checkpoints.append(
            Checkpoint(epoch, int(float(row["train/g_updates"])), float(row["train/elapsed_s"]), scores_of(eval_dir))
        )
    return run


def parse_read_at(text: str, settings: dict, every: int) -> tuple[str, str, int]:
    """NAME=SETTING@EPOCH: SETTING's runs read up to EPOCH, a kept checkpoint."""
    name, _, rest = text.partition("=")
    setting, _, epoch = rest.partition("@")
    if not name or setting not in settings or not epoch.isdigit() or int(epoch) % every:
        raise SystemExit(
            f"error: --read-at {text!r}: write NAME=SETTING@EPOCH with SETTING one of --setting's names "
            f"({', '.join(settings)}) and EPOCH a multiple of --every ({every}), e.g. 'short=long@{every}'"
        )
    if any(o.startswith("optimizer.anneal_epochs=") and o != "optimizer.anneal_epochs=null" for o in settings[setting]):
        raise SystemExit(
            f"error: --read-at {text!r}: {setting} anneals its lr over trainer.max_epochs, so its first "
            f"{epoch} epochs are not a run of {epoch}"
        )
    return name, setting, int(epoch)


def up_to(run: Run, epoch: int, setting: str) -> Run:
    """`run` as the run of `epoch` epochs it was on its way (its checkpoints and collapse flag up to there): the
    shorter run of the same settings where nothing in them depends on trainer.max_epochs (no lr anneal)."""
    config = OmegaConf.load(Path(run.folder) / ".hydra" / "config.yaml")
    if OmegaConf.select(config, "optimizer.anneal_epochs") is not None:
        raise SystemExit(
            f"error: --read-at {setting}: {run.setting} anneals its lr over trainer.max_epochs, so its first "
            f"{epoch} epochs are not a run of {epoch}"
        )
    rows = epoch_rows(Path(run.folder))
    flag = any(float(row.get("train/collapsed") or 0) > 0 for e, row in rows.items() if e <= epoch)
    return Run(setting, run.seed, run.folder, 0.0, flag, [c for c in run.checkpoints if c.epoch <= epoch])


def mean_se(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.0f}"
    return f"{statistics.mean(values):.0f} +- {statistics.stdev(values) / math.sqrt(len(values)):.0f}"


def report(runs: list[Run], target: Target) -> str:
    lines = [f"target: {target} (G or its average, full protocol at the kept checkpoints)"]
    for run in runs:
        hit = run.first_reaching(target)
        last = run.checkpoints[-1]
        best = max(last.scores, key=lambda w: last.scores[w]["parzen"])
        end = last.scores[best]
        reached = (
            f"reached at epoch {hit[0].epoch} ({hit[1]}): {hit[0].train_seconds:.0f} s, {hit[0].g_updates} G updates"
            if hit
            else "not reached"
        )
        lines.append(
            f"{run.setting} seed {run.seed}: {reached} | end (epoch {last.epoch}, {best}): {end['parzen']:.1f} nats, "
            f"FID {end['fid']:.1f}, {end['digits']} digits, {last.train_seconds:.0f} s training"
            + (" | COLLAPSED" if run.collapsed else "")
        )
    for setting in dict.fromkeys(r.setting for r in runs):
        mine = [r for r in runs if r.setting == setting]
        hits = [h for h in (r.first_reaching(target) for r in mine) if h]
        ends = [r.checkpoints[-1].train_seconds for r in mine]
        lines.append(
            f"{setting}: {len(hits)}/{len(mine)} reached, time to target {mean_se([h[0].train_seconds for h in hits])} s, "
            f"{mean_se([h[0].g_updates for h in hits])} G updates; whole run {mean_se(ends)} s training; "
            f"{sum(r.collapsed for r in mine)} collapsed"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setting", action="append", required=True, help="NAME=OVERRIDES of src/train.py (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--every", type=int, default=5, help="score the checkpoint of every N-th epoch")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (one thread each)")
    p.add_argument("--root", type=Path, default=REPO / "outputs" / "time_to_quality")
    p.add_argument("--parzen", type=float, default=Target.parzen)
    p.add_argument("--fid", type=float, default=Target.fid)
    p.add_argument("--digits", type=int, default=Target.digits)
    p.add_argument("--eval", default="", help="overrides of src/eval.py (the tests' n_samples=...; default: none)")
    p.add_argument("--out", type=Path, help="write every score here (JSON)")
    p.add_argument(
        "--read-at",
        action="append",
        default=[],
        help="NAME=SETTING@EPOCH: also report SETTING's runs up to EPOCH as setting NAME, a shorter run of it "
        "(only where nothing in SETTING depends on trainer.max_epochs, e.g. no optimizer.anneal_epochs)",
    )
    args = p.parse_args(argv)
    settings = dict(parse_setting(s) for s in args.setting)
    read_at = [parse_read_at(text, settings, args.every) for text in args.read_at]
    target = Target(args.parzen, args.fid, args.digits)
    jobs = [(name, overrides, seed) for seed in args.seeds for name, overrides in settings.items()]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        runs = list(pool.map(lambda job: train_and_score(*job, args.every, args.root, args.eval.split()), jobs))
    runs += [up_to(run, epoch, name) for name, setting, epoch in read_at for run in runs if run.setting == setting]
    print(report(runs, target))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"target": asdict(target), "settings": settings, "runs": [asdict(r) for r in runs]}, indent=1)
        )


if __name__ == "__main__":
    main()
