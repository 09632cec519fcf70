"""The paper's section 4 on the real line: Proposition 1 (D*), Theorem 1 (C(G)), the metric code, the 1-D data."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate, stats

from advnets.data.batches import EpochBatchSampler
from advnets.data.line import FreshBatches, GaussianMixture, LineDataModule
from advnets.metrics.theory import LOG4, histogram_masses, jensen_shannon, optimal_discriminator, theory_metrics, value
from conftest import bare_trainer, compose

EDGES = torch.linspace(-8.0, 10.0, 18001, dtype=torch.float64)  # bins of 0.001


def test_theorem_1_at_p_g_equal_p_data_d_star_is_one_half_and_c_g_is_minus_log_4():
    p = GaussianMixture([{"weight": 1, "mean": 2, "std": 0.5}, {"weight": 2, "mean": -1, "std": 0.3}]).bin_masses(EDGES)
    d_star = optimal_discriminator(p, p)
    massive = p > 0
    assert torch.equal(d_star[massive], torch.full_like(d_star[massive], 0.5))
    metrics = theory_metrics(p, p, d_star)
    assert metrics["jsd"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["c_g"] == pytest.approx(-math.log(4.0), abs=1e-6)
    assert metrics["d_distance"] == pytest.approx(0.0, abs=1e-12)
    # D = 1/2 everywhere is optimal here: V(D, G) = C(G) = -log 4.
    assert value(torch.full_like(p, 0.5), p, p) == pytest.approx(-LOG4, abs=1e-9)


def _continuous_jsd(p, q, low=-8.0, high=10.0) -> float:
    """JSD of two densities by adaptive quadrature (scipy), independent of the project's bin sums."""

    def term(x):
        a, b = p(x), q(x)
        m = (a + b) / 2
        return 0.5 * (a * math.log(a / m) if a > 0 else 0.0) + 0.5 * (b * math.log(b / m) if b > 0 else 0.0)

    return integrate.quad(term, low, high, points=[0.0, 1.0, 2.0], limit=500, epsabs=1e-12)[0]


def test_theorem_1_for_two_known_gaussians_c_g_equals_minus_log_4_plus_twice_the_jsd():
    data, gen = {"weight": 1, "mean": 2.0, "std": 0.5}, {"weight": 1, "mean": 1.0, "std": 0.8}
    p_data, p_g = GaussianMixture([data]).bin_masses(EDGES), GaussianMixture([gen]).bin_masses(EDGES)
    metrics = theory_metrics(p_data, p_g, optimal_discriminator(p_data, p_g))
    jsd = _continuous_jsd(lambda x: stats.norm.pdf(x, 2.0, 0.5), lambda x: stats.norm.pdf(x, 1.0, 0.8))
    assert 0.1 < jsd < 0.5 * math.log(2)  # a real difference, not a degenerate case
    assert metrics["c_g"] == pytest.approx(-math.log(4.0) + 2 * jsd, abs=1e-4)
    assert metrics["jsd"] == pytest.approx(jsd, abs=1e-5)
    assert abs(metrics["c_g_minus_theorem"]) < 1e-9
    # Any other D does worse than D* (Proposition 1: D* maximises V for this G), by a margin.
    assert metrics["v_gap"] == pytest.approx(0.0, abs=1e-12)
    worse = theory_metrics(p_data, p_g, torch.full_like(p_data, 0.5))
    assert worse["v_d"] == pytest.approx(-LOG4, abs=1e-9) and worse["v_gap"] == pytest.approx(2 * jsd, abs=1e-4)


def test_d_distance_is_the_mixture_weighted_mean_absolute_error():
    p = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    q = torch.tensor([0.0, 0.5, 0.5, 0.0], dtype=torch.float64)
    d = torch.tensor([0.9, 0.2, 0.1, 0.7], dtype=torch.float64)
    # D* = 1, 1/2, 0, undefined; weights (p + q) / 2 = 1/4, 1/2, 1/4, 0.
    assert torch.allclose(optimal_discriminator(p, q)[:3], torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))
    assert math.isnan(optimal_discriminator(p, q)[3])
    metrics = theory_metrics(p, q, d)
    assert metrics["d_distance"] == pytest.approx(0.25 * 0.1 + 0.5 * 0.3 + 0.25 * 0.1)
    assert metrics["v_d"] == pytest.approx(
        0.5 * math.log(0.9) + 0.5 * math.log(0.2) + 0.5 * math.log(0.8) + 0.5 * math.log(0.9)
    )
    assert metrics["jsd"] == pytest.approx(0.5 * math.log(2), abs=1e-12) == jensen_shannon(p, q)


