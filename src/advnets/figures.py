"""The paper's figures: samples beside their nearest training example (Fig. 2), z interpolation (Fig. 3)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def display(images: Tensor) -> Tensor:
    """Images in [0, 1] for viewing: data already in [0, 1] is kept, anything else is min-max scaled per image."""
    images = images.detach().float()
    if images.min() >= 0 and images.max() <= 1:
        return images
    flat = images.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return ((flat - lo[:, None]) / (hi - lo).clamp_min(1e-8)[:, None]).view_as(images)


@torch.no_grad()
def nearest_neighbours(queries: Tensor, data: Tensor, chunk: int = 10000) -> Tensor:
    """Index into `data` of each query's nearest row by squared Euclidean distance."""
    q = queries.flatten(1).double()
    best_d = torch.full((len(q),), float("inf"), dtype=torch.float64, device=q.device)
    best_i = torch.zeros(len(q), dtype=torch.long, device=q.device)
    q_sq = (q * q).sum(1, keepdim=True)
    for start in range(0, len(data), chunk):
        block = data[start : start + chunk].flatten(1).to(q.device, torch.float64)
        d = q_sq + (block * block).sum(1)[None, :] - 2 * q @ block.T
        value, index = d.min(1)
        better = value < best_d
        best_d = torch.where(better, value, best_d)
        best_i = torch.where(better, index + start, best_i)
    return best_i


def _grid(rows: list[Tensor], gap_before_last: bool) -> Tensor:
    """Rows of equally shaped images (C, H, W) on a white canvas; optional wide gap before the last column."""
    n_cols = len(rows[0])
    c, h, w = rows[0][0].shape
    pad, gap = 2, (10 if gap_before_last else 2)
    width = n_cols * (w + pad) + pad + (gap - pad if gap_before_last else 0)
    canvas = torch.ones(3, len(rows) * (h + pad) + pad, width)
    for r, row in enumerate(rows):
        for i, image in enumerate(row):
            x = pad + i * (w + pad) + (gap - pad if gap_before_last and i == n_cols - 1 else 0)
            y = pad + r * (h + pad)
            if gap_before_last and i == n_cols - 1:  # a yellow frame marks the training examples
                canvas[2, y - 1 : y + h + 1, x - 1 : x + w + 1] = 0.0
            canvas[:, y : y + h, x : x + w] = image.expand(3, h, w)
    return canvas


@torch.no_grad()
def figure_2(samples: Tensor, train_data: Tensor, columns: int = 6) -> Tensor:
    """Rows of `columns - 1` samples, and in the last column the training example nearest the sample beside it."""
    rows_n = len(samples) // (columns - 1)
    samples = samples[: rows_n * (columns - 1)].view(rows_n, columns - 1, *samples.shape[1:])
    nearest = nearest_neighbours(samples[:, -1], train_data)
    neighbours = train_data[nearest.to(train_data.device)].to(samples.device)
    rows = [list(display(torch.cat([samples[r], neighbours[r : r + 1]])).cpu()) for r in range(rows_n)]
    return _grid(rows, gap_before_last=True)


@torch.no_grad()
def figure_3(generator, z_start: Tensor, z_end: Tensor, steps: int = 10) -> Tensor:
    """Each row: G along the straight line from z_start[r] to z_end[r], `steps` points including both ends."""
    t = torch.linspace(0, 1, steps, device=z_start.device)[None, :, None]
    z = (1 - t) * z_start[:, None, :] + t * z_end[:, None, :]
    images = display(generator(z.reshape(-1, z.shape[-1]))).view(len(z_start), steps, *generator.shape)
    return _grid([list(row.cpu()) for row in images], gap_before_last=False)


def save_figures(module, train_data: Tensor, folder: Path, seed: int = 0, which: str = "raw") -> dict[str, Path]:
    """Write figure_2.png and figure_3.png for `module`'s generator (`which`: raw or ema); returns their paths."""
    from torchvision.utils import save_image

    gen = torch.Generator(device=module.device).manual_seed(seed)
    net = module.generator_for(which)
    was_training = net.training
    net.eval()
    try:
        fig2 = figure_2(module.sample(5 * 5, gen, which=which), train_data)
        fig3 = figure_3(net, module.noise(8, gen), module.noise(8, gen))
    finally:
        net.train(was_training)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"figure_2": folder / "figure_2.png", "figure_3": folder / "figure_3.png"}
    save_image(fig2, paths["figure_2"])
    save_image(fig3, paths["figure_3"])
    return paths
