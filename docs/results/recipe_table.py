"""The recipe study (docs/results.md): every route and average at epoch 60 over seeds, the rule written before the
runs applied to them, the Parzen-FID figure (docs/recipe_parzen_fid.png) and, from a run folder that still has its
checkpoints, the chosen average's samples beside its raw G's (docs/recipe_samples.png).

Reads docs/results/runs/recipe/<route>/seedS (docs/results/recipe_run.sh: eval/epoch_NNNN for the raw G and the
run's own average, eval_variants/<average>/epoch_NNNN for the others).

    python docs/results/recipe_table.py                                     # the table, the rule, the figure
    python docs/results/recipe_table.py --samples outputs/recipe/adam/seed333   # and the grids of that run
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

import report  # noqa: E402

RUNS = HERE / "runs" / "recipe"
ROUTES = ("adam", "momentum")
# The averages in the order of their horizon; `ema` is each run's own (decay 0.995, ramp-up 0.05: the old default).
AVERAGES = ("ema", "d0.999_r0.05", "d0.9999_r0.05", "d0.9999_from15000", "d0.9999_r0.25", "d0.9999_r0.5")
FINAL, FIRST_COVERED = 60, 20  # the rule: FID at epoch 60, 10/10 digits at every scored epoch from 20 on
TODAY = ("momentum", "ema")  # the default the rule compares the chosen pair with
METRICS = ("parzen_ll", "fid", "kid", "classes_covered")


def scores(run: Path) -> dict[str, dict[int, dict[str, float]]]:
    """generator (raw, ema, each other average) -> epoch -> its full protocol."""
    evals = report.read_evals(run)
    out = {which: {e: v[which] for e, v in evals.items() if which in v} for which in ("raw", "ema")}
    for name in AVERAGES[1:]:
        out[name] = {}
        for parzen_file in sorted(run.glob(f"eval_variants/{name}/epoch_*/parzen.json")):
            # The swapped checkpoint's name holds no epoch: the folder's name does (1-based, recipe_run.sh).
            epoch = int(parzen_file.parent.name.split("_")[1])
            parzen = json.loads(parzen_file.read_text())["ema"]
            quality = json.loads(parzen_file.with_name("quality.json").read_text())["rows"]["ema"]
            out[name][epoch] = {"parzen_ll": parzen["ll"], "parzen_se": parzen["se"]} | {
                m: quality[m] for m in ("fid", "kid", "classes_covered")
            }
    return out


def finished(run: Path) -> bool:
    return (run / "eval" / f"epoch_{FINAL:04d}" / "quality.json").is_file()


def collapsed(run: Path, raw: dict[int, dict[str, float]]) -> bool:
    """The rule's collapse: the collapse flag fired, or the raw G covers fewer than 10 digits at epoch 60."""
    flagged = report.read_run(run).final.get("train/collapsed", 0.0) > 0
    return flagged or raw[FINAL]["classes_covered"] < 10


def study() -> dict[str, dict[int, dict]]:
    """route -> seed -> {"scores": scores(run), "collapsed": bool}, finished runs only."""
    out = {}
    for route in ROUTES:
        out[route] = {}
        for run in sorted((RUNS / route).glob("seed*")):
            if finished(run):
                s = scores(run)
                out[route][int(run.name[4:])] = {"scores": s, "collapsed": collapsed(run, s["raw"])}
    return out


def at_final(runs: dict[int, dict], which: str, metric: str, seeds=None) -> list[float]:
    return [r["scores"][which][FINAL][metric] for s, r in runs.items() if seeds is None or s in seeds]


def uncovered(runs: dict[int, dict], which: str) -> list[str]:
    """`seed: epoch (digits)` wherever the average covers fewer than 10 digits at a scored epoch from 20 on."""
    return [
        f"{seed}: epoch {e} ({v['classes_covered']:.0f})"
        for seed, r in runs.items()
        for e, v in sorted(r["scores"][which].items())
        if e >= FIRST_COVERED and v["classes_covered"] < 10
    ]


def fid_above_raw(runs: dict[int, dict], which: str) -> list[int]:
    return [s for s, r in runs.items() if r["scores"][which][FINAL]["fid"] > r["scores"]["raw"][FINAL]["fid"]]


def eligible(runs: dict[int, dict], which: str) -> bool:
    """The rule: on every seed, no collapse, FID at epoch 60 no higher than the raw G's, 10/10 from epoch 20 on."""
    return (
        not any(r["collapsed"] for r in runs.values()) and not fid_above_raw(runs, which) and not uncovered(runs, which)
    )


def choose(data: dict[str, dict[int, dict]]) -> tuple[tuple[str, str] | None, list[str]]:
    """The chosen (route, average) and the reasons, as docs/results.md's rule words them."""
    notes, pairs = [], []
    too_few = [route for route, runs in data.items() if len(runs) < 3]
    for route, runs in data.items():
        if route in too_few:
            notes.append(f"{route} has {len(runs)} finished seeds: the rule needs at least 3 per optimiser")
        pairs += [(route, which) for which in AVERAGES if runs and eligible(runs, which)]
    if not pairs or too_few:
        return None, notes
    ranked = sorted(pairs, key=lambda p: -report.mean_se(at_final(data[p[0]], p[1], "parzen_ll"))[0])
    best = ranked[0]
    if len(ranked) > 1:
        (m1, se1), (m2, se2) = (report.mean_se(at_final(data[p[0]], p[1], "parzen_ll")) for p in ranked[:2])
        if m1 - m2 <= max(se1, se2):
            fid = {p: report.mean_se(at_final(data[p[0]], p[1], "fid"))[0] for p in ranked[:2]}
            best = min(ranked[:2], key=fid.get)
            notes.append(f"{ranked[0]} and {ranked[1]} within one s.e. on Parzen: the lower FID, {best}")
    if len(data[best[0]]) < 5:
        notes.append(f"{best} has {len(data[best[0]])} seeds: the rule needs 5 for the chosen pair")
        return None, notes
    return best, notes