def test_histogram_masses_count_beyond_the_grid_in_the_end_bins():
    edges = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    x = torch.tensor([-5.0, 0.0, 0.5, 1.0, 1.5, 2.99, 3.0, 7.0])
    assert histogram_masses(x, edges).tolist() == [3 / 8, 2 / 8, 3 / 8]


def test_mixture_density_masses_and_samples():
    mix = GaussianMixture([{"weight": 1, "mean": -2.0, "std": 0.25}, {"weight": 3, "mean": 2.0, "std": 0.5}])
    masses = mix.bin_masses(EDGES)
    assert masses.sum().item() == pytest.approx(1.0, abs=1e-12)
    x = torch.tensor([-3.0, -2.0, 0.0, 1.5, 2.0, 4.0], dtype=torch.float64)
    expected = 0.25 * stats.norm.cdf(x.numpy(), -2.0, 0.25) + 0.75 * stats.norm.cdf(x.numpy(), 2.0, 0.5)
    assert torch.allclose(mix.cdf(x), torch.from_numpy(expected), atol=1e-12)
    assert torch.allclose(
        mix.pdf(x),
        torch.from_numpy(0.25 * stats.norm.pdf(x.numpy(), -2.0, 0.25) + 0.75 * stats.norm.pdf(x.numpy(), 2.0, 0.5)),
        atol=1e-12,
    )
    assert mix.mean() == pytest.approx(0.25 * -2.0 + 0.75 * 2.0)
    x = mix.sample(200000, torch.Generator().manual_seed(0)).squeeze(1).double()
    assert (x < 0).double().mean().item() == pytest.approx(0.25, abs=0.005)
    assert x[x > 0].std().item() == pytest.approx(0.5, abs=0.01)
    # The histogram of those samples is the density's masses up to the sampling error (JSD ~ bins / 8n).
    coarse = torch.linspace(-8.0, 10.0, 181, dtype=torch.float64)
    assert jensen_shannon(histogram_masses(x, coarse), mix.bin_masses(coarse)) < 2e-4


def test_fresh_batches_are_new_every_batch_repeatable_resumable_and_per_rank():
    mix = GaussianMixture([{"weight": 1, "mean": 2.0, "std": 0.5}])

    def batches(rank=0, world=1, epoch=0, skip=0):
        sampler = EpochBatchSampler(4 * 8 * world, 8, seed=3, rank=rank, world_size=world, shuffle=False)
        sampler.resume_at(epoch, skip)
        return list(FreshBatches(mix, sampler))

    first = batches()
    assert len(first) == 4 and all(b.shape == (8, 1) for b in first)
    assert len({tuple(b.flatten().tolist()) for b in first}) == 4  # a fresh minibatch every time
    assert all(torch.equal(a, b) for a, b in zip(first, batches()))  # the same seed draws the same batches
    assert not torch.equal(first[0], batches(epoch=1)[0])  # another epoch, other data
    assert all(torch.equal(a, b) for a, b in zip(first[2:], batches(skip=2)))  # a resume draws the rest
    rank0, rank1 = batches(0, 2), batches(1, 2)
    assert len(rank0) == len(rank1) == 4 and not torch.equal(rank0[0], rank1[0])


def test_line_datamodule_from_the_real_config():
    cfg = compose("experiment=figure1")
    dm = LineDataModule(dict(cfg.dataset), seed=0)
    loader = dm.train_dataloader()
    assert len(loader) == cfg.dataset.batches_per_epoch
    assert next(iter(loader)).shape == (cfg.dataset.batch_size, 1)
    grid = next(iter(dm.val_dataloader()))
    assert grid.shape == (cfg.dataset.grid.bins, 1)
    assert grid[0, 0].item() == pytest.approx(
        cfg.dataset.grid.low + (cfg.dataset.grid.high - cfg.dataset.grid.low) / cfg.dataset.grid.bins / 2
    )


