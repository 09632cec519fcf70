"""The published numbers: the parzen.json that src/eval.py writes for a fixed checkpoint, against the paper's
protocol computed directly (tests/parzen_reference.py) from the checkpoint's generators and the split rows
read without advnets: MNIST (G and its EMA), and a TFD file fold by fold.

The sigma grid is coarse (10 values), so many choices of selection rows pick the same sigma and give the same
numbers: the rows eval.py hands to the protocol are therefore also compared with the expected rows directly.
"""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from advnets.data import EpochBatchSampler, TensorBatches
from advnets.module import GAN
from conftest import REPO, bare_trainer, compose
from parzen_reference import protocol
from test_tfd import write_tfd

N_SAMPLES = 200


def evaluate(*overrides: str, output_dir):
    """src/eval.py's run() on conf/eval.yaml composed with `overrides`, as its main() runs it: (parzen.json,
    the (centres, select, test) of every protocol call it made)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    import advnets.metrics

    spec = importlib.util.spec_from_file_location("advnets_eval_script", REPO / "src" / "eval.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("eval", overrides=["logger=none", "device=cpu", *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    calls = []
    real = advnets.metrics.parzen_protocol

    def spy(centres, select, test, **kwargs):
        calls.append((centres.clone(), select.clone(), test.clone()))
        return real(centres, select, test, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(advnets.metrics, "parzen_protocol", spy)
        script.run(cfg)
    return json.loads((output_dir / "parzen.json").read_text()), calls


def checkpoint(path, shape, *overrides: str):
    """A checkpoint of src/train.py's module after one step on random images; then G's weights are moved off
    its EMA's, so that the two generators give clearly different numbers."""
    cfg = compose("logger=none", *overrides, output_dir=path.parent)
    torch.manual_seed(0)
    module = GAN(OmegaConf.to_container(cfg, resolve=True))
    x = torch.rand(8, *shape, generator=torch.Generator().manual_seed(1))
    trainer = bare_trainer(path.parent)
    trainer.fit(module, train_dataloaders=TensorBatches(x, EpochBatchSampler(8, 8, seed=0, shuffle=False)))
    with torch.no_grad():
        for p in module.generator.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    trainer.save_checkpoint(path)
    return path


def centres(ckpt, noise) -> dict:
    """The checkpoint's generators on `noise`: G(z) and, when it has one, EMA-G(z), in one batch each."""
    module = GAN.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True).eval()
    with torch.no_grad():
        out = {"raw": module.generator(noise)}
        if module.generator_ema is not None:
            out["ema"] = module.generator_ema.generator(noise)
    return out


def assert_row(row: dict, expected: dict) -> None:
    assert (row["n_samples"], row["n_points"]) == (expected["n_samples"], expected["n_points"])
    assert math.isclose(row["sigma"], expected["sigma"], rel_tol=1e-12)
    assert math.isclose(row["ll"], expected["ll"], rel_tol=1e-9)
    assert math.isclose(row["se"], expected["se"], rel_tol=1e-7)


