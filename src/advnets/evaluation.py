"""The evaluation behind `python src/eval.py`: which generators, which metrics, which references, per fold or not.

Every generator of a checkpoint (G, and its EMA when it was trained with one) draws `n_samples`
images from the same noise, and each set is scored by
- the paper's Parzen protocol (Table 1): sigma picked on validation images, the test images scored;
  on TFD per fold, then the mean and the standard error across folds (metrics/folds.py);
- the sample-quality metrics (metrics/quality.py: FID, KID, Inception Score, mode coverage) against
  the test images, on the data set's fixed network (none for TFD). Beside them, the real-data
  reference: `n_samples` training images scored against the same test images.

`reference=true_data` scores `n_samples` random training images instead of a checkpoint's samples;
`reference=kmeans` the k-means centroids of the training images (Theis et al. 2016: on Parzen they
beat the real data; FID and the coverage see their blur).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from advnets.checkpoints import check_ckpt_path, load_checkpoint
from advnets.errors import UserError
from advnets.metrics.quality import LABELS, QualityResult, SampleQuality, build_extractor, features_for

# Table 1 of the paper: Parzen log-likelihood (nats) on MNIST and TFD, mean +- standard error.
PAPER_TABLE_1 = {
    "DBN": {"mnist": (138, 2), "tfd": (1909, 66)},
    "Stacked CAE": {"mnist": (121, 1.6), "tfd": (2110, 50)},
    "Deep GSN": {"mnist": (214, 1.1), "tfd": (1890, 29)},
    "Adversarial nets": {"mnist": (225, 2), "tfd": (2057, 26)},
}
REFERENCES = ("true_data", "kmeans")


@dataclass
class Row:
    """One scored set of images. key: raw, ema (a checkpoint's generators), true_data or kmeans."""

    key: str
    label: str
    parzen: dict | None  # {ll, se, sigma, n_samples, n_points[, folds]}; None: not scored on Parzen
    quality: QualityResult | None = None


@dataclass
class Evaluation:
    dataset: str
    reference: str | None
    ckpt_path: str | None
    rows: list[Row]  # the checkpoint's generators, or the reference asked for
    references: list[Row] = field(default_factory=list)  # quality only: real data beside a checkpoint's rows
    features: str | None = None  # the network of the quality metrics (None: none for this data set)
    module: Any = None  # the checkpoint's GAN
    train_images: Tensor | None = None
    ema_decay: float | None = None


def evaluate(cfg: DictConfig) -> Evaluation:
    from advnets.precision import fp32_means_fp32

    fp32_means_fp32()  # the scores in fp32 on a GPU too (no TF32 convolutions)
    device = torch.device(
        "cuda" if cfg.device == "auto" and torch.cuda.is_available() else "cpu" if cfg.device == "auto" else cfg.device
    )
    module = path = None
    if cfg.reference is None:
        from advnets.module import GAN  # Lightning: only for a checkpoint

        path = check_ckpt_path(cfg.ckpt_path)
        load_checkpoint(path)  # a truncated or foreign file: refused in one line, as train.py refuses it
        module = GAN.load_from_checkpoint(path, map_location=device, weights_only=True).eval()
        run_cfg = module.hparams["config"]
        if run_cfg["dataset"].get("evaluation", "images") != "images":
            raise UserError(
                f"{path} is a run on dataset={run_cfg['dataset']['name']}: eval.py gives Table 1 for image "
                f"data; that run's measures (JSD, C(G), E|D - D*|) are the test/* rows of its "
                f"csv/version_N/metrics.csv (docs/theory.md)"
            )
        dataset_cfg = rebase_paths(run_cfg["dataset"], run_cfg["paths"]["data_dir"], cfg.paths.data_dir)
    elif cfg.reference in REFERENCES:
        dataset_cfg = OmegaConf.to_container(cfg.dataset, resolve=True)
    else:
        raise UserError(f"reference must be {', '.join(REFERENCES)} or null, got {cfg.reference!r}")
    name = dataset_cfg["name"]
    # The network first: a missing Inception file is refused before any data is read or anything written.
    features = features_for(cfg.quality.features, name)
    quality = None
    if features is not None:
        quality = SampleQuality(
            build_extractor(features, cfg.quality.inception_weights),
            int(cfg.quality.kid_subsets),
            int(cfg.quality.kid_subset_size),
            seed=int(cfg.seed),
        ).to(device)

    n, seed = int(cfg.n_samples), int(cfg.seed)
    splits = load_splits(dataset_cfg, seed)
    true_data = splits["train"][torch.randperm(len(splits["train"]), generator=torch.Generator().manual_seed(seed))[:n]]
    if module is None:
        sets = (
            {"true_data": ("True data (training images as centres)", true_data)}
            if cfg.reference == "true_data"
            else {
                "kmeans": (
                    f"k-means centroids of the training images (k = {n:,})",
                    kmeans_centroids(splits["train"].to(device), n, int(cfg.kmeans_iterations), seed),
                )
            }
        )
    else:
        # Every generator the checkpoint holds, from the same noise, drawn on the CPU: the same samples on every device.
        sets = {
            which: (
                f"Adversarial nets (ours, G: {path})"
                if which == "raw"
                else f"Adversarial nets (ours, EMA of G, {ema_description(module.cfg.model)}: {path})",
                module.sample(n, torch.Generator().manual_seed(seed), which=which),
            )
            for which in module.generators
        }

    folds = None
    if name == "tfd":
        folds = {
            f: splits if f == int(dataset_cfg.get("fold", 0)) else load_splits({**dataset_cfg, "fold": f}, seed)
            for f in [int(f) for f in (cfg.get("folds") or range(5))]
        }
    rows = [
        Row(key, label, parzen_row(images.to(device), splits, dataset_cfg, folds, device))
        for key, (label, images) in sets.items()
    ]
    references = []
    if quality is not None:
        quality.update_real(splits["test"])
        for row in rows:
            row.quality = quality_of(quality, sets[row.key][1])
        if module is not None:
            references.append(
                Row(
                    "true_data",
                    f"True data: {len(true_data):,} training images (reference)",
                    None,
                    quality_of(quality, true_data),
                )
            )
    return Evaluation(
        name,
        cfg.reference,
        None if module is None else str(cfg.ckpt_path),
        rows,
        references,
        features,
        module,
        splits["train"],
        float(module.cfg.model.ema_decay) if module is not None and "ema" in sets else None,
    )


def ema_description(model_cfg) -> str:
    """'decay D' or 'decay D, ramp-up R': the average a row scores (advnets/ema.py)."""
    rampup = model_cfg.get("ema_rampup")
    return f"decay {float(model_cfg.ema_decay)}" + (f", ramp-up {float(rampup)}" if rampup is not None else "")


def quality_of(quality: SampleQuality, images: Tensor) -> QualityResult:
    quality.update_fake(images)
    result = quality.compute()
    quality.reset()
    return result


def rebase_paths(node, old_root: str, new_root: str):
    """Point data paths saved at training time (under the old data dir) at this run's data dir."""
    if isinstance(node, dict):
        return {k: rebase_paths(v, old_root, new_root) for k, v in node.items()}
    if isinstance(node, str) and old_root and node.startswith(old_root):
        return new_root + node[len(old_root) :]
    return node


def parzen_row(centres: Tensor, splits: dict, dataset_cfg: dict, fold_splits: dict | None, device) -> dict:
    """The paper's protocol for one set of centres: {ll, se, sigma, n_samples, n_points[, folds]}.

    TFD (fold_splits given): sigma picked on each fold's valid split, the test mean per fold, then the
    mean over folds with the standard error across folds. The centres come from the unlabeled rows
    (G is trained on them), the same in every fold.
    """
    from advnets.metrics import parzen_protocol
    from advnets.metrics.folds import over_folds

    if fold_splits is None:
        n_select = dataset_cfg.get("parzen_select")
        select = splits["valid"] if n_select is None else splits["valid"][: int(n_select)]
        r = parzen_protocol(centres, select.to(device), splits["test"].to(device))
        return {"ll": r.ll, "se": r.se, "sigma": r.sigma, "n_samples": r.n_samples, "n_points": r.n_points}
    per_fold = {
        f: parzen_protocol(centres, s["valid"].to(device), s["test"].to(device)) for f, s in fold_splits.items()
    }
    ll, se = over_folds(list(per_fold.values()))
    fold_report = [
        {"fold": f, "ll": r.ll, "se": r.se, "sigma": r.sigma, "n_points": r.n_points} for f, r in per_fold.items()
    ]
    return {
        "ll": ll,
        "se": se,
        "sigma": [r["sigma"] for r in fold_report],
        "n_samples": len(centres),
        "n_points": sum(r["n_points"] for r in fold_report),
        "folds": fold_report,
    }


def load_splits(dataset_cfg: dict, seed: int) -> dict:
    from advnets.data import build_datamodule

    datamodule = build_datamodule({**dataset_cfg, "on_device": False}, seed)
    datamodule.setup("test")
    return datamodule.splits


@torch.no_grad()
def kmeans_centroids(points: Tensor, k: int, iterations: int, seed: int, chunk: int = 4096) -> Tensor:
    """Lloyd's k-means from k random points, `iterations` rounds; an empty cluster keeps its centroid."""
    flat = points.flatten(1).float()
    if not 1 <= k <= len(flat):
        raise UserError(
            f"n_samples must be between 1 and the {len(flat)} training images for reference=kmeans, got {k}"
        )
    centroids = flat[torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:k].to(flat.device)]
    for _ in range(iterations):
        norms = centroids.square().sum(1)
        # argmin_j ||x - c_j||^2 = argmin_j (||c_j||^2 - 2 x.c_j)
        nearest = torch.cat(
            [torch.addmm(norms, block, centroids.T, alpha=-2.0).argmin(1) for block in flat.split(chunk)]
        )
        counts = torch.bincount(nearest, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, nearest, flat)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1)
    return centroids.view(k, *points.shape[1:])


