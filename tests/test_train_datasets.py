"""`python src/train.py experiment=...` on TFD and CIFAR-10 files written by the tests, W&B off."""

import pytest

from conftest import run_script
from test_cifar10 import PER_BATCH, write_cifar
from test_tfd import write_tfd

RUNS = {
    # Narrower hidden layers keep the checkpoint small; the paper's sizes are tested in test_paper_nets.py.
    # TFD with the default per-epoch estimate (500 valid rows for sigma, the next 1000 scored) on a fold whose
    # valid split has 36 rows: it is divided 12 / 24 (a real fold's valid split also holds fewer than 1500).
    "tfd_stage1": [
        "dataset.batch_size=60",
        "model.generator.layers=[{units:256,activation:relu,irange:0.05},"
        "{units:256,activation:sigmoid,irange:0.05,bias:-2.0}]",
    ],
    "cifar10_conv": [
        "dataset.parzen_val_select=10",
        "dataset.parzen_val_points=10",
        "dataset.download=false",
        "dataset.check_md5=false",
        f"dataset.n_train={4 * PER_BATCH}",
        "dataset.batch_size=24",
        "model.generator.deconv.channels=4",
        "model.generator.layers=[{units:256,activation:relu,irange:0.05},{units:400,activation:sigmoid,irange:0.05}]",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("experiment", list(RUNS))
def test_train_command_runs(tmp_path, experiment):
    write_tfd(tmp_path / "TFD" / "TFD_48x48.mat")
    write_cifar(tmp_path)
    proc = run_script(
        "train.py",
        f"experiment={experiment}",
        f"paths.data_dir={tmp_path}",
        "logger=none",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "test_after_fit=false",
        "parzen.val_samples=50",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        *RUNS[experiment],
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
