"""Compare runs without the dashboard: `python src/report.py DIR [DIR ...] [--out FOLDER]`.

DIR is a multirun folder (its job folders are the runs) or a run folder. Each run is read from what it
wrote locally: `.hydra/` (its overrides) and `csv/version_N/metrics.csv` (the CSV logger, on by
default; a resumed run writes the next version, and the versions are read as one run). Prints a
markdown table of each run's final metrics and writes it to FOLDER/report.md, with FOLDER/report.png:
`val/parzen_ll` against G updates, one line per run. FOLDER defaults to DIR when one DIR is given,
else the current folder.
"""

from __future__ import annotations

import argparse
import csv
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
    val: list[tuple[float, float]]  # (G updates, val/parzen_ll) at every validation


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
    val: list[tuple[float, float]] = []
    for values in read_metrics(folder):
        final.update(values)
        if "val/parzen_ll" in values and "val/g_updates" in values:  # runs older than val/g_updates: no line
            val.append((values["val/g_updates"], values["val/parzen_ll"]))
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
             "| train time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r, label in zip(runs, labels):
        ll = (f"{r.final['test/parzen_ll']:.1f} +- {r.final['test/parzen_se']:.1f}"
              if "test/parzen_ll" in r.final else "-")
        name = str(job_number(r.folder)) if job_number(r.folder) >= 0 else r.folder.name
        lines.append(f"| {name} | `{label}` | {ll} | {num(r, 'train/d_real', '.3f')} | "
                     f"{num(r, 'train/d_fake', '.3f')} | {num(r, 'train/d_updates', '.0f')} | "
                     f"{num(r, 'train/g_updates', '.0f')} | {num(r, 'train/elapsed_s', '.1f')} |")
    return "\n".join(line for line in lines if line) + "\n"


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r, label in zip(runs, split_overrides(runs)[1]):
        if r.val:
            x, y = zip(*r.val)
            ax.plot(x, y, marker="o", label=label)
    ax.set_xlabel("G updates")
    ax.set_ylabel("val/parzen_ll (nats)")
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
    args = parser.parse_args(argv)
    runs = find_runs(args.dirs)
    out = args.out or (args.dirs[0] if len(args.dirs) == 1 else Path.cwd())
    out.mkdir(parents=True, exist_ok=True)
    text = table(runs)
    (out / "report.md").write_text(text)
    plot(runs, out / "report.png")
    print(text)
    print(f"wrote {out / 'report.md'} and {out / 'report.png'}", file=sys.stderr)


if __name__ == "__main__":
    with user_errors():
        main()
