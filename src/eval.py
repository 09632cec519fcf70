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


@hydra.main(config_path="../conf", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with user_errors(Path(cfg.paths.output_dir), Path(cfg.paths.log_dir)):  # a refusal leaves no run folder
        try:
            run(cfg)
        finally:
            from advnets.loggers import finish_wandb

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
    log_to_wandb(cfg, ev, figures)


def log_to_wandb(cfg: DictConfig, ev, figures: dict) -> None:
    """An eval run beside the training run it scores: in the same W&B folder (the sweep's, for a job of a multirun),
    the same group and the same name, job_type eval; Table 1 in its summary (eval/*) and as a wandb.Table. (Not the
    training run itself, resumed by its id: offline, a resumed run is a second run folder whose steps start again
    at 0, which LEET lists as a run of its own and whose rows W&B drops on upload as steps already logged.)"""
    if "wandb" not in cfg.logger:
        return
    import wandb

    from advnets.checkpoints import run_folder_of
    from advnets.config import wandb_folder
    from advnets.evaluation import TABLE_COLUMNS, summary, table_rows
    from advnets.loggers import wandb_mode

    w = cfg.logger.wandb
    save_dir, name, group, scores = w.save_dir, w.name, w.group, {}
    trained = (ev.module.hparams["config"]["logger"].get("wandb") or {}) if ev.module is not None else {}
    if ev.module is not None:
        scores = {"g_updates": ev.module.g_updates, "run_id": trained.get("id")}
        folder = run_folder_of(ev.ckpt_path)
        save_dir = wandb_folder(str(folder)) if folder is not None and trained.get("id") else save_dir
        name, group = name or trained.get("name"), group or trained.get("group")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=w.project,
        mode=wandb_mode(w),
        dir=save_dir,
        job_type="eval",
        group=group,
        name=name or f"eval-{ev.reference or Path(str(ev.ckpt_path)).parent.parent.name}",
        tags=list(w.tags) + list(trained.get("tags") or []),
        config={**OmegaConf.to_container(cfg, resolve=True), "scored": {"ckpt_path": ev.ckpt_path, **scores}},
    )
    run.summary.update({**summary(ev), **{f"eval/{k}": v for k, v in scores.items() if k != "run_id"}})
    run.log(
        {
            "eval/table_1": wandb.Table(columns=list(TABLE_COLUMNS), data=table_rows(ev)),
            **{key: wandb.Image(str(path)) for key, path in figures.items()},
        }
    )


if __name__ == "__main__":
    main()
