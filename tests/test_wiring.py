"""Every training option set through the composed config reaches the step, and every logged training statistic
is the value it names: a real Trainer fits the real module for a few batches; each D and G step and each logged
row is then replayed here in float64 from what the run recorded (batches, noise, D's inputs, the weights before
each step), with the option values this file states, not the ones the module read.

Every non-baseline case also checks that the same replay with the option at its default does not match: the
option changed something these checks see (a value that never reaches its code fails one way or the other).
Dropout is set to 0 through the config, so a forward pass here repeats the module's.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.loggers.logger import Logger

from advnets.config import trainer_arguments
from advnets.data import TensorDataModule
from advnets.module import GAN
from conftest import bare_trainer, compose

BATCH = 8
SMALL = [
    "logger=none",
    "quality.features=null",
    "model.noise_dim=6",
    f"dataset.batch_size={BATCH}",
    "model.generator.layers=[{units:12,activation:relu,irange:0.5}]",
    "model.generator.output.irange=0.5",
    "model.discriminator.layers=[{units:6,pieces:2,irange:0.1}]",
    "model.discriminator.output_irange=0.5",
    "model.discriminator.input_dropout=0",
    "model.discriminator.hidden_dropout=0",
    "trainer.accelerator=cpu",
    # The float64 replay checks fp32 steps (TOL below); trainer.precision=auto would take the bf16 fast path on a
    # CPU with AMX, whose steps tests/test_fast_path.py checks against float64 within its own tolerance.
    "trainer.precision=32-true",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=0",
    # The replay's baseline is the paper's SGD, not the default's Adam: SGD's step is proportional to the
    # gradient, so an option that only rescales a loss (d_scale, real_label, R1's gamma) shows in the steps,
    # where Adam's first steps are about lr sign(g) whatever the scale. The default's own settings are replayed
    # by test_the_default_optimizer_and_average_reach_the_steps (DEFAULT_SMALL).
    "optimizer=momentum",
    "model.ema_decay=null",
    # R1 at every D update, so that what changes its term shows in every step (the default's lazy R1 is replayed
    # by the same test as its optimiser).
    "stabilisers.r1_every=1",
]
# SMALL's nets and logging with the optimiser, the average of G and the R1 interval that conf/ composes by default.
DEFAULT_SMALL = [o for o in SMALL if o not in ("optimizer=momentum", "model.ema_decay=null", "stabilisers.r1_every=1")]
TOL = 2e-4  # relative to the largest expected change; float32 rounding is ~1e-5 of it with these nets


class TinyImages(TensorDataModule):
    """Random 28 x 28 images as the splits (the module's data path without reading MNIST). Training pixels in
    [0, 0.6): G's output bias starts at logit(0.3), far from the 0 it is built with. The first 70 valid rows are
    drawn like them, the other valid rows and the test rows in [0.25, 0.35): Parzen's sigma picked on one kind of
    row is not the one picked on the other."""

    def load_splits(self):
        gen = torch.Generator().manual_seed(11)
        rough = lambda n: 0.6 * torch.rand(n, 1, 28, 28, generator=gen)  # noqa: E731
        smooth = lambda n: 0.25 + 0.1 * torch.rand(n, 1, 28, 28, generator=gen)  # noqa: E731
        return {"train": rough(64), "valid": torch.cat([rough(70), smooth(230)]), "test": smooth(200)}


class MemoryLogger(Logger):
    """Every row Lightning hands a logger: ("step" or "epoch", metrics)."""

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[str, dict]] = []
        self.kind = "step"  # set by Recorder: "epoch" from the training epoch's end on

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((self.kind, dict(metrics)))


def params(net) -> dict:
    return {n: p.detach().clone() for n, p in net.named_parameters()}


class Recorder(pl.Callback):
    """Events in call order: batch, noise (z), d_in (every input D is called on), D_pre/D_post/G_pre/G_post
    (weights around each optimiser step), end (after the batch), each with the nets' and the EMA's weights."""

    def __init__(self, logger: MemoryLogger):
        self.events: list[tuple[str, object]] = []
        self.logger = logger

    def state(self, module):
        ema = module.generator_ema
        return {
            "G": params(module.generator),
            "D": params(module.discriminator),
            "EMA": params(ema.generator) if ema is not None else None,
            "counters": (module.d_updates, module.g_updates),
        }

    def on_train_start(self, trainer, module):
        self.events.append(("start", self.state(module)))
        for name, opt in zip("DG", trainer.optimizers):
            opt.register_step_pre_hook(
                lambda o, a, k, name=name: self.events.append((f"{name}_pre", self.state(module)))
            )
            opt.register_step_post_hook(
                lambda o, a, k, name=name: self.events.append((f"{name}_post", self.state(module)))
            )
        module.discriminator.register_forward_pre_hook(
            lambda m, args: self.events.append(("d_in", args[0].detach().clone()))
        )
        real_noise = module.noise

        def noise(n, generator=None, device=None):
            z = real_noise(n, generator, device)
            if trainer.training and generator is None:  # the training steps' draws (not the sample grid's)
                self.events.append(("noise", z.clone()))
            return z

        module.noise = noise

    def on_train_epoch_end(self, trainer, module):
        self.events.append(("rows", len(self.logger.rows)))
        self.logger.kind = "epoch"  # Lightning writes the epoch's row after this hook, its step rows before

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.logger.kind = "step"
        self.events.append(("rows", len(self.logger.rows)))  # a row written before the next marker: this batch's
        self.events.append(("batch", (trainer.current_epoch + 1, batch.clone())))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.events.append(("end", self.state(module)))


def fit(tmp_path, *overrides, batches=2, epochs=1, base=SMALL):
    """The module fitted by a Trainer built from the composed trainer config, as train.py builds it."""
    cfg = compose(
        *base,
        f"trainer.max_epochs={epochs}",
        f"trainer.limit_train_batches={batches}",
        *overrides,
        output_dir=tmp_path,
    )
    torch.manual_seed(0)
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    logger = MemoryLogger()
    recorder = Recorder(logger)
    trainer = pl.Trainer(**trainer_arguments(cfg), logger=logger, callbacks=[recorder], enable_checkpointing=False)
    trainer.fit(module, datamodule=TinyImages(OmegaConf.to_container(cfg.dataset, resolve=True), cfg.seed))
    return module, recorder.events, logger.rows


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    cache = {}

    def get(name, overrides, **kwargs):
        if name not in cache:
            cache[name] = fit(tmp_path_factory.mktemp(name), *overrides, **kwargs)
        return cache[name]

    return get


# --- the independent replay ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What the options mean, written out here (the defaults: the composed config's with SMALL)."""

    real_label: float = 1.0
    d_scale: float = 0.5
    generator_loss: str = "nonsaturating"
    r1_gamma: float = 0.1
    r1_start: float | None = None
    r1_anneal: int = 5000
    r1_every: int = 1
    noise_std: float = 0.0
    noise_anneal: int = 50000
    d_lr: float = 0.1
    g_lr: float = 0.1
    lr_decay: float = 1.000004
    min_lr: float = 1e-6
    momentum_start: float = 0.5
    momentum_end: float = 0.7
    momentum_saturate_epoch: int = 250
    max_col_norm: float | None = None
    optimizer: str = "momentum"
    betas: tuple[float, float] = (0.5, 0.999)
    k: int = 1
    schedule: str = "alternating"


def float64_net(net, weights: dict):
    ref = copy.deepcopy(net).double()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(weights[name])
    return ref


def flat(weights: dict) -> torch.Tensor:
    return torch.cat([p.flatten() for p in weights.values()]).double()


def d_objective(d, real_in, fake_in, s: Settings, g_updates: int, d_updates: int = 0):
    """D's loss written out: -d_scale [a log D(x) + (1 - a) log(1 - D(x)) + log(1 - D(G(z)))] + R1 (its gamma
    annealed from r1_start over r1_anneal G updates where r1_start is set; lazy: on D updates 1, 1 + r1_every, ...
    only, times r1_every); and (D(x), D(G(z)), the R1 term or None where it is not taken) as the module logs them."""
    x = real_in.double().requires_grad_()
    p_real, p_fake = torch.sigmoid(d(x)), torch.sigmoid(d(fake_in.double()))
    a = s.real_label
    loss = -s.d_scale * ((a * torch.log(p_real) + (1 - a) * torch.log1p(-p_real)).mean() + torch.log1p(-p_fake).mean())
    r1 = None
    if s.r1_gamma and d_updates % s.r1_every == 0:
        logits = torch.logit(p_real)
        (gx,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        t = min(1.0, g_updates / s.r1_anneal)
        gamma = s.r1_gamma if s.r1_start is None else s.r1_start * (1 - t) + s.r1_gamma * t
        r1 = s.r1_every * gamma / 2 * gx.pow(2).flatten(1).sum(1).mean()
    return loss + (0.0 if r1 is None else r1), p_real.mean(), p_fake.mean(), r1


def g_objective(p_fake, s: Settings):
    return torch.log1p(-p_fake).mean() if s.generator_loss == "minimax" else -torch.log(p_fake).mean()


def momentum_at(epoch: int, s: Settings) -> float:
    frac = min(max((epoch - 1) / max(s.momentum_saturate_epoch - 1, 1), 0.0), 1.0)
    return s.momentum_start + (s.momentum_end - s.momentum_start) * frac


def lr_at(lr0: float, n: int, s: Settings) -> float:
    """The lr of update n + 1: lr0 / decay^n, floored at min_lr (the paper's SGD); Adam's is constant."""
    return max(lr0 / s.lr_decay**n, s.min_lr) if s.optimizer == "momentum" else lr0


def update(state: dict, grad: torch.Tensor, lr0: float, n: int, mu: float, s: Settings) -> torch.Tensor:
    """The change of a net's weights at its update n + 1. momentum: v = mu v - lr grad, w += v. adam: the
    bias-corrected first and second moments, w -= lr m / (sqrt(v) + 1e-8)."""
    if s.optimizer == "momentum":
        state["v"] = mu * state.get("v", 0.0) - lr_at(lr0, n, s) * grad
        return state["v"]
    b1, b2 = s.betas
    state["m"] = b1 * state.get("m", 0.0) + (1 - b1) * grad
    state["s"] = b2 * state.get("s", 0.0) + (1 - b2) * grad * grad
    m_hat, s_hat = state["m"] / (1 - b1 ** (n + 1)), state["s"] / (1 - b2 ** (n + 1))
    return -lr0 * m_hat / (s_hat.sqrt() + 1e-8)


def renormed(weights: dict, s: Settings) -> dict:
    """Max column norm: each unit's incoming weights (a row of every 2-D weight) scaled down to norm <= c."""
    if not s.max_col_norm:
        return weights
    out = {}
    for name, w in weights.items():
        if w.ndim == 2:
            norms = w.norm(dim=1, keepdim=True)
            w = w * torch.clamp(s.max_col_norm / norms, max=1.0)
        out[name] = w
    return out


class Mismatch(AssertionError):
    pass


def check_step(what: str, before: dict, after: dict, change: torch.Tensor):
    """A step's change of the weights against the expected one, within TOL of the largest expected change plus
    the float32 rounding of the weights: a step of lr 2e-4 on weights of 0.5 is then checked as tightly as one
    of 0.1 (a check of the weights themselves would pass any step smaller than TOL of the weights)."""
    before, after = flat(before), flat(after)
    slack = TOL * float(change.abs().max()) + 2.0**-22 * float(after.abs().max())
    worst = float((after - before - change).abs().max())
    if worst > slack:
        raise Mismatch(
            f"{what}: changed by {(after - before)[:4].tolist()}, expected {change[:4].tolist()} "
            f"(max diff {worst:.3g}, allowed {slack:.3g})"
        )


def check(what: str, actual, expected, tol=TOL):
    actual, expected = torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64)
    scale = max(float(expected.abs().max()), 1e-12)
    if float((actual - expected).abs().max()) > tol * scale:
        raise Mismatch(
            f"{what}: got {actual.flatten()[:4].tolist()}, expected {expected.flatten()[:4].tolist()} "
            f"(max rel. diff {float((actual - expected).abs().max()) / scale:.3g})"
        )


def replay(module, events, rows, s: Settings) -> None:
    """Every step and every logged training row of the run, recomputed under settings `s`; raises Mismatch."""
    state = {"D": {}, "G": {}}
    updates = {"D": 0, "G": 0}
    latest_g: dict = {}
    latest_r1: dict = {}  # the R1 term of the latest D update that took it (lazy R1: not every one)
    batches = [i for i, (name, _) in enumerate(events) if name == "batch"]
    for b, start in enumerate(batches):
        end = next(i for i in range(start, len(events)) if events[i][0] == "end")
        written, after = events[start - 1][1], next(v for n, v in events[end:] if n == "rows")
        assert rows[written:after] == [] or [kind for kind, _ in rows[written:after]] == ["step"]
        row = rows[written][1] if after > written else None  # None: a batch trainer.log_every_n_steps skips
        epoch, real = events[start][1]
        span = events[start + 1 : end + 1]
        names = [name for name, _ in span]
        noise = [v for n, v in span if n == "noise"]
        d_in = [v for n, v in span if n == "d_in"]
        mu = momentum_at(epoch, s) if s.optimizer == "momentum" else s.betas[0]
        g_step = "G_pre" in names
        expected_g = (updates["D"] + 1) % s.k == 0 if s.schedule == "alternating" else True
        if g_step != expected_g:
            raise Mismatch(f"batch {b + 1}: G step {g_step}, expected {expected_g} (k={s.k})")
        d_pre, d_post = (dict(span)[n] for n in ("D_pre", "D_post"))
        # D's step: its inputs are the batch (plus instance noise) and G(z) (plus instance noise).
        g_ref = float64_net(module.generator, d_pre["G"])
        with torch.no_grad():
            fake = g_ref(noise[0].double())
        real_in, fake_in = d_in[0], d_in[1]
        std = s.noise_std * max(0.0, 1 - updates["G"] / s.noise_anneal)
        for name, x, clean in (("real", real_in, real.double()), ("fake", fake_in, fake)):
            added = x.double() - clean
            if std == 0:
                check(f"batch {b + 1}: D's {name} input", x, clean, tol=1e-5)
            elif abs(float(added.std()) - std) > 0.05 * std or abs(float(added.mean())) > 0.05 * std:
                raise Mismatch(
                    f"batch {b + 1}: instance noise on D's {name} input has std {float(added.std()):.4f}, "
                    f"expected {std:.4f}"
                )
        d_ref = float64_net(module.discriminator, d_pre["D"])
        loss, d_real, d_fake, r1 = d_objective(d_ref, real_in, fake_in, s, updates["G"], updates["D"])
        grad = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(d_ref.parameters()))])
        change = update(state["D"], grad, s.d_lr, updates["D"], mu, s)
        check_step(f"batch {b + 1}: D's step", d_pre["D"], d_post["D"], change)
        # Then max_col_norm: D's weights once its update is over (G's step leaves them as they are).
        d_after = span[-1][1]["D"]
        check(f"batch {b + 1}: D after its update", flat(d_after), flat(renormed(d_post["D"], s)), 1e-6)
        updates["D"] += 1
        expected_row = {"train/d_loss": loss, "train/d_real": d_real, "train/d_fake": d_fake}
        if r1 is not None:
            latest_r1 = {"train/r1_penalty": r1}
        expected_row.update(latest_r1)
        if g_step:
            g_pre, g_post = (dict(span)[n] for n in ("G_pre", "G_post"))
            if s.schedule == "alternating":  # G's own fresh noise, against the updated D
                if len(noise) < 2 or len(d_in) < 3:
                    raise Mismatch(f"batch {b + 1}: G's step drew no noise of its own")
                z, d_weights, g_in = noise[1], d_after, d_in[2]
                if torch.equal(noise[1], noise[0]):
                    raise Mismatch("G's step reused D's noise")
            else:  # the one forward pass: D's noise and D's parameters before its step
                z, d_weights, g_in = noise[0], d_pre["D"], fake_in
            g_ref = float64_net(module.generator, g_pre["G"])
            generated = g_ref(z.double())
            added = g_in.double() - generated.detach()  # the instance noise on G's samples, checked like D's
            if std == 0:
                check(f"batch {b + 1}: D's input in G's step", g_in, generated.detach(), tol=1e-5)
            elif abs(float(added.std()) - std) > 0.05 * std or abs(float(added.mean())) > 0.05 * std:
                raise Mismatch(
                    f"batch {b + 1}: instance noise on D's input in G's step has std "
                    f"{float(added.std()):.4f}, expected {std:.4f}"
                )
            p_fake = torch.sigmoid(float64_net(module.discriminator, d_weights)(generated + added))
            g_loss = g_objective(p_fake, s)
            g_grad = torch.cat([g.flatten() for g in torch.autograd.grad(g_loss, list(g_ref.parameters()))])
            change = update(state["G"], g_grad, s.g_lr, updates["G"], mu, s)
            check_step(f"batch {b + 1}: G's step", g_pre["G"], g_post["G"], change)
            check(f"batch {b + 1}: G after its update", flat(span[-1][1]["G"]), flat(renormed(g_post["G"], s)), 1e-6)
            updates["G"] += 1
            latest_g = {"train/g_loss": g_loss, "train/g_grad_norm": g_grad.norm()}
        # G's loss and gradient norm at its latest update, on D-only batches too (k > 1); none before the first.
        expected_row.update(latest_g)
        # Counters, and D's lr for its next update and its momentum, as logged after the batch.
        expected_row.update(
            {
                "train/d_updates": updates["D"],
                "train/g_updates": updates["G"],
                "train/momentum": mu,
                "train/lr": lr_at(s.d_lr, updates["D"], s),
            }
        )
        if row is not None:
            check_row(f"batch {b + 1}", row, expected_row)
    # The epoch's row holds its last batch's values.
    epoch_rows = [m for kind, m in rows if kind == "epoch" and "train/d_loss" in m]
    assert epoch_rows, "no epoch-end row"
    check_row("epoch row", epoch_rows[-1], expected_row)


