"""Every config combination composes from conf/ and builds its nets and data module."""

import itertools
from pathlib import Path

import pytest
import torch

from advnets.data import build_datamodule
from advnets.module import GAN
from conftest import REPO, compose


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


def paper_pairs() -> list[tuple[str, str]]:
    pairs = [tuple(name.split("_", 1)) for name in options("paper")]
    return [(model, dataset) for model, dataset in pairs]


def test_defaults():
    cfg = compose()
    assert cfg.dataset.name == "mnist" and cfg.model.name == "maxout" and cfg.loss.generator == "nonsaturating"
    assert cfg.k == 1 and cfg.ckpt_path is None and cfg.schedule == "alternating"
    assert cfg.optimizer.lr == 0.1 and cfg.dataset.batch_size == 100
    assert cfg.trainer.default_root_dir == "/tmp/advnets-test-run"
    assert cfg.logger.wandb.save_dir == "/tmp/advnets-test-run"
    assert cfg.logger.wandb.mode in ("offline", "online", "disabled")


def test_data_dir_from_environment(monkeypatch, tmp_path):
    assert compose().paths.data_dir == str(REPO / "data")
    monkeypatch.setenv("ADVNETS_DATA_DIR", str(tmp_path))
    assert compose().paths.data_dir == str(tmp_path)


@pytest.mark.parametrize("model,dataset", paper_pairs())
@pytest.mark.parametrize("loss", options("loss"))
def test_every_combination_composes_and_instantiates(model, dataset, loss):
    for optimizer, logger, trainer in itertools.product(options("optimizer"), options("logger"), ["default", "cpu"]):
        cfg = compose(f"model={model}", f"dataset={dataset}", f"loss={loss}", f"optimizer={optimizer}",
                      f"logger={logger}", f"trainer={trainer}")
        assert cfg.model.name == model and cfg.dataset.name == dataset
    from omegaconf import OmegaConf

    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    shape = tuple(cfg.dataset.shape)
    z = module.noise(3, torch.Generator().manual_seed(0), device="cpu")
    assert module.generator(z).shape == (3, *shape)
    assert module.discriminator(torch.rand(3, *shape)).shape == (3,)
    assert build_datamodule(cfg.dataset, cfg.seed).shape == shape


def test_experiment_configs_compose():
    for name in options("experiment"):
        cfg = compose(f"experiment={name}")
        assert cfg.model.generator and cfg.model.discriminator
