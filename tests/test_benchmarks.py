"""The benchmarks run in their tiny mode and print the lines the issues quote."""

import re
import subprocess
import sys

import pytest

from conftest import REPO


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
    import importlib.util

    spec = importlib.util.spec_from_file_location("quality_benchmark", REPO / "benchmarks" / "quality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
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
