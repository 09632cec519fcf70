"""Multiruns over k as a user runs them (`python src/train.py -m k=1,2`), then src/report.py on the sweep."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import (
    REPO,
    compose,
    leet_screen,
    processes_naming,
    run_script,
    tiny_run,
    wandb_offline_run,
    wandb_records,
    wandb_run_record,
    wandb_summary,
)

BATCHES = 10
# Overrides that change nothing trained, long enough together (with tiny_run's) that a job folder named by them
# would pass the file system's 255-byte limit on a name: job folders are named by job number.
LONG_OVERRIDES = (
    "callbacks.collapse.d_real_above=0.99",
    "callbacks.collapse.d_fake_below=0.01",
    "stabilisers.instance_noise_anneal_updates=50000",
    "stabilisers.r1_anneal_updates=5000",
)
# Bookkeeping (advnets.config.NOT_IN_RUN_NAME): in the job's overrides, not in its W&B run name.
BOOKKEEPING = (
    "logger.wandb.tags=[a_tag_long_enough_to_name_this_sweep_on_the_dashboard]",
    "callbacks.progress.every_s=30",
    "callbacks.checkpoint.every_n_epochs=1",
    "callbacks.checkpoint.save_top_k=-1",
)


def job_folders(sweep):
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


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
        *BOOKKEEPING,
        f"hydra.sweep.dir={sweep}",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep / "stdout.txt").write_text(proc.stdout + proc.stderr)
    return sweep


@pytest.mark.slow
def test_each_job_is_its_own_wandb_run_in_the_sweep_group(sweep):
    jobs = job_folders(sweep)
    assert [p.name for p in jobs] == ["0", "1"]
    for k, job in zip((1, 2), jobs):  # the overrides: in the job's .hydra/ and (without bookkeeping) its W&B name
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        assert f"k={k}" in overrides and set(LONG_OVERRIDES + BOOKKEEPING) <= set(overrides)
        assert len(",".join(overrides)) > 255
        assert not (job / "wandb").exists()  # the sweep's W&B runs are all in <sweep>/wandb
    records = [wandb_run_record(job) for job in jobs]
    summaries = [wandb_summary(job) for job in jobs]
    assert records[0]["run_id"] != records[1]["run_id"]
    assert records[0]["run_group"] == records[1]["run_group"] == "k-sweep"
    for k, record, summary in zip((1, 2), records, summaries):
        assert summary["state"] == "finished" and summary["exit_code"] == 0
        assert summary["config"]["k"] == k
        name = record["display_name"].split(",")
        assert f"k={k}" in name and set(LONG_OVERRIDES) <= set(name) and not set(BOOKKEEPING) & set(name)
        assert not any("data_dir" in o for o in name) and record["job_type"] == "train"
        assert summary["name"] == record["display_name"]
        assert summary["config"]["logger"]["wandb"]["group"] == "k-sweep" and summary["tags"] == [BOOKKEEPING[0][19:-1]]
        assert summary["summary"]["train/g_updates"] == BATCHES // k


@pytest.fixture(scope="module")
def scored(sweep, data_dir):
    """src/eval.py on job 0's checkpoint, as a user scores a job of a sweep: the offline W&B run it makes."""
    before = set(sweep.glob("wandb/offline-run-*"))
    proc = run_script(
        "eval.py",
        f"ckpt_path={sweep / '0' / 'checkpoints' / 'last.ckpt'}",
        f"paths.data_dir={data_dir}",
        "n_samples=200",
        f"hydra.run.dir={sweep / '0' / 'eval'}",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (eval_run,) = set(sweep.glob("wandb/offline-run-*")) - before
    return eval_run


@pytest.mark.slow
def test_the_sweep_opens_in_wandb_leet(sweep, scored):
    """W&B's own dashboard on the sweep's folder lists both jobs and the eval run beside them."""
    screen = leet_screen(sweep / "wandb")
    assert screen[0].lstrip().startswith("Runs [3 items]"), "\n".join(screen)
    listed = [line.split("│")[0].strip(" ●▶○") for line in screen[1:4]]
    expected = [wandb_offline_run(job).name for job in job_folders(sweep)] + [scored.name]
    assert sorted(listed) == sorted(expected), "\n".join(screen)
    # The dashboard and its wandb-core end with the read (a kill takes effect within moments).
    deadline = time.monotonic() + 5
    while processes_naming(str(sweep / "wandb")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_naming(str(sweep / "wandb")) == []


@pytest.mark.slow
def test_eval_puts_table_1_beside_the_job(sweep, scored):
    """The eval run: in the sweep's W&B folder and group, named as the job it scores, with eval.py's figures."""
    job = sweep / "0"
    trained = wandb_summary(job)
    shown = wandb_summary(None, offline_run=scored)
    record = next(r["run"] for r in wandb_records(scored) if r["type"] == "run")
    assert record["job_type"] == "eval" and record["run_group"] == "k-sweep"
    assert shown["name"] == trained["name"] and shown["config"]["scored"]["run_id"] == trained["run_id"]
    parzen = json.loads((job / "eval" / "parzen.json").read_text())
    quality = json.loads((job / "eval" / "quality.json").read_text())["rows"]
    figures = shown["summary"]
    assert figures["eval/g_updates"] == BATCHES
    for prefix, key, ll in (("eval/", "raw", parzen["ll"]), ("eval/ema_", "ema", parzen["ema"]["ll"])):
        assert figures[f"{prefix}parzen_ll"] == pytest.approx(ll, rel=1e-12)
        for metric in ("fid", "kid", "classes_covered"):
            assert figures[f"{prefix}{metric}"] == pytest.approx(quality[key][metric], rel=1e-6)
    table = figures["eval/table_1"]
    assert table["_type"] == "table-file" and (table["nrows"], table["ncols"]) == (3, 11)
    rows = json.loads((scored / "files" / table["path"]).read_text())
    by_set = {row[0]: dict(zip(rows["columns"], row)) for row in rows["data"]}
    assert list(by_set) == ["raw", "ema", "true_data"]
    assert by_set["raw"]["parzen_ll"] == pytest.approx(parzen["ll"]) and by_set["true_data"]["parzen_ll"] is None
    assert by_set["ema"]["fid"] == pytest.approx(quality["ema"]["fid"])


@pytest.mark.slow
def test_val_metrics_are_plotted_against_g_updates(sweep):
    """val/* and test/* have G updates as their x axis (W&B's define_metric), so k = 1 and k = 2 meet at equal
    G updates; every row that holds them holds its step."""
    for k, job in zip((1, 2), job_folders(sweep)):
        records = wandb_records(wandb_offline_run(job))
        axes = {r["metric"].get("glob_name"): r["metric"].get("step_metric") for r in records if r["type"] == "metric"}
        assert axes["val/*"] == "val/g_updates" and axes["test/*"] == "test/g_updates"
        rows = [r["history"]["item"] for r in records if r["type"] == "history"]
        for stage in ("val", "test"):
            staged = [row for row in rows if any(key.startswith(f"{stage}/") for key in row)]
            assert len(staged) == 1 and staged[0][f"{stage}/g_updates"] == BATCHES // k


@pytest.mark.slow
def test_the_sweep_log_is_quiet_and_tabulates_the_test_once(sweep):
    """No litlogger tip in a multirun's log; the end-of-fit test table gives each metric once (not once per loader)."""
    out = (sweep / "stdout.txt").read_text()
    assert "litlogger" not in out and "DataLoader 1" not in out
    assert out.count("\ntest/parzen_ll ") == 2 and out.count("\ntest/ema_fid ") == 2  # one table per job


@pytest.mark.slow
def test_a_resumed_job_continues_its_wandb_run_in_the_sweep_folder(sweep, data_dir, tmp_path):
    copy = tmp_path / "k-sweep"
    shutil.copytree(sweep, copy)
    job = copy / "0"
    first = wandb_offline_run(job)
    proc = run_script(
        "train.py",
        "k=1",
        *tiny_run(data_dir, BATCHES),
        *LONG_OVERRIDES,
        "trainer.max_epochs=2",
        "test_after_fit=false",
        f"ckpt_path={job / 'checkpoints' / 'last.ckpt'}",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (job / "wandb").exists()
    segments = sorted(copy.glob(f"wandb/offline-run-*-{first.name.rsplit('-', 1)[1]}"))
    assert len(segments) == 2 and segments[0] == first
    records = [next(r["run"] for r in wandb_records(s) if r["type"] == "run") for s in segments]
    assert records[1]["display_name"] == records[0]["display_name"] and records[1]["run_group"] == "k-sweep"
    assert wandb_summary(job)["summary"]["train/g_updates"] == 2 * BATCHES


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
