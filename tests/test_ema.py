"""The EMA of G (advnets/ema.py) in real fits: where it starts, when it is updated, and its ramp-up,
step by step against its formula computed here in float64."""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf

from advnets.data import build_datamodule
from advnets.ema import GeneratorEMA, ema_beta
from advnets.module import GAN
from conftest import TINY_FIT, bare_trainer, compose

BATCH = 2500  # 20 batches an epoch
SMALL = TINY_FIT


def test_ema_beta_closed_forms():
    half_life = math.log(0.5) / math.log(0.9999)  # 6931.1 updates
    assert ema_beta(1000, 0.9999, 0.05) == pytest.approx(0.5 ** (1 / 50), rel=1e-15)  # 0.05 * 1000 = 50 < 6931
    assert ema_beta(10**6, 0.9999, 0.05) == pytest.approx(0.9999, rel=1e-12)  # full horizon: the decay itself
    assert ema_beta(int(half_life / 0.05) + 1, 0.9999, 0.05) == pytest.approx(0.9999, rel=1e-12)
    assert ema_beta(1, 0.9999, None) == 0.9999  # no ramp-up: the constant decay from the first update
    # After the first update with a ramp-up the average is G but for 0.5^20 of the start.
    assert ema_beta(1, 0.995, 0.05) == pytest.approx(0.5**20, rel=1e-12)


def test_the_default_average_is_half_the_updates_up_to_its_full_half_life():
    """conf/model: decay 0.9999 (a half-life of 6,931.1 G updates) with ramp-up 0.5, i.e. half the weight on the
    last half of the updates until update 13,862 and on the last 6,931 updates from 13,863 on (epoch 28 of 50)."""
    model = compose().model
    decay, rampup = model.ema_decay, model.ema_rampup
    assert (decay, rampup) == (0.9999, 0.5)
    assert ema_beta(1, decay, rampup) == pytest.approx(0.5**2, rel=1e-12)  # half-life 0.5: G but 1/4 of start
    assert ema_beta(10_000, decay, rampup) == pytest.approx(0.5 ** (1 / 5000), rel=1e-15)
    assert ema_beta(13_862, decay, rampup) == pytest.approx(0.5 ** (1 / 6931), rel=1e-15)
    assert ema_beta(13_863, decay, rampup) == pytest.approx(0.9999, rel=1e-12)
    assert ema_beta(25_000, decay, rampup) == pytest.approx(0.9999, rel=1e-12)  # 50 MNIST epochs


def test_ema_update_with_ramp_up_follows_its_formula():
    torch.manual_seed(0)
    g = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).double()
    ema = GeneratorEMA(g, decay=0.9, rampup=0.5)
    expected = [p.detach().clone() for p in g.parameters()]
    for n in range(1, 12):  # half-lives 0.5, 1, ..., 6.58 (the horizon of 0.9), then 6.58
        with torch.no_grad():
            for p in g.parameters():
                p.add_(torch.randn_like(p))
        ema.update(g, n)
        beta = 0.5 ** (1 / min(math.log(0.5) / math.log(0.9), 0.5 * n))
        expected = [beta * e + (1 - beta) * p.detach() for e, p in zip(expected, g.parameters())]
        for avg, e in zip(ema.generator.parameters(), expected):
            torch.testing.assert_close(avg, e, rtol=1e-12, atol=1e-12)


class EMARecorder(pl.Callback):
    """G after each of its updates, the EMA after each D and G update, and both when training starts."""

    def on_train_start(self, trainer, module):
        self.start = (
            [p.detach().clone() for p in module.generator.parameters()],
            [p.detach().clone() for p in module.generator_ema.generator.parameters()],
        )
        self.g_after, self.ema_after_d = [], []
        d_opt, g_opt = trainer.optimizers
        g_opt.register_step_post_hook(
            lambda *a: self.g_after.append([p.detach().double().clone() for p in module.generator.parameters()])
        )
        d_opt.register_step_post_hook(
            lambda *a: self.ema_after_d.append(
                (len(self.g_after), [p.detach().clone() for p in module.generator_ema.generator.parameters()])
            )
        )


def fit_one_epoch(module: GAN, cfg, tmp_path, *callbacks: pl.Callback) -> None:
    trainer = bare_trainer(tmp_path, limit_val_batches=None, num_sanity_val_steps=0, callbacks=list(callbacks))
    trainer.fit(module, datamodule=build_datamodule(cfg.dataset, cfg.seed))


