"""The run config: the resolvers conf/ uses, which overrides name a run, and the checks that refuse settings which
cannot train (each range checked here once; each choice against the registry beside its builder)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from advnets.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]

# Which command-line overrides say what a run is, defined here once (advnets.checkpoints.EXPERIMENT_KEYS says which
# settings a resumed checkpoint must share). Each entry is a key and everything under it (`logger` covers
# `logger=csv` and `logger.wandb.tags=[a]`):
# - NOT_IN_RUN_NAME: bookkeeping, which changes no update: where a run reads and writes, what it keeps (checkpoint
#   frequency), what it shows, how it reaches W&B, the study tools it carries (callbacks.extra), whether the full
#   protocol runs at the end. Left out of the run's name (Hydra's override_dirname: the W&B run name, report.py's
#   labels): conf/hydra/default.yaml's exclude_keys is `not_in_run_name` of the job's overrides.
NOT_IN_RUN_NAME = (
    "ckpt_path",
    "paths",
    "hydra",
    "logger",
    "callbacks.checkpoint",
    "callbacks.extra",
    "callbacks.progress",
    "trainer.enable_progress_bar",
    "test_after_fit",
)
# - NOT_A_SETTING: the seed, and what leaves the training up to a given epoch as it is (how long a run goes, whether
#   a collapsed run stops). report.py counts runs whose names differ only in these (or in NOT_IN_RUN_NAME, which
#   older runs' names held) as seeds of one setting, so a 30-epoch run and a 15-epoch run of the same settings are
#   seeds of one row.
NOT_A_SETTING = (
    "seed",
    "trainer.max_epochs",
    "callbacks.collapse.stop",
)


def override_key(override: str) -> str:
    """The key a command-line override sets: `k` of `k=2`, `logger` of `logger=csv`, `a.b` of `+a.b=1`."""
    return override.split("=", 1)[0].lstrip("+~")


def is_under(override: str, keys) -> bool:
    """Whether `override` sets one of `keys` or something under one of them."""
    key = override_key(override)
    return any(key == k or key.startswith(k + ".") for k in keys)


def not_in_run_name(task_overrides) -> list[str]:
    """The keys of `task_overrides` (Hydra's hydra.overrides.task) that NOT_IN_RUN_NAME leaves out of the name, as
    Hydra's exclude_keys wants them: the exact key of each."""
    return [override_key(o) for o in task_overrides if is_under(o, NOT_IN_RUN_NAME)]


def wandb_folder(run_folder: str) -> str:
    """The folder whose wandb/ holds a run's W&B run: the sweep's folder for a job of a multirun (Hydra writes
    <sweep>/multirun.yaml before its jobs start), so that `wandb leet <sweep>/wandb` opens the whole sweep, and a
    resumed job (in its own job folder) writes beside it; the run folder otherwise."""
    parent = Path(run_folder).parent
    return str(parent) if (parent / "multirun.yaml").is_file() else str(run_folder)


for _name, _resolve in (
    ("repo_root", lambda: str(REPO_ROOT)),
    ("not_in_run_name", not_in_run_name),
    ("wandb_folder", wandb_folder),
):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolve)


def mnist_mirror() -> Path:
    """conf/paths/default.yaml's mnist_mirror, for code that composes no config (the tests, the benchmarks)."""
    paths = OmegaConf.create({"paths": OmegaConf.load(REPO_ROOT / "conf" / "paths" / "default.yaml")}).paths
    return Path(paths.mnist_mirror)


# The update schedules GAN.training_step implements (here, so that checking a config imports no Lightning).
SCHEDULES = ("alternating", "simultaneous")


def check_choice(key: str, value, registry) -> None:
    """Refuse `key=value` unless the registry beside its builder has it (e.g. advnets.nets.NETS for model.name)."""
    if value not in registry:
        raise UserError(f"{key} must be one of {', '.join(registry)}, got {value!r}")


