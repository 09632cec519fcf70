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

`--g-updates N` and `--seconds T` add val/parzen_ll at equal G updates and at equal training time (each
run's last validation within the budget): the comparison a k sweep needs. 1-D runs (experiment=figure1,
which log val/jsd) get the theory table instead: per setting, E|D - D*| over training, the final JSD,
and the G updates and seconds to reach JSD < `--jsd-below` (docs/theory.md).

The plot draws, per setting, the mean val/parzen_ll (left) and val/fid (right) over seeds against
epochs with a band of +- one s.e. (dashed: the EMA G), or against G updates (`--x g_updates`; the default where
the runs' k differ, which then meet at equal G updates, as on the W&B dashboard); for 1-D runs, the JSD,
E|D - D*|, G's gradient norm and D(G(z)) against G updates. FOLDER defaults to DIR when one DIR is given,
else to the folder the DIRs share (`docs/results/runs/study45` for `docs/results/runs/study45/*/seed*`): beside the
runs, never the current folder (a report of runs elsewhere once landed, untracked, in the repository's root).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from advnets.config import NOT_A_SETTING, NOT_IN_RUN_NAME, is_under
from advnets.errors import UserError, user_errors


@dataclass
class Run:
    folder: Path
    overrides: list[str]
    final: dict[str, float]  # the last value of every logged metric
    val: dict[int, dict[str, float]]  # 1-based epoch with a validation -> every value logged by that epoch's end
    steps: list[dict[str, float]]  # the rows logged during training (on_step), in order
    k: int | None  # D steps per G step (the config's k); None where the run's config is not in its folder
    # 1-based epoch -> generator (raw, ema) -> the full protocol of that epoch's checkpoint (read_evals)
    evals: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)


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
    """The command-line overrides that name the run: Hydra's record of them (.hydra/overrides.yaml, one item per
    override, so that a list value's commas stay inside it) without the bookkeeping of NOT_IN_RUN_NAME, as in
    the run's name (Hydra's override_dirname)."""
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [o for o in yaml.safe_load(path.read_text()) or [] if not is_under(o, NOT_IN_RUN_NAME)]


def read_run(folder: Path) -> Run:
    final: dict[str, float] = {}
    epochs: dict[int, dict[str, float]] = {}
    steps = []
    for values in read_metrics(folder):
        final.update(values)
        if "train/g_grad_norm" in values:
            steps.append(values)
        if "epoch" in values:  # the epoch's rows merged: its validation, and train/* as they were at its end
            epochs.setdefault(int(values["epoch"]) + 1, {}).update(values)
    val = {e: v for e, v in epochs.items() if any(k.startswith("val/") for k in v)}
    return Run(folder, overrides(folder), final, val, steps, config_k(folder), read_evals(folder))


def config_k(folder: Path) -> int | None:
    """The run's k, from the config Hydra wrote for it (.hydra/config.yaml); None without one."""
    path = folder / ".hydra" / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}).get("k") if path.is_file() else None


PROTOCOL_KEYS = ("parzen_ll", "parzen_se", "fid", "kid", "classes_covered")


def read_evals(folder: Path) -> dict[int, dict[str, dict[str, float]]]:
    """The full protocol of the run's checkpoints: what `python src/eval.py ckpt_path=<run>/checkpoints/X.ckpt
    hydra.run.dir=<run>/eval/<any name>` wrote (parzen.json, quality.json), by the checkpoint's epoch (its name:
    epochNNNN is Lightning's 0-based epoch), per generator; {parzen_ll, parzen_se, fid, kid, classes_covered}."""
    found: dict[int, dict[str, dict[str, float]]] = {}
    for parzen_file in sorted(folder.glob("eval/*/parzen.json")):
        parzen = json.loads(parzen_file.read_text())
        match = re.search(r"epoch(\d+)-step", Path(str(parzen.get("ckpt_path"))).name)
        if not match:
            continue
        rows = {"raw": parzen, **({"ema": parzen["ema"]} if "ema" in parzen else {})}
        quality_file = parzen_file.with_name("quality.json")
        quality = json.loads(quality_file.read_text())["rows"] if quality_file.is_file() else {}
        epoch = int(match.group(1)) + 1
        for which, p in rows.items():
            q = quality.get(which, {})
            found.setdefault(epoch, {})[which] = {
                "parzen_ll": p["ll"],
                "parzen_se": p["se"],
                "fid": q.get("fid"),
                "kid": q.get("kid"),
                "classes_covered": q.get("classes_covered"),
            }
    return found


