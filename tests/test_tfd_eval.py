"""TFD Table 1 protocol from eval.py: Parzen per fold, mean over the 5 folds, standard error across folds."""

import json
import math

import pytest

from advnets.metrics import ParzenResult
from advnets.metrics.folds import over_folds
from conftest import run_script
from test_tfd import write_tfd


def test_over_folds_mean_and_standard_error():
    results = [ParzenResult(ll=x, se=1.0, sigma=0.1, n_samples=10, n_points=5) for x in (1.0, 2.0, 3.0, 4.0, 5.0)]
    mean, se = over_folds(results)
    assert mean == 3.0 and se == pytest.approx(math.sqrt(2.0) / math.sqrt(5))


@pytest.mark.slow
def test_eval_tfd_scores_every_fold(tmp_path):
    write_tfd(tmp_path / "TFD" / "TFD_48x48.mat")
    proc = run_script(
        "eval.py",
        "reference=true_data",
        "dataset=tfd",
        f"paths.data_dir={tmp_path}",
        "logger=none",
        "n_samples=100",
        f"hydra.run.dir={tmp_path / 'ref'}",
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "ref" / "parzen.json").read_text())
    folds = report["folds"]
    assert [f["fold"] for f in folds] == [0, 1, 2, 3, 4] and report["dataset"] == "tfd"
    lls = [f["ll"] for f in folds]
    assert len(set(lls)) > 1  # each fold scores its own test split
    mean = sum(lls) / 5
    assert report["ll"] == pytest.approx(mean)
    assert report["se"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in lls) / 5) / math.sqrt(5))
    assert report["n_points"] == sum(f["n_points"] for f in folds) and "fold 4:" in proc.stdout
    assert "| True data" in proc.stdout and "per fold" in proc.stdout
