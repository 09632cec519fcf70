"""Every config combination composes from conf/; every option builds its module, data module, loggers and
Trainer, and takes a real training step."""

import itertools
import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from advnets.config import trainer_arguments
from advnets.data import build_datamodule
from advnets.module import GAN
from advnets.optim import Adam, ClassicMomentum
from conftest import REPO, compose
from test_cifar10 import PER_BATCH, write_cifar
from test_tfd import write_tfd


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


def paper_pairs() -> list[tuple[str, str]]:
    pairs = [tuple(name.split("_", 1)) for name in options("paper")]
    return [(model, dataset) for model, dataset in pairs]


def test_defaults():
    cfg = compose()
    assert cfg.dataset.name == "mnist" and cfg.model.name == "maxout" and cfg.loss.generator == "nonsaturating"
    assert cfg.k == 1 and cfg.ckpt_path is None and cfg.schedule == "alternating"
    assert cfg.dataset.batch_size == 100 and (cfg.stabilisers.r1_gamma, cfg.stabilisers.r1_every) == (0.1, 4)
    # Adam at 5e-4, the long average of G and lazy R1, 50 epochs (issue 45's study, docs/speed.md); the paper's SGD
    # is optimizer=momentum, the default before the study experiment=adam_60.
    assert (cfg.optimizer.name, cfg.optimizer.d_lr, cfg.optimizer.g_lr, list(cfg.optimizer.betas)) == (
        "adam",
        5e-4,
        5e-4,
        [0.5, 0.999],
    )
    assert (cfg.model.ema_decay, cfg.model.ema_rampup, cfg.trainer.max_epochs) == (0.9999, 0.5, 50)
    old = compose("experiment=adam_60")
    assert (old.optimizer.d_lr, old.optimizer.g_lr, old.model.ema_rampup, old.stabilisers.r1_every) == (
        2e-4,
        2e-4,
        0.25,
        1,
    )
    assert (old.trainer.max_epochs, old.optimizer.name, old.model.ema_decay) == (60, "adam", 0.9999)
    earlier = compose("experiment=sgd_r1")
    assert (earlier.optimizer.name, earlier.stabilisers.r1_every, earlier.trainer.max_epochs) == ("momentum", 1, 60)
    assert compose("optimizer=momentum").optimizer.lr == 0.1  # the paper's lr0 for MNIST
    assert cfg.trainer.default_root_dir == "/tmp/advnets-test-run"
    assert cfg.logger.wandb.save_dir == "/tmp/advnets-test-run"
    assert cfg.logger.wandb.mode in ("offline", "online", "disabled")


