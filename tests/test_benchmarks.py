"""The benchmarks run in their tiny mode and print the lines the issues quote."""

import json
import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module, in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_throughput_tiny(data_dir):
    """`OMP_NUM_THREADS=1 python benchmarks/train_throughput.py --tiny > log 2>&1`: the rows, and a log of plain
    lines (progress as src/train.py writes it off a terminal, not tqdm's redraws) without the noise src/train.py
    keeps out (Lightning's litlogger tip, known deprecations, W&B's and Lightning's untrue warnings)."""
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--tiny", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        env={"WANDB_MODE": "offline", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )
    log = out.stdout
    assert out.returncode == 0, log[-3000:]
    for k in "abc":
        assert re.search(rf"^\({k}\) .* \d+ samples/s", log, re.M), log
    ratios = re.search(r"a/b = (\d+\.\d+)\s+a/c = (\d+\.\d+)", log)
    assert ratios and float(ratios.group(1)) > 0 and float(ratios.group(2)) > 0
    assert "peak host RSS" in log
    assert len(log.encode()) < 5000 and "\r" not in log, log
    assert re.search(r"^epoch 1/1 batch 5/5 \(100%\) \d+\.\d batch/s ", log, re.M), log  # advnets.progress's line
    for noise in ("it/s]", "litlogger", "LeafSpec", "wandb: WARNING", "logging interval"):
        assert noise not in log, log


def test_quality_benchmark_tiny(data_dir, capsys):
    """benchmarks/quality.py --tiny, in this process (its figures are CPU seconds: no subprocess needed)."""
    bench = load_benchmark("quality")
    bench.main(["--tiny", "--data-dir", str(data_dir)])
    out = capsys.readouterr().out
    assert re.search(
        r"^full set: 500 samples against 500 test images: \d+\.\d+ s \(samples' features .* KID \d+\.\d+ s "
        r"\(5 subsets of 500\)",
        out,
        re.M,
    ), out
    assert re.search(
        r"^per validation epoch: 200 samples .* KID over 2 subsets: \d+\.\d+ s per generator", out, re.M
    ), out


def test_time_shares_sums_each_kind_of_work():
    """benchmarks/train_throughput.py's "where the time goes": each kind's ms a batch, the ops it does not name as
    the rest, the wall time outside the ops, and the batch."""
    from types import SimpleNamespace

    bench = load_benchmark("train_throughput")
    us = {
        "aten::mm": 30_000,
        "aten::addmm": 10_000,
        "aten::add_": 15_000,
        "aten::mul_": 5_000,
        "aten::copy_": 10_000,
        "aten::relu": 30_000,
        "## Call CompiledFxGraph fabc123 ##": 20_000,  # a prefix: one compiled graph's range
    }
    events = [SimpleNamespace(key=k, self_cpu_time_total=v) for k, v in us.items()]
    shares = bench.time_shares(events, batches=10, seconds=0.2)
    assert shares == pytest.approx(
        {
            "matmuls (mm, addmm)": 4.0,
            "copies (casts, row-major gy^T)": 1.0,
            "in-place adds (updates, grad sums)": 2.0,
            "EMA of G (lerp_)": 0.0,
            "maxout (max and its backward)": 0.0,
            "dropout masks": 0.0,
            "compiled graphs (Inductor kernels)": 2.0,
            "other ops": 3.0,
            "batch": 20.0,
            "outside the ops": 8.0,
        }
    )


