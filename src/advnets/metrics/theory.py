"""The paper's section 4 measured on the real line: p_g, D, D*, JSD(p_data || p_g), C(G) and V(D, G).

Everything is computed on the bins of a fixed grid (dataset.grid), as masses per bin in float64:
- p_data: exact bin masses from the mixture's CDF (the mass beyond the grid counts in the end bins);
- p_g: the histogram of n samples of G (dataset.theory_val_samples per validation epoch,
  theory_test_samples at the end), samples beyond the grid counted in the end bins. Its sampling
  error puts a floor under the JSD of about (occupied bins) / (8 n) nats (chi^2 / 8 for small
  differences): 2.5e-4 for 400 bins and 200,000 samples;
- D: D's output at the bin centres, dropout off;
- D* = p_data / (p_data + p_g) per bin (Proposition 1), undefined (nan) where both are 0.
Sums over bins are then the quadrature of the integrals: with masses P, Q,
  JSD = 1/2 sum P log(2P / (P + Q)) + 1/2 sum Q log(2Q / (P + Q)),
  V(D, G) = sum P log D + sum Q log(1 - D),  C(G) = V(D*, G) = -log 4 + 2 JSD (Theorem 1).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from pytorch_lightning.utilities import rank_zero_only
from torch import Tensor, nn

from advnets.data.line import GaussianMixture, grid_edges
from advnets.loggers import log_image
from advnets.nets import eval_mode

LOG4 = math.log(4.0)


def histogram_masses(x: Tensor, edges: Tensor) -> Tensor:
    """The fraction of the samples x in each bin of `edges`; samples beyond the grid count in its end bins."""
    x = x.detach().reshape(-1).double().cpu()
    index = torch.bucketize(x, edges[1:-1].cpu(), right=True)  # 0 .. bins-1; beyond the ends: the end bins
    return torch.bincount(index, minlength=len(edges) - 1).double() / len(x)


def optimal_discriminator(p_data: Tensor, p_g: Tensor) -> Tensor:
    """Proposition 1: D*(x) = p_data(x) / (p_data(x) + p_g(x)); nan where both are 0."""
    total = p_data + p_g
    return torch.where(total > 0, p_data / total.clamp_min(1e-300), torch.full_like(total, math.nan))


def _xlogy(x: Tensor, y: Tensor) -> Tensor:
    """x log y with 0 log 0 = 0 (a bin without mass adds nothing)."""
    return torch.where(x > 0, x * torch.log(y.clamp_min(1e-300)), torch.zeros_like(x))


def jensen_shannon(p: Tensor, q: Tensor) -> float:
    """JSD(p || q) in nats between two distributions given as masses on the same bins."""
    m = (p + q) / 2
    return float(0.5 * _xlogy(p, p / m.clamp_min(1e-300)).sum() + 0.5 * _xlogy(q, q / m.clamp_min(1e-300)).sum())


def value(d: Tensor, p_data: Tensor, p_g: Tensor) -> float:
    """V(D, G) = E_p_data log D(x) + E_p_g log(1 - D(x)), with D given per bin and p_data, p_g as masses."""
    return float(_xlogy(p_data, d).sum() + _xlogy(p_g, 1 - d).sum())


def theory_metrics(p_data: Tensor, p_g: Tensor, d: Tensor) -> dict[str, float]:
    """The logged quantities from bin masses p_data, p_g and D per bin (all float64).

    jsd: JSD(p_data || p_g); c_g: C(G) = V(D*, G); c_g_minus_theorem: C(G) - (-log 4 + 2 JSD), which
    Theorem 1 says is 0 (a check of the quadrature: it is 0 up to rounding); v_d: V(D, G) for the
    trained D; v_gap: C(G) - V(D, G) >= 0, how far D is from maximising V; d_distance:
    E_{(p_data + p_g)/2} |D - D*|, how far D is from D*.
    """
    d_star = optimal_discriminator(p_data, p_g)
    jsd = jensen_shannon(p_data, p_g)
    c_g = value(torch.nan_to_num(d_star, nan=0.5), p_data, p_g)
    v_d = value(d, p_data, p_g)
    weight = (p_data + p_g) / 2
    distance = float((weight * torch.nan_to_num((d - d_star).abs(), nan=0.0)).sum())
    return {
        "jsd": jsd,
        "c_g": c_g,
        "c_g_minus_theorem": c_g - (-LOG4 + 2 * jsd),
        "v_d": v_d,
        "v_gap": c_g - v_d,
        "d_distance": distance,
    }


class TheoryEvaluation(nn.Module):
    """Per validation epoch: the metrics above as val/*, the arrays as theory/epoch_NNNN.csv, and Figure 1.

    At the end of training Figure 1's frames become figures/figure_1.gif; the test stage logs test/*
    from dataset.theory_test_samples samples.
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        data = cfg.dataset
        self.density = GaussianMixture(data.density)
        self.edges = grid_edges(data.grid)
        self.centres = (self.edges[:-1] + self.edges[1:]) / 2
        self.width = float(self.edges[1] - self.edges[0])
        self.p_data = self.density.bin_masses(self.edges)
        self.samples = {"val": int(data.theory_val_samples), "test": int(data.theory_test_samples)}
        self.last: dict[str, Tensor] = {}  # the latest arrays, for Figure 1
        self.last_metrics: dict[str, float] = {}
        self._epoch = -1  # the epoch `last` is from

    def update(self, module, batch: Tensor, dataloader_idx: int) -> None:
        """Nothing to gather: p_data is known, and D is read on the grid in `compute`."""

    def reset(self) -> None:
        pass

    @torch.no_grad()
    def compute(self, module, stage: str) -> dict[str, float]:
        # The same G samples on every rank (G is the same): every rank logs the same numbers.
        gen = torch.Generator().manual_seed(int(self.cfg.seed) * 1_000_003 + module.g_updates)  # CPU: any device
        x = module.sample(self.samples[stage], gen)
        p_g = histogram_masses(x, self.edges)
        with eval_mode(module.discriminator) as net:
            d = torch.sigmoid(net(self.centres.float()[:, None].to(module.device))).double().cpu()
        metrics = theory_metrics(self.p_data, p_g, d)
        metrics["pg_beyond_grid"] = float(((x < self.edges[0]) | (x > self.edges[-1])).double().mean())
        self.last = {
            "x": self.centres,
            "p_data": self.p_data / self.width,
            "p_g": p_g / self.width,
            "d": d,
            "d_star": optimal_discriminator(self.p_data, p_g),
        }
        self.last_metrics = metrics
        self._epoch = module.current_epoch
        logged = {f"{stage}/{k}": v for k, v in metrics.items()}
        logged[f"{stage}/g_updates"] = float(module.g_updates)
        if stage == "val":
            self._log_arrays(module)
        return logged

    @rank_zero_only
    def _log_arrays(self, module) -> None:
        """x, p_data, p_g (densities), D and D* on the grid: theory/epoch_NNNN.csv and the W&B table `theory`."""
        columns = ["x", "p_data", "p_g", "d", "d_star"]
        rows = torch.stack([self.last[k] for k in columns], 1).tolist()
        folder = Path(module.trainer.default_root_dir) / "theory"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"epoch_{module.current_epoch + 1:04d}.csv", "w") as f:
            f.write(",".join(columns) + "\n")
            f.writelines(",".join(f"{v:.6g}" for v in row) + "\n" for row in rows)
        for logger in module.loggers:
            if hasattr(logger, "log_table"):
                logger.log_table(key="theory", columns=columns, data=rows, step=module.trainer.global_step)

    @rank_zero_only
    def draw(self, module) -> None:
        """Figure 1 for this epoch (after its validation): theory/figure_1/epoch_NNNN.png and W&B `figure_1`."""
        from advnets.figures import figure_1

        if not self.last or self._epoch != module.current_epoch:  # no validation this epoch
            return
        z, x_of_z = None, None
        if int(self.cfg.model.noise_dim) == 1:
            z = torch.linspace(-1, 1, 25)[:, None] * (math.sqrt(3.0) if self.cfg.model.noise == "uniform" else 2.0)
            with torch.no_grad():
                x_of_z = module.generator_for("raw")(z.to(module.device)).reshape(-1).cpu()
        path = (
            Path(module.trainer.default_root_dir) / "theory" / "figure_1" / f"epoch_{module.current_epoch + 1:04d}.png"
        )
        figure_1(
            path,
            self.last,
            z,
            x_of_z,
            self.cfg.dataset.figure,
            title=f"epoch {module.current_epoch + 1}, {module.g_updates} G updates: "
            f"JSD {self.last_metrics['jsd']:.4f}, E|D - D*| {self.last_metrics['d_distance']:.3f}",
        )
        log_image(module, "figure_1", [str(path)], caption=[f"epoch {module.current_epoch + 1}"])

    @rank_zero_only
    def finish(self, module) -> None:
        """The run's Figure 1 frames as one animation: figures/figure_1.gif."""
        from PIL import Image

        run = Path(module.trainer.default_root_dir)
        paths = sorted((run / "theory" / "figure_1").glob("epoch_*.png"))  # a resumed run's earlier frames too
        if not paths:
            return
        (run / "figures").mkdir(parents=True, exist_ok=True)
        frames = [Image.open(p).convert("P", palette=Image.ADAPTIVE) for p in paths]
        frames[0].save(run / "figures" / "figure_1.gif", save_all=True, append_images=frames[1:], duration=250, loop=0)