# --- what eval.py prints and writes ------------------------------------------------------------------


def parzen_report(ev: Evaluation) -> dict:
    """parzen.json: the first row's figures at the top level, the EMA row under `ema`."""
    first = ev.rows[0].parzen
    report = {**first, "dataset": ev.dataset, "reference": ev.reference, "ckpt_path": ev.ckpt_path}
    ema = next((r for r in ev.rows if r.key == "ema"), None)
    if ema is not None:
        report["ema"] = {**ema.parzen, "decay": ev.ema_decay}
    return report


def quality_report(ev: Evaluation) -> dict:
    """quality.json: per row key, the QualityResult and the row's label; the network and the reference images."""
    return {
        "dataset": ev.dataset,
        "features": ev.features,
        "features_label": LABELS[ev.features],
        "real_images": "test",
        "reference": ev.reference,
        "ckpt_path": ev.ckpt_path,
        "rows": {r.key: {"label": r.label, **r.quality.as_dict()} for r in ev.rows + ev.references},
    }


def table_1(ev: Evaluation) -> str:
    """The paper's rows for the data set, then ours; a list of sigmas: picked per fold (TFD). Where the data set
    has sample-quality metrics, each of our rows also gives FID, KID and the classes covered: the Parzen estimate
    alone rewards blurred samples (Theis et al. 2016)."""
    quality = all(row.quality is not None for row in ev.rows)
    classifier = quality and ev.rows[0].quality.classes_covered is not None
    head = f"| Model | {ev.dataset.upper()} Parzen log-likelihood (nats) | sigma |"
    head += " FID | KID |" if quality else ""
    head += " classes covered |" if classifier else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    blank = " |" * (head.count("|") - 3)
    for model, scores in PAPER_TABLE_1.items():
        if ev.dataset in scores:
            mean, err = scores[ev.dataset]
            lines.append(f"| {model} (paper) | {mean} ± {err} |{blank}")
    for row in ev.rows:
        p = row.parzen
        sigma = "per fold" if isinstance(p["sigma"], list) else f"{p['sigma']:.4f}"
        line = f"| {row.label} | {p['ll']:.1f} ± {p['se']:.1f} | {sigma} |"
        if quality:
            q = row.quality
            line += f" {q.fid:.2f} | {q.kid:.4f} ± {q.kid_std:.4f} |"
            line += f" {q.classes_covered}/{len(q.histogram)} |" if classifier else ""
        lines.append(line)
    return "\n".join(lines)