@pytest.mark.parametrize("schedule, k", [("alternating", 2), ("simultaneous", 1)])
def test_ema_in_a_real_fit_starts_at_g_and_follows_g_updates_only(data_dir, tmp_path, schedule, k):
    decay, rampup = 0.9, 0.2
    cfg = compose(
        f"paths.data_dir={data_dir}",
        "logger=none",
        f"schedule={schedule}",
        f"k={k}",
        f"dataset.batch_size={BATCH}",
        f"model.ema_decay={decay}",
        f"model.ema_rampup={rampup}",
        *SMALL,
        output_dir=tmp_path,
    )
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    with torch.no_grad():  # an average that did not start from G would show
        for p in module.generator_ema.generator.parameters():
            p.add_(1.0)
    rec = EMARecorder()
    fit_one_epoch(module, cfg, tmp_path, rec)

    g_start, ema_start = rec.start
    assert all(torch.equal(a, b) for a, b in zip(g_start, ema_start))  # a fresh fit: the average is G
    assert len(rec.g_after) == module.g_updates == 20 // k
    expected = [p.double() for p in g_start]
    after_update = {0: expected}
    for n, g in enumerate(rec.g_after, start=1):
        beta = 0.5 ** (1 / min(math.log(0.5) / math.log(decay), rampup * n))
        expected = [beta * e + (1 - beta) * w for e, w in zip(expected, g)]
        after_update[n] = expected
    for avg, e in zip(module.generator_ema.generator.parameters(), expected):
        torch.testing.assert_close(avg.double(), e, rtol=1e-5, atol=1e-6)
    # A D step leaves the average where the latest G update put it (under the simultaneous schedule D steps
    # first, in the same training step, before G's update folds in).
    for g_updates, ema in rec.ema_after_d:
        for avg, e in zip(ema, after_update[g_updates]):
            torch.testing.assert_close(avg.double(), e, rtol=1e-5, atol=1e-6)


def load_ema_variants():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("ema_variants", REPO / "benchmarks" / "ema_variants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_averages_follow_their_formulas_beside_the_module_ema(data_dir, tmp_path):
    """benchmarks/ema_variants.py (the study of horizons and starts): a variant with the module's own settings
    is the module's EMA bit for bit; one that starts after G update 15 is G until then and the ramped average
    of the updates since after it; the weights it saves at a kept epoch are the averages'."""
    decay, rampup, start = 0.9, 0.2, 15
    cfg = compose(
        f"paths.data_dir={data_dir}",
        "logger=none",
        f"dataset.batch_size={BATCH}",
        f"model.ema_decay={decay}",
        f"model.ema_rampup={rampup}",
        *SMALL,
        output_dir=tmp_path,
    )
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    study = load_ema_variants().AverageVariants(
        {
            "same": {"decay": decay, "rampup": rampup},
            "late": {"decay": decay, "rampup": rampup, "start": start},
            "never": {"decay": decay, "rampup": rampup, "start": 1000},
        }
    )
    rec = EMARecorder()
    fit_one_epoch(module, cfg, tmp_path, rec, study)

    assert module.g_updates == len(rec.g_after) == 20
    params = {name: list(avg.generator.parameters()) for name, avg in study.averages.items()}
    assert all(torch.equal(a, b) for a, b in zip(params["same"], module.generator_ema.generator.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(params["never"], module.generator.parameters()))
    expected = rec.g_after[start - 1]
    for n, g in enumerate(rec.g_after[start:], start=1):
        beta = 0.5 ** (1 / min(math.log(0.5) / math.log(decay), rampup * n))
        expected = [beta * e + (1 - beta) * w for e, w in zip(expected, g)]
    for avg, e in zip(params["late"], expected):
        torch.testing.assert_close(avg.double(), e, rtol=1e-5, atol=1e-6)
    saved = torch.load(tmp_path / "ema_variants" / "epoch0000.pt")  # callbacks.checkpoint.every_n_epochs: 1
    assert sorted(saved) == ["late", "never", "same"]
    assert all(torch.equal(saved["late"][k], v) for k, v in study.averages["late"].generator.state_dict().items())