@pytest.mark.slow
def test_proposition_1_the_projects_d_step_on_fresh_batches_reaches_d_star(tmp_path):
    """G frozen at a known distribution (a linear G of Gaussian noise: p_g = N(b, w^2)); D trained by the
    module's own D steps (k larger than the run, so G never steps) through a real Trainer on fresh batches."""
    from omegaconf import OmegaConf

    from advnets.module import GAN

    cfg = compose(
        "experiment=figure1",
        "model.noise=normal",
        "model.generator.layers=[]",
        "k=1000000",
        "trainer.max_epochs=12",
        "dataset.batches_per_epoch=250",
        "logger=csv",
        "seed=5",
        output_dir=tmp_path,
    )
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    w, b = 0.75, 1.0  # exact in float32
    with torch.no_grad():
        module.generator.output_layer.weight.fill_(w)
        module.generator.output_layer.bias.fill_(b)
    dm = LineDataModule(dict(OmegaConf.to_container(cfg.dataset, resolve=True)), seed=5)
    trainer = bare_trainer(tmp_path, max_epochs=12, limit_val_batches=None, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    assert module.g_updates == 0 and module.d_updates == 12 * 250
    assert module.generator.output_layer.weight.item() == w and module.generator.output_layer.bias.item() == b

    x = torch.linspace(-1.0, 4.0, 501, dtype=torch.float64)
    p_data, p_g = stats.norm.pdf(x, 2.0, 0.5), stats.norm.pdf(x, b, w)
    d_star = torch.from_numpy(p_data / (p_data + p_g))
    module.discriminator.eval()
    with torch.no_grad():
        d = torch.sigmoid(module.discriminator(x.float()[:, None])).double()
    where = torch.from_numpy((p_data + p_g) / 2 > 0.1)  # where p_data + p_g is not negligible
    assert where.sum() > 200
    # Measured at this commit: max 0.029, E|D - D*| 0.016, V gap 0.0023 (a D of 1/2 everywhere: 2 JSD = 0.51).
    assert (d - d_star)[where].abs().max().item() < 0.05
    # The logged measure (histogram p_g, D on the grid) agrees: D is within 0.025 of D* on average, and
    # V(D, G) is within 0.005 of its maximum C(G).
    assert module.evaluation.last_metrics["d_distance"] < 0.025
    assert module.evaluation.last_metrics["v_gap"] < 0.005


THEORY_KEYS = ["jsd", "c_g", "c_g_minus_theorem", "v_d", "v_gap", "d_distance", "pg_beyond_grid", "g_updates"]


@pytest.fixture(scope="module")
def figure1_run(tmp_path_factory):
    from conftest import run_script

    run_dir = tmp_path_factory.mktemp("figure1") / "run"
    proc = run_script(
        "train.py",
        "experiment=figure1",
        "trainer.max_epochs=3",
        "dataset.batches_per_epoch=20",
        "dataset.theory_val_samples=20000",
        "dataset.theory_test_samples=50000",
        "trainer.log_every_n_steps=5",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def _rows(run_dir):
    import csv

    with open(run_dir / "csv" / "version_0" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_the_1d_experiment_logs_every_theory_metric_each_epoch(figure1_run):
    rows = _rows(figure1_run)
    val = [r for r in rows if r.get("val/jsd")]
    assert [int(r["epoch"]) for r in val] == [0, 1, 2]
    for r in val:
        assert all(r.get(f"val/{k}") not in (None, "") for k in THEORY_KEYS)
        # Theorem 1 on the logged numbers: C(G) = -log 4 + 2 JSD (logged in float32).
        assert float(r["val/c_g"]) == pytest.approx(-math.log(4) + 2 * float(r["val/jsd"]), abs=1e-5)
        assert 0 <= float(r["val/jsd"]) <= math.log(2) and float(r["val/v_gap"]) >= -1e-6
    assert [float(r["val/g_updates"]) for r in val] == [20.0, 40.0, 60.0]
    (test,) = [r for r in rows if r.get("test/jsd")]
    assert all(test.get(f"test/{k}") not in (None, "") for k in THEORY_KEYS)
    # G's gradient norm on every logged step (the saturation plot's data), and the image metrics are absent.
    steps = [r for r in rows if r.get("train/g_grad_norm")]
    assert len(steps) >= 60 // 5 and all(float(r["train/g_grad_norm"]) > 0 for r in steps)
    assert not any(k.startswith(("val/parzen", "val/fid")) for k in rows[0])
    assert not (figure1_run / "samples").exists()


@pytest.mark.slow
def test_the_1d_experiment_draws_figure_1_and_writes_the_arrays(figure1_run):
    from PIL import Image

    frames = sorted((figure1_run / "theory" / "figure_1").glob("epoch_*.png"))
    assert [p.name for p in frames] == ["epoch_0001.png", "epoch_0002.png", "epoch_0003.png"]
    gif = Image.open(figure1_run / "figures" / "figure_1.gif")
    assert gif.n_frames == 3
    import csv

    with open(figure1_run / "theory" / "epoch_0003.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 700 and list(table[0]) == ["x", "p_data", "p_g", "d", "d_star"]
    width = float(table[1]["x"]) - float(table[0]["x"])
    assert sum(float(r["p_data"]) for r in table) * width == pytest.approx(1.0, abs=1e-4)
    assert sum(float(r["p_g"]) for r in table) * width == pytest.approx(1.0, abs=1e-4)
    for r in table:  # D* = p_data / (p_data + p_g) where either has mass
        p, q = float(r["p_data"]), float(r["p_g"])
        if p + q > 1e-3:
            assert float(r["d_star"]) == pytest.approx(p / (p + q), abs=1e-4)


@pytest.mark.slow
def test_the_1d_run_reaches_wandb_and_eval_refuses_it_with_a_pointer(figure1_run):
    from conftest import run_script, wandb_summary

    summary = wandb_summary(figure1_run)
    text = json_dump(summary)
    for key in ("val/jsd", "val/d_distance", "test/c_g", "train/g_grad_norm", "figure_1", '"theory"'):
        assert key in text
    proc = run_script("eval.py", f"ckpt_path={figure1_run / 'checkpoints' / 'last.ckpt'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "docs/theory.md" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def json_dump(obj) -> str:
    import json

    return json.dumps(obj)


def test_g_grad_norm_is_the_norm_of_g_gradient_at_every_g_update(tmp_path):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from advnets.losses import generator_loss
    from advnets.module import GAN

    for loss in ("minimax", "nonsaturating"):
        cfg = compose("experiment=figure1", f"loss={loss}", output_dir=tmp_path)
        module = GAN(OmegaConf.to_container(cfg, resolve=True))
        module.manual_backward = lambda out, *args: out.backward(*args)
        connector = SimpleNamespace(should_update_logs=True)
        module._trainer = SimpleNamespace(_logger_connector=connector)
        _, g_opt = module.configure_optimizers()

        class Opt:
            def zero_grad(self, set_to_none=True):
                g_opt.zero_grad(set_to_none=set_to_none)

            def step(self):
                g_opt.step()

        z = module.noise(16, torch.Generator().manual_seed(3))
        expected = torch.autograd.grad(
            generator_loss(module.discriminator(module.generator(z)), loss), list(module.generator.parameters())
        )
        norm = math.sqrt(sum(float((g.double() ** 2).sum()) for g in expected))
        module._noise_gen = torch.Generator().manual_seed(3)
        module._generator_step(16, Opt())
        assert module.step_record["g_grad_norm"].item() == pytest.approx(norm, rel=1e-5)
        # Measured on steps that are not logged too: a logged row shows G's latest update, never a stale one.
        connector.should_update_logs = False
        del module.step_record["g_grad_norm"]
        module._generator_step(16, Opt())
        assert module.step_record["g_grad_norm"].item() > 0


@pytest.mark.slow
def test_the_k_study_command_as_typed_runs_a_sweep_that_report_summarises(tmp_path):
    """`train.py experiment=figure1 -m k=1,2 seed=0` (the flag after an override, as the issue types it):
    one job per k, then src/report.py's theory table with one row per k."""
    import subprocess
    import sys

    from advnets.preflight import flags_first
    from conftest import REPO, run_script

    assert flags_first(["experiment=figure1", "-m", "k=1,2"]) == ["-m", "experiment=figure1", "k=1,2"]
    sweep = tmp_path / "sweep"
    proc = run_script(
        "train.py",
        "experiment=figure1",
        "-m",
        "k=1,2",
        "seed=0",
        "trainer.max_epochs=2",
        "dataset.batches_per_epoch=10",
        "dataset.theory_val_samples=10000",
        "dataset.theory_test_samples=10000",
        "logger=csv",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]  # job folders by number, the overrides in each job's .hydra/overrides.yaml
    assert ["k=1" in (sweep / j / ".hydra" / "overrides.yaml").read_text() for j in jobs] == [True, False]
    report = subprocess.run(
        [sys.executable, str(REPO / "src" / "report.py"), str(sweep), "--jsd-below", "0.7"],
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    rows = [line for line in (sweep / "report.md").read_text().splitlines() if line.startswith("| `")]
    assert [r.split("|")[1].strip() for r in rows[:2]] == ["`k=1`", "`k=2`"]  # the theory table, a row per k
    assert "reached JSD < 0.7" in (sweep / "report.md").read_text()
    # k=2 takes half the G updates of k=1 over the same batches: 20 and 10 after 2 epochs of 10 batches.
    assert [_rows(sweep / job)[-1].get("test/g_updates") for job in jobs] == ["20.0", "10.0"]