def test_where_the_time_goes_gives_the_budget_of_twice_fp32():
    """Side by side, ms and share of the batch per kind; then what half fp32's batch leaves the fast path beside its
    matmuls, and the bounds: fp32 40 ms (matmuls 24), fast path 28 (matmuls 8): 2x is 20 ms, 12 left for a rest
    of 20 (fp32's: 16); at most 40 / (16 + 8) = 1.67x with the rest as fp32's, 40 / 20 = 2x with free matmuls."""
    bench = load_benchmark("train_throughput")
    kinds = list(bench.TIME_SHARES) + ["other ops", "outside the ops", "batch"]  # time_shares' order
    fp32 = dict.fromkeys(kinds, 0.0) | {"matmuls (mm, addmm)": 24.0, "other ops": 10.0, "outside the ops": 6.0}
    fast = dict.fromkeys(kinds, 0.0) | {"matmuls (mm, addmm)": 8.0, "other ops": 14.0, "outside the ops": 6.0}
    fp32["batch"], fast["batch"] = 40.0, 28.0
    lines = bench.where_the_time_goes({"fp32": fp32, "fast": fast}).splitlines()
    assert lines[0].split() == ["ms", "a", "batch", "(profiled)", "fp32", "fast"]
    rows = {line[:38].strip(): line[38:].split() for line in lines[1:-2]}
    assert list(rows) == [k for k in kinds if k != "batch"] + ["batch"]
    assert rows["matmuls (mm, addmm)"] == ["24.0", "60%", "8.0", "29%"]
    assert rows["other ops"] == ["10.0", "25%", "14.0", "50%"]
    assert rows["batch"] == ["40.0", "100%", "28.0", "100%"]
    assert lines[-2] == (
        "  2x fp32 is 20.0 ms a batch; the fast path's matmuls take 8.0 of it, which leaves 12.0 ms for the rest: "
        "the fast path spends 20.0 on it, fp32 16.0"
    )
    assert (
        lines[-1]
        == "  at most x1.67 of fp32 with the rest as fp32 does it, x2.00 with the matmuls free (profiled times)"
    )
    # One row (a CPU where fp32 is the fastest): its column alone, no budget.
    assert len(bench.where_the_time_goes({"fp32": fp32}).splitlines()) == 1 + len(kinds)


@pytest.mark.slow
def test_time_to_quality_times_each_run_to_its_first_checkpoint_at_the_target(data_dir, tmp_path, capsys):
    """Two seeds of a 1-epoch setting (3 batches), each scored at its checkpoint: with a target every G meets, each run
    reaches it at epoch 1 in the training seconds its CSV logged there; with one no G meets, none does."""
    bench = load_benchmark("time_to_quality")
    small = (
        f"paths.data_dir={data_dir} trainer.max_epochs=1 trainer.limit_train_batches=3 parzen.val_samples=100 "
        "dataset.parzen_val_select=100 dataset.parzen_val_points=100 quality.val_samples=100"
    )
    common = ["--setting", f"tiny={small}", "--seeds", "1", "2", "--every", "1", "--root", str(tmp_path)]
    common += ["--eval", "n_samples=200", "--out", str(tmp_path / "scores.json")]
    bench.main([*common, "--parzen=-1e9", "--fid", "1e9", "--digits", "0"])
    out = capsys.readouterr().out
    scores = json.loads((tmp_path / "scores.json").read_text())
    seconds = []
    for seed, run in zip((1, 2), scores["runs"]):
        (row,) = bench.epoch_rows(tmp_path / "tiny" / f"seed{seed}").values()
        assert int(float(row["train/g_updates"])) == 3
        seconds.append(float(row["train/elapsed_s"]))
        assert f"tiny seed {seed}: reached at epoch 1 (raw): {seconds[-1]:.0f} s, 3 G updates | end (epoch 1, " in out
        assert set(run["checkpoints"][0]["scores"]) == {"raw", "ema"} and run["checkpoints"][0]["epoch"] == 1
    # Collapsed: the raw G covers fewer than 10 digits at the end (3 updates: it does) or the flag fired.
    collapsed = sum(r["checkpoints"][-1]["scores"]["raw"]["digits"] < 10 for r in scores["runs"])
    mean, se = (seconds[0] + seconds[1]) / 2, abs(seconds[0] - seconds[1]) / 2
    assert f"tiny: 2/2 reached, time to target {mean:.0f} +- {se:.0f} s, 3 +- 0 G updates; " in out, out
    assert out.rstrip().endswith(f"; {collapsed} collapsed")
    # Scored once: the same command again trains and scores nothing, and a target no G meets is not reached.
    bench.main([*common, "--parzen", "1e9"])
    out = capsys.readouterr().out
    assert "tiny seed 1: not reached" in out and "tiny: 0/2 reached, time to target - s, - G updates" in out
    assert [r["job_seconds"] for r in json.loads((tmp_path / "scores.json").read_text())["runs"]] == [0.0, 0.0]