def check_row(where: str, row: dict, expected: dict) -> None:
    """The logged train/* values are the expected ones, and no other train/* statistic is logged."""
    logged = {k for k in row if k.startswith("train/") and k != "train/elapsed_s"}
    if logged != set(expected):
        raise Mismatch(f"{where}: logged {sorted(logged)}, expected {sorted(expected)}")
    for key, value in expected.items():
        check(f"{where}: {key}", row[key], torch.as_tensor(value).detach(), 1e-6 if "updates" in key else 2e-4)


# name: (overrides, fit kwargs, the settings they mean)
CASES = {
    "baseline": ([], {}, Settings()),
    "real_label": (["loss.real_label=0.7"], {}, Settings(real_label=0.7)),
    "d_scale": (["loss.d_scale=1.3"], {}, Settings(d_scale=1.3)),
    "minimax": (["loss=minimax"], {}, Settings(generator_loss="minimax")),
    "r1_gamma": (["stabilisers.r1_gamma=3.0"], {}, Settings(r1_gamma=3.0)),
    "r1_off": (["stabilisers.r1_gamma=null"], {}, Settings(r1_gamma=0.0)),
    "r1_schedule": (
        ["stabilisers.r1_gamma=0.5", "stabilisers.r1_gamma_start=3.0", "stabilisers.r1_anneal_updates=2"],
        {"batches": 3},
        Settings(r1_gamma=0.5, r1_start=3.0, r1_anneal=2),
    ),
    # Lazy R1: D updates 1 and 3 of 4 take it, at twice the strength; 2 and 4 show the latest one taken.
    "r1_every": (["stabilisers.r1_every=2"], {"batches": 4}, Settings(r1_every=2)),
    "instance_noise": (
        ["stabilisers.instance_noise_std=0.3", "stabilisers.instance_noise_anneal_updates=2"],
        {"batches": 3},
        Settings(noise_std=0.3, noise_anneal=2),
    ),
    "d_lr": (["optimizer.d_lr=0.03"], {}, Settings(d_lr=0.03)),
    "g_lr": (["optimizer.g_lr=0.02"], {}, Settings(g_lr=0.02)),
    "lr": (["optimizer.lr=0.04"], {}, Settings(d_lr=0.04, g_lr=0.04)),
    "lr_decay": (["optimizer.lr_decay=1.5"], {"batches": 3}, Settings(lr_decay=1.5)),
    "min_lr": (["optimizer.lr_decay=10", "optimizer.min_lr=0.05"], {"batches": 3}, Settings(lr_decay=10, min_lr=0.05)),
    "momentum_start": (["optimizer.momentum_start=0.2"], {"batches": 3}, Settings(momentum_start=0.2)),
    "momentum_end": (
        ["optimizer.momentum_end=0.9", "optimizer.momentum_saturate_epoch=2"],
        {"batches": 2, "epochs": 2},
        Settings(momentum_end=0.9, momentum_saturate_epoch=2),
    ),
    "max_col_norm": (["model.max_col_norm=0.3"], {}, Settings(max_col_norm=0.3)),
    "k": (["k=2"], {"batches": 4}, Settings(k=2)),
    "simultaneous": (["schedule=simultaneous"], {}, Settings(schedule="simultaneous")),
    "adam": (
        ["optimizer=adam", "optimizer.lr=0.01", "optimizer.betas=[0.3,0.9]"],
        {"batches": 3},
        Settings(optimizer="adam", d_lr=0.01, g_lr=0.01, betas=(0.3, 0.9)),
    ),
    # Logged batches without a G update show G's latest update, not one many steps back.
    "log_every": (["k=3", "trainer.log_every_n_steps=2"], {"batches": 10}, Settings(k=3)),
}
# The default setting of each case's option, for the replay that must not match.
DEFAULT_OF = {
    "lr": Settings(),
    "min_lr": Settings(lr_decay=10),
    "momentum_end": Settings(momentum_saturate_epoch=2),
    "adam": Settings(optimizer="adam", d_lr=0.01, g_lr=0.01),
}  # Adam's default betas


