"""Compare runs without the dashboard: `python src/report.py DIR [DIR ...] [--out FOLDER]`.

DIR is a multirun folder (its job folders are the runs) or a run folder. Each run is read from what it
wrote locally: `.hydra/` (its overrides) and `csv/version_N/metrics.csv` (the CSV logger, on by
default; a resumed run writes the next version, and the versions are read as one run). Prints two
markdown tables and writes them to FOLDER/report.md, with FOLDER/report.png:

- over seeds: runs whose overrides differ only in `seed` are one setting; per setting, the number of
  seeds, how many collapsed (train/collapsed, see CollapseMonitor), and mean +- s.e. over seeds (ddof 1)
  of the per-epoch estimate val/parzen_ll (and val/ema_parzen_ll) at the last epoch every seed reached,
  at `--epoch N`, and of the full protocol test/parzen_ll where every seed has it; beside them the same
  for the sample-quality FID (val/fid, val/ema_fid, test/fid, test/ema_fid; on MNIST classifier-based);
- per run: each run's final metrics, with test/fid, test/kid and test/classes_covered.

The plot draws, per setting, the mean val/parzen_ll (left) and val/fid (right) over seeds against
epochs with a band of +- one s.e. (dashed: the EMA G). FOLDER defaults to DIR when one DIR is given,
else the current folder.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from advnets.errors import UserError, user_errors


@dataclass
class Run:
    folder: Path
    overrides: list[str]
    final: dict[str, float]  # the last value of every logged metric
    val: dict[int, dict[str, float]]  # 1-based epoch -> that validation's val/* values


def metrics_files(folder: Path) -> list[Path]:
    """The run's CSV logs, csv/version_N/metrics.csv, oldest first: a resumed run writes the next version."""
    return sorted(folder.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))


def read_metrics(folder: Path) -> list[dict[str, float]]:
    """The run's logged rows across its resumes, as one curve.

    Steps go on from the checkpoint a resume started from, so where a later version starts at step s,
    the rows an earlier one logged at s or after (training past its last checkpoint, redone) are dropped.
    """
    versions = []
    for path in metrics_files(folder):
        with open(path, newline="") as f:
            rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
        if rows:
            versions.append(rows)
    merged: list[dict[str, float]] = []
    for rows in versions:
        start = rows[0].get("step", float("inf"))
        merged = [r for r in merged if r.get("step", -1) < start] + rows
    return merged


def overrides(folder: Path) -> list[str]:
    """The command-line overrides that name the run (Hydra's override_dirname: no paths, no hydra.* keys)."""
    hydra_yaml = folder / ".hydra" / "hydra.yaml"
    if not hydra_yaml.is_file():
        return []
    dirname = yaml.safe_load(hydra_yaml.read_text())["hydra"]["job"]["override_dirname"]
    return dirname.split(",") if dirname else []


def read_run(folder: Path) -> Run:
    final: dict[str, float] = {}
    val: dict[int, dict[str, float]] = {}
    for values in read_metrics(folder):
        final.update(values)
        if "val/parzen_ll" in values and "epoch" in values:
            val[int(values["epoch"]) + 1] = {k: v for k, v in values.items() if k.startswith("val/")}
    return Run(folder, overrides(folder), final, val)


def job_number(folder: Path) -> int:
    """A multirun job folder's number (its name starts `N_`); -1 for other folders."""
    head = folder.name.split("_")[0]
    return int(head) if head.isdigit() and "_" in folder.name else -1


def find_runs(dirs: list[Path]) -> list[Run]:
    """The runs in `dirs`: each DIR is a run folder, or holds run folders (a multirun, in job order)."""
    runs = []
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"{d} is not a folder")
        if metrics_files(d):
            runs.append(read_run(d))
            continue
        jobs = sorted((p for p in d.iterdir() if p.is_dir() and metrics_files(p)), key=lambda p: (job_number(p), p.name))
        if not jobs:
            raise UserError(f"no runs in {d}: a run folder holds csv/version_N/metrics.csv (written with the default "
                   f"logger, or logger=csv)")
        runs.extend(read_run(p) for p in jobs)
    return runs


def split_overrides(runs: list[Run]) -> tuple[list[str], list[str]]:
    """The overrides every run shares, and each run's own (its label in the table and the plot)."""
    common = [o for o in runs[0].overrides if all(o in r.overrides for r in runs)] if len(runs) > 1 else []
    return common, [",".join(o for o in r.overrides if o not in common) or r.folder.name for r in runs]


