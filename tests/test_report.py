"""src/report.py over seeds, on run folders written in the real format (Hydra's hydra.yaml, Lightning's CSV)."""

import csv
import math
import subprocess
import sys

import pytest
import yaml

from conftest import REPO

FIELDS = [
    "epoch",
    "step",
    "train/collapsed",
    "val/parzen_ll",
    "val/ema_parzen_ll",
    "val/g_updates",
    "test/parzen_ll",
    "test/parzen_se",
]


def write_hydra_record(folder, overrides):
    """Hydra's record of a run's command line: the overrides one per item (.hydra/overrides.yaml) and joined by
    commas as the run's name (hydra.yaml's override_dirname)."""
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    (folder / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"job": {"override_dirname": ",".join(overrides)}}})
    )


def write_run(folder, overrides, val_curve, collapsed=0.0, test=None):
    (folder / ".hydra").mkdir(parents=True)
    write_hydra_record(folder, overrides)
    (folder / "csv" / "version_0").mkdir(parents=True)
    with open(folder / "csv" / "version_0" / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for epoch, (raw, ema) in enumerate(val_curve):
            w.writerow(
                {
                    "epoch": epoch,
                    "step": 100 * (epoch + 1),
                    "val/parzen_ll": raw,
                    "val/ema_parzen_ll": ema,
                    "val/g_updates": 50 * (epoch + 1),
                }
            )
            w.writerow({"epoch": epoch, "step": 100 * (epoch + 1), "train/collapsed": collapsed if epoch else 0.0})
        if test is not None:
            w.writerow(
                {
                    "epoch": len(val_curve) - 1,
                    "step": 100 * len(val_curve),
                    "test/parzen_ll": test,
                    "test/parzen_se": 2.0,
                }
            )


def test_report_groups_seeds_with_mean_se_and_collapse_count(tmp_path):
    sweep = tmp_path / "sweep"
    write_run(sweep / "0_k=1,seed=0", ["k=1", "seed=0"], [(10, 20), (100, 150), (130, 180)], test=135.0)
    write_run(sweep / "1_k=1,seed=1", ["k=1", "seed=1"], [(20, 25), (110, 160), (150, 200)], test=149.0)
    write_run(
        sweep / "2_k=1,seed=2",
        ["k=1", "seed=2"],
        [(-250, -240), (-260, -250), (-255, -245)],
        collapsed=1.0,
        test=-250.0,
    )
    write_run(sweep / "3_k=2,seed=0", ["k=2", "seed=0"], [(5, 6), (50, 60)])
    proc = subprocess.run(
        [sys.executable, str(REPO / "src" / "report.py"), str(sweep), "--epoch", "2"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    text = (sweep / "report.md").read_text()
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| `")
    }

    k1 = rows["`k=1`"]
    assert k1[1:4] == ["3", "1", "3"]  # seeds, collapsed, last epoch every seed reached
    assert k1[4] == _mean_se([130, 150, -255])
    assert k1[5] == _mean_se([180, 200, -245])
    assert k1[6] == _mean_se([100, 110, -260])  # @ epoch 2
    assert k1[8] == _mean_se([135, 149, -250])
    k2 = rows["`k=2`"]
    assert k2[1:6] == ["1", "0", "2", "50.0", "60.0"]  # one seed: no s.e.
    assert k2[8] == "-"  # no full-protocol row
    assert (sweep / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_that_differ_only_in_length_or_checkpoints_are_seeds_of_one_setting(tmp_path):
    """A 30-epoch run and a 15-epoch run that stopped when D won are one setting; at an epoch the stopped run never
    reached, the mean is over the runs that did, and says so."""
    write_run(
        tmp_path / "a" / "seed0",
        ["seed=0", "trainer.max_epochs=3", "callbacks.checkpoint.every_n_epochs=5"],
        [(10, 20), (100, 150), (130, 180)],
        test=135.0,
    )
    write_run(
        tmp_path / "b" / "0_seed=1",
        ["callbacks.collapse.stop=true", "seed=1", "trainer.max_epochs=2"],
        [(20, 25), (-250, -240)],
        collapsed=1.0,
        test=-250.0,
    )
    write_run(
        tmp_path / "b" / "1_seed=2",
        ["callbacks.collapse.stop=true", "seed=2", "trainer.max_epochs=2"],
        [(30, 35), (110, 130)],
        test=111.0,
    )
    write_run(tmp_path / "c" / "0_k=2,seed=0", ["k=2", "seed=0", "trainer.max_epochs=2"], [(5, 6), (50, 60)])
    import report

    report.main([str(tmp_path / d) for d in "abc"] + ["--epoch", "3", "--out", str(tmp_path / "out")])
    rows = _table_rows((tmp_path / "out" / "report.md").read_text())
    assert sorted(rows) == ["`defaults`", "`k=2`"]
    assert rows["`defaults`"][1:5] == ["3", "1", "2", _mean_se([100, -250, 110])]
    assert rows["`defaults`"][5] == _mean_se([150, -240, 130])  # EMA, last common epoch
    assert rows["`defaults`"][6:8] == ["130.0 (1 of 3 seeds)", "180.0 (1 of 3 seeds)"]  # @3: only seed 0 got there
    assert rows["`k=2`"][6] == "-"


def _mean_se(values, digits=1):
    """mean +- s.e. over seeds (std with ddof 1 / sqrt(n)), as the report prints it."""
    m = sum(values) / len(values)
    se = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))
    return f"{m:.{digits}f} +- {se:.{digits}f}"


def test_report_shows_the_fid_beside_parzen(tmp_path):
    """The sample-quality columns: val/fid (G, EMA) at the last epoch and test/fid over seeds; per run FID, KID, coverage."""
    import report

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    write_hydra_record(run, ["k=2"])
    (run / "csv" / "version_0").mkdir(parents=True)
    rows = [
        {"epoch": 0, "val/parzen_ll": 10, "val/ema_parzen_ll": 20, "val/fid": 80.5, "val/ema_fid": 90.25},
        {"epoch": 1, "val/parzen_ll": 30, "val/ema_parzen_ll": 40, "val/fid": 40.1, "val/ema_fid": 45.5},
        {
            "epoch": 1,
            "test/parzen_ll": 35,
            "test/parzen_se": 2,
            "test/fid": 38.0,
            "test/ema_fid": 44.0,
            "test/kid": 7.5,
            "test/kid_std": 1.25,
            "test/classes_covered": 9,
        },
    ]
    with open(run / "csv" / "version_0" / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, sorted({k for r in rows for k in r}))
        w.writeheader()
        w.writerows(rows)
    report.main([str(run)])
    text = (run / "report.md").read_text()
    assert "| val/fid | val/ema_fid | test/fid | test/ema_fid |" in text
    assert "| 40.10 | 45.50 | 38.00 | 44.00 | 7.5000 | - | 9.0 | - |" in text  # last epoch's val/fid, then test/*
    # (one seed: no s.e.); no EMA figures at test: "-"
    assert "| 38.000 | 7.50000 +- 1.25000 | 9 |" in text


def write_rows(folder, overrides, rows):
    """A run folder with hand-written metrics rows (each a dict of the CSV logger's columns)."""
    (folder / ".hydra").mkdir(parents=True)
    write_hydra_record(folder, overrides)
    (folder / "csv" / "version_0").mkdir(parents=True)
    fields = sorted({k for r in rows for k in r})
    with open(folder / "csv" / "version_0" / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)


def _table_rows(text):
    return {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| `")
    }


def test_report_compares_at_equal_g_updates_and_equal_wall_time(tmp_path):
    sweep = tmp_path / "sweep"
    # k=1: 100 G updates and 10 s per epoch; k=5: 20 G updates and 6 s per epoch.
    for k, per_epoch, seconds, curves in (
        (1, 100, 10.0, [[1, 2, 3, 4], [2, 4, 6, 8]]),
        (5, 20, 6.0, [[10, 20, 30, 40], [30, 40, 50, 60]]),
    ):
        for seed, curve in enumerate(curves):
            rows = []
            for epoch, ll in enumerate(curve):
                rows.append(
                    {
                        "epoch": epoch,
                        "step": epoch + 1,
                        "val/parzen_ll": ll,
                        "val/ema_parzen_ll": ll + 1,
                        "val/g_updates": per_epoch * (epoch + 1),
                    }
                )
                rows.append({"epoch": epoch, "step": epoch + 1, "train/elapsed_s": seconds * (epoch + 1)})
            write_rows(sweep / f"{k}{seed}_k={k},seed={seed}", [f"k={k}", f"seed={seed}"], rows)
    proc = subprocess.run(
        [sys.executable, str(REPO / "src" / "report.py"), str(sweep), "--g-updates", "60", "--seconds", "20"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    text = (sweep / "report.md").read_text()
    assert "val/parzen_ll @60 G updates" in text and "val/parzen_ll @20 s" in text
    rows = _table_rows(text)
    # k=1 has no validation within 60 G updates (its first is at 100): no value, not a wrong one; within 20 s: epoch 2.
    assert rows["`k=1`"][6:10] == ["-", "-", "3.0 +- 1.0", "4.0 +- 1.0"]  # within 20 s: epoch 2
    # k=5 within 60 G updates: epoch 3 (60); within 20 s: epoch 3 (18 s).
    assert rows["`k=5`"][6:10] == ["40.0 +- 10.0", "41.0 +- 10.0", "40.0 +- 10.0", "41.0 +- 10.0"]
    # 30 s: k=5 ended at 24 s, so it has no value at 30 s (not its last one); k=1 has epoch 3 (30 s).
    import report

    report.main([str(sweep), "--seconds", "30", "--out", str(tmp_path / "at30")])
    rows = _table_rows((tmp_path / "at30" / "report.md").read_text())
    assert rows["`k=1`"][6:8] == ["4.5 +- 1.5", "5.5 +- 1.5"] and rows["`k=5`"][6:8] == ["-", "-"]


def test_the_plot_draws_a_k_sweep_at_equal_g_updates(tmp_path):
    """Runs of different k (their configs' k) are drawn against G updates, unless --x says otherwise, where they meet:
    k=5 reaches k=1's first validation (100 G updates) at its fifth epoch. Runs of one k are drawn against epochs."""
    import report

    sweep = tmp_path / "sweep"
    # k=1: 100 G updates an epoch, 3 epochs; k=5: 20 an epoch, 5 epochs.
    for k, per_epoch, curves in (
        (1, 100, [[1, 2, 3], [3, 4, 5]]),
        (5, 20, [[10, 20, 30, 40, 50], [30, 40, 50, 60, 70]]),
    ):
        for seed, curve in enumerate(curves):
            rows = [
                {"epoch": e, "step": e + 1, "val/parzen_ll": ll, "val/g_updates": per_epoch * (e + 1)}
                for e, ll in enumerate(curve)
            ]
            folder = sweep / f"{k}{seed}_k={k},seed={seed}"
            write_rows(folder, [f"k={k}", f"seed={seed}"], rows)
            (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"k": k, "seed": seed}))
    proc = subprocess.run([sys.executable, str(REPO / "src" / "report.py"), str(sweep)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "(curves against G updates)" in proc.stderr  # the automatic choice
    runs = report.find_runs([sweep])
    assert [r.k for r in runs] == [1, 1, 5, 5] and report.x_axis(runs) == "g_updates"
    assert report.x_axis(runs, "epoch") == "epoch" and report.x_axis(runs[:2]) == "epoch"

    (ax,) = report.plot(runs, tmp_path / "by_updates.png", "g_updates").axes
    assert ax.get_xlabel() == "G updates"
    curves = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}
    assert curves["k=1 (2 seeds)"] == ([100, 200, 300], [2.0, 3.0, 4.0])
    assert curves["k=5 (2 seeds)"] == ([20, 40, 60, 80, 100], [20.0, 30.0, 40.0, 50.0, 60.0])
    (ax,) = report.plot(runs, tmp_path / "by_epochs.png", "epoch").axes
    assert ax.get_xlabel() == "epoch"
    assert {line.get_label(): list(line.get_xdata()) for line in ax.lines} == {
        "k=1 (2 seeds)": [1, 2, 3],
        "k=5 (2 seeds)": [1, 2, 3, 4, 5],
    }
    proc = subprocess.run(
        [sys.executable, str(REPO / "src" / "report.py"), str(sweep), "--x", "epoch"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "(curves against epoch)" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_report_gives_the_theory_table_for_1d_runs(tmp_path):
    sweep = tmp_path / "sweep"
    runs = {  # seed: (val/jsd per epoch, val/d_distance per epoch, test/jsd)
        0: ([0.3, 0.02, 0.008, 0.005], [0.2, 0.1, 0.05, 0.05], 0.006),
        1: ([0.4, 0.009, 0.02, 0.004], [0.3, 0.1, 0.1, 0.1], 0.004),
        2: ([0.5, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], 0.09),
    }
    for seed, (jsd, distance, final) in runs.items():
        rows = []
        for epoch, (j, d) in enumerate(zip(jsd, distance)):
            rows.append(
                {
                    "epoch": epoch,
                    "step": epoch + 1,
                    "val/jsd": j,
                    "val/d_distance": d,
                    "val/g_updates": 50 * (epoch + 1),
                }
            )
            rows.append({"epoch": epoch, "step": epoch + 1, "train/elapsed_s": 3.0 * (epoch + 1)})
        rows.append({"epoch": 3, "step": 4, "test/jsd": final})
        write_rows(sweep / f"{seed}_k=2,seed={seed}", ["k=2", f"seed={seed}"], rows)
    proc = subprocess.run(
        [sys.executable, str(REPO / "src" / "report.py"), str(sweep), "--jsd-below", "0.01"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (row,) = _table_rows((sweep / "report.md").read_text()).values()

    assert row[1] == "3"
    assert row[2] == _mean_se([0.1, 0.15, 0.25], 4)  # each run's mean E|D - D*| over its validations
    assert row[3] == _mean_se([0.006, 0.004, 0.09], 4)
    assert row[4] == "2/3"  # seed 2 never goes below 0.01
    assert row[5] == _mean_se([150, 100], 0)  # seed 0 first below at epoch 3, seed 1 at epoch 2
    assert row[6] == _mean_se([9.0, 6.0], 1)
    assert (sweep / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_the_theory_table_gives_the_jsd_at_equal_g_updates(tmp_path):
    sweep = tmp_path / "sweep"
    for seed, jsd in enumerate(([0.3, 0.02, 0.008], [0.4, 0.009, 0.02])):
        rows = [
            {"epoch": e, "step": e + 1, "val/jsd": j, "val/d_distance": 0.1, "val/g_updates": 50 * (e + 1)}
            for e, j in enumerate(jsd)
        ]
        write_rows(sweep / f"{seed}_seed={seed}", [f"seed={seed}"], rows)
    proc = subprocess.run(
        [sys.executable, str(REPO / "src" / "report.py"), str(sweep), "--g-updates", "120"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    text = (sweep / "report.md").read_text()
    assert "| JSD @120 G updates |" in text
    (row,) = _table_rows(text).values()
    assert row[7] == "0.0145 +- 0.0055"  # epoch 2 (100 G updates) of each: 0.02 and 0.009


def test_the_plot_draws_the_mean_with_its_band_only_where_every_seed_has_a_value():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import report

    fig, ax = plt.subplots()
    report._curve(ax, [{1: 10.0, 2: 20.0, 3: 30.0}, {1: 14.0, 2: -250.0}], "C0", "-", "setting")
    full, survivors = ax.lines
    assert list(full.get_xdata()) == [1, 2] and list(full.get_ydata()) == [12.0, -115.0]
    assert full.get_label() == "setting"
    assert list(survivors.get_xdata()) == [2, 3] and list(survivors.get_ydata()) == [-115.0, 30.0]
    assert survivors.get_label().startswith("_")  # not in the legend
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 0].max() == 2  # the band stops where the first seed did
    plt.close(fig)


def test_report_reads_the_full_protocol_of_evaluated_checkpoints(tmp_path):
    """eval.py's parzen.json and quality.json under <run>/eval/*/ become per-epoch rows (the checkpoint's 0-based
    epoch + 1) for G and its EMA: mean +- s.e. over seeds, the mean within-run s.e. beside Parzen."""
    import json

    import report

    for seed, (ll, fid, covered) in {1: (100.0, 40.0, 9), 2: (110.0, 50.0, 10)}.items():
        run = tmp_path / f"seed{seed}"
        write_rows(run, [f"seed={seed}"], [{"epoch": 0, "val/parzen_ll": 1.0}])
        for epoch, bonus in ((9, 0.0), (19, 20.0)):
            folder = run / "eval" / f"e{epoch + 1}"
            folder.mkdir(parents=True)
            ckpt = f"{run}/checkpoints/epoch{epoch:04d}-step{1000 * (epoch + 1)}.ckpt"
            (folder / "parzen.json").write_text(
                json.dumps({"ll": ll + bonus, "se": 2.0, "ckpt_path": ckpt, "ema": {"ll": ll + bonus + 5, "se": 3.0}})
            )
            (folder / "quality.json").write_text(
                json.dumps(
                    {
                        "rows": {
                            "raw": {"fid": fid - bonus, "kid": 1.0, "classes_covered": covered},
                            "ema": {"fid": fid - bonus + 10, "kid": 2.0, "classes_covered": covered - 1},
                        }
                    }
                )
            )
    report.main([str(tmp_path / "seed1"), str(tmp_path / "seed2"), "--out", str(tmp_path)])
    text = (tmp_path / "report.md").read_text()
    rows = {
        line.split("|")[2].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| `defaults` | ")
    }
    # epoch 10: Parzen 100, 110 -> 105 +- 5; FID 40, 50 -> 45 +- 5; EMA 5 nats above, FID 10 above, a class fewer
    assert rows["10"][2:] == [
        "2",
        "105.0 +- 5.0 (+- 2.0)",
        "45.0 +- 5.0",
        "1.00 +- 0.00",
        "9.5 +- 0.5",
        "110.0 +- 5.0 (+- 3.0)",
        "55.0 +- 5.0",
        "2.00 +- 0.00",
        "8.5 +- 0.5",
    ]
    assert rows["20"][3] == "125.0 +- 5.0 (+- 2.0)" and rows["20"][4] == "25.0 +- 5.0"
    assert (tmp_path / "report_protocol.png").is_file()


def test_an_override_whose_value_holds_commas_is_one_setting(tmp_path):
    """A list value (nets, callbacks.extra) keeps its commas: the runs of two seeds of it are one setting, named by
    the whole override, and the bookkeeping of callbacks.extra is left out as in the run's name."""
    import report

    layers = "model.generator.layers=[{units:8,activation:relu},{units:9,activation:relu}]"
    extra = "callbacks.extra=[{_target_: a.B, x: 1}, {_target_: a.C}]"
    for seed in (1, 2):
        write_run(tmp_path / f"seed{seed}", [layers, f"seed={seed}", extra], [(10, 20), (30, 40)])
    write_run(tmp_path / "seed3", [f"seed={3}"], [(10, 20), (30, 40)])
    runs = report.find_runs([tmp_path / f"seed{s}" for s in (1, 2, 3)])
    assert [report.overrides(r.folder) for r in runs[:2]] == [[layers, "seed=1"], [layers, "seed=2"]]
    assert {label: len(group) for label, group in report.settings(runs).items()} == {layers: 2, "defaults": 1}


def test_a_report_of_several_run_folders_goes_beside_them_not_into_the_current_folder(tmp_path, monkeypatch):
    """Without --out, the run folders' shared folder gets report.md and report.png; the current folder (the
    repository's root, where the command is typed) gets nothing."""
    import report

    for s in (1, 2):
        write_run(tmp_path / "study" / f"seed{s}", [f"seed={s}"], [(10, 20), (100, 150)], test=100.0 + s)
    typed_in = tmp_path / "repo"
    typed_in.mkdir()
    monkeypatch.chdir(typed_in)
    report.main([str(tmp_path / "study" / "seed1"), str(tmp_path / "study" / "seed2")])
    assert sorted(p.name for p in (tmp_path / "study").iterdir()) == ["report.md", "report.png", "seed1", "seed2"]
    assert list(typed_in.iterdir()) == []
    assert _table_rows((tmp_path / "study" / "report.md").read_text())["`defaults`"][1:3] == ["2", "0"]