@pytest.mark.parametrize("case", list(CASES))
def test_option_reaches_the_step_and_the_logged_statistics(fits, case):
    overrides, kwargs, settings = CASES[case]
    module, events, rows = fits(case, overrides, **kwargs)
    replay(module, events, rows, settings)
    if case != "baseline":
        with pytest.raises(Mismatch):
            replay(module, events, rows, DEFAULT_OF.get(case, Settings()))


# The default's optimiser as conf/optimizer/adam.yaml writes it (lr 5e-4 for both nets, betas (0.5, 0.999)) and
# its lazy R1 (conf/train.yaml: on every 4th D update, 4 times as strong).
DEFAULT_RECIPE = Settings(optimizer="adam", d_lr=5e-4, g_lr=5e-4, r1_every=4)


def test_the_default_optimizer_and_average_reach_the_steps(fits):
    """The default as conf/ composes it (DEFAULT_SMALL names no optimiser, average or R1 interval): every D and G
    step and logged row of 5 batches is Adam's at lr 5e-4 with betas (0.5, 0.999), R1 on D updates 1 and 5 only;
    the same replay with G's lr, D's lr, beta1 or the R1 interval changed, or with the paper's SGD, does not match.
    (Its average: test_ema_starts_from_g_and_follows_g_updates_only.)"""
    module, events, rows = fits("default", [], batches=5, base=DEFAULT_SMALL)
    replay(module, events, rows, DEFAULT_RECIPE)
    wrong = [
        replace(DEFAULT_RECIPE, d_lr=2e-4),
        replace(DEFAULT_RECIPE, g_lr=2e-4),
        replace(DEFAULT_RECIPE, r1_every=1),
    ]
    for settings in [*wrong, replace(DEFAULT_RECIPE, betas=(0.9, 0.999)), Settings()]:
        with pytest.raises(Mismatch):
            replay(module, events, rows, settings)