def test_time_to_quality_reads_a_setting_up_to_an_epoch_as_its_shorter_run(tmp_path):
    """--read-at short=long@2: long's runs with their checkpoints up to epoch 2 and the collapse flag its log
    raised up to there (not the one raised at epoch 3); an epoch off --every, a setting not given, or an lr anneal
    over the run's length is refused before anything trains."""
    bench = load_benchmark("time_to_quality")
    folder = tmp_path / "long" / "seed1"
    (folder / "csv" / "version_0").mkdir(parents=True)
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "config.yaml").write_text("optimizer:\n  anneal_epochs: null\n")
    rows = ["epoch,train/elapsed_s,train/g_updates,train/collapsed"]
    rows += [f"{e},{10.0 * (e + 1)},{5 * (e + 1)},{1 if e == 2 else ''}" for e in range(3)]
    (folder / "csv" / "version_0" / "metrics.csv").write_text("\n".join(rows) + "\n")
    score = {"parzen": 230.0, "fid": 6.0, "kid": 1.0, "digits": 10}
    checkpoints = [bench.Checkpoint(e, 5 * e, 10.0 * e, {"ema": dict(score, fid=9.0 - e)}) for e in (1, 2, 3)]
    run = bench.Run("long", 1, str(folder), 99.0, True, checkpoints)
    short = bench.up_to(run, 2, "short")
    assert (short.setting, short.seed, short.collapse_flag, short.job_seconds) == ("short", 1, False, 0.0)
    assert [c.epoch for c in short.checkpoints] == [1, 2] and not short.collapsed
    assert bench.up_to(run, 3, "all").collapse_flag
    out = bench.report([run, short], bench.Target(fid=7.0))
    assert "short seed 1: reached at epoch 2 (ema): 20 s, 10 G updates | end (epoch 2, ema): 230.0 nats, FID 7.0" in out
    assert "short: 1/1 reached, time to target 20 s, 10 G updates; whole run 20 s training; 0 collapsed" in out
    settings = {"long": ["trainer.max_epochs=3"], "annealed": ["optimizer.anneal_epochs=2"]}
    assert bench.parse_read_at("short=long@2", settings, 1) == ("short", "long", 2)
    for bad in ("short=long@3", "short=other@2", "short=long", "short=annealed@2"):
        with pytest.raises(SystemExit, match="error: --read-at"):
            bench.parse_read_at(bad, settings, 2)
    (folder / ".hydra" / "config.yaml").write_text("optimizer:\n  anneal_epochs: 2\n")
    with pytest.raises(SystemExit, match="anneals its lr over trainer.max_epochs"):
        bench.up_to(run, 2, "short")


@pytest.mark.parametrize("change", ["for-loop Adam", "gradients kept", "fast path's masks"])
def test_step_costs_rows_change_what_they_name_and_restore_it(change):
    """`train_throughput.py --step-costs`: each row's change is the step it names (Adam's for-loop implementation,
    gradients zeroed in place, the fast path's dropout masks and maxout in fp32), and today's step comes back."""
    from advnets import optim, precision

    bench = load_benchmark("train_throughput")
    assert change in (bench.FOR_LOOP_ADAM, bench.GRADIENTS_KEPT, bench.FAST_PATH_MASKS)
    x, pre = torch.rand(100, 784), torch.randn(100, 240 * 5)
    weight = torch.nn.Parameter(torch.ones(3))

    def step():
        """(Adam built fused, gradient buffer kept by zero_grad, dropout, maxout), today's or the row's."""
        opt = optim.Adam([weight], lr=1e-3, betas=(0.5, 0.999))
        weight.grad = torch.ones(3)
        opt.zero_grad()
        torch.manual_seed(0)
        dropped = precision.dropout(x, 0.2, True)
        return bool(opt.defaults["fused"]), weight.grad is not None, dropped, precision.maxout(pre, 240, 5)

    fused, kept, dropped, maxed = step()
    assert fused and not kept
    with bench.step_as(change):
        row = step()
    assert row[0] is (change != bench.FOR_LOOP_ADAM) and row[1] is (change == bench.GRADIENTS_KEPT)
    torch.manual_seed(0)
    cheap = precision.cheap_dropout(x, 0.2)
    assert torch.equal(row[2], cheap if change == bench.FAST_PATH_MASKS else dropped)
    assert not torch.equal(dropped, cheap)  # fp32 draws its masks otherwise: the row measures a real change
    assert torch.equal(row[3], maxed)  # torch.max and amax take the same values
    after = step()
    assert after[:2] == (True, False) and torch.equal(after[2], dropped) and torch.equal(after[3], maxed)
