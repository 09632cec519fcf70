"""Each choice has one registry beside its builder, which conf/ and the checks agree with; each range is checked once."""

from __future__ import annotations

import pytest
import torch
import yaml

from advnets.config import NOT_A_SETTING, NOT_IN_RUN_NAME, check_config, is_under
from advnets.errors import UserError
from advnets.losses import GENERATOR_LOSSES
from advnets.metrics import EVALUATIONS
from advnets.nets import NETS, build_generator
from advnets.noise import NOISES
from advnets.optim import OPTIMIZERS
from conftest import REPO, compose


def conf_values(group: str, key: str) -> set:
    return {yaml.safe_load(p.read_text())[key] for p in (REPO / "conf" / group).glob("*.yaml")}


def test_every_option_in_conf_has_its_builder_and_every_builder_its_option():
    assert set(NETS) == conf_values("model", "name") == {p.stem for p in (REPO / "conf" / "model").glob("*.yaml")}
    assert set(OPTIMIZERS) == conf_values("optimizer", "name")
    assert set(GENERATOR_LOSSES) == conf_values("loss", "generator")
    assert set(EVALUATIONS) == conf_values("dataset", "evaluation")
    assert set(NOISES) == {yaml.safe_load(p.read_text())["model"]["noise"] for p in (REPO / "conf" / "paper").glob("*")}


@pytest.mark.parametrize(
    "key, registry",
    [
        ("model.name", NETS),
        ("model.noise", NOISES),
        ("loss.generator", GENERATOR_LOSSES),
        ("optimizer.name", OPTIMIZERS),
        ("dataset.evaluation", EVALUATIONS),
    ],
)
def test_an_unknown_choice_is_refused_with_the_registrys_choices(key, registry):
    with pytest.raises(UserError) as e:
        check_config(compose(f"{key}=nope"))
    assert str(e.value) == f"{key} must be one of {', '.join(registry)}, got 'nope'"


def test_an_unknown_model_name_builds_no_net():
    """It used to build the fully connected nets for any name but `conv`."""
    model = dict(compose().model)
    with pytest.raises(ValueError, match="unknown model.name 'resnet': choose one of maxout, conv"):
        build_generator({**model, "name": "resnet"}, (1, 28, 28))
    assert isinstance(build_generator(model, (1, 28, 28)), torch.nn.Module)


@pytest.mark.parametrize(
    "override, message",
    [
        ("stabilisers.r1_gamma=0", "stabilisers.r1_gamma must be > 0 (null: off), got 0"),
        ("stabilisers.r1_gamma_start=-1", "stabilisers.r1_gamma_start must be > 0 (null: no schedule), got -1"),
        ("stabilisers.r1_anneal_updates=0", None),  # no schedule: the count is not read
        (
            "stabilisers.r1_gamma_start=1 stabilisers.r1_anneal_updates=0",
            "stabilisers.r1_anneal_updates must be >= 1, got 0",
        ),
        (
            "stabilisers.r1_gamma_start=1 stabilisers.r1_gamma=null",
            "stabilisers.r1_gamma_start needs R1 on: set stabilisers.r1_gamma (the value it ends at)",
        ),
        ("stabilisers.instance_noise_std=-1", "stabilisers.instance_noise_std must be > 0 (null: off), got -1"),
        ("dataset.eval_batch_size=0", "dataset.eval_batch_size must be >= 1, got 0"),
        ("optimizer.g_lr=0", "optimizer.g_lr must be > 0, got 0"),
    ],
)
def test_each_range_is_refused_by_the_config_check(override, message):
    if message is None:
        check_config(compose(*override.split()))
        return
    with pytest.raises(UserError) as e:
        check_config(compose(*override.split()))
    assert str(e.value) == message


def test_the_run_name_leaves_out_exactly_not_in_run_name():
    """The run's name (Hydra's override_dirname: the W&B run name, report.py's labels) is the job's overrides without
    the bookkeeping of advnets.config.NOT_IN_RUN_NAME (every key under each entry), through conf/hydra/default.yaml's
    exclude_keys, not a copy of the list."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    bookkeeping = [
        "callbacks.checkpoint.every_n_epochs=10",
        "callbacks.checkpoint.save_top_k=-1",
        "logger=csv",
        "logger.csv.name=x",
        "test_after_fit=false",
        "trainer.enable_progress_bar=false",
        "paths.data_dir=/tmp/d",
        "callbacks.progress.every_s=5",
        "callbacks.extra=[]",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", ["k=2", *bookkeeping[:3], "seed=3", *bookkeeping[3:]], return_hydra_config=True)
    assert cfg.hydra.job.override_dirname == "k=2,seed=3"
    assert all(is_under(o, NOT_IN_RUN_NAME) for o in bookkeeping)
    assert not is_under("trainer.max_epochs=3", NOT_IN_RUN_NAME) and not is_under("loggers=1", NOT_IN_RUN_NAME)
    assert "seed" in NOT_A_SETTING and not set(NOT_A_SETTING) & set(NOT_IN_RUN_NAME)