def table(runs: list[Run]) -> str:
    """Markdown: overrides shared by all runs above the table, the ones that differ in it."""
    common, labels = split_overrides(runs)

    def num(run: Run, key: str, fmt: str) -> str:
        return format(run.final[key], fmt) if key in run.final else "-"

    lines = [f"Overrides of every run: `{','.join(common)}`\n" if common else "",
             "| run | overrides | test/parzen_ll +- se | train/d_real | train/d_fake | D updates | G updates "
             "| train time (s) | test/fid | test/kid +- std | test/classes_covered |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r, label in zip(runs, labels):
        ll = (f"{r.final['test/parzen_ll']:.1f} +- {r.final['test/parzen_se']:.1f}"
              if "test/parzen_ll" in r.final else "-")
        name = str(job_number(r.folder)) if job_number(r.folder) >= 0 else r.folder.name
        kid = f"{r.final['test/kid']:.5f} +- {r.final['test/kid_std']:.5f}" if "test/kid" in r.final else "-"
        lines.append(f"| {name} | `{label}` | {ll} | {num(r, 'train/d_real', '.3f')} | "
                     f"{num(r, 'train/d_fake', '.3f')} | {num(r, 'train/d_updates', '.0f')} | "
                     f"{num(r, 'train/g_updates', '.0f')} | {num(r, 'train/elapsed_s', '.1f')} | "
                     f"{num(r, 'test/fid', '.3f')} | {kid} | {num(r, 'test/classes_covered', '.0f')} |")
    return "\n".join(line for line in lines if line) + "\n"


def setting_of(run: Run) -> tuple[str, ...]:
    """A run's overrides without its seed: the runs of one setting differ only in seed."""
    return tuple(o for o in run.overrides if not o.startswith("seed="))


def settings(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by setting, labelled by the overrides that differ between settings, in first-seen order."""
    groups: dict[tuple[str, ...], list[Run]] = {}
    for r in runs:
        groups.setdefault(setting_of(r), []).append(r)
    keys = list(groups)
    common = [o for o in keys[0] if all(o in k for k in keys)] if len(keys) > 1 else list(keys[0])
    return {",".join(o for o in k if o not in common) or "defaults": groups[k] for k in keys}


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error over seeds, std(ddof=1) / sqrt(n); the s.e. is nan for one seed."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def fmt(values: list[float], digits: int = 1) -> str:
    if not values:
        return "-"
    mean, se = mean_se(values)
    return f"{mean:.{digits}f}" if math.isnan(se) else f"{mean:.{digits}f} +- {se:.{digits}f}"


def seeds_table(runs: list[Run], epoch: int | None = None) -> str:
    """Per setting: seeds, collapsed, val/parzen_ll (raw, EMA) at the last common epoch and at `epoch`, test/;
    then val/fid (raw, EMA) at the last common epoch and test/fid."""
    head = "| setting | seeds | collapsed | last epoch | val/parzen_ll | val/ema_parzen_ll |"
    if epoch is not None:
        head += f" val/parzen_ll @{epoch} | val/ema_parzen_ll @{epoch} |"
    head += " test/parzen_ll | test/ema_parzen_ll | val/fid | val/ema_fid | test/fid | test/ema_fid |"
    lines = ["Over seeds: mean +- s.e. (std with ddof 1 / sqrt(seeds)) of each setting's runs.\n", head,
             "|" + "---|" * (head.count("|") - 1)]
    for label, group in settings(runs).items():
        last = min((max(r.val) for r in group if r.val), default=None) if all(r.val for r in group) else None

        def at(e, key):
            return [r.val[e][key] for r in group if e in r.val and key in r.val[e]] if e else []

        def final(key):
            values = [r.final[key] for r in group if key in r.final]
            return values if len(values) == len(group) else []

        collapsed = sum(r.final.get("train/collapsed", 0.0) > 0 for r in group)
        row = (f"| `{label}` | {len(group)} | {collapsed} | {last or '-'} | {fmt(at(last, 'val/parzen_ll'))} | "
               f"{fmt(at(last, 'val/ema_parzen_ll'))} |")
        if epoch is not None:
            row += f" {fmt(at(epoch, 'val/parzen_ll'))} | {fmt(at(epoch, 'val/ema_parzen_ll'))} |"
        row += f" {fmt(final('test/parzen_ll'))} | {fmt(final('test/ema_parzen_ll'))} |"
        row += (f" {fmt(at(last, 'val/fid'), 2)} | {fmt(at(last, 'val/ema_fid'), 2)} | {fmt(final('test/fid'), 2)} |"
                f" {fmt(final('test/ema_fid'), 2)} |")
        lines.append(row)
    return "\n".join(lines) + "\n"


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("parzen_ll", "val/parzen_ll (nats)")]
    if any("val/fid" in v for r in runs for v in r.val.values()):
        panels.append(("fid", "val/fid (lower is better)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (metric, ylabel) in zip(axes[0], panels):
        for i, (label, group) in enumerate(settings(runs).items()):
            for key, style in ((f"val/{metric}", "-"), (f"val/ema_{metric}", "--")):
                epochs = sorted({e for r in group for e in r.val if key in r.val[e]})
                if not epochs:
                    continue
                stats = [mean_se([r.val[e][key] for r in group if e in r.val and key in r.val[e]]) for e in epochs]
                mean = [m for m, _ in stats]
                se = [0.0 if math.isnan(s) else s for _, s in stats]
                name = f"{label} ({len(group)} seed{'s' if len(group) > 1 else ''})" + (" EMA" if "ema" in key else "")
                ax.plot(epochs, mean, style, color=f"C{i % 10}", marker="o", markersize=3, label=name)
                ax.fill_between(epochs, [m - s for m, s in zip(mean, se)], [m + s for m, s in zip(mean, se)],
                                color=f"C{i % 10}", alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{ylabel}, mean +- s.e. over seeds")
        if metric == "fid":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if any(r.val for r in runs):
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="a multirun folder or run folders")
    parser.add_argument("--out", type=Path, help="where report.md and report.png go")
    parser.add_argument("--epoch", type=int, help="also compare the settings at this (1-based) epoch")
    args = parser.parse_args(argv)
    runs = find_runs(args.dirs)
    out = args.out or (args.dirs[0] if len(args.dirs) == 1 else Path.cwd())
    out.mkdir(parents=True, exist_ok=True)
    text = seeds_table(runs, args.epoch) + "\n" + table(runs)
    (out / "report.md").write_text(text)
    plot(runs, out / "report.png")
    print(text)
    print(f"wrote {out / 'report.md'} and {out / 'report.png'}", file=sys.stderr)


if __name__ == "__main__":
    with user_errors():
        main()