def test_noise_is_the_configured_distribution_and_size(fits):
    """model.noise and model.noise_dim reach the draws: U(-sqrt 3, sqrt 3)^6 by default, N(0, I)^6 when set."""
    for case, overrides in (("baseline", []), ("normal_noise", ["model.noise=normal"])):
        _, events, _ = fits(case, overrides)
        z = torch.cat([v for name, v in events if name == "noise"])
        assert z.shape == (4 * BATCH, 6)  # 2 batches, a D draw and a G draw each
        beyond = int((z.abs() > math.sqrt(3)).sum())
        assert beyond == 0 if case == "baseline" else beyond > 0, (case, beyond)


def test_the_settings_replayed_here_are_the_composed_defaults():
    """The replay's defaults are the config's: a case whose override did nothing would otherwise still pass."""
    cfg = compose(*SMALL)
    s = Settings()
    assert (s.real_label, s.d_scale, s.generator_loss) == (cfg.loss.real_label, cfg.loss.d_scale, cfg.loss.generator)
    assert (s.r1_gamma, s.r1_start, s.r1_anneal, s.r1_every, s.noise_anneal, s.k, s.schedule) == (
        cfg.stabilisers.r1_gamma,
        cfg.stabilisers.r1_gamma_start,
        cfg.stabilisers.r1_anneal_updates,
        cfg.stabilisers.r1_every,
        cfg.stabilisers.instance_noise_anneal_updates,
        cfg.k,
        cfg.schedule,
    )
    assert cfg.stabilisers.instance_noise_std is None and cfg.model.max_col_norm is None
    opt = cfg.optimizer
    assert (s.d_lr, s.g_lr, s.lr_decay, s.min_lr) == (opt.d_lr, opt.g_lr, opt.lr_decay, opt.min_lr)
    assert (s.momentum_start, s.momentum_end, s.momentum_saturate_epoch) == (
        opt.momentum_start,
        opt.momentum_end,
        opt.momentum_saturate_epoch,
    )
    default = compose(*DEFAULT_SMALL).optimizer
    d = DEFAULT_RECIPE
    assert (default.name, default.d_lr, default.g_lr, tuple(default.betas)) == (d.optimizer, d.d_lr, d.g_lr, d.betas)


