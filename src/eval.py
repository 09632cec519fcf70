"""Evaluate a checkpoint: `python src/eval.py ckpt_path=PATH` (advnets/evaluation.py does the work).

Prints Table 1 (the paper's Parzen rows and ours) and the sample-quality table (FID, KID, IS, mode
coverage beside Parzen, with the real-data reference), writes parzen.json, quality.json, table_1.md,
quality.md and the paper's Figures 2 and 3 into the run folder, and logs them to W&B.
`reference=true_data` scores real training images instead, `reference=kmeans` k-means centroids.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import advnets.config  # noqa: F401  (registers the repo_root resolver of conf/paths)
from advnets.errors import user_errors
from advnets.loggers import finish_wandb, wandb_mode


@hydra.main(config_path="../conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors(Path(cfg.paths.output_dir), Path(cfg.paths.log_dir)):  # a refusal leaves no run folder
        try:
            run(cfg)
        finally:
            finish_wandb()


def run(cfg: DictConfig) -> None:
    from advnets.evaluation import evaluate, parzen_report, quality_report, quality_table, table_1
    from advnets.figures import save_figures

    ev = evaluate(cfg)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for row in ev.rows:
        for r in row.parzen.get("folds", []):
            print(f"{row.key} fold {r['fold']}: {r['ll']:.1f} ± {r['se']:.1f} (sigma {r['sigma']:.4f})")
    tables = {"table_1": table_1(ev)}
    (out_dir / "parzen.json").write_text(json.dumps(parzen_report(ev), indent=2) + "\n")
    if ev.features is not None:
        tables["quality"] = quality_table(ev)
        (out_dir / "quality.json").write_text(json.dumps(quality_report(ev), indent=2) + "\n")
    for name, table in tables.items():
        (out_dir / f"{name}.md").write_text(table + "\n")
        print(table + "\n")
    figures = (
        {}
        if ev.module is None
        else save_figures(
            ev.module, ev.train_images, out_dir / "figures", seed=int(cfg.seed), which=ev.module.generators[-1]
        )
    )
    log_to_wandb(cfg, ev, tables, figures)


def log_to_wandb(cfg: DictConfig, ev, tables: dict[str, str], figures: dict) -> None:
    if "wandb" not in cfg.logger:
        return
    import wandb

    from advnets.evaluation import summary

    w = cfg.logger.wandb
    Path(w.save_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=w.project,
        mode=wandb_mode(w),
        dir=w.save_dir,
        job_type="eval",
        group=w.group,
        name=w.name or f"eval-{ev.reference or Path(str(ev.ckpt_path)).parent.parent.name}",
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    run.summary.update(summary(ev))
    run.log(
        {
            **{name: wandb.Html(f"<pre>{table}</pre>") for name, table in tables.items()},
            **{key: wandb.Image(str(path)) for key, path in figures.items()},
        }
    )


if __name__ == "__main__":
    main()
