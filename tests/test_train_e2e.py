"""`python src/train.py` as a user runs it: real MNIST, real Trainer, W&B offline, then a resume."""

import json

import pytest
import torch

from conftest import run_script, tiny_run, wandb_offline_run, wandb_summary

TRAIN_KEYS = [
    "train/d_loss",
    "train/g_loss",
    "train/d_real",
    "train/d_fake",
    "train/d_updates",
    "train/g_updates",
    "train/lr",
    "train/momentum",
]
QUALITY_KEYS = [
    f"{stage}/{g}{name}"
    for stage in ("val", "test")
    for g in ("", "ema_")
    for name in ("fid", "kid", "kid_std", "inception_score", "classes_covered", "class_kl")
]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """The default on the CPU, whatever the machine: these tests assert the CPU's precision line and numbers (a GPU's
    short fit is part (a) of benchmarks/device_check.sh)."""
    run_dir = tmp_path_factory.mktemp("e2e") / "run"
    proc = run_script(
        "train.py",
        "trainer.accelerator=cpu",
        f"paths.data_dir={data_dir}",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=30",
        "trainer.log_every_n_steps=10",
        "k=2",
        "parzen.val_samples=500",
        "parzen.test_samples=1000",
        "quality.val_samples=500",
        "quality.test_samples=1000",
        "quality.kid_subsets=10",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir.parent / "output.txt").write_text(proc.stdout + proc.stderr)
    return run_dir


@pytest.mark.slow
def test_run_logs_leave_out_lightnings_tip_and_known_deprecation_noise(trained):
    output, job_log = (trained.parent / "output.txt").read_text(), (trained / "train.log").read_text()
    for log in (output, job_log):
        assert "litlogger" not in log and "LeafSpec" not in log
        assert "`Trainer.fit` stopped: `max_epochs=1` reached." in log  # Lightning's other lines are kept