@pytest.mark.parametrize(
    "schedule, k, batches, decay, rampup",
    [
        ("alternating", 2, 4, 0.5, None),
        ("simultaneous", 1, 2, 0.5, None),
        ("alternating", 1, 3, 0.9, 0.5),
        ("alternating", 1, 5, "default", "default"),  # the default's, as composed: 0.9999, ramp-up 0.5
    ],
)
def test_ema_starts_from_g_and_follows_g_updates_only(fits, schedule, k, batches, decay, rampup):
    """model.ema_decay (and ema_rampup): the EMA starts at G's weights as the fit starts (after G's output bias is
    set from the data), is left alone by every D step, and after G's n-th update (only then) becomes
    beta_n EMA + (1 - beta_n) G, with G as that update left it: beta_n = decay without a ramp-up, else
    0.5^(1 / min(h, rampup n)), h = ln(1/2) / ln(decay) the half-life at full horizon."""
    schedule_overrides = [f"schedule={schedule}", f"k={k}"]
    if decay == "default":  # nothing named: the fit composes the default's optimiser and average
        composed = compose(*DEFAULT_SMALL).model
        decay, rampup = 0.9999, 0.5
        assert (composed.ema_decay, composed.ema_rampup) == (decay, rampup)
        _, events, _ = fits("default", [], batches=batches, base=DEFAULT_SMALL)
    else:
        overrides = [f"model.ema_decay={decay}", f"model.ema_rampup={'null' if rampup is None else rampup}"]
        _, events, _ = fits(f"ema_{schedule}_{k}_{rampup}", [*overrides, *schedule_overrides], batches=batches)
    start = events[0][1]
    bias = [n for n in start["G"] if n.endswith("bias")][-1]  # the output layer's
    assert float(start["G"][bias].mean()) == pytest.approx(math.log(0.3 / 0.7), abs=0.05)
    expected = flat(start["G"])
    assert torch.equal(flat(start["EMA"]), expected)
    g_updates = 0
    for i, (name, value) in enumerate(events):
        if name in ("D_pre", "D_post", "G_pre", "G_post"):
            # Unchanged by D's steps, and G's update is averaged in after it (not before, not twice).
            assert torch.equal(flat(value["EMA"]), expected), (i, name)
        if name == "end":
            if events[i - 1][0] == "G_post":
                g_updates += 1
                beta = (
                    decay if rampup is None else 0.5 ** (1 / min(math.log(0.5) / math.log(decay), rampup * g_updates))
                )
                expected = beta * expected + (1 - beta) * flat(value["G"])
            assert torch.allclose(flat(value["EMA"]), expected, rtol=0, atol=1e-6), (i, g_updates)
            expected = flat(value["EMA"])  # go on from the float32 average, bit for bit
    assert g_updates == batches // k


# --- resume: every setting that defines the experiment is checked against the checkpoint's --------------------
# Each EXPERIMENT_KEYS entry, with the overrides that change it (the first setting that differs is named).
RESUME_CHANGES = {
    "dataset.name": ["dataset.name=tfd"],
    "dataset.shape": ["dataset.shape=[1,14,14]"],
    "model": [
        "model.noise_dim=7",
        "model.noise=normal",
        "model.max_col_norm=2.0",
        "model.ema_decay=0.5",
        "model.discriminator.hidden_dropout=0.5",
        "model.generator.layers=[{units:13,activation:relu,irange:0.5}]",
    ],
    "loss": ["loss=minimax", "loss.real_label=0.9", "loss.d_scale=1.0"],
    "k": ["k=2"],
    "schedule": ["schedule=simultaneous"],
    "seed": ["seed=1"],
    "optimizer.name": ["optimizer=adam"],
    "stabilisers": [
        "stabilisers.r1_gamma=1.0",
        "stabilisers.r1_gamma=null",
        "stabilisers.r1_every=2",
        "stabilisers.instance_noise_std=0.1",
        "stabilisers.instance_noise_anneal_updates=10",
    ],
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real checkpoint of the module after two batches (made once for every case below)."""
    tmp = tmp_path_factory.mktemp("resume")
    cfg = compose(*SMALL, output_dir=tmp)
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    trainer = bare_trainer(tmp, limit_train_batches=2)
    trainer.fit(module, datamodule=TinyImages(OmegaConf.to_container(cfg.dataset, resolve=True), cfg.seed))
    trainer.save_checkpoint(tmp / "last.ckpt")
    return tmp / "last.ckpt"


def test_every_experiment_key_has_resume_cases():
    from advnets.checkpoints import EXPERIMENT_KEYS

    assert set(RESUME_CHANGES) == set(EXPERIMENT_KEYS)


@pytest.mark.parametrize("key, override", [(key, o) for key, overrides in RESUME_CHANGES.items() for o in overrides])
def test_resume_with_another_experiment_setting_is_refused_in_one_line(checkpoint, key, override):
    from advnets.checkpoints import check_resume
    from advnets.errors import UserError

    with pytest.raises(UserError) as refused:
        check_resume(compose(*SMALL, f"ckpt_path={checkpoint}", override))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {checkpoint} is from another experiment ({key}: ")
    assert message.endswith("; resume it with the same settings")


@pytest.mark.parametrize(
    "override",
    [
        None,
        "trainer.max_epochs=5",
        "model.compile=true",
        "callbacks.collapse.stop=true",
        "parzen.val_samples=100",
        "test_after_fit=false",
    ],
)
def test_resume_with_the_same_experiment_is_accepted(checkpoint, override):
    from advnets.checkpoints import check_resume

    assert check_resume(compose(*SMALL, f"ckpt_path={checkpoint}", *([override] if override else []))) == str(
        checkpoint
    )


# --- evaluation: each per-epoch and final metric reads the rows and the sizes its options name ------------------
EVAL = [
    "trainer.limit_val_batches=null",
    "quality.features=auto",
    "model.ema_decay=0.5",
    "model.ema_rampup=null",
    "parzen.val_samples=150",
    "parzen.test_samples=130",
    "dataset.parzen_val_select=40",
    "dataset.parzen_val_points=60",
    "dataset.parzen_select=70",
    "quality.val_samples=300",
    "quality.test_samples=250",
    "quality.val_kid_subsets=3",
    "quality.kid_subsets=4",
    "quality.kid_subset_size=50",
]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One epoch of two batches, its validation, then trainer.test, with spies on what each metric is handed:
    every Parzen protocol call (stage, centres, selection rows, scored rows) and every image set embedded for
    the sample-quality metrics (stage, real or fake, images)."""
    import advnets.metrics.parzen as parzen
    from advnets.metrics.quality import SampleQuality

    tmp = tmp_path_factory.mktemp("evaluated")
    cfg = compose(*SMALL, *EVAL, "trainer.max_epochs=1", "trainer.limit_train_batches=2", output_dir=tmp)
    torch.manual_seed(0)
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    logger = MemoryLogger()
    trainer = pl.Trainer(**trainer_arguments(cfg), logger=logger, enable_checkpointing=False)
    datamodule = TinyImages(OmegaConf.to_container(cfg.dataset, resolve=True), cfg.seed)
    calls = {"parzen": [], "real": [], "fake": []}
    stage = lambda: "test" if trainer.testing else "val"  # noqa: E731
    real_protocol, real_update_real, real_update_fake = (
        parzen.parzen_protocol,
        SampleQuality.update_real,
        SampleQuality.update_fake,
    )

    def protocol(centres, select, test, **kwargs):
        calls["parzen"].append((stage(), centres.clone(), select.clone(), test.clone()))
        return real_protocol(centres, select, test, **kwargs)

    def update_real(self, images):
        calls["real"].append((stage(), images.clone()))
        return real_update_real(self, images)

    def update_fake(self, images):
        calls["fake"].append((stage(), images.clone()))
        return real_update_fake(self, images)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(parzen, "parzen_protocol", protocol)
        mp.setattr(SampleQuality, "update_real", update_real)
        mp.setattr(SampleQuality, "update_fake", update_fake)
        trainer.fit(module, datamodule=datamodule)
        trainer.test(module, datamodule=datamodule)
    logged = {}
    for _, metrics in logger.rows:
        logged.update(metrics)
    return module, datamodule.splits, calls, logged


def test_parzen_metrics_read_their_rows_and_sizes(evaluated):
    """val/*: parzen.val_samples centres, sigma picked on the first dataset.parzen_val_select valid rows, the next
    dataset.parzen_val_points scored; test/*: parzen.test_samples centres, sigma on the first dataset.parzen_select
    valid rows, the test split scored. The centres are G's (and the EMA's) samples of the noise seeded for the
    estimate, and every logged figure is the protocol computed here on those rows; the wrong rows give others."""
    from advnets.seeds import derive_seed
    from parzen_reference import protocol

    module, splits, calls, logged = evaluated
    valid, test = splits["valid"], splits["test"]
    rows = {"val": (valid[:40], valid[40:100]), "test": (valid[:70], test)}
    assert [(stage, len(c)) for stage, c, _, _ in calls["parzen"]] == [
        ("val", 150),
        ("val", 150),
        ("test", 130),
        ("test", 130),
    ]
    for (stage, centres, select, scored), which in zip(calls["parzen"], ["raw", "ema", "raw", "ema"]):
        assert torch.equal(select, rows[stage][0].flatten(1)) and torch.equal(scored, rows[stage][1].flatten(1))
        n = len(centres)
        gen = torch.Generator().manual_seed(derive_seed(0, 0, -2))
        z = (torch.rand(n, 6, generator=gen) * 2 - 1) * math.sqrt(3)
        with torch.no_grad():
            assert torch.allclose(centres, module.generator_for(which)(z).flatten(1), atol=1e-6)
        expected = protocol(centres, *rows[stage])
        name = f"{stage}/parzen" if which == "raw" else f"{stage}/ema_parzen"
        assert logged[f"{name}_ll"] == pytest.approx(expected["ll"], rel=1e-6)
        assert logged[f"{name}_se"] == pytest.approx(expected["se"], rel=1e-5)
        assert logged[f"{name}_sigma"] == pytest.approx(expected["sigma"], rel=1e-6)  # logged as float32
        # Sigma picked on other rows (of the other kind), or the two sets swapped: other figures.
        other_select = valid[100:140] if stage == "val" else test[:70]
        for wrong in ((other_select, rows[stage][1]), (rows[stage][1], rows[stage][0])):
            assert abs(protocol(centres, *wrong)["ll"] - expected["ll"]) > 1e-3 * abs(expected["ll"]), (stage, which)
    raw_val, ema_val = calls["parzen"][0][1], calls["parzen"][1][1]
    assert (raw_val - ema_val).abs().max() > 1e-3  # the EMA's centres are its own
    assert logged["val/g_updates"] == logged["test/g_updates"] == 2


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), written out in float64 with scipy's sqrtm."""
    import numpy as np
    import scipy.linalg

    a, b = a.double().numpy(), b.double().numpy()
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(sa @ sb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * root))


