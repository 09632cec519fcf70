"""Checkpoints given on the command line: checked before use and matched to the experiment."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from advnets.errors import UserError


def check_ckpt_path(ckpt_path) -> Path:
    """A checkpoint path that exists, or a UserError saying which path is missing."""
    if not ckpt_path:
        raise UserError("ckpt_path is required: ckpt_path=outputs/runs/<run>/checkpoints/last.ckpt")
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    return path


# What makes two runs the same experiment: a checkpoint of another one is refused.
EXPERIMENT_KEYS = ("dataset.name", "dataset.shape", "model", "loss", "k", "schedule", "seed")


def _get(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    if isinstance(config, dict):
        config = {k: v for k, v in config.items() if k != "compile"}  # torch.compile keeps the weights' names
    return config


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


def experiment_mismatch(ckpt: dict, config: dict) -> str | None:
    """The first experiment setting that differs between a checkpoint and this run, as 'key: a there, b here'."""
    saved = ckpt["hyper_parameters"]["config"]
    for key in EXPERIMENT_KEYS:
        if _get(saved, key) != _get(config, key):
            return f"{key}: {_get(saved, key)!r} there, {_get(config, key)!r} here"
    return None


def find_last_checkpoint(log_dir: Path, config: dict) -> Path:
    """The newest last.ckpt under `log_dir` written by a run of the same experiment."""
    candidates = sorted((p for p in log_dir.glob("**/checkpoints/last.ckpt") if p.exists()),  # skip dangling links
                        key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            if experiment_mismatch(load_checkpoint(path), config) is None:
                return path
        except UserError:
            continue
    others = f" ({len(candidates)} found, of other experiments or unreadable)" if candidates else ""
    raise UserError(f"ckpt_path=last: no last.ckpt of this experiment under {log_dir}{others}; "
                    f"give ckpt_path=<path to a .ckpt>")


def check_resume(cfg: DictConfig) -> str | None:
    """The checkpoint to resume from (`last` resolved), checked to load and to match this experiment."""
    if not cfg.ckpt_path:
        return None
    config = OmegaConf.to_container(cfg, resolve=True)
    if str(cfg.ckpt_path) == "last":
        return str(find_last_checkpoint(Path(cfg.paths.log_dir), config))
    path = check_ckpt_path(cfg.ckpt_path)
    mismatch = experiment_mismatch(load_checkpoint(path), config)
    if mismatch:
        raise UserError(f"checkpoint {path} is from another experiment ({mismatch}); resume it with the same settings")
    return str(path)