def job_number(folder: Path) -> int:
    """A multirun job folder's number (its name is `N`, or `N_<overrides>` in sweeps of older code); -1 for others."""
    head = folder.name.split("_")[0]
    return int(head) if head.isdigit() and (head == folder.name or "_" in folder.name) else -1


def find_runs(dirs: list[Path]) -> list[Run]:
    """The runs in `dirs`: each DIR is a run folder, or holds run folders (a multirun, in job order)."""
    runs = []
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"{d} is not a folder")
        if metrics_files(d):
            runs.append(read_run(d))
            continue
        jobs = sorted(
            (p for p in d.iterdir() if p.is_dir() and metrics_files(p)), key=lambda p: (job_number(p), p.name)
        )
        if not jobs:
            raise UserError(
                f"no runs in {d}: a run folder holds csv/version_N/metrics.csv (written with the default "
                f"logger, or logger=csv)"
            )
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

    lines = [
        f"Overrides of every run: `{','.join(common)}`\n" if common else "",
        "| run | overrides | test/parzen_ll +- se | train/d_real | train/d_fake | D updates | G updates "
        "| train time (s) | test/fid | test/kid +- std | test/classes_covered |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, label in zip(runs, labels):
        ll = (
            f"{r.final['test/parzen_ll']:.1f} +- {r.final['test/parzen_se']:.1f}"
            if "test/parzen_ll" in r.final
            else "-"
        )
        name = str(job_number(r.folder)) if job_number(r.folder) >= 0 else r.folder.name
        kid = f"{r.final['test/kid']:.5f} +- {r.final['test/kid_std']:.5f}" if "test/kid" in r.final else "-"
        lines.append(
            f"| {name} | `{label}` | {ll} | {num(r, 'train/d_real', '.3f')} | "
            f"{num(r, 'train/d_fake', '.3f')} | {num(r, 'train/d_updates', '.0f')} | "
            f"{num(r, 'train/g_updates', '.0f')} | {num(r, 'train/elapsed_s', '.1f')} | "
            f"{num(r, 'test/fid', '.3f')} | {kid} | {num(r, 'test/classes_covered', '.0f')} |"
        )
    return "\n".join(line for line in lines if line) + "\n"


def setting_of(run: Run) -> tuple[str, ...]:
    """A run's overrides without advnets.config.NOT_A_SETTING (the seed, the run's length...) and the bookkeeping of
    NOT_IN_RUN_NAME (in the names of runs made before it was left out): the runs of one setting differ only in
    those."""
    return tuple(o for o in run.overrides if not is_under(o, NOT_A_SETTING + NOT_IN_RUN_NAME))


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


def fmt(values: list[float], digits: int = 1, seeds: int | None = None) -> str:
    """mean +- s.e.; with `seeds`, a mean over fewer runs than the setting has says so: "(3 of 5 seeds)"."""
    if not values:
        return "-"
    mean, se = mean_se(values)
    text = f"{mean:.{digits}f}" if math.isnan(se) else f"{mean:.{digits}f} +- {se:.{digits}f}"
    return text + (f" ({len(values)} of {seeds} seeds)" if seeds is not None and len(values) < seeds else "")


def within(run: Run, budget_key: str, budget: float | None) -> int | None:
    """The last validated epoch by whose end `budget_key` (val/g_updates, train/elapsed_s) was <= budget; None
    when the run never got to the budget."""
    if budget is None:
        return None
    if max((v.get(budget_key, -math.inf) for v in run.val.values()), default=-math.inf) < budget:
        return None  # the run ended before the budget: no value, not its last one under another budget
    fits = [e for e, v in run.val.items() if v.get(budget_key, math.inf) <= budget]
    return max(fits) if fits else None


def seeds_table(
    runs: list[Run], epoch: int | None = None, g_updates: int | None = None, seconds: float | None = None
) -> str:
    """Per setting: seeds, collapsed, val/parzen_ll (raw, EMA) at the last common epoch and at `epoch`, test/;
    then val/fid (raw, EMA) at the last common epoch and test/fid. With `g_updates` or `seconds`: also
    val/parzen_ll at equal G updates or equal training time (each run's last validation within the budget)."""
    head = "| setting | seeds | collapsed | last epoch | val/parzen_ll | val/ema_parzen_ll |"
    if epoch is not None:
        head += f" val/parzen_ll @{epoch} | val/ema_parzen_ll @{epoch} |"
    budgets = [
        (key, b, name)
        for key, b, name in (
            ("val/g_updates", g_updates, f"@{g_updates} G updates"),
            ("train/elapsed_s", seconds, f"@{seconds:g} s" if seconds else ""),
        )
        if b is not None
    ]
    for _, _, name in budgets:
        head += f" val/parzen_ll {name} | val/ema_parzen_ll {name} |"
    # Parzen alone rewards blur: every row gives the sample-quality figures of the same runs beside it.
    head += " test/parzen_ll | test/ema_parzen_ll | val/fid | val/ema_fid | test/fid | test/ema_fid |"
    head += " test/kid | test/ema_kid | test/classes_covered | test/ema_classes_covered |"
    lines = [
        "Over seeds: mean +- s.e. (std with ddof 1 / sqrt(seeds)) of each setting's runs.\n",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for label, group in settings(runs).items():
        last = min((max(r.val) for r in group if r.val), default=None) if all(r.val for r in group) else None

        def at(e, key):
            return [r.val[e][key] for r in group if e in r.val and key in r.val[e]] if e else []

        def final(key):
            values = [r.final[key] for r in group if key in r.final]
            return values if len(values) == len(group) else []

        collapsed = sum(r.final.get("train/collapsed", 0.0) > 0 for r in group)
        row = (
            f"| `{label}` | {len(group)} | {collapsed} | {last or '-'} | {fmt(at(last, 'val/parzen_ll'))} | "
            f"{fmt(at(last, 'val/ema_parzen_ll'))} |"
        )
        if epoch is not None:
            # a collapsed run stopped before `epoch` has no value there: the mean is over the runs that reached it
            row += (
                f" {fmt(at(epoch, 'val/parzen_ll'), seeds=len(group))} |"
                f" {fmt(at(epoch, 'val/ema_parzen_ll'), seeds=len(group))} |"
            )
        for budget_key, budget, _ in budgets:
            picked = [(r, within(r, budget_key, budget)) for r in group]
            for key in ("val/parzen_ll", "val/ema_parzen_ll"):
                values = [r.val[e][key] for r, e in picked if e is not None and key in r.val[e]]
                row += f" {fmt(values) if len(values) == len(group) else '-'} |"
        row += f" {fmt(final('test/parzen_ll'))} | {fmt(final('test/ema_parzen_ll'))} |"
        row += (
            f" {fmt(at(last, 'val/fid'), 2)} | {fmt(at(last, 'val/ema_fid'), 2)} | {fmt(final('test/fid'), 2)} |"
            f" {fmt(final('test/ema_fid'), 2)} | {fmt(final('test/kid'), 4)} | {fmt(final('test/ema_kid'), 4)} |"
            f" {fmt(final('test/classes_covered'), 1)} | {fmt(final('test/ema_classes_covered'), 1)} |"
        )
        lines.append(row)
    return "\n".join(lines) + "\n"


def protocol_table(runs: list[Run]) -> str:
    """Per setting and evaluated epoch: the full protocol (read_evals) of G and of its EMA, mean +- s.e. over the
    seeds evaluated there; the Parzen column also gives the mean within-run s.e. (the estimate's own noise)."""
    if not any(r.evals for r in runs):
        return ""
    head = (
        "| setting | epoch | seeds | G: Parzen (within-run s.e.) | G: FID | G: KID | G: classes | EMA: Parzen | "
        "EMA: FID | EMA: KID | EMA: classes |"
    )
    lines = [
        "Full protocol at evaluated checkpoints (src/eval.py): mean +- s.e. over seeds.\n",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for label, group in settings(runs).items():
        for epoch in sorted({e for r in group for e in r.evals}):
            scored = [r.evals[epoch] for r in group if epoch in r.evals]
            row = f"| `{label}` | {epoch} | {len(scored)} |"
            for which in ("raw", "ema"):
                values = {
                    k: [s[which][k] for s in scored if which in s and s[which][k] is not None] for k in PROTOCOL_KEYS
                }
                within = (
                    f" (+- {sum(values['parzen_se']) / len(values['parzen_se']):.1f})" if values["parzen_se"] else ""
                )
                row += (
                    f" {fmt(values['parzen_ll'])}{within} | {fmt(values['fid'], 1)} | {fmt(values['kid'], 2)} |"
                    f" {fmt(values['classes_covered'], 1)} |"
                )
            lines.append(row)
    return "\n".join(lines) + "\n"


# The full protocol's panels, (read_evals key, axis label): plot_protocol's and docs/results/five_seeds.py's.
PROTOCOL_PANELS = (
    ("parzen_ll", "Parzen log-likelihood (nats)"),
    ("fid", "FID (classifier), lower is better"),
    ("classes_covered", "classes covered"),
)


def plot_protocol(runs: list[Run], path: Path) -> None:
    """The full protocol against epochs: Parzen, FID and classes covered of G (solid) and its EMA (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    for ax, (key, ylabel) in zip(axes, PROTOCOL_PANELS):
        for i, (label, group) in enumerate(settings(runs).items()):
            for which, style in (("raw", "-"), ("ema", "--")):
                points = [
                    {e: s[which][key] for e, s in r.evals.items() if which in s and s[which][key] is not None}
                    for r in group
                ]
                _curve(
                    ax, points, f"C{i % 10}", style, f"{label} ({len(group)} seeds){' EMA' if which == 'ema' else ''}"
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{ylabel}, mean +- s.e.")
        if key == "fid":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def theory_table(runs: list[Run], jsd_below: float, g_updates: int | None = None) -> str:
    """1-D runs (experiment=figure1): per setting over seeds, how far D stayed from D* and how fast p_g met p_data.

    E|D - D*|: each run's mean of val/d_distance over its validations; final JSD: test/jsd (the end-of-fit
    estimate from more samples); reached: the seeds whose val/jsd fell below `jsd_below` at some validation,
    and for those, the G updates and training seconds (train/elapsed_s) by the end of that epoch. With
    `g_updates`: val/jsd at equal G updates too (each run's last validation within that many).
    """
    cells = [
        "setting",
        "seeds",
        "E\\|D - D*\\| over training",
        "final JSD",
        f"reached JSD < {jsd_below:g}",
        "G updates to reach",
        "seconds to reach",
    ]
    if g_updates is not None:
        cells.append(f"JSD @{g_updates} G updates")
    lines = [
        "Over seeds: mean +- s.e. (std with ddof 1 / sqrt(seeds)); 'to reach' over the seeds that reached.\n",
        "| " + " | ".join(cells) + " |",
        "|" + "---|" * len(cells),
    ]
    for label, group in settings(runs).items():
        distance = [
            sum(v["val/d_distance"] for v in r.val.values() if "val/d_distance" in v)
            / max(1, sum("val/d_distance" in v for v in r.val.values()))
            for r in group
            if r.val
        ]
        final = [r.final["test/jsd"] for r in group if "test/jsd" in r.final]
        reached = []
        for r in group:
            below = [e for e in sorted(r.val) if r.val[e].get("val/jsd", math.inf) < jsd_below]
            if below:
                reached.append(r.val[below[0]])
        row = (
            f"| `{label}` | {len(group)} | {fmt(distance, 4)} | {fmt(final, 4)} | {len(reached)}/{len(group)} "
            f"| {fmt([v['val/g_updates'] for v in reached if 'val/g_updates' in v], 0)} "
            f"| {fmt([v['train/elapsed_s'] for v in reached if 'train/elapsed_s' in v], 1)} |"
        )
        if g_updates is not None:
            picked = [(r, within(r, "val/g_updates", g_updates)) for r in group]
            values = [r.val[e]["val/jsd"] for r, e in picked if e is not None and "val/jsd" in r.val[e]]
            row += f" {fmt(values, 4) if len(values) == len(group) else '-'} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def is_theory(runs: list[Run]) -> bool:
    return any("val/jsd" in v for r in runs for v in r.val.values())


def _curve(ax, points: list[dict[float, float]], color: str, style: str, label: str) -> None:
    """The mean over runs (seeds) of y at each x, with a band of +- one s.e., where every run has a value. Where
    only some do (collapsed runs stopped early), a thin line without a band follows the mean of those: a mean
    over the survivors alone must not read as the setting's."""
    xs = sorted({x for p in points for x in p})
    if not xs:
        return
    stats = [mean_se([p[x] for p in points if x in p]) for x in xs]
    mean, se = [m for m, _ in stats], [0.0 if math.isnan(s) else s for _, s in stats]
    every = [i for i, x in enumerate(xs) if all(x in p for p in points)]
    last = every[-1] + 1 if every else 0
    marker = "o" if len(xs) < 100 else None
    ax.plot(xs[:last], mean[:last], style, color=color, marker=marker, markersize=3, label=label)
    ax.fill_between(
        xs[:last],
        [m - s for m, s in zip(mean[:last], se)],
        [m + s for m, s in zip(mean[:last], se)],
        color=color,
        alpha=0.2,
    )
    if last < len(xs):
        start = max(last - 1, 0)
        ax.plot(xs[start:], mean[start:], style, color=color, linewidth=0.7, alpha=0.6)


# The x axes of the plot's validation curves (--x), with their labels.
X_AXES = {"epoch": "epoch", "g_updates": "G updates"}


def x_value(x: str, epoch: int, values: dict[str, float]) -> float | None:
    """Where a validation (of `epoch`, logging `values`) lies on the x axis `x`: its epoch, or its val/g_updates
    (None where it logged none)."""
    return epoch if x == "epoch" else values.get("val/g_updates")


def x_axis(runs: list[Run], asked: str | None = None) -> str:
    """The x axis of the plot's validation curves: `asked` (--x), else G updates for 1-D runs and where the runs' k
    differ (a k sweep: its runs meet at equal G updates, as on the W&B dashboard, advnets.loggers.DashboardAxes),
    else epochs."""
    if asked:
        return asked
    differ = len({r.k for r in runs if r.k is not None}) > 1
    return "g_updates" if is_theory(runs) or differ else "epoch"


def plot(runs: list[Run], path: Path, x: str, first_updates: int | None = None):
    """Image runs: val/parzen_ll (and val/fid); 1-D runs (experiment=figure1): val/jsd and val/d_distance; against
    `x` (X_AXES). 1-D runs also per logged step G's gradient norm and D(G(z)), against G updates (the first
    `first_updates`: where the minimax loss saturates). Returns the figure (drawn and closed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    theory = is_theory(runs)
    if theory:
        panels = [
            ("val/jsd", "JSD(p_data || p_g) (nats)"),
            ("val/d_distance", "E|D - D*|"),
            ("train/g_grad_norm", "norm of G's gradient"),
            ("train/d_fake", "D(G(z)), batch mean"),
        ]
    else:
        panels = [("val/parzen_ll", "val/parzen_ll (nats)")]
        if any("val/fid" in v for r in runs for v in r.val.values()):
            panels.append(("val/fid", "val/fid (lower is better)"))
    cols = 2 if theory else len(panels)
    fig, axes = plt.subplots(
        -(-len(panels) // cols), cols, figsize=(7 * cols, 4.5 * -(-len(panels) // cols)), squeeze=False
    )
    for ax, (metric, ylabel) in zip(axes.flat, panels):
        for i, (label, group) in enumerate(settings(runs).items()):
            name = f"{label} ({len(group)} seed{'s' if len(group) > 1 else ''})"
            if metric.startswith("train/"):
                points = [
                    {
                        row["train/g_updates"]: row[metric]
                        for row in r.steps
                        if metric in row
                        and "train/g_updates" in row
                        and row["train/g_updates"] <= (first_updates or math.inf)
                    }
                    for r in group
                ]
                _curve(ax, points, f"C{i % 10}", "-", name)
                continue
            for key, style in ((metric, "-"), (metric.replace("val/", "val/ema_"), "--")):
                points = [
                    {at: v[key] for e, v in r.val.items() if key in v and (at := x_value(x, e, v)) is not None}
                    for r in group
                ]
                _curve(ax, points, f"C{i % 10}", style, name + (" EMA" if "ema" in key else ""))
        ax.set_xlabel("G updates" if metric.startswith("train/") else X_AXES[x])
        ax.set_ylabel(f"{ylabel}, mean +- s.e. over seeds")
        if metric in ("val/fid", "val/jsd", "val/d_distance", "train/g_grad_norm"):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if len(handles) <= 6:
        for ax in axes.flat:
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        fig.tight_layout()
    else:  # many settings: one legend below the panels, where it hides no curve
        rows = -(-len(handles) // 2)
        fig.set_figheight(fig.get_figheight() + 0.2 * rows)
        fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.2 * rows / fig.get_figheight() + 0.02, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def report_folder(dirs: list[Path]) -> Path:
    """Where the report goes without --out: the one DIR, or the nearest folder all the DIRs are in."""
    shared = Path(os.path.commonpath([d.resolve() for d in dirs]))
    if shared == Path(shared.anchor):  # runs on different drives or trees: no folder of theirs to write in
        raise UserError(
            f"{', '.join(map(str, dirs))} share no folder but the root: say where the report goes, --out FOLDER"
        )
    return shared


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="a multirun folder or run folders")
    parser.add_argument("--out", type=Path, help="where report.md and report.png go")
    parser.add_argument("--epoch", type=int, help="also compare the settings at this (1-based) epoch")
    parser.add_argument(
        "--g-updates", type=int, help="also compare them at equal G updates (the last validation within this many)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        help="also compare them at equal training time (the last "
        "validation within this many seconds of train/elapsed_s)",
    )
    parser.add_argument(
        "--x",
        choices=list(X_AXES),
        help="the plot's x axis (default: G updates where the runs' k differ, and for 1-D runs; else epochs)",
    )
    parser.add_argument(
        "--first-updates",
        type=int,
        help="1-D runs: plot G's gradient norm and D(G(z)) over the first this many G updates only",
    )
    parser.add_argument(
        "--jsd-below",
        type=float,
        default=0.01,
        help="1-D runs: the JSD (nats) whose first crossing the table times (default 0.01)",
    )
    args = parser.parse_args(argv)
    out = args.out or report_folder(args.dirs)
    runs = find_runs(args.dirs)
    out.mkdir(parents=True, exist_ok=True)
    if is_theory(runs):
        text = theory_table(runs, args.jsd_below, args.g_updates) + "\n" + table(runs)
    else:
        text = (
            seeds_table(runs, args.epoch, args.g_updates, args.seconds)
            + "\n"
            + protocol_table(runs)
            + "\n"
            + table(runs)
        )
    (out / "report.md").write_text(text)
    x = x_axis(runs, args.x)
    plot(runs, out / "report.png", x, args.first_updates)
    if any(r.evals for r in runs):
        plot_protocol(runs, out / "report_protocol.png")
    print(text)
    print(f"wrote {out / 'report.md'} and {out / 'report.png'} (curves against {X_AXES[x]})", file=sys.stderr)


if __name__ == "__main__":
    with user_errors():
        main()
