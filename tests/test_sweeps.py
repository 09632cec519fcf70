"""Multiruns over k as a user runs them (`python src/train.py -m k=1,2`), then src/report.py on the sweep."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from conftest import REPO, compose, run_script, tiny_run, wandb_run_record, wandb_summary

BATCHES = 10
# Overrides that change nothing trained, long enough together (with tiny_run's) that a job folder named by them
# would pass the file system's 255-byte limit on a name: job folders are named by job number.
LONG_OVERRIDES = (
    "logger.wandb.tags=[a_tag_long_enough_to_name_this_sweep_on_the_dashboard]",
    "callbacks.collapse.d_real_above=0.99",
    "callbacks.collapse.d_fake_below=0.01",
    "stabilisers.instance_noise_anneal_updates=50000",
    "callbacks.progress.every_s=30",
)


def job_folders(sweep):
    return sorted((p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


@pytest.fixture(scope="module")
def sweep(data_dir, tmp_path_factory):
    """Two jobs in one process (the basic launcher): the first W&B run must be finished before the second."""
    sweep = tmp_path_factory.mktemp("sweeps") / "k-sweep"
    proc = run_script(
        "train.py",
        "-m",
        "k=1,2",
        *tiny_run(data_dir, BATCHES),
        *LONG_OVERRIDES,
        f"hydra.sweep.dir={sweep}",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


@pytest.mark.slow
def test_each_job_is_its_own_wandb_run_in_the_sweep_group(sweep):
    jobs = job_folders(sweep)
    assert [p.name for p in jobs] == ["0", "1"]
    for k, job in zip((1, 2), jobs):  # the overrides: in the job's .hydra/ and its W&B run name
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert f"k={k}" in overrides and set(LONG_OVERRIDES) <= set(overrides)
        assert len(",".join(overrides)) > 255
    records = [wandb_run_record(job) for job in jobs]
    summaries = [wandb_summary(job) for job in jobs]
    assert records[0]["run_id"] != records[1]["run_id"]
    assert records[0]["run_group"] == records[1]["run_group"] == "k-sweep"
    for k, record, summary in zip((1, 2), records, summaries):
        assert summary["state"] == "finished" and summary["exit_code"] == 0
        assert summary["config"]["k"] == k
        name = record["display_name"].split(",")
        assert f"k={k}" in name and set(LONG_OVERRIDES) <= set(name) and not any("data_dir" in o for o in name)
        assert summary["summary"]["train/g_updates"] == BATCHES // k


@pytest.mark.slow
def test_report_tabulates_and_plots_the_sweep(sweep):
    proc = subprocess.run([sys.executable, str(REPO / "src" / "report.py"), str(sweep)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    table = (sweep / "report.md").read_text()
    assert proc.stdout.strip() == table.strip()
    per_run = table[table.index("| run |") :]
    rows = [line for line in per_run.splitlines() if line.startswith("| ") and not line.startswith("| run ")]
    assert len(rows) == 2
    for k, row in zip((1, 2), rows):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == f"`k={k}`"
        assert "+-" in cells[2]  # test/parzen_ll +- se
        assert 0 < float(cells[3]) < 1 and 0 < float(cells[4]) < 1  # final D(x), D(G(z))
        assert (int(cells[5]), int(cells[6])) == (BATCHES, BATCHES // k)
        assert float(cells[7]) > 0
    assert (sweep / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_refuses_a_folder_without_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "src" / "report.py"), str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: no runs in") and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_joblib_launcher_runs_ddp_jobs(data_dir, tmp_path):
    """Each job in a joblib worker; Lightning's DDP launcher starts the second rank of each."""
    sweep = tmp_path / "joblib"
    proc = run_script(
        "train.py",
        "-m",
        "hydra/launcher=joblib",
        "trainer=ddp_cpu",
        "k=1,2",
        *tiny_run(data_dir, BATCHES // 2),
        "logger=csv",
        "test_after_fit=false",
        f"hydra.sweep.dir={sweep}",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_folders(sweep)
    assert len(jobs) == 2
    for k, job in zip((1, 2), jobs):
        ckpt = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert ckpt["hyper_parameters"]["config"]["k"] == k
        assert ckpt["hyper_parameters"]["config"]["trainer"]["devices"] == 2
        assert ckpt["counters"] == {"d_updates": BATCHES // 2, "g_updates": BATCHES // 2 // k}


def test_slurm_launcher_config_composes():
    cfg = compose("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4")
    from hydra.core.hydra_config import HydraConfig

    launcher = HydraConfig.get().launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 4, 4)
    assert launcher.timeout_min > 0 and cfg.k == 1