@pytest.mark.slow
def test_mnist_parzen_json_is_the_protocol_on_the_split_rows(data_dir, tmp_path):
    """MNIST, G and its EMA: sigma picked on training rows 50,000..50,999 (the first 1,000 validation images),
    the log-likelihood of the 10,000 test images, centres G(z) for z ~ U(-sqrt 3, sqrt 3)^100 from
    torch.Generator().manual_seed(eval's seed); the top-level numbers are G's, the `ema` block the EMA's."""
    from torchvision.datasets import MNIST

    ckpt = checkpoint(
        tmp_path / "mnist.ckpt",
        (1, 28, 28),
        f"paths.data_dir={data_dir}",
        "model.ema_decay=0.5",
        "model.generator.layers=[{units:32,activation:relu,irange:0.05}]",
        "model.discriminator.layers=[{units:8,pieces:2,irange:0.005}]",
    )
    report, calls = evaluate(
        f"ckpt_path={ckpt}",
        f"paths.data_dir={data_dir}",
        f"n_samples={N_SAMPLES}",
        "seed=3",
        output_dir=tmp_path / "eval",
    )
    z = (torch.rand(N_SAMPLES, 100, generator=torch.Generator().manual_seed(3)) * 2 - 1) * math.sqrt(3)
    select = MNIST(data_dir, train=True).data[50000:51000].float().unsqueeze(1) / 255
    test = MNIST(data_dir, train=False).data.float().unsqueeze(1) / 255
    generated = centres(ckpt, z)
    assert len(calls) == 2
    for (got_centres, got_select, got_test), which in zip(calls, ("raw", "ema")):
        assert torch.equal(got_centres, generated[which]) and torch.equal(got_select, select)
        assert torch.equal(got_test, test)
    expected = {which: protocol(c, select, test) for which, c in generated.items()}
    assert abs(expected["raw"]["ll"] - expected["ema"]["ll"]) > 1.0  # the two rows cannot be mistaken
    assert report["dataset"] == "mnist" and report["ckpt_path"] == str(ckpt)
    assert_row(report, expected["raw"])
    assert report["ema"]["decay"] == 0.5
    assert_row(report["ema"], expected["ema"])


@pytest.mark.slow
def test_tfd_parzen_json_is_the_protocol_on_every_fold(tmp_path):
    """TFD, per fold f = 0..4: sigma picked on the rows with folds[:, f] == 2 (valid), scored on those with
    folds[:, f] == 3 (test), the same centres G(z), z ~ N(0, I)^100, in every fold; the reported figure is
    the mean over folds and its standard error across folds (std, ddof 0, / sqrt 5). No EMA: no `ema` block."""
    mat = write_tfd(tmp_path / "TFD" / "TFD_48x48.mat")
    ckpt = checkpoint(
        tmp_path / "tfd.ckpt",
        (1, 48, 48),
        f"paths.data_dir={tmp_path}",
        "dataset=tfd",
        "model=maxout",
        "model.ema_decay=null",
        "model.generator.layers=[{units:128,activation:relu,irange:0.05}]",
        "model.discriminator.layers=[{units:8,pieces:2,irange:0.005}]",
    )
    report, calls = evaluate(
        f"ckpt_path={ckpt}", f"paths.data_dir={tmp_path}", f"n_samples={N_SAMPLES}", output_dir=tmp_path / "eval"
    )
    g = centres(ckpt, torch.randn(N_SAMPLES, 100, generator=torch.Generator().manual_seed(0)))
    assert set(g) == {"raw"} and "ema" not in report
    images = torch.from_numpy(mat["images"].astype(np.float32)).unsqueeze(1) / 255
    folds = []
    assert len(calls) == 5
    for f, (got_centres, got_select, got_test) in enumerate(calls):
        column = torch.from_numpy(mat["folds"][:, f].astype(np.int64))
        assert torch.equal(got_centres, g["raw"])
        assert torch.equal(got_select, images[column == 2]) and torch.equal(got_test, images[column == 3])
        folds.append(protocol(g["raw"], images[column == 2], images[column == 3]))
    assert [r["fold"] for r in report["folds"]] == [0, 1, 2, 3, 4]
    for row, expected in zip(report["folds"], folds):
        assert_row({**row, "n_samples": N_SAMPLES}, expected)
    lls = [r["ll"] for r in folds]
    mean = sum(lls) / 5
    assert len(set(lls)) == 5  # each fold scores its own rows
    assert math.isclose(report["ll"], mean, rel_tol=1e-9)
    assert math.isclose(report["se"], math.sqrt(sum((x - mean) ** 2 for x in lls) / 5) / math.sqrt(5), rel_tol=1e-6)
    assert report["sigma"] == pytest.approx([r["sigma"] for r in folds], rel=1e-12)
    assert (report["n_samples"], report["n_points"]) == (N_SAMPLES, sum(r["n_points"] for r in folds))