def test_quality_metrics_read_their_split_and_sizes(evaluated):
    """val/fid: quality.val_samples samples (the first of them the Parzen centres) against the valid split;
    test/fid: quality.test_samples against the test split; the FID recomputed here from the classifier's
    features; KID's subsets as quality.val_kid_subsets / kid_subsets / kid_subset_size say."""
    from advnets.metrics.mnist_classifier import load_mnist_classifier

    module, splits, calls, logged = evaluated
    assert [(stage, len(x)) for stage, x in calls["real"]] == [("val", 300), ("test", 200)]
    assert torch.equal(calls["real"][0][1], splits["valid"]) and torch.equal(calls["real"][1][1], splits["test"])
    assert [(stage, len(x)) for stage, x in calls["fake"]] == [("val", 300), ("val", 300), ("test", 250), ("test", 250)]
    # The same noise: equal up to the rounding of a matmul over 300 rows against one over 150 (threads split them).
    torch.testing.assert_close(calls["fake"][0][1][:150].flatten(1), calls["parzen"][0][1], rtol=1e-5, atol=1e-6)
    classifier = load_mnist_classifier()
    with torch.no_grad():
        features = {
            name: classifier.features_and_logits(x)[0]
            for name, x in (("valid", splits["valid"]), ("test", splits["test"]))
        }
        for (stage, fake), which in zip(calls["fake"], ["raw", "ema", "raw", "ema"]):
            right, wrong = ("valid", "test") if stage == "val" else ("test", "valid")
            expected = frechet_distance(features[right], classifier.features_and_logits(fake)[0])
            key = f"{stage}/fid" if which == "raw" else f"{stage}/ema_fid"
            assert logged[key] == pytest.approx(expected, rel=1e-3), key
            assert (
                abs(frechet_distance(features[wrong], classifier.features_and_logits(fake)[0]) - expected)
                > 1e-2 * expected
            )
    quality = module.evaluation.quality
    assert (quality["val"].kid.subsets, quality["test"].kid.subsets) == (3, 4)
    result = module.evaluation.last_quality["raw"]
    assert (result.n_samples, result.n_real, result.kid_subset_size) == (250, 200, 50)


def test_parzen_picks_sigma_on_the_selection_rows_only():
    """Selection rows near the centres (a small sigma wins on them), scored rows far from them (a large one would):
    the protocol and the metric score the scored rows at the selection rows' sigma, computed here by brute force."""
    from advnets.metrics import SIGMAS, ParzenLogLikelihood, parzen_protocol
    from parzen_reference import log_densities

    gen = torch.Generator().manual_seed(5)
    centres = torch.rand(300, 20, generator=gen, dtype=torch.float64)
    select = centres[:50] + 0.02 * torch.randn(50, 20, generator=gen, dtype=torch.float64)
    scored = torch.rand(80, 20, generator=gen, dtype=torch.float64) * 3 - 1
    right = float(SIGMAS[int(log_densities(select, centres, SIGMAS).mean(1).argmax())])
    wrong = float(SIGMAS[int(log_densities(scored, centres, SIGMAS).mean(1).argmax())])
    assert right < wrong  # the two kinds of rows pick different sigmas
    expected = log_densities(scored, centres, [right])[0]
    result = parzen_protocol(centres, select, scored)
    metric = ParzenLogLikelihood()
    metric.update(centres=centres[:100], select_points=select[:20])
    metric.update(centres=centres[100:], select_points=select[20:], test_points=scored)
    for got in (result, metric.compute()):
        assert got.sigma == right
        assert got.ll == pytest.approx(float(expected.mean()), rel=1e-9)
        assert got.se == pytest.approx(float(expected.std(correction=0)) / math.sqrt(80), rel=1e-7)
        assert (got.n_samples, got.n_points) == (300, 80)
    assert abs(float(log_densities(scored, centres, [wrong])[0].mean()) - result.ll) > 1.0


