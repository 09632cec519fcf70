"""The benchmarks run in their tiny mode and print the lines the issues quote."""

import re
import subprocess
import sys

import pytest

from conftest import REPO


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module, in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_train_throughput_tiny(data_dir):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--tiny", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        env={"WANDB_MODE": "offline", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for k in "abc":
        assert re.search(rf"^\({k}\) .* \d+ samples/s", out.stdout, re.M), out.stdout
    ratios = re.search(r"a/b = (\d+\.\d+)\s+a/c = (\d+\.\d+)", out.stdout)
    assert ratios and float(ratios.group(1)) > 0 and float(ratios.group(2)) > 0
    assert "peak host RSS" in out.stdout


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
    """benchmarks/train_throughput.py's "where the time goes": each kind's share of the ops' self time and its ms a
    batch, the ops it does not name as the rest, and the wall time outside the ops."""
    from types import SimpleNamespace

    bench = load_benchmark("train_throughput")
    us = {
        "aten::mm": 30_000,
        "aten::addmm": 10_000,
        "aten::add_": 15_000,
        "aten::mul_": 5_000,
        "aten::copy_": 10_000,
        "aten::relu": 30_000,
    }
    events = [SimpleNamespace(key=k, self_cpu_time_total=v) for k, v in us.items()]
    lines = bench.time_shares(events, batches=10, seconds=0.2).splitlines()
    rows = [re.fullmatch(r"  (.+?) +(\d+)% of the ops' time, +([\d.]+) ms a batch", line) for line in lines[:-1]]
    shares = {m.group(1): (int(m.group(2)), float(m.group(3))) for m in rows}
    assert shares == {
        "matmuls (mm, addmm)": (40, 4.0),
        "copies (casts, row-major gy^T)": (10, 1.0),
        "in-place adds (updates, grad sums)": (20, 2.0),
        "EMA of G (lerp_)": (0, 0.0),
        "maxout (max and its backward)": (0, 0.0),
        "dropout masks": (0, 0.0),
        "other ops": (30, 3.0),
    }
    assert lines[-1] == "  outside the ops: 10.0 ms a batch of 20.0 ms (wall, profiled)"
