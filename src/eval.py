"""Parzen-window evaluation, the paper's Table 1 protocol: `python src/eval.py ckpt_path=PATH`.

Prints Table 1 (the paper's rows and ours), writes parzen.json and the paper's Figures 2 and 3 into
the run folder, and logs them to W&B. `reference=true_data` scores real training images instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import advnets.config  # noqa: F401  (registers the repo_root resolver of conf/paths)
from advnets.checkpoints import check_ckpt_path
from advnets.errors import UserError, user_errors
from advnets.loggers import finish_wandb, wandb_mode

# Table 1 of the paper: Parzen log-likelihood (nats) on MNIST and TFD, mean +- standard error.
PAPER_TABLE_1 = {
    "DBN": {"mnist": (138, 2), "tfd": (1909, 66)},
    "Stacked CAE": {"mnist": (121, 1.6), "tfd": (2110, 50)},
    "Deep GSN": {"mnist": (214, 1.1), "tfd": (1890, 29)},
    "Adversarial nets": {"mnist": (225, 2), "tfd": (2057, 26)},
}


@hydra.main(config_path="../conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors(Path(cfg.paths.output_dir), Path(cfg.paths.log_dir)):  # a refusal leaves no run folder
        try:
            evaluate(cfg)
        finally:
            finish_wandb()


def rebase_paths(node, old_root: str, new_root: str):
    """Point data paths saved at training time (under the old data dir) at this run's data dir."""
    if isinstance(node, dict):
        return {k: rebase_paths(v, old_root, new_root) for k, v in node.items()}
    if isinstance(node, str) and old_root and node.startswith(old_root):
        return new_root + node[len(old_root):]
    return node


def evaluate(cfg: DictConfig) -> dict:
    import torch

    from advnets.figures import save_figures
    from advnets.module import GAN

    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    out_dir = Path(cfg.paths.output_dir)
    module = None
    if cfg.reference == "true_data":
        dataset_cfg = OmegaConf.to_container(cfg.dataset, resolve=True)
        label = "True data (training images as centres)"
    elif cfg.reference is not None:
        raise UserError(f"reference must be true_data or null, got {cfg.reference!r}")
    else:
        path = check_ckpt_path(cfg.ckpt_path)
        module = GAN.load_from_checkpoint(path, map_location=device, weights_only=True).eval()
        run_cfg = module.hparams["config"]
        dataset_cfg = rebase_paths(run_cfg["dataset"], run_cfg["paths"]["data_dir"], cfg.paths.data_dir)
    splits = load_splits(dataset_cfg, int(cfg.seed))

    gen = torch.Generator().manual_seed(int(cfg.seed))
    if module is None:
        centres = {"true_data": splits["train"][torch.randperm(len(splits["train"]), generator=gen)[: int(cfg.n_samples)]]}
    else:
        # Every generator the checkpoint holds (G, and its EMA when trained with one), from the same noise.
        centres = {which: module.sample(int(cfg.n_samples), torch.Generator(device=device).manual_seed(int(cfg.seed)),
                                        which=which) for which in module.generators}

    name = dataset_cfg["name"]
    folds = [int(f) for f in (cfg.get("folds") or range(5))] if name == "tfd" else None
    fold_splits = None
    if folds is not None:
        fold_splits = {f: splits if f == int(dataset_cfg.get("fold", 0)) else
                       load_splits({**dataset_cfg, "fold": f}, int(cfg.seed)) for f in folds}
    rows = {which: score(c.to(device), splits, dataset_cfg, fold_splits, device) for which, c in centres.items()}
    for which, row in rows.items():
        for r in row.get("folds", []):
            print(f"{which} fold {r['fold']}: {r['ll']:.1f} ± {r['se']:.1f} (sigma {r['sigma']:.4f})")

    first = next(iter(rows.values()))
    report = {**first, "dataset": name, "reference": cfg.reference,
              "ckpt_path": None if module is None else str(cfg.ckpt_path)}
    if "ema" in rows:
        report["ema"] = {**rows["ema"], "decay": float(module.cfg.model.ema_decay)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "parzen.json").write_text(json.dumps(report, indent=2) + "\n")
    ours = [(label, first)] if module is None else [(f"Adversarial nets (ours, G: {path})", first)]
    if "ema" in rows:
        ours.append((f"Adversarial nets (ours, EMA of G, decay {report['ema']['decay']}: {path})", rows["ema"]))
    table = table_1(name, ours)
    (out_dir / "table_1.md").write_text(table + "\n")
    print(table)

    figures = {} if module is None else save_figures(module, splits["train"], out_dir / "figures", seed=int(cfg.seed),
                                                     which=module.generators[-1])
    log_to_wandb(cfg, report, table, figures)
    return report


def score(centres, splits: dict, dataset_cfg: dict, fold_splits: dict | None, device) -> dict:
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
    per_fold = {f: parzen_protocol(centres, s["valid"].to(device), s["test"].to(device)) for f, s in fold_splits.items()}
    ll, se = over_folds(list(per_fold.values()))
    fold_report = [{"fold": f, "ll": r.ll, "se": r.se, "sigma": r.sigma, "n_points": r.n_points}
                   for f, r in per_fold.items()]
    return {"ll": ll, "se": se, "sigma": [r["sigma"] for r in fold_report], "n_samples": len(centres),
            "n_points": sum(r["n_points"] for r in fold_report), "folds": fold_report}


def load_splits(dataset_cfg: dict, seed: int) -> dict:
    from advnets.data import build_datamodule

    datamodule = build_datamodule({**dataset_cfg, "on_device": False}, seed)
    datamodule.setup("test")
    return datamodule.splits


def table_1(dataset: str, ours: list[tuple[str, dict]]) -> str:
    """The paper's rows for `dataset`, then ours: (label, {ll, se, sigma}); a list of sigmas: picked per fold (TFD)."""
    lines = [f"| Model | {dataset.upper()} Parzen log-likelihood (nats) | sigma |", "|---|---|---|"]
    for model, scores in PAPER_TABLE_1.items():
        if dataset in scores:
            mean, err = scores[dataset]
            lines.append(f"| {model} (paper) | {mean} ± {err} | |")
    for label, row in ours:
        sigma = "per fold" if isinstance(row["sigma"], list) else f"{row['sigma']:.4f}"
        lines.append(f"| {label} | {row['ll']:.1f} ± {row['se']:.1f} | {sigma} |")
    return "\n".join(lines)


def log_to_wandb(cfg: DictConfig, report: dict, table: str, figures: dict) -> None:
    if "wandb" not in cfg.logger:
        return
    import wandb

    w = cfg.logger.wandb
    Path(w.save_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=w.project, mode=wandb_mode(w), dir=w.save_dir, job_type="eval", group=w.group,
                     name=w.name or f"eval-{report['reference'] or Path(str(report['ckpt_path'])).parent.parent.name}",
                     config=OmegaConf.to_container(cfg, resolve=True))
    run.summary.update({f"eval/parzen_{k}": report[k] for k in ("ll", "se", "sigma") if not isinstance(report[k], list)})
    if "ema" in report:
        run.summary.update({f"eval/ema_parzen_{k}": report["ema"][k] for k in ("ll", "se", "sigma")
                            if not isinstance(report["ema"][k], list)})
    run.log({"table_1": wandb.Html(f"<pre>{table}</pre>"),
             **{key: wandb.Image(str(path)) for key, path in figures.items()}})


if __name__ == "__main__":
    main()