# --- callbacks.collapse: the monitor src/train.py builds from the config ------------------------------------
class MonitorSpy(pl.Callback):
    """Added with callbacks.extra: keeps the CollapseMonitor of the trainer src/train.py built."""

    found: list = []

    def on_train_end(self, trainer, module) -> None:
        from advnets.guards import CollapseMonitor

        MonitorSpy.found = [c for c in trainer.callbacks if isinstance(c, CollapseMonitor)]


def train_py(data_dir, tmp_path, *overrides):
    """src/train.py's train() in this process on real MNIST, 2 batches an epoch, CSV log: its epoch rows."""
    import csv
    import importlib.util
    import signal

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("advnets_train_script", REPO / "src" / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cfg = compose(
        *[o for o in SMALL if not o.startswith("logger=")],
        "logger=csv",
        f"paths.data_dir={data_dir}",
        "test_after_fit=false",
        "trainer.limit_train_batches=2",
        "dataset.batch_size=50",
        "callbacks.extra=[{_target_:test_wiring.MonitorSpy}]",
        *overrides,
        output_dir=tmp_path,
    )
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        script.train(cfg)
    finally:  # train() installs its preemption handlers: give pytest its own back
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = [{k: float(v) for k, v in r.items() if v} for r in csv.DictReader(f)]
    (monitor,) = MonitorSpy.found
    return monitor, rows


@pytest.mark.parametrize("case", ["stop_after_two", "smoothed_target_one_epoch"])
def test_collapse_options_reach_the_monitor_train_py_builds(data_dir, tmp_path, case):
    """stop_after_two: thresholds every D passes (D(x) > 0, D(G(z)) < 1), epochs=2, stop=true: marked at epoch 2
    and stopped there (of trainer.max_epochs=3). smoothed_target_one_epoch: loss.real_label=0.5 makes the
    D(x) threshold 0.5 x 0.5 = 0.25, which D(x) (about 0.35 here) passes and 0.5 would not; epochs=1, stop=false:
    marked at epoch 1, and training goes on. train/epoch_d_real and _d_fake are the means of the epoch's
    logged train/d_real and train/d_fake, and train/collapsed follows the rule on them."""
    if case == "stop_after_two":
        overrides = [
            "callbacks.collapse.d_real_above=0.0",
            "callbacks.collapse.d_fake_below=1.0",
            "callbacks.collapse.epochs=2",
            "callbacks.collapse.stop=true",
            "trainer.max_epochs=3",
        ]
        threshold, marked, epochs_run = 0.0, 2, 2
    else:
        overrides = [
            "loss.real_label=0.5",
            "callbacks.collapse.d_real_above=0.5",
            "callbacks.collapse.d_fake_below=1.0",
            "callbacks.collapse.epochs=1",
            "callbacks.collapse.stop=false",
            "trainer.max_epochs=2",
        ]
        threshold, marked, epochs_run = 0.25, 1, 2
    monitor, rows = train_py(data_dir, tmp_path, *overrides)
    assert monitor.d_real_above == pytest.approx(threshold) and monitor.d_fake_below == 1.0
    epochs = [r for r in rows if "train/collapsed" in r]
    assert len(epochs) == epochs_run
    steps = [r for r in rows if "train/d_real" in r and "train/collapsed" not in r and "epoch" in r]
    streak, collapsed_at = 0, None
    for e, row in enumerate(epochs):
        mine = [r for r in steps if r["epoch"] == e and "train/epoch_d_real" not in r]
        d_real = sum(r["train/d_real"] for r in mine) / len(mine)
        d_fake = sum(r["train/d_fake"] for r in mine) / len(mine)
        assert len(mine) == 2
        assert row["train/epoch_d_real"] == pytest.approx(d_real, rel=1e-6)
        assert row["train/epoch_d_fake"] == pytest.approx(d_fake, rel=1e-6)
        if threshold:  # decisive: passed at the smoothed target's threshold, not at the plain one
            assert threshold < d_real < 2 * threshold
        streak = streak + 1 if d_real > threshold and d_fake < 1.0 else 0
        if collapsed_at is None and streak >= monitor.epochs:
            collapsed_at = e + 1
        assert row["train/collapsed"] == float(collapsed_at is not None)
    assert collapsed_at == monitor.collapsed_at == marked


# --- the random streams: what each batch draws is fixed by (seed, rank, epoch, batch), resumed or not ---------
class DrawRecorder(pl.Callback):
    """Per batch (epoch, batch_idx): G's noise draws, the instance noise added to each input of D, and the
    dropout mask of D's first dropout layer at its first call."""

    def __init__(self):
        self.draws: dict[tuple[int, int], dict] = {}
        self.current = None

    def on_train_start(self, trainer, module):
        real_noise, real_d_input = module.noise, module._d_input

        def noise(n, generator=None, device=None):
            z = real_noise(n, generator, device)
            if self.current is not None and generator is None:
                self.current["z"].append(z.clone())
            return z

        def d_input(x):
            out = real_d_input(x)
            if self.current is not None:
                self.current["instance_noise"].append((out - x).detach().clone())
            return out

        def mask(layer, args, out):
            if self.current is not None and self.current["mask"] is None:
                self.current["mask"] = (out != 0).clone()

        module.noise, module._d_input = noise, d_input
        next(m for m in module.discriminator.modules() if isinstance(m, torch.nn.Dropout)).register_forward_hook(mask)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.current = self.draws[trainer.current_epoch + 1, batch_idx] = {
            "z": [],
            "instance_noise": [],
            "mask": None,
            "shape": tuple(batch.shape),
            "batch": batch.clone(),
        }

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.current = None


class SaveAt(pl.Callback):
    def __init__(self, path, batch_idx):
        self.path, self.batch_idx = path, batch_idx

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == self.batch_idx:
            trainer.save_checkpoint(self.path)


def expected_draws(seed, rank, epoch, batch_idx, shape, noise_dim, std, input_dropout):
    """What batch `batch_idx` of `epoch` (1-based) on `rank` draws, from the seeds alone: from one generator seeded
    with derive_seed(seed, rank, epoch, batch), D's noise, the instance noise on the real batch and on G(z), G's
    noise, the instance noise on G's samples; D's dropout masks from the global RNG seeded with the same parts
    and 7."""
    from advnets.seeds import derive_seed

    gen = torch.Generator().manual_seed(derive_seed(seed, rank, epoch, batch_idx))
    n = shape[0]
    z_d = (torch.rand(n, noise_dim, generator=gen) * 2 - 1) * math.sqrt(3)
    eps = [std * torch.randn(shape, generator=gen) for _ in range(2)]
    z_g = (torch.rand(n, noise_dim, generator=gen) * 2 - 1) * math.sqrt(3)
    eps.append(std * torch.randn(shape, generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, rank, epoch, batch_idx, 7))
        mask = torch.nn.functional.dropout(torch.ones(shape).flatten(1), input_dropout) != 0
    return {"z": [z_d, z_g], "instance_noise": eps, "mask": mask}


def assert_draws(got: dict, expected: dict, where, g_step: bool = True) -> None:
    """The draws of a batch with a G step (or, g_step=False, of a batch with D's step only) are the expected."""
    assert (len(got["z"]), len(got["instance_noise"])) == ((2, 3) if g_step else (1, 2)), where
    for a, b in zip(got["z"], expected["z"]):
        assert torch.allclose(a, b, atol=1e-6), where
    for a, b in zip(got["instance_noise"], expected["instance_noise"]):
        assert torch.allclose(a, b, atol=1e-5), where
    assert torch.equal(got["mask"], expected["mask"]), where


def test_seed_global_generator_on_a_cpu_seeds_as_torch_manual_seed_without_recording_stacks(monkeypatch):
    """The batch's dropout-mask seeding: on a CPU the CPU generator ends in torch.manual_seed's state, and no
    stack is recorded for the not-yet-initialised CUDA, XPU and MTIA generators (torch.manual_seed records one
    for each, every batch)."""
    import traceback

    from advnets.seeds import seed_global_generator

    torch.manual_seed(12345)
    expected = torch.get_rng_state()
    torch.manual_seed(0)
    calls = []
    real_format_stack = traceback.format_stack
    monkeypatch.setattr(traceback, "format_stack", lambda *a, **k: calls.append(1) or real_format_stack(*a, **k))
    seed_global_generator(12345, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), expected)
    assert calls == []
    if not torch.cuda.is_initialized():  # the mechanism it avoids, so that this test fails if torch drops it
        torch.manual_seed(12345)
        assert len(calls) >= 1