def check_config(cfg: DictConfig) -> None:
    """Refuse settings that cannot train, before any work is done. Each range is checked here and only here; each
    choice against the registry beside its builder."""
    from advnets.losses import GENERATOR_LOSSES
    from advnets.metrics import EVALUATIONS
    from advnets.nets import NETS
    from advnets.noise import NOISES
    from advnets.optim import OPTIMIZERS

    if not isinstance(cfg.k, int) or cfg.k < 1:
        raise UserError(f"k must be an integer >= 1 (discriminator steps per generator step), got {cfg.k!r}")
    check_choice("schedule", cfg.schedule, SCHEDULES)
    if cfg.schedule == "simultaneous" and cfg.k != 1:  # the step would ignore k: a k sweep of identical runs
        raise UserError(
            f"schedule=simultaneous makes one D and one G update per minibatch, so k must be 1 there, got "
            f"k={cfg.k}; k D-steps per G-step is Algorithm 1: schedule=alternating"
        )
    check_choice("model.name", cfg.model.name, NETS)
    check_choice("model.noise", cfg.model.noise, NOISES)
    check_choice("loss.generator", cfg.loss.generator, GENERATOR_LOSSES)
    check_choice("optimizer.name", cfg.optimizer.name, OPTIMIZERS)
    check_choice("dataset.evaluation", cfg.dataset.evaluation, EVALUATIONS)
    for key in ("batch_size", "eval_batch_size"):
        if key in cfg.dataset and int(cfg.dataset[key]) < 1:  # (1-D data draws its batches: no eval_batch_size)
            raise UserError(f"dataset.{key} must be >= 1, got {cfg.dataset[key]}")
    for key in ("lr", "d_lr", "g_lr"):
        if float(cfg.optimizer[key]) <= 0:
            raise UserError(f"optimizer.{key} must be > 0, got {cfg.optimizer[key]}")
    check_additions(cfg)
    check_compile(cfg.model)
    check_precision(cfg)  # before check_devices: the refusal is the same on a machine with or without a GPU
    check_devices(cfg.trainer)


def check_precision(cfg: DictConfig) -> None:
    """Refuse fp16 training (trainer.precision=16-mixed or 16 off a CPU, 16-true anywhere): it mis-trains here
    (advnets.precision.FP16_PRECISIONS says why). On a CPU 16-mixed runs as bf16-mixed and is accepted."""
    from advnets.precision import FP16_PRECISIONS, resolve_precision

    asked, accelerator = cfg.trainer.precision, str(cfg.trainer.accelerator)
    try:
        runs_as = resolve_precision(asked, accelerator, cfg.model.name)
    except ValueError as e:  # a value Lightning does not know, in Lightning's words
        raise UserError(f"trainer.precision={asked}: {e}") from None
    if runs_as in FP16_PRECISIONS:
        raise UserError(
            f"trainer.precision={asked} trains in fp16 (trainer.accelerator={accelerator}), which this project does "
            "not do correctly: G's gradient w.r.t. its samples and R1's input gradient are taken outside Lightning's "
            "loss scaling and underflow fp16; use trainer.precision=bf16-mixed or 32-true"
        )


# torch.compile modes that capture CUDA graphs: no run of this project's step under them has been checked (the
# compiled D is called twice per step with both outputs alive, a backward runs through a retained graph, G is
# called at several batch sizes and in eval mode, and no step is marked), and none can be off a GPU.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def check_compile(model_cfg: DictConfig) -> None:
    mode = model_cfg.get("compile")
    if mode in CUDA_GRAPH_MODES:
        raise UserError(
            f"model.compile={mode} captures CUDA graphs, which this project's training step has not been checked "
            "with (docs/speed.md): use model.compile=true (torch.compile's default mode) or "
            "model.compile=max-autotune-no-cudagraphs"
        )


