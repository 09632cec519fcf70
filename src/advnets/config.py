"""The run config: the `repo_root` resolver conf/ uses, and the checks that refuse settings which cannot train."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from advnets.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
if not OmegaConf.has_resolver("repo_root"):
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))

# The update schedules GAN.training_step implements (here, so that checking a config imports no Lightning).
SCHEDULES = ("alternating", "simultaneous")


def check_config(cfg: DictConfig) -> None:
    """Refuse settings that cannot train, before any work is done."""
    from advnets.losses import GENERATOR_LOSSES

    if not isinstance(cfg.k, int) or cfg.k < 1:
        raise UserError(f"k must be an integer >= 1 (discriminator steps per generator step), got {cfg.k!r}")
    if cfg.schedule not in SCHEDULES:
        raise UserError(f"schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.schedule == "simultaneous" and cfg.k != 1:  # the step would ignore k: a k sweep of identical runs
        raise UserError(f"schedule=simultaneous makes one D and one G update per minibatch, so k must be 1 there, got "
                        f"k={cfg.k}; k D-steps per G-step is Algorithm 1: schedule=alternating")
    if cfg.loss.generator not in GENERATOR_LOSSES:
        raise UserError(f"loss.generator must be one of {', '.join(GENERATOR_LOSSES)}, got {cfg.loss.generator!r}")
    if int(cfg.dataset.batch_size) < 1:
        raise UserError(f"dataset.batch_size must be >= 1, got {cfg.dataset.batch_size}")
    for key in ("lr", "d_lr", "g_lr"):
        if cfg.optimizer.get(key) is not None and float(cfg.optimizer[key]) <= 0:
            raise UserError(f"optimizer.{key} must be > 0, got {cfg.optimizer[key]}")
    from advnets.metrics import EVALUATIONS

    if cfg.dataset.get("evaluation", "images") not in EVALUATIONS:
        raise UserError(f"dataset.evaluation must be one of {', '.join(EVALUATIONS)}, got {cfg.dataset.evaluation!r}")
    check_additions(cfg)
    check_devices(cfg.trainer)


def check_additions(cfg: DictConfig) -> None:
    """The stabilisers and the EMA of G: values outside their ranges are refused with the range."""
    stabilisers = cfg.get("stabilisers") or {}
    if stabilisers.get("r1_gamma") is not None and float(stabilisers.r1_gamma) <= 0:
        raise UserError(f"stabilisers.r1_gamma must be > 0 (null: off), got {stabilisers.r1_gamma}")
    if stabilisers.get("instance_noise_std") is not None:
        if float(stabilisers.instance_noise_std) <= 0:
            raise UserError(f"stabilisers.instance_noise_std must be > 0 (null: off), got {stabilisers.instance_noise_std}")
        if int(stabilisers.get("instance_noise_anneal_updates") or 0) < 1:
            raise UserError("stabilisers.instance_noise_anneal_updates must be >= 1, "
                            f"got {stabilisers.get('instance_noise_anneal_updates')}")
    real_label = float(cfg.loss.get("real_label", 1.0))
    if not 0.5 < real_label <= 1.0:
        raise UserError(f"loss.real_label must be in (0.5, 1] (1: no label smoothing), got {real_label}")
    decay = cfg.model.get("ema_decay")
    if decay is not None and not 0.0 < float(decay) < 1.0:
        raise UserError(f"model.ema_decay must be in (0, 1) (null: no EMA of G), got {decay}")


def check_devices(trainer_cfg: DictConfig) -> None:
    """Refuse GPU settings this machine cannot run (Lightning would stop with a stack trace)."""
    accelerator = str(trainer_cfg.get("accelerator"))
    if accelerator not in ("gpu", "cuda"):
        return
    import torch
    from hydra.core.hydra_config import HydraConfig

    choice = HydraConfig.get().runtime.choices.get("trainer") if HydraConfig.initialized() else None
    asked = f"trainer={choice} (trainer.accelerator={accelerator})" if choice else f"trainer.accelerator={accelerator}"
    instead = "trainer=ddp_cpu" if "ddp" in str(trainer_cfg.get("strategy")) else "trainer=cpu"
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not found:
        raise UserError(f"{asked} asks for a GPU, but this machine has none that torch can use "
                        f"(torch.cuda.is_available() is False): use {instead}, or trainer=default (a GPU when there "
                        f"is one, else the CPU)")
    devices = trainer_cfg.get("devices")
    if isinstance(devices, int) and devices > found:
        raise UserError(f"trainer.devices={devices} asks for {devices} GPUs, but this machine has {found}: "
                        f"use trainer.devices={found} (or -1: every GPU)")