def test_each_batch_draws_from_its_seed_and_a_resumed_run_draws_the_same(tmp_path):
    """Instance noise (std 0.2, annealed over 10^6 G updates: 0.2 x (1 - g / 10^6)) and dropout (input 0.2) on.
    An uninterrupted epoch of 4 batches, and a run resumed from the checkpoint saved after its batch 2: every batch
    of both draws what expected_draws computes from (seed 3, rank 0, epoch, batch) alone."""
    overrides = [
        "seed=3",
        "stabilisers.instance_noise_std=0.2",
        "stabilisers.instance_noise_anneal_updates=1000000",
        "model.discriminator.input_dropout=0.2",
        "model.discriminator.hidden_dropout=0.5",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
    ]
    cfg = compose(*SMALL, *overrides, output_dir=tmp_path)
    runs = {}
    for name, ckpt in (("straight", None), ("resumed", tmp_path / "mid.ckpt")):
        torch.manual_seed(0)
        module = GAN(OmegaConf.to_container(cfg, resolve=True))
        recorder = DrawRecorder()
        callbacks = [recorder] + ([SaveAt(tmp_path / "mid.ckpt", 1)] if ckpt is None else [])
        trainer_args = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items() if k != "max_time"}
        trainer = pl.Trainer(
            **{**trainer_args, "default_root_dir": tmp_path / name},
            logger=False,
            callbacks=callbacks,
            enable_checkpointing=False,
        )
        trainer.fit(
            module, datamodule=TinyImages(OmegaConf.to_container(cfg.dataset, resolve=True), cfg.seed), ckpt_path=ckpt
        )
        runs[name] = (recorder.draws, module.g_updates)
    assert sorted(runs["straight"][0]) == [(1, 0), (1, 1), (1, 2), (1, 3)]
    assert sorted(runs["resumed"][0]) == [(1, 2), (1, 3)] and runs["resumed"][1] == runs["straight"][1] == 4
    # The batches too: rows b*8 .. b*8 + 7 of the epoch's permutation, drawn from seed * 1_000_003 + (epoch - 1).
    train = TinyImages(OmegaConf.to_container(cfg.dataset, resolve=True), cfg.seed).load_splits()["train"]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(3 * 1_000_003 + 0))
    for name, (draws, _) in runs.items():
        for (epoch, batch_idx), got in draws.items():
            assert torch.equal(got["batch"], train[order[batch_idx * BATCH : (batch_idx + 1) * BATCH]]), (
                name,
                batch_idx,
            )
            std = 0.2 * (1 - batch_idx / 1_000_000)  # G updates before this batch: batch_idx (k = 1)
            expected = expected_draws(3, 0, epoch, batch_idx, got["shape"], 6, std, 0.2)
            assert_draws(got, expected, (name, epoch, batch_idx))
    # The seeds' parts matter: another batch, epoch or rank draws otherwise.
    got = runs["straight"][0][1, 2]
    for other in ((1, 3, 0), (2, 2, 0), (1, 2, 1)):
        expected = expected_draws(3, other[2], other[0], other[1], got["shape"], 6, 0.2, 0.2)
        assert not torch.allclose(got["z"][0], expected["z"][0], atol=1e-6)
        assert not torch.equal(got["mask"], expected["mask"])


@pytest.mark.parametrize(
    "max_time, seconds",
    [
        (None, None),
        ("01:02:03:04", 93784.0),
        ("00:00:00:01", 1.0),
        ({"days": 1, "hours": 2, "minutes": 3, "seconds": 4}, 93784.0),
        ({"weeks": 1, "minutes": 0.5}, 604830.0),
    ],
)
def test_max_time_in_seconds(max_time, seconds):
    """trainer.max_time as the preemption handler reads it: DD:HH:MM:SS, or a dict of units."""
    from advnets.guards import parse_max_time

    assert parse_max_time(max_time) == seconds


@pytest.mark.parametrize("on_device", [True, False])
def test_on_device_chooses_the_training_loader(on_device):
    """dataset.on_device=true: the training split as one tensor batched by index (TensorBatches); false: a torch
    DataLoader over the same index batches (the batches are compared in tests/test_data.py)."""
    from torch.utils.data import DataLoader

    from advnets.data import TensorBatches

    cfg = compose(*SMALL, f"dataset.on_device={str(on_device).lower()}")
    datamodule = TinyImages(OmegaConf.to_container(cfg.dataset, resolve=True), cfg.seed)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert isinstance(loader, TensorBatches) == on_device and isinstance(loader, DataLoader) != on_device
