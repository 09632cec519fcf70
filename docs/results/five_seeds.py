"""The default's full protocol over seeds 300-304: the per-epoch table of docs/results.md and results_protocol.png.

Seeds 302-304 (and any later seed): their measurements in docs/results/runs/default/seedS, which src/report.py
reads as run folders (csv/, .hydra/, eval/epoch_NNNN/{parzen,quality}.json). Seeds 300 and 301: the values in
seeds_300_301.csv (its header says where they come from: their run folders were lost).

    python docs/results/five_seeds.py      # prints the table, writes docs/results_protocol.png
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

import report  # noqa: E402

METRICS = ("parzen_ll", "parzen_se", "fid", "kid", "classes_covered")


def recovered() -> dict[tuple[int, str, str], list[float]]:
    """(epoch, "raw"/"ema", metric) -> the two seeds' values."""
    rows = csv.DictReader(line for line in (HERE / "seeds_300_301.csv").open() if not line.startswith("#"))
    return {(int(r["epoch"]), r["which"], r["metric"]): [float(r["low"]), float(r["high"])] for r in rows}


def values(runs, old, epoch: int, which: str, metric: str) -> list[float]:
    new = [r.evals[epoch][which][metric] for r in runs if epoch in r.evals and which in r.evals[epoch]]
    return old.get((epoch, which, metric), []) + [v for v in new if v is not None]


def main() -> None:
    runs = [report.read_run(p) for p in sorted((HERE / "runs" / "default").glob("seed*"))]
    old = recovered()
    # Every 10 epochs, as every seed was scored (seed 305 also at 12, 24, 36, 48: for average_test only).
    epochs = sorted(e for e in {e for r in runs for e in r.evals} | {k[0] for k in old} if e % 10 == 0)
    print(
        "| epoch | seeds | G: Parzen (within-run s.e.) | G: FID | G: KID | G: classes "
        "| EMA: Parzen (within-run s.e.) | EMA: FID | EMA: KID | EMA: classes |"
    )
    print("|" + "---|" * 10)
    for epoch in epochs:
        row = f"| {epoch} | {len(values(runs, old, epoch, 'raw', 'parzen_ll'))} |"
        for which in ("raw", "ema"):
            v = {m: values(runs, old, epoch, which, m) for m in METRICS}
            within = sum(v["parzen_se"]) / len(v["parzen_se"])
            row += (
                f" {report.fmt(v['parzen_ll'])} (+- {within:.1f}) | {report.fmt(v['fid'])} | {report.fmt(v['kid'])} |"
                f" {report.fmt(v['classes_covered'])} |"
            )
        print(row.replace("+-", "±"))
    print()
    average_test(runs)
    plot(runs, old, epochs, HERE.parent / "results_protocol.png")


def average_test(runs) -> None:
    """Issue 22's test of the average, per seed: the EMA's FID no higher than G's at epoch 12 and every later epoch
    scored, and 10/10 digits from epoch 20 on; on the full protocol (10,000 samples, the kept checkpoints) and on
    the per-epoch estimate (val/*, 1,000 samples, every epoch)."""
    print(
        "| seed | scored by | epochs | EMA FID above G's (epoch: EMA / G) | EMA under 10 digits from epoch 20 "
        "| G under 10 digits from epoch 20 |"
    )
    print("|---|---|---|---|---|---|")
    for r in runs:
        per_epoch = {
            e: {
                "raw": {"fid": v["val/fid"], "classes_covered": v["val/classes_covered"]},
                "ema": {"fid": v["val/ema_fid"], "classes_covered": v["val/ema_classes_covered"]},
            }
            for e, v in r.val.items()
            if "val/ema_fid" in v
        }
        for name, scored in (("full protocol", r.evals), ("per-epoch val", per_epoch)):
            epochs = sorted(e for e in scored if e >= 12 and "ema" in scored[e])
            worse = [
                f"{e}: {scored[e]['ema']['fid']:.1f} / {scored[e]['raw']['fid']:.1f}"
                for e in epochs
                if scored[e]["ema"]["fid"] > scored[e]["raw"]["fid"]
            ]
            short = {
                which: [
                    f"{e}: {scored[e][which]['classes_covered']:.0f}"
                    for e in epochs
                    if e >= 20 and scored[e][which]["classes_covered"] < 10
                ]
                for which in ("ema", "raw")
            }
            span = f"{len(epochs)} ({epochs[0]}-{epochs[-1]})" if epochs else "0"
            print(
                f"| {r.folder.name} | {name} | {span} | {', '.join(worse) or 'none'} | {', '.join(short['ema']) or 'none'}"
                f" | {', '.join(short['raw']) or 'none'} |"
            )


def plot(runs, old, epochs: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    for ax, (metric, ylabel) in zip(axes, report.PROTOCOL_PANELS):
        for which, style in (("raw", "-"), ("ema", "--")):
            # One dict per seed, epoch -> value; the two recovered seeds as their low and high values.
            points = [{e: r.evals[e][which][metric] for e in epochs if which in r.evals.get(e, {})} for r in runs]
            points += [{e: old[(e, which, metric)][i] for e in epochs if (e, which, metric) in old} for i in (0, 1)]
            label = f"{'EMA of G' if which == 'ema' else 'G'} ({len(points)} seeds)"
            report._curve(ax, points, "C0" if which == "raw" else "C1", style, label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{ylabel}, mean +- s.e.")
        if metric == "fid":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(
        "The default (python src/train.py), full protocol every 10 epochs: seeds 300-303, 305 (304 to epoch 20)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
