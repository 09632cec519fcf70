"""Checkpoints given on the command line: checked before use, matched to the experiment, resumed in their run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from advnets.errors import UserError, user_errors


def check_ckpt_path(ckpt_path) -> Path:
    """A checkpoint path that exists, or a UserError saying which path is missing."""
    if not ckpt_path:
        raise UserError("ckpt_path is required: ckpt_path=outputs/runs/<run>/checkpoints/last.ckpt")
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


# What makes two runs the same experiment: a checkpoint of another one is refused.
EXPERIMENT_KEYS = (
    "dataset.name",
    "dataset.shape",
    "model",
    "loss",
    "k",
    "schedule",
    "seed",
    "stabilisers",
    "optimizer.name",
)


# Settings added after checkpoints were written without them, at the value that means what their absence meant.
ADDED_SETTINGS = {"r1_every": 1}


def experiment(config: dict | DictConfig) -> dict[str, Any]:
    """The EXPERIMENT_KEYS settings of a config (a run's, or the plain dict saved in a checkpoint)."""
    found = {}
    for key in EXPERIMENT_KEYS:
        if isinstance(config, DictConfig):
            value = OmegaConf.select(config, key)
            value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        else:
            value = config
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, dict):
            # torch.compile keeps the weights' names; an added setting at its old meaning is the same experiment
            value = {k: v for k, v in value.items() if k != "compile" and ADDED_SETTINGS.get(k, object()) != v}
        found[key] = value
    return found


def load_checkpoint(path: Path) -> dict:
    """The checkpoint as plain tensors and containers (weights_only: never runs pickled code)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise UserError(f"checkpoint {path} cannot be read (truncated, or not a checkpoint: {reason[:100]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt.get("hyper_parameters", {}):
        raise UserError(f"checkpoint {path} is not a checkpoint of src/train.py (no state_dict and config in it)")
    return ckpt


def experiment_mismatch(ckpt: dict, config: dict | DictConfig) -> str | None:
    """The first experiment setting that differs between a checkpoint and this run, as 'key: a there, b here'."""
    saved, here = experiment(ckpt["hyper_parameters"]["config"]), experiment(config)
    for key in EXPERIMENT_KEYS:
        if saved[key] != here[key]:
            return f"{key}: {saved[key]!r} there, {here[key]!r} here"
    return None


def find_last_checkpoint(log_dir: Path, config: dict | DictConfig) -> Path:
    """The newest last.ckpt under `log_dir` written by a run of the same experiment."""
    candidates = sorted(
        (p for p in log_dir.glob("**/checkpoints/last.ckpt") if p.exists()),  # skip dangling links
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for path in candidates:
        try:
            if experiment_mismatch(load_checkpoint(path), config) is None:
                return path
        except UserError:
            continue
    others = f" ({len(candidates)} found, of other experiments or unreadable)" if candidates else ""
    raise UserError(
        f"ckpt_path=last: no last.ckpt of this experiment under {log_dir}{others}; give ckpt_path=<path to a .ckpt>"
    )


def check_resume(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from (`last` resolved), checked to load and to match this experiment."""
    if not cfg.ckpt_path:
        return None
    if str(cfg.ckpt_path) == "last":
        return str(find_last_checkpoint(Path(cfg.paths.log_dir), cfg))
    path = check_ckpt_path(cfg.ckpt_path)
    mismatch = experiment_mismatch(load_checkpoint(path), cfg)
    if mismatch:
        raise UserError(f"checkpoint {path} is from another experiment ({mismatch}); resume it with the same settings")
    return str(path)


def run_folder_of(ckpt: str | Path) -> Path | None:
    """The run folder a checkpoint was written in (<run>/checkpoints/<name>.ckpt), else None."""
    path = Path(ckpt).expanduser().absolute()
    return path.parent.parent if path.parent.name == "checkpoints" else None


class ResumeInRunFolder(Callback):
    """A Hydra callback (conf/train.yaml): `ckpt_path=<run>/checkpoints/X.ckpt` (or `last`) continues in <run>.

    It runs before Hydra makes a run folder: the checkpoint is checked (refused with one line if it
    cannot be resumed), `last` is resolved, and the run writes into the checkpoint's own folder, so
    its checkpoints, samples and logs continue there. `.hydra/` keeps the first command's config.
    `hydra.run.dir=X` chooses another folder; multirun jobs keep their own folders.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.get("ckpt_path"):
            return
        with user_errors():
            ckpt = check_resume(config)
        folder = run_folder_of(ckpt)
        given = any(o.split("=", 1)[0].lstrip("+~") == "hydra.run.dir" for o in config.hydra.overrides.hydra)
        with read_write(config), open_dict(config):
            config.ckpt_path = ckpt
            if folder is not None and not given:
                config.hydra.run.dir = str(folder)
                config.hydra.output_subdir = None