def quality_table(ev: Evaluation) -> str:
    """FID, KID, IS and coverage of every row, the reference rows first, with its Parzen figure beside them."""
    rows = ev.references + ev.rows
    first = rows[0].quality
    classifier = first.classes_covered is not None
    score = "IS (classifier)" if ev.features == "mnist_classifier" else "IS"
    head = f"| Set | FID | KID (mean ± std over subsets) | {score} |"
    head += " classes covered | KL(classes ‖ uniform) |" if classifier else ""
    head += " Parzen (nats) |"
    lines = [
        f"Sample quality on {ev.dataset.upper()}: {first.n_samples:,} images against the {first.n_real:,} test "
        f"images; {LABELS[ev.features]}.",
        "",
        head,
        "|" + "---|" * (head.count("|") - 1),
    ]
    for row in rows:
        q = row.quality
        line = (
            f"| {row.label} | {q.fid:.3f} | {q.kid:.5f} ± {q.kid_std:.5f} | "
            f"{q.inception_score:.2f} ± {q.inception_score_std:.2f} |"
        )
        if classifier:
            line += f" {q.classes_covered}/{len(q.histogram)} | {q.class_kl:.4f} |"
        line += f" {row.parzen['ll']:.1f} ± {row.parzen['se']:.1f} |" if row.parzen else " |"
        lines.append(line)
    if classifier:
        lines.append("")
        for row in rows:
            shares = " ".join(f"{c}: {100 * p:.1f}" for c, p in enumerate(row.quality.histogram))
            lines.append(f"Predicted classes of {row.label} (%): {shares}")
    return "\n".join(lines)