def table(data: dict[str, dict[int, dict]]) -> str:
    lines = [
        "| route, G | seeds | Parzen (nats) | FID | KID | digits at 60 | under 10 digits, epochs 20-60 "
        "| FID above the raw G's at 60 | eligible |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for route, runs in data.items():
        if not runs:
            continue
        for which in ("raw", *AVERAGES):
            v = {m: at_final(runs, which, m) for m in METRICS}
            rule = "" if which == "raw" else "yes" if eligible(runs, which) else "no"
            cells = [
                f"{route}, {'raw G' if which == 'raw' else f'`{which}`'}",
                str(len(runs)),
                report.fmt(v["parzen_ll"]),
                report.fmt(v["fid"]),
                report.fmt(v["kid"], 2),
                ", ".join(f"{c:.0f}" for c in v["classes_covered"]),
                ", ".join(uncovered(runs, which)) or "none",
                "" if which == "raw" else ", ".join(map(str, fid_above_raw(runs, which))) or "none",
                rule,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines).replace("+-", "±")


def verdict(data: dict[str, dict[int, dict]]) -> str:
    best, notes = choose(data)
    lines = [f"- {n}" for n in notes]
    if best is None:
        return "\n".join(lines + ["- no choice yet"])
    seeds = set(data[best[0]]) & set(data[TODAY[0]])
    chosen = {m: report.mean_se(at_final(data[best[0]], best[1], m, seeds))[0] for m in ("parzen_ll", "fid")}
    today = {m: report.mean_se(at_final(data[TODAY[0]], TODAY[1], m, seeds))[0] for m in ("parzen_ll", "fid")}
    ahead = chosen["parzen_ll"] > today["parzen_ll"] and chosen["fid"] < today["fid"]
    lines.append(
        f"- chosen: {best[0]} with `{best[1]}`; on the seeds both have ({', '.join(map(str, sorted(seeds)))}) "
        f"Parzen {chosen['parzen_ll']:.1f} against {today['parzen_ll']:.1f}, FID {chosen['fid']:.1f} against "
        f"{today['fid']:.1f} for today's default ({TODAY[0]}, `{TODAY[1]}`): "
        + ("ahead on both, so it becomes the default" if ahead else "not ahead on both: the default stays")
    )
    return "\n".join(lines)


def plot(data: dict[str, dict[int, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    for route, marker in zip(ROUTES, ("o", "s")):
        runs = data[route]
        if not runs:
            continue
        for i, which in enumerate(("raw", *AVERAGES)):
            (p, p_se), (f, f_se) = (report.mean_se(at_final(runs, which, m)) for m in ("parzen_ll", "fid"))
            ax.errorbar(
                f,
                p,
                xerr=0 if math.isnan(f_se) else f_se,
                yerr=0 if math.isnan(p_se) else p_se,
                fmt=marker,
                color=f"C{i}",
                capsize=2,
                label=f"{'raw G' if which == 'raw' else which}" if route == "adam" else None,
                markerfacecolor="none" if route == "momentum" else f"C{i}",
            )
    ax.axhline(225, color="grey", linestyle="--", linewidth=1, label="the paper's 225")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("FID on the MNIST classifier (10,000 samples), epoch 60; log scale")
    ax.set_ylabel("Parzen log-likelihood (nats), epoch 60")
    seeds = ", ".join(f"{route} {len(runs)} seeds" for route, runs in data.items())
    ax.set_title(
        f"Every route and average, mean ± s.e. over seeds ({seeds})\nfilled: Adam, open: momentum SGD", fontsize=10
    )
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


def samples(run: Path, name: str, path: Path) -> None:
    """The raw G of a study run at epoch 60 and its average `name`, on the same 64 noise vectors (the run's fixed
    z), side by side. Needs the run folder itself (its checkpoints and ema_variants/, which are not committed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from torchvision.utils import make_grid

    from advnets.module import GAN

    tag = f"{FINAL - 1:04d}"
    (ckpt,) = run.glob(f"checkpoints/epoch{tag}-*.ckpt")
    module = GAN.load_from_checkpoint(str(ckpt), map_location="cpu").eval()
    average = module.generator_ema.generator
    average.load_state_dict(torch.load(run / "ema_variants" / f"epoch{tag}.pt", map_location="cpu")[name])
    z = module.fixed_z[:64]
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4))
    with torch.no_grad():
        for ax, (net, title) in zip(axes, ((module.generator, "raw G"), (average, f"its average `{name}`"))):
            ax.imshow(make_grid(net(z), nrow=8, padding=2, pad_value=1.0).permute(1, 2, 0).numpy())
            ax.set_title(f"{title}: {run.parent.name} {run.name}, epoch {FINAL}, the same z", fontsize=10)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--samples", type=Path, help="a study run's folder (outputs/recipe/<route>/seedS) for the grids"
    )
    parser.add_argument("--average", default="d0.9999_r0.25", help="the average drawn beside the raw G")
    args = parser.parse_args()
    data = study()
    print(f"Epoch {FINAL}, full protocol, mean ± s.e. over seeds:\n")
    print(table(data) + "\n")
    print(verdict(data))
    plot(data, HERE.parent / "recipe_parzen_fid.png")
    if args.samples:
        samples(args.samples, args.average, HERE.parent / "recipe_samples.png")


if __name__ == "__main__":
    main()
