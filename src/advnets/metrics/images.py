"""What an image run measures and draws: the Parzen estimate, sample quality, sample grids, Figures 2 and 3.

The module hands every validation or test batch to `update`, asks `compute` for the metrics to log at
the end of each validation or test epoch, and calls `draw` at the end of every training epoch and
`finish` when training ends (advnets.metrics.build_evaluation picks this class from dataset.evaluation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor, nn

from advnets.figures import display, save_figures
from advnets.loggers import log_image
from advnets.metrics.parzen import ParzenLogLikelihood
from advnets.metrics.quality import SampleQuality, build_extractor, features_for
from advnets.nets import eval_mode
from advnets.seeds import EVAL_SAMPLES


class ImageEvaluation(nn.Module):
    """Parzen (val/parzen_*, test/parzen_*), FID/KID/IS/coverage, sample grids and Figures 2 and 3.

    For the EMA G too (the `ema_` metrics, samples_ema/), from the same noise: the two differ only by weights.
    """

    def __init__(self, cfg, has_ema: bool):
        super().__init__()
        self.cfg = cfg
        self.parzen = ParzenLogLikelihood()
        self.parzen_ema = ParzenLogLikelihood() if has_ema else None
        self.quality = self._build_quality(cfg.get("quality"))
        self.last_parzen: dict[str, Any] = {}
        self.last_quality: dict[str, Any] = {}

    def _build_quality(self, quality) -> dict[str, SampleQuality]:
        """FID, KID, IS and coverage per stage ("val", "test") whose sample count is set (quality.*_samples).

        A plain dict, not a child module: the feature network's weights are no part of a GAN checkpoint.
        """
        features = features_for(quality.get("features", "auto"), self.cfg.dataset.name) if quality else None
        stages = {"val": quality.get("val_samples"), "test": quality.get("test_samples")} if features else {}
        if not any(stages.values()):
            return {}
        extractor = build_extractor(features, quality.get("inception_weights"))
        subsets = {"val": quality.val_kid_subsets, "test": quality.kid_subsets}
        return {
            stage: SampleQuality(extractor, int(subsets[stage]), int(quality.kid_subset_size), seed=int(self.cfg.seed))
            for stage, n in stages.items()
            if n
        }

    def _metrics(self):
        return [(which, m) for which, m in (("raw", self.parzen), ("ema", self.parzen_ema)) if m is not None]

    def update(self, module, batch: Tensor, dataloader_idx: int) -> None:
        """Loader 0 holds the points sigma is selected on, loader 1 the points it is scored on."""
        for _, metric in self._metrics():
            metric.update(**{"select_points" if dataloader_idx == 0 else "test_points": batch})

    def reset(self) -> None:
        for _, metric in self._metrics():
            metric.reset()

    def compute(self, module, stage: str) -> dict[str, float]:
        n_samples = int(self.cfg.parzen.val_samples if stage == "val" else self.cfg.parzen.test_samples)
        return {**self._parzen(module, stage, n_samples), **self._quality(module, stage)}

    def _parzen(self, module, prefix: str, n_samples: int) -> dict[str, float]:
        # Each rank draws its share of the centres from its own noise; the metric gathers them.
        share = -(-n_samples // module.trainer.world_size)
        logged = {f"{prefix}/g_updates": float(module.g_updates)}  # the x axis of src/report.py's plot
        self.last_parzen = {}
        for which, metric in self._metrics():
            metric.update(centres=module.sample(share, module.sample_generator(EVAL_SAMPLES), which=which))
            result = metric.compute()
            metric.reset()
            name = f"{prefix}/parzen" if which == "raw" else f"{prefix}/ema_parzen"
            logged.update({f"{name}_ll": result.ll, f"{name}_se": result.se, f"{name}_sigma": result.sigma})
            self.last_parzen[which] = result
        return logged

    def _quality(self, module, prefix: str) -> dict[str, float]:
        """{prefix}/fid, kid, kid_std, inception_score, classes_covered, class_kl; {prefix}/ema_* for the EMA G.

        Against the validation images (val) or the test images (test), embedded once per process; each
        rank embeds its share of them and draws its share of the samples, the metrics gather both. The
        samples come from the Parzen centres' noise: the first quality.*_samples of those centres.
        """
        quality = self.quality.get(prefix)
        datamodule = getattr(module.trainer, "datamodule", None)
        if quality is None or datamodule is None:
            return {}
        quality.to(module.device)
        rank, world = module.global_rank, module.trainer.world_size
        if not quality.has_real:
            quality.update_real(datamodule.splits["valid" if prefix == "val" else "test"][rank::world])
        share = -(-int(self.cfg.quality[f"{prefix}_samples"]) // world)
        logged, self.last_quality = {}, {}
        for which in module.generators:
            quality.update_fake(module.sample(share, module.sample_generator(EVAL_SAMPLES), which=which))
            self.last_quality[which] = result = quality.compute()
            quality.reset()
            logged.update(result.logged(f"{prefix}/" if which == "raw" else f"{prefix}/ema_"))
        return logged

    @rank_zero_only
    def draw(self, module) -> None:
        """The 10x10 grid of G(fixed_z): a PNG in the run folder and the `samples` image in W&B.

        With model.ema_decay set, the EMA G's grid beside it: samples_ema/ and `ema_samples`.
        """
        from torchvision.utils import make_grid, save_image

        for which in module.generators:
            with eval_mode(module.generator_for(which)) as net, torch.no_grad():
                images = net(module.fixed_z)
            grid = make_grid(display(images), nrow=10, padding=2, pad_value=1.0)
            folder = Path(module.trainer.default_root_dir) / ("samples" if which == "raw" else "samples_ema")
            folder.mkdir(parents=True, exist_ok=True)
            save_image(grid, folder / f"epoch_{module.current_epoch + 1:04d}.png")
            log_image(
                module,
                "samples" if which == "raw" else "ema_samples",
                [grid.cpu()],
                caption=[f"epoch {module.current_epoch + 1}"],
            )

    @rank_zero_only
    def finish(self, module) -> None:
        """The paper's Figures 2 and 3 for the final generator (the EMA G when there is one): PNGs, W&B images."""
        datamodule = module.trainer.datamodule
        if datamodule is None:  # fitted on bare dataloaders: no training set to find neighbours in
            return
        folder = Path(module.trainer.default_root_dir) / "figures"
        paths = save_figures(
            module, datamodule.splits["train"], folder, seed=int(self.cfg.seed), which=module.generators[-1]
        )
        for key, path in paths.items():
            log_image(module, key, [str(path)])
