"""benchmarks/stacked_seeds.py (issue 45, item 4): S seeds' step stacked with torch.func is each seed's own step."""

from __future__ import annotations

import copy
import importlib.util
import re
import subprocess
import sys

import pytest
import torch

from advnets.noise import draw_noise
from conftest import REPO

NO_DROPOUT = ("model.discriminator.input_dropout=0", "model.discriminator.hidden_dropout=0")
BATCH = 8


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("stacked_seeds", REPO / "benchmarks" / "stacked_seeds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def draws(gen: torch.Generator, seeds: int, cfg: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A step's real batches and its D and G updates' noise for `seeds` seeds, stacked."""
    real = torch.rand(seeds, BATCH, 1, 28, 28, generator=gen)
    z = draw_noise(2 * seeds * BATCH, int(cfg["model"]["noise_dim"]), cfg["model"]["noise"], gen, "cpu")
    z_d, z_g = z.view(2, seeds, BATCH, -1)
    return real, z_d, z_g


@pytest.mark.parametrize(
    "seeds, steps, overrides",
    [
        (2, 3, ()),  # the default: lazy R1 (D update 1 of 3), k = 1, Adam, the EMA with its ramp-up
        (3, 3, ()),
        # lazy R1 (x r1_every on every other D update), its gamma annealed, k = 2 (a G update every other step)
        (2, 4, ("stabilisers.r1_every=2", "stabilisers.r1_gamma_start=1.0", "stabilisers.r1_anneal_updates=3", "k=2")),
    ],
)
def test_stacked_step_is_each_seeds_eager_step(bench, seeds, steps, overrides):
    """From the same weights, batches and noise (dropout off), the stacked step's weights, G's averages and
    per-step records are, seed by seed, the eager step's (modules, autograd, advnets' Adam, R1Penalty, losses and
    GeneratorEMA) to float32 rounding, over several steps: one Adam over the stacked weights is S Adams, its bias
    corrections included, and the stacked EMA is S EMAs."""
    cfg = bench.compose(*NO_DROPOUT, *overrides)
    nets = [bench.build_nets(cfg, seed, "cpu") for seed in range(seeds)]
    eager = [bench.EagerGAN(cfg, copy.deepcopy(g), copy.deepcopy(d)) for g, d in nets]
    stacked = bench.StackedGAN(cfg, [g for g, _ in nets], [d for _, d in nets])
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        real, z_d, z_g = draws(gen, seeds, cfg)
        stacked.step(real, z_d, z_g)
        for s, one in enumerate(eager):
            one.step(real[s], z_d[s], z_g[s])
    g_updates = steps // int(cfg["k"])
    assert (stacked.d_updates, stacked.g_updates) == (steps, g_updates)
    assert all(float(st["step"]) == steps for st in stacked.d_opt.state.values())
    assert all(float(st["step"]) == g_updates for st in stacked.g_opt.state.values())
    tol = dict(rtol=1e-5, atol=1e-6)  # Adam's steps move each weight by about lr = 5e-4
    for s, (one, (g0, d0)) in enumerate(zip(eager, nets)):
        mine = stacked.seed_state(s)
        for part, net, start in (("g", one.g, g0), ("d", one.d, d0), ("ema", one.ema.generator, g0)):
            moved = 0.0
            for name, p in net.named_parameters():
                torch.testing.assert_close(mine[part][name], p.detach(), **tol, msg=f"seed {s}: {part}.{name}")
                moved = max(moved, (p.detach() - start.get_parameter(name).detach()).abs().max().item())
            assert moved > 1e-4, f"seed {s}: {part} did not move"  # the comparison is not of the start
        assert set(stacked.record) == set(one.record) >= {"d_loss", "g_loss", "r1_penalty", "g_grad_norm"}
        for key, value in one.record.items():
            torch.testing.assert_close(stacked.record[key][s], value, rtol=1e-5, atol=1e-9, msg=key)


def test_dropout_masks_differ_between_seeds(bench):
    """vmap(randomness="different"): two seeds from the same weights, batches and noise part in D's update and, on
    its own, in G's (D's dropout masks in G's loss) when D has dropout (the default), and stay equal without it."""
    for dropout in (True, False):
        cfg = bench.compose(*(() if dropout else NO_DROPOUT))
        g, d = bench.build_nets(cfg, 0, "cpu")
        real, z_d, z_g = (x.expand(2, *x.shape[1:]) for x in draws(torch.Generator().manual_seed(2), 1, cfg))
        for update, params in (("discriminator", "d"), ("generator", "g")):
            stacked = bench.StackedGAN(cfg, [g, copy.deepcopy(g)], [d, copy.deepcopy(d)])
            if update == "discriminator":
                stacked.discriminator_step(real, z_d)
            else:
                stacked.generator_step(z_g)
            weights = getattr(stacked, params).values()
            loss = stacked.record["d_loss" if params == "d" else "g_loss"]
            if dropout:
                assert loss[0] != loss[1], update
                assert any(not torch.equal(p[0], p[1]) for p in weights), update
            else:
                torch.testing.assert_close(loss[0], loss[1], rtol=1e-6, atol=0)
                for p in weights:
                    torch.testing.assert_close(p[0], p[1], rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_stacked_seeds_smoke():
    """`python benchmarks/stacked_seeds.py --smoke`: every row runs (S=2: two child processes for (b) and (c)) and
    the summary lines report S seeds and the ratios."""
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "stacked_seeds.py"), "--smoke"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    log = out.stdout
    assert out.returncode == 0, log[-3000:]
    assert re.search(r"^device cpu, .*seeds: 2, batch 8,", log, re.M), log
    for row, what in (("a", r"stacked, 2 seeds in one process"), ("b", r"functional, 2 processes"), ("c", "eager")):
        assert re.search(rf"^run 1: \({row}\) {what}.*: \d+ samples/s$", log, re.M), log
        summary = re.search(rf"^\({row}\) {what}.*: (\d+) samples/s \(median of 1\), summed over 2 seeds$", log, re.M)
        assert summary and int(summary.group(1)) > 0, log
    ratios = re.search(r"^a/b = (\d+\.\d+)  a/c = (\d+\.\d+)$", log, re.M)
    assert ratios and float(ratios.group(1)) > 0 and float(ratios.group(2)) > 0, log
