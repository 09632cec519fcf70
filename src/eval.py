"""Parzen-window evaluation, the paper's Table 1 protocol: `python src/eval.py ckpt_path=PATH`.

Prints Table 1 (the paper's rows and ours), writes parzen.json and the paper's Figures 2 and 3 into
the run folder, and logs them to W&B. `reference=true_data` scores real training images instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from advnets.run import UserError, check_ckpt_path, finish_wandb, user_errors, wandb_mode

# Table 1 of the paper: Parzen log-likelihood (nats) on MNIST and TFD, mean +- standard error.
PAPER_TABLE_1 = {
    "DBN": {"mnist": (138, 2), "tfd": (1909, 66)},
    "Stacked CAE": {"mnist": (121, 1.6), "tfd": (2110, 50)},
    "Deep GSN": {"mnist": (214, 1.1), "tfd": (1890, 29)},
    "Adversarial nets": {"mnist": (225, 2), "tfd": (2057, 26)},
}


@hydra.main(config_path="../conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors():
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
    from advnets.metrics import parzen_protocol
    from advnets.metrics.folds import over_folds
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
        label = f"Adversarial nets (ours: {path})"
    splits = load_splits(dataset_cfg, int(cfg.seed))

    gen = torch.Generator().manual_seed(int(cfg.seed))
    if module is None:
        centres = splits["train"][torch.randperm(len(splits["train"]), generator=gen)[: int(cfg.n_samples)]]
    else:
        centres = module.sample(int(cfg.n_samples), torch.Generator(device=device).manual_seed(int(cfg.seed)))
    centres = centres.to(device)

    name = dataset_cfg["name"]
    if name == "tfd":
        # The paper: sigma picked on each fold's valid split, the test mean per fold, then the mean over
        # folds with the standard error across folds. G and the centres are shared: they come from the
        # unlabeled rows, the same in every fold.
        folds = [int(f) for f in (cfg.get("folds") or range(5))]
        per_fold = []
        for fold in folds:
            s = splits if fold == int(dataset_cfg.get("fold", 0)) else load_splits({**dataset_cfg, "fold": fold},
                                                                                  int(cfg.seed))
            per_fold.append(parzen_protocol(centres, s["valid"].to(device), s["test"].to(device)))
        ll, se = over_folds(per_fold)
        result = per_fold[0]
        fold_report = [{"fold": f, "ll": r.ll, "se": r.se, "sigma": r.sigma, "n_points": r.n_points}
                       for f, r in zip(folds, per_fold)]
        print("\n".join(f"fold {r['fold']}: {r['ll']:.1f} ± {r['se']:.1f} (sigma {r['sigma']:.4f})"
                        for r in fold_report))
    else:
        n_select = dataset_cfg.get("parzen_select")
        select = splits["valid"] if n_select is None else splits["valid"][: int(n_select)]
        result = parzen_protocol(centres, select.to(device), splits["test"].to(device))
        ll, se, fold_report = result.ll, result.se, None

    report = {"ll": ll, "se": se, "sigma": result.sigma, "n_samples": result.n_samples,
              "n_points": result.n_points, "dataset": name, "reference": cfg.reference,
              "ckpt_path": None if module is None else str(cfg.ckpt_path)}
    if fold_report is not None:
        report.update(folds=fold_report, sigma=[r["sigma"] for r in fold_report],
                      n_points=sum(r["n_points"] for r in fold_report))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "parzen.json").write_text(json.dumps(report, indent=2) + "\n")
    table = table_1(name, label, ll, se, result.sigma if fold_report is None else None)
    (out_dir / "table_1.md").write_text(table + "\n")
    print(table)

    figures = {} if module is None else save_figures(module, splits["train"], out_dir / "figures", seed=int(cfg.seed))
    log_to_wandb(cfg, report, table, figures)
    return report


def load_splits(dataset_cfg: dict, seed: int) -> dict:
    from advnets.data import build_datamodule

    datamodule = build_datamodule({**dataset_cfg, "on_device": False}, seed)
    datamodule.setup("test")
    return datamodule.splits


def table_1(dataset: str, label: str, ll: float, se: float, sigma: float | None) -> str:
    """sigma None: picked per fold (TFD), listed in parzen.json."""
    lines = [f"| Model | {dataset.upper()} Parzen log-likelihood (nats) | sigma |", "|---|---|---|"]
    for model, scores in PAPER_TABLE_1.items():
        if dataset in scores:
            mean, err = scores[dataset]
            lines.append(f"| {model} (paper) | {mean} ± {err} | |")
    lines.append(f"| {label} | {ll:.1f} ± {se:.1f} | {'per fold' if sigma is None else f'{sigma:.4f}'} |")
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
    run.log({"table_1": wandb.Html(f"<pre>{table}</pre>"),
             **{key: wandb.Image(str(path)) for key, path in figures.items()}})


if __name__ == "__main__":
    main()