def check_additions(cfg: DictConfig) -> None:
    """The stabilisers and the EMA of G: values outside their ranges are refused with the range."""
    stabilisers = cfg.stabilisers
    if stabilisers.r1_gamma is not None and float(stabilisers.r1_gamma) <= 0:
        raise UserError(f"stabilisers.r1_gamma must be > 0 (null: off), got {stabilisers.r1_gamma}")
    start = stabilisers.get("r1_gamma_start")
    if start is not None:
        if stabilisers.r1_gamma is None:
            raise UserError("stabilisers.r1_gamma_start needs R1 on: set stabilisers.r1_gamma (the value it ends at)")
        if float(start) <= 0:
            raise UserError(f"stabilisers.r1_gamma_start must be > 0 (null: no schedule), got {start}")
        if int(stabilisers.r1_anneal_updates) < 1:
            raise UserError(f"stabilisers.r1_anneal_updates must be >= 1, got {stabilisers.r1_anneal_updates}")
    every = stabilisers.get("r1_every")
    if every is not None and int(every) < 1:
        raise UserError(f"stabilisers.r1_every must be >= 1 (1: R1 at every D update), got {stabilisers.r1_every}")
    if stabilisers.instance_noise_std is not None:
        if float(stabilisers.instance_noise_std) <= 0:
            raise UserError(
                f"stabilisers.instance_noise_std must be > 0 (null: off), got {stabilisers.instance_noise_std}"
            )
        if int(stabilisers.instance_noise_anneal_updates) < 1:
            raise UserError(
                "stabilisers.instance_noise_anneal_updates must be >= 1, "
                f"got {stabilisers.instance_noise_anneal_updates}"
            )
    real_label = float(cfg.loss.real_label)
    if not 0.5 < real_label <= 1.0:
        raise UserError(f"loss.real_label must be in (0.5, 1] (1: no label smoothing), got {real_label}")
    decay = cfg.model.get("ema_decay")
    if decay is not None and not 0.0 < float(decay) < 1.0:
        raise UserError(f"model.ema_decay must be in (0, 1) (null: no EMA of G), got {decay}")
    anneal = cfg.optimizer.get("anneal_epochs")
    if anneal is not None:
        max_epochs = int(cfg.trainer.max_epochs if cfg.trainer.max_epochs is not None else -1)
        if not isinstance(anneal, int) or anneal < 1:
            raise UserError(f"optimizer.anneal_epochs must be an integer >= 1 (null: no anneal), got {anneal!r}")
        if max_epochs < anneal:
            raise UserError(
                f"optimizer.anneal_epochs={anneal} anneals over the last epochs of trainer.max_epochs, "
                f"which is {max_epochs}: set trainer.max_epochs >= {anneal}"
            )
    rampup = cfg.model.get("ema_rampup")
    if rampup is not None and float(rampup) <= 0:
        raise UserError(f"model.ema_rampup must be > 0 (null: no ramp-up), got {rampup}")


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
        raise UserError(
            f"{asked} asks for a GPU, but this machine has none that torch can use "
            f"(torch.cuda.is_available() is False): use {instead}, or trainer=default (a GPU when there "
            f"is one, else the CPU)"
        )
    devices = trainer_cfg.get("devices")
    if isinstance(devices, int) and devices > found:
        raise UserError(
            f"trainer.devices={devices} asks for {devices} GPUs, but this machine has {found}: "
            f"use trainer.devices={found} (or -1: every GPU)"
        )


def trainer_arguments(cfg: DictConfig) -> dict:
    """pl.Trainer's arguments from cfg.trainer, as src/train.py builds its Trainer: trainer.max_time is ours (the
    batch-end stop of advnets.guards.PreemptionHandler, not Lightning's timer) and trainer.precision=auto becomes
    the precision it resolves to (advnets.precision.resolve_precision)."""
    from advnets.precision import resolve_precision

    args = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k != "max_time"}
    args["precision"] = resolve_precision(args["precision"], args["accelerator"], cfg.model.name)
    return args