def test_data_dir_from_environment(monkeypatch, tmp_path):
    assert compose().paths.data_dir == str(REPO / "data")
    monkeypatch.setenv("ADVNETS_DATA_DIR", str(tmp_path))
    assert compose().paths.data_dir == str(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("model,dataset", paper_pairs())
@pytest.mark.parametrize("loss", options("loss"))
def test_every_combination_composes(model, dataset, loss):
    """Composition only: every combination is built and stepped (with small nets) below, the paper's sizes
    are counted in test_nets.py and test_paper_nets.py."""
    for optimizer, logger, trainer in itertools.product(options("optimizer"), options("logger"), ["default", "cpu"]):
        cfg = compose(
            f"model={model}",
            f"dataset={dataset}",
            f"loss={loss}",
            f"optimizer={optimizer}",
            f"logger={logger}",
            f"trainer={trainer}",
        )
        assert (cfg.model.name, cfg.dataset.name, cfg.loss.generator, cfg.optimizer.name) == (
            model,
            dataset,
            loss,
            optimizer,
        )


def test_experiment_configs_compose():
    for name in options("experiment"):
        cfg = compose(f"experiment={name}")
        assert cfg.model.generator and cfg.model.discriminator


# --- every option builds and steps ------------------------------------------------------------------------------
# Small nets of each pair's structure (the paper's sizes are counted in test_nets.py and test_paper_nets.py).
# TFD's output layer keeps its sparse init of 100 weights per unit, so its last hidden layer has 128 units.
SMALL = {
    ("maxout", "mnist"): [
        "model.generator.layers=[{units:16,activation:relu,irange:0.05},{units:16,activation:relu,irange:0.05}]"
    ],
    ("maxout", "tfd"): [
        "model.generator.layers=[{units:16,activation:relu,irange:0.05},"
        "{units:128,activation:sigmoid,irange:0.05,bias:-2.0}]"
    ],
    ("maxout", "cifar10"): [
        "model.generator.layers=[{units:16,activation:relu,irange:0.05},{units:16,activation:sigmoid,irange:0.05}]"
    ],
    ("maxout", "line"): [],  # the 1-D nets are small already
    ("conv", "cifar10"): [
        "model.generator.layers=[{units:16,activation:relu,irange:0.05},{units:400,activation:sigmoid,irange:0.05}]",
        "model.generator.deconv.channels=4",
        "model.discriminator.conv_layers=[{channels:4,pieces:2,kernel:8,pad:4,pool:4,pool_stride:2,"
        "irange:0.005},{channels:4,pieces:2,kernel:8,pad:3,pool:4,pool_stride:2,irange:0.005}]",
    ],
}
SMALL_D = ["model.discriminator.layers=[{units:8,pieces:5,irange:0.005},{units:8,pieces:5,irange:0.005}]"]
PAPER_LR = {
    ("maxout", "mnist"): 0.1,
    ("maxout", "tfd"): 0.05,
    ("maxout", "cifar10"): 0.025,
    ("conv", "cifar10"): 0.004,
    ("maxout", "line"): 0.1,
}
# Eight steps: every (optimiser, schedule, loss) triple once, and every pair with both optimisers, both
# schedules, both losses and both loggers that write no W&B run (W&B's are built below, without a fit).
STEPPED = [
    (
        model,
        dataset,
        ["adam", "momentum"][o],
        ["alternating", "simultaneous"][(o + p // 2) % 2],
        options("loss")[(o + p) % 2],
        ["csv", "none"][o],
    )
    for p, (model, dataset) in enumerate(sorted(SMALL))
    for o in (0, 1)
]
DATA = {
    "mnist": [],
    "tfd": [],
    "line": ["dataset.batches_per_epoch=1"],
    "cifar10": ["dataset.download=false", "dataset.check_md5=false", f"dataset.n_train={4 * PER_BATCH}"],
}


@pytest.fixture(scope="module")
def data_root(data_dir, tmp_path_factory):
    """MNIST (the real files), a TFD file and CIFAR-10 files in one data dir."""
    root = tmp_path_factory.mktemp("all_data")
    (root / "MNIST").symlink_to(data_dir / "MNIST")
    write_tfd(root / "TFD" / "TFD_48x48.mat")
    write_cifar(root)
    return root


@pytest.fixture(scope="module")
def splits():
    """Each data set's splits, read once; MNIST's training split cut to 256 rows (the step needs a batch)."""
    return {}


def test_options_to_step_cover_every_option():
    """The steps below cover every model x dataset pair, optimiser, schedule and loss of conf/."""
    assert sorted(SMALL) == sorted(paper_pairs())
    triples = [step[2:5] for step in STEPPED]
    assert set(triples) == set(
        itertools.product(options("optimizer"), ["alternating", "simultaneous"], options("loss"))
    )
    for pair in SMALL:
        steps = [step for step in STEPPED if step[:2] == pair]
        for i, values in (
            (2, options("optimizer")),
            (3, ["alternating", "simultaneous"]),
            (4, options("loss")),
            (5, ["csv", "none"]),
        ):
            assert sorted(step[i] for step in steps) == sorted(values)


@pytest.mark.slow
@pytest.mark.parametrize("model,dataset,optimizer,schedule,loss,logger", STEPPED)
def test_every_option_builds_and_takes_a_training_step(
    data_root, splits, tmp_path, model, dataset, optimizer, schedule, loss, logger
):
    """The module, data module, loggers (CSV, or none) and Trainer built from the composed config; one batch of
    real training: one D and one G update, each optimiser the configured one with its settings (lr0 of the
    pair's paper config, or Adam's lr and betas (0.5, 0.999)), both nets changed and finite."""
    from advnets.loggers import build_loggers

    cfg = compose(
        f"paths.data_dir={data_root}",
        f"model={model}",
        f"dataset={dataset}",
        f"optimizer={optimizer}",
        f"loss={loss}",
        f"schedule={schedule}",
        f"logger={logger}",
        "trainer=cpu",
        *SMALL[model, dataset],
        *SMALL_D,
        *DATA[dataset],
        "dataset.batch_size=8",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        output_dir=tmp_path,
    )
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    datamodule = build_datamodule(cfg.dataset, cfg.seed)
    if dataset != "line":  # the line draws its batches fresh: no splits
        if dataset not in splits:
            datamodule.setup("fit")
            splits[dataset] = {k: v[:256] if k == "train" else v for k, v in datamodule.splits.items()}
        datamodule.splits = dict(splits[dataset])
    before = {}

    class Before(pl.Callback):  # the weights after setup (G's output bias from the data), before the step
        def on_train_start(self, trainer, module):
            before.update({n: p.detach().clone() for n, p in module.named_parameters()})

    trainer = pl.Trainer(
        **trainer_arguments(cfg), logger=build_loggers(cfg) or False, enable_checkpointing=False, callbacks=[Before()]
    )
    trainer.fit(module, datamodule=datamodule)

    assert (module.d_updates, module.g_updates) == (1, 1)
    for net, opt in zip(("discriminator", "generator"), trainer.optimizers):
        group = opt.param_groups[0]
        changes = [(p.detach() - before[f"{net}.{n}"]).abs().max() for n, p in getattr(module, net).named_parameters()]
        assert all(torch.isfinite(p).all() for p in getattr(module, net).parameters())
        if optimizer == "adam":
            lr = cfg.optimizer.lr
            assert type(opt) is Adam and group["lr"] == lr == 5e-4 and group["betas"] == (0.5, 0.999)
            assert all(int(s["step"]) == 1 for s in opt.state.values())
            # Adam's first step moves each weight by lr * |g| / (|g| + eps): at most lr, about lr where |g| >> eps
            # (D's gradients here; G's can be ~1e-9 at D's initial weights). With max_col_norm (TFD) the rows
            # over the bound (the sparse init's, norm ~10) are then rescaled, which moves them further.
            if not cfg.model.max_col_norm:
                assert (0.5 * lr if net == "discriminator" else 0) < max(changes) <= lr * (1 + 1e-3)
        else:
            assert type(opt) is ClassicMomentum and group["updates"] == 1
            # lr0: the pair's paper config's, or each net's own where it sets one (the line: G slower than D).
            assert cfg.optimizer.lr == PAPER_LR[model, dataset] and group["momentum"] == 0.5
            assert group["lr0"] == (cfg.optimizer.d_lr if net == "discriminator" else cfg.optimizer.g_lr)
            assert max(changes) > 0
        if cfg.model.max_col_norm:
            for m in getattr(module, net).modules():
                if isinstance(m, torch.nn.Linear):
                    assert m.weight.norm(dim=1).max() <= cfg.model.max_col_norm * (1 + 1e-6)
    assert [type(x).__name__ for x in trainer.loggers] == (["CSVLogger"] if logger == "csv" else [])


@pytest.mark.parametrize("logger", ["[wandb,csv]", *options("logger")])
def test_loggers_build_from_every_option(tmp_path, logger):
    """build_loggers for every logger option (and the default, W&B and CSV): the loggers it names, writing into
    the run folder; W&B offline unless WANDB_MODE says otherwise, in project advnets."""
    from advnets.loggers import build_loggers

    loggers = build_loggers(compose(f"logger={logger}", output_dir=tmp_path))
    names = {"[wandb,csv]": ["WandbLogger", "CSVLogger"], "wandb": ["WandbLogger"], "csv": ["CSVLogger"], "none": []}
    assert [type(x).__name__ for x in loggers] == names[logger]
    for x in loggers:
        assert Path(x.save_dir) == tmp_path
        if type(x).__name__ == "WandbLogger":
            assert x._wandb_init["mode"] == os.environ.get("WANDB_MODE", "offline") and x._project == "advnets"


@pytest.mark.slow
@pytest.mark.parametrize("trainer_option", options("trainer"))
def test_trainer_builds_from_every_option(tmp_path, trainer_option):
    """pl.Trainer(**cfg.trainer) with the default loggers for every trainer option: the accelerator, strategy
    and devices its config names (GPU options only where there is a GPU)."""
    from pytorch_lightning.strategies import DDPStrategy, SingleDeviceStrategy

    from advnets.loggers import build_loggers

    if (
        OmegaConf.load(REPO / "conf" / "trainer" / f"{trainer_option}.yaml").get("accelerator") == "gpu"
        and not torch.cuda.is_available()
    ):
        pytest.skip("needs a GPU")
    cfg = compose(f"trainer={trainer_option}", output_dir=tmp_path)
    loggers = build_loggers(cfg)
    trainer = pl.Trainer(**trainer_arguments(cfg), logger=loggers)
    assert trainer.loggers == loggers and len(loggers) == 2 and trainer.default_root_dir == str(tmp_path)
    assert trainer.max_epochs == 50 and trainer.log_every_n_steps == 50
    if "ddp" in trainer_option:
        assert isinstance(trainer.strategy, DDPStrategy) and trainer.strategy._ddp_kwargs["find_unused_parameters"]
        assert trainer.num_devices == (2 if trainer_option == "ddp_cpu" else torch.cuda.device_count())
    else:
        assert isinstance(trainer.strategy, SingleDeviceStrategy) and trainer.num_devices == 1
    gpu = cfg.trainer.accelerator == "gpu" or (cfg.trainer.accelerator == "auto" and torch.cuda.is_available())
    assert type(trainer.accelerator).__name__ == ("CUDAAccelerator" if gpu else "CPUAccelerator")
