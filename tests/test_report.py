"""src/report.py over seeds, on run folders written in the real format (Hydra's hydra.yaml, Lightning's CSV)."""

import csv
import math
import subprocess
import sys

import yaml

from conftest import REPO

FIELDS = ["epoch", "step", "train/collapsed", "val/parzen_ll", "val/ema_parzen_ll", "val/g_updates",
          "test/parzen_ll", "test/parzen_se"]


def write_run(folder, overrides, val_curve, collapsed=0.0, test=None):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"override_dirname":
                                                                                    ",".join(overrides)}}}))
    (folder / "csv" / "version_0").mkdir(parents=True)
    with open(folder / "csv" / "version_0" / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for epoch, (raw, ema) in enumerate(val_curve):
            w.writerow({"epoch": epoch, "step": 100 * (epoch + 1), "val/parzen_ll": raw, "val/ema_parzen_ll": ema,
                        "val/g_updates": 50 * (epoch + 1)})
            w.writerow({"epoch": epoch, "step": 100 * (epoch + 1), "train/collapsed": collapsed if epoch else 0.0})
        if test is not None:
            w.writerow({"epoch": len(val_curve) - 1, "step": 100 * len(val_curve), "test/parzen_ll": test,
                        "test/parzen_se": 2.0})


def test_report_groups_seeds_with_mean_se_and_collapse_count(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "0_k=1,seed=0", ["k=1", "seed=0"], [(10, 20), (100, 150), (130, 180)], test=135.0)
    write_run(sweep / "1_k=1,seed=1", ["k=1", "seed=1"], [(20, 25), (110, 160), (150, 200)], test=149.0)
    write_run(sweep / "2_k=1,seed=2", ["k=1", "seed=2"], [(-250, -240), (-260, -250), (-255, -245)], collapsed=1.0,
              test=-250.0)
    write_run(sweep / "3_k=2,seed=0", ["k=2", "seed=0"], [(5, 6), (50, 60)])
    proc = subprocess.run([sys.executable, str(REPO / "src" / "report.py"), str(sweep), "--epoch", "2"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = (sweep / "report.md").read_text()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith("| `")}

    def mean_se(values):
        m = sum(values) / len(values)
        return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))

    k1 = rows["`k=1`"]
    assert k1[1:4] == ["3", "1", "3"]  # seeds, collapsed, last epoch every seed reached
    assert k1[4] == "{:.1f} +- {:.1f}".format(*mean_se([130, 150, -255]))
    assert k1[5] == "{:.1f} +- {:.1f}".format(*mean_se([180, 200, -245]))
    assert k1[6] == "{:.1f} +- {:.1f}".format(*mean_se([100, 110, -260]))  # @ epoch 2
    assert k1[8] == "{:.1f} +- {:.1f}".format(*mean_se([135, 149, -250]))
    k2 = rows["`k=2`"]
    assert k2[1:6] == ["1", "0", "2", "50.0", "60.0"]  # one seed: no s.e.
    assert k2[8] == "-"  # no full-protocol row
    assert (sweep / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_shows_the_fid_beside_parzen(tmp_path):
    """The sample-quality columns: val/fid (G, EMA) at the last epoch and test/fid over seeds; per run FID, KID, coverage."""
    import report

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"override_dirname": "k=2"}}}))
    (run / "csv" / "version_0").mkdir(parents=True)
    rows = [{"epoch": 0, "val/parzen_ll": 10, "val/ema_parzen_ll": 20, "val/fid": 80.5, "val/ema_fid": 90.25},
            {"epoch": 1, "val/parzen_ll": 30, "val/ema_parzen_ll": 40, "val/fid": 40.1, "val/ema_fid": 45.5},
            {"epoch": 1, "test/parzen_ll": 35, "test/parzen_se": 2, "test/fid": 38.0, "test/ema_fid": 44.0,
             "test/kid": 7.5, "test/kid_std": 1.25, "test/classes_covered": 9}]
    with open(run / "csv" / "version_0" / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, sorted({k for r in rows for k in r}))
        w.writeheader()
        w.writerows(rows)
    report.main([str(run)])
    text = (run / "report.md").read_text()
    assert "| val/fid | val/ema_fid | test/fid | test/ema_fid |" in text
    assert "| 40.10 | 45.50 | 38.00 | 44.00 |" in text  # last epoch's val/fid, then test/fid (one seed: no s.e.)
    assert "| 38.000 | 7.50000 +- 1.25000 | 9 |" in text