@pytest.mark.slow
def test_a_short_run_of_the_default_prints_no_wandb_warning_and_no_logging_interval_warning(data_dir, tmp_path):
    """A 3-batch run (fewer batches than log_every_n_steps, 50) with W&B not silenced, as a user runs it: W&B speaks,
    but warns of no retired setting, and Lightning does not warn that the short epoch goes unlogged (the module logs
    the epoch's last values itself: train/* are in the CSV log)."""
    run_dir = tmp_path / "run"
    proc = run_script(
        "train.py", *tiny_run(data_dir, 3), f"hydra.run.dir={run_dir}", env={"WANDB_SILENT": "false"}, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for log in (proc.stdout + proc.stderr, (run_dir / "train.log").read_text()):
        assert not [line for line in log.splitlines() if line.startswith("wandb: WARNING")], log
        assert "logging interval" not in log, log
    assert any(line.startswith("wandb: ") for line in proc.stderr.splitlines())  # W&B not silenced: it could warn
    with open(next(run_dir.glob("csv/version_*/metrics.csv"))) as f:
        assert "train/d_loss" in f.readline()


@pytest.mark.slow
def test_fp16_amp_on_a_cpu_is_logged_as_the_bf16_mixed_that_lightning_runs(data_dir, tmp_path):
    """trainer.precision=16-mixed on a CPU: Lightning has no fp16 AMP there and trains in bf16-mixed; the first log
    line, the Trainer's precision (Lightning's own line) and the checkpoint's config all say bf16-mixed."""
    from advnets.precision import cpu_bf16_units

    run_dir = tmp_path / "run"
    proc = run_script(
        "train.py",
        *tiny_run(data_dir, 3),
        "trainer.precision=16-mixed",
        "trainer.accelerator=cpu",
        "logger=csv",
        "test_after_fit=false",
        f"hydra.run.dir={run_dir}",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    first = log.splitlines()[0]
    fp16 = "as Lightning runs trainer.precision=16-mixed on a CPU (it has no fp16 AMP there)"
    if cpu_bf16_units():
        assert first.endswith(
            f"[INFO] - precision: bf16-mixed, the fast path (this CPU has {cpu_bf16_units()}), {fp16}"
        )
    else:
        assert "[WARNING] - precision: bf16-mixed on a CPU without bf16 matrix units" in first and fp16 in first
    assert "Using bfloat16 Automatic Mixed Precision (AMP)" in log  # Lightning's line: what it runs
    assert "AMP with fp16 is not supported" not in proc.stdout + proc.stderr  # given bf16-mixed, it converts nothing
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["config"]["trainer"]["precision"] == "bf16-mixed"


@pytest.mark.slow
def test_default_precision_is_the_fast_path_where_this_cpu_has_bf16_units_and_the_first_log_line_says_so(trained):
    """trainer.precision=auto (the default): bf16-mixed on a CPU with AMX or AVX512-BF16, fp32 elsewhere; the
    run's first log line says which, and the checkpoint's config holds the precision that ran."""
    from advnets.precision import cpu_bf16_units

    units = cpu_bf16_units()  # the run is on the CPU (the fixture says so)
    first = (trained / "train.log").read_text().splitlines()[0]
    if units:
        assert first.endswith(
            f"[INFO] - precision: bf16-mixed, the fast path (this CPU has {units}), chosen by trainer.precision=auto"
        )
    else:
        assert first.endswith(
            "[INFO] - precision: 32-true (fp32), chosen by trainer.precision=auto (no bf16 matrix units here)"
        )
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["config"]["trainer"]["precision"] == ("bf16-mixed" if units else "32-true")


@pytest.mark.slow
def test_run_writes_checkpoint_and_samples(trained):
    assert (trained / "checkpoints" / "last.ckpt").is_file()
    assert (trained / "samples" / "epoch_0001.png").is_file()
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["counters"] == {"d_updates": 30, "g_updates": 15}
    assert ckpt["state_dict"]["fixed_z"].shape == (100, 100)
    # The EMA of G (default decay 0.9999, ramp-up 0.5) is in the checkpoint; after 15 G updates its half-life
    # is 0.5 * 15 = 7.5 updates, so it holds 0.5^(1/7.5) = 91% of the average before: not G itself.
    state = ckpt["state_dict"]
    ema_keys = [k for k in state if k.startswith("generator_ema.generator.")]
    assert len(ema_keys) == len([k for k in state if k.startswith("generator.")]) > 0
    w, w_ema = state["generator.net.0.weight"], state["generator_ema.generator.net.0.weight"]
    assert w.shape == w_ema.shape and not torch.equal(w, w_ema)
    assert (trained / "samples_ema" / "epoch_0001.png").is_file()


@pytest.mark.slow
def test_wandb_offline_run_holds_the_keys(trained):
    summary = wandb_summary(trained)
    assert summary["state"] == "finished" and summary["exit_code"] == 0
    values = summary["summary"]
    for key in (
        TRAIN_KEYS
        + [
            "val/parzen_ll",
            "test/parzen_ll",
            "test/parzen_se",
            "test/parzen_sigma",
            "val/ema_parzen_ll",
            "test/ema_parzen_ll",
            "test/ema_parzen_se",
            "test/ema_parzen_sigma",
            "train/r1_penalty",
            "train/epoch_d_real",
            "train/epoch_d_fake",
        ]
        + QUALITY_KEYS
    ):
        assert key in values, key
    assert values["train/collapsed"] == 0 and values["train/r1_penalty"] >= 0
    assert values["ema_samples"]["_type"].startswith("images")
    # Classifier-based sample quality of a barely trained G: far from the test images', few classes.
    assert values["test/fid"] > 1 and values["test/ema_fid"] > 1 and 1 <= values["val/classes_covered"] <= 10
    assert values["val/kid_std"] >= 0 and 1 <= values["test/inception_score"] <= 10 and values["test/class_kl"] >= 0
    assert values["train/d_updates"] == 30 and values["train/g_updates"] == 15
    assert 0 < values["train/d_real"] < 1 and 0 < values["train/d_fake"] < 1
    # The default's Adam: its beta1 as train/momentum, its constant lr.
    assert values["train/momentum"] == 0.5
    assert values["train/lr"] == pytest.approx(5e-4)
    assert values["samples"]["_type"].startswith("images")
    assert summary["config"]["k"] == 2 and summary["config"]["dataset"]["name"] == "mnist"
    assert "k=2" in summary["name"]


@pytest.mark.slow
def test_resume_from_checkpoint_runs(trained, data_dir, tmp_path):
    proc = run_script(
        "train.py",
        "trainer.accelerator=cpu",  # as the run it resumes
        f"paths.data_dir={data_dir}",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=30",
        "k=2",
        f"ckpt_path={trained / 'checkpoints' / 'last.ckpt'}",
        "logger=csv",
        "test_after_fit=false",
        "parzen.val_samples=500",
        f"hydra.run.dir={tmp_path / 'resumed'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # Saved at the end of the second epoch, whose 0-based index it records.
    assert ckpt["epoch"] == 1 and ckpt["counters"] == {"d_updates": 60, "g_updates": 30}
    # The default's Adam went on counting its steps from the checkpoint's: D's 60, G's 30.
    for state, steps in zip(ckpt["optimizer_states"], (60, 30)):
        assert state["state"] and all(float(s["step"]) == steps for s in state["state"].values())


@pytest.mark.slow
def test_training_end_writes_the_paper_figures(trained):
    from PIL import Image

    fig2 = Image.open(trained / "figures" / "figure_2.png")
    fig3 = Image.open(trained / "figures" / "figure_3.png")
    # Figure 2: 5 rows of 5 samples + the nearest training example; Figure 3: 8 rows of 10 steps.
    assert fig2.size[1] == 5 * 30 + 2 and fig3.size == (10 * 30 + 2, 8 * 30 + 2)


@pytest.mark.slow
def test_eval_prints_table_1_and_writes_parzen_json(trained, data_dir, tmp_path):
    # The epoch's checkpoint under its own name, pasted into ckpt_path= as it is (no `=` for Hydra to choke on).
    ckpt = trained / "checkpoints" / "epoch0000-step45.ckpt"
    proc = run_script(
        "eval.py",
        f"ckpt_path={ckpt}",
        f"paths.data_dir={data_dir}",
        "n_samples=1000",
        "quality.kid_subsets=10",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in (
        "| DBN (paper) | 138 ± 2 |",
        "| Stacked CAE (paper) | 121 ± 1.6 |",
        "| Deep GSN (paper) | 214 ± 1.1 |",
        "| Adversarial nets (paper) | 225 ± 2 |",
        "| Adversarial nets (ours",
    ):
        assert row in proc.stdout
    report = json.loads((tmp_path / "eval" / "parzen.json").read_text())
    assert set(report) >= {"ll", "se", "sigma", "n_samples", "dataset"}
    assert report["n_samples"] == 1000 and report["dataset"] == "mnist" and report["n_points"] == 10000
    assert min(abs(report["sigma"] - s) for s in torch.logspace(-1, 0, 10, dtype=torch.float64).tolist()) < 1e-9
    assert f"{report['ll']:.1f} ± {report['se']:.1f}" in proc.stdout
    # The EMA of G: its own row and its own block, from the same noise, labelled as ours.
    ema = report["ema"]
    assert ema["decay"] == 0.9999 and ema["n_samples"] == 1000 and ema["n_points"] == 10000
    assert "| Adversarial nets (ours, EMA of G, decay 0.9999, ramp-up 0.5: " in proc.stdout
    assert f"{ema['ll']:.1f} ± {ema['se']:.1f}" in proc.stdout and ema["ll"] != report["ll"]
    assert (tmp_path / "eval" / "figures" / "figure_2.png").is_file()
    # The sample-quality table: the real-data reference, then G and its EMA, labelled classifier-based.
    assert (
        "Sample quality on MNIST: 1,000 images against the 10,000 test images; MNIST classifier features "
        "(classifier-based; not comparable with Inception FIDs)." in proc.stdout
    )
    assert "| True data: 1,000 training images (reference) |" in proc.stdout
    quality = json.loads((tmp_path / "eval" / "quality.json").read_text())
    assert quality["features"] == "mnist_classifier" and set(quality["rows"]) == {"raw", "ema", "true_data"}
    rows = quality["rows"]
    assert rows["true_data"]["fid"] < rows["raw"]["fid"] and rows["true_data"]["classes_covered"] == 10
    assert f"| {rows['raw']['fid']:.3f} |" in proc.stdout and abs(sum(rows["ema"]["histogram"]) - 1) < 1e-9
    # Its W&B run: beside the training run it scores, named as that run (tests/test_sweeps.py checks its figures).
    (beside,) = set((trained / "wandb").glob("offline-run-*")) - {wandb_offline_run(trained)}
    assert wandb_summary(None, offline_run=beside)["name"] == wandb_summary(trained)["name"]
    assert not (tmp_path / "eval" / "wandb").exists()


@pytest.mark.slow
def test_eval_true_data_reference(data_dir, tmp_path):
    """10,000 random training images as centres: published work puts this at 243 nats."""
    proc = run_script(
        "eval.py",
        "reference=true_data",
        f"paths.data_dir={data_dir}",
        "logger=none",
        "quality.kid_subsets=10",
        f"hydra.run.dir={tmp_path / 'ref'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "ref" / "parzen.json").read_text())
    assert 240 <= report["ll"] <= 244 and report["n_samples"] == 10000
    assert report["sigma"] == pytest.approx(0.16681, abs=1e-4)
    assert "| True data" in proc.stdout
    # The README's reference row for the classifier-based metrics: FID 1.05, every digit covered.
    quality = json.loads((tmp_path / "ref" / "quality.json").read_text())["rows"]["true_data"]
    assert quality["fid"] == pytest.approx(1.054, abs=0.01) and quality["classes_covered"] == 10
    assert quality["n_samples"] == quality["n_real"] == 10000


@pytest.mark.slow
def test_eval_without_checkpoint_says_what_to_pass(tmp_path):
    proc = run_script("eval.py", f"hydra.run.dir={tmp_path / 'x'}", "logger=none")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ckpt_path is required")