TABLE_COLUMNS = ("set", "label", "parzen_ll", "parzen_se", "sigma", "fid", "kid", "kid_std", "inception_score")
TABLE_COLUMNS += ("classes_covered", "class_kl")


def table_rows(ev: Evaluation) -> list[list]:
    """Table 1 and the sample quality as one sortable table (TABLE_COLUMNS; None where a set has no such figure):
    the checkpoint's generators (or the reference asked for), then the real-data reference."""
    out = []
    for row in ev.rows + ev.references:
        p, q = row.parzen or {}, row.quality
        sigma = p.get("sigma")
        out.append(
            [row.key, row.label, p.get("ll"), p.get("se"), str(sigma) if isinstance(sigma, list) else sigma]
            + [None if q is None else getattr(q, k) for k in TABLE_COLUMNS[5:]]
        )
    return out


def summary(ev: Evaluation) -> dict[str, float]:
    """The figures for W&B's run summary: eval/parzen_*, eval/fid ... (eval/ema_*: the EMA G's)."""
    out = {}
    for row in ev.rows:
        prefix = "eval/" if row.key != "ema" else "eval/ema_"
        out.update(
            {f"{prefix}parzen_{k}": row.parzen[k] for k in ("ll", "se", "sigma") if not isinstance(row.parzen[k], list)}
        )
        if row.quality is not None:
            out.update(row.quality.logged(prefix))
    for row in ev.references:
        out.update(row.quality.logged(f"eval/{row.key}_"))
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}
