"""The paper's figures: samples beside their nearest training example (Fig. 2), z interpolation (Fig. 3)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from advnets.nets import eval_mode


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

    gen = torch.Generator().manual_seed(seed)  # CPU: the same figures on every device
    with eval_mode(module.generator_for(which)) as net:
        fig2 = figure_2(module.sample(5 * 5, gen, which=which), train_data)
        fig3 = figure_3(net, module.noise(8, gen), module.noise(8, gen))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"figure_2": folder / "figure_2.png", "figure_3": folder / "figure_3.png"}
    save_image(fig2, paths["figure_2"])
    save_image(fig3, paths["figure_3"])
    return paths


def figure_1(
    path: Path, arrays: dict[str, Tensor], z: Tensor | None, x_of_z: Tensor | None, window, title: str = ""
) -> None:
    """The paper's Figure 1 from a run: p_data (black dots), p_g (green), D (blue dashes), D* (grey), and
    below them the map x = G(z) from the z line to the x line (arrows).

    `arrays` holds x (bin centres), p_data and p_g (densities), d and d_star on x; `window` {low, high}
    is the x range drawn. The z line is drawn to the width of the x range (z's own scale is marked).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = float(window["low"]), float(window["high"])
    x = arrays["x"].numpy()
    keep = (x >= low) & (x <= high)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 4.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    dots = max(1, int(keep.sum()) // 60)
    top.plot(x[keep][::dots], arrays["p_data"].numpy()[keep][::dots], "k.", markersize=3, label="p_data")
    top.plot(x[keep], arrays["p_g"].numpy()[keep], "-", color="green", linewidth=1.2, label="p_g")
    ceiling = max(1.05, 1.1 * float(arrays["p_data"].max()), 1.1 * float(arrays["p_g"][torch.from_numpy(keep)].max()))
    top.plot(x[keep], arrays["d_star"].numpy()[keep], "-", color="0.6", linewidth=1.0, label="D*")
    top.plot(x[keep], arrays["d"].numpy()[keep], "--", color="blue", linewidth=1.2, label="D")
    top.set_ylim(0, ceiling)
    top.set_xlim(low, high)
    top.legend(fontsize=7, loc="upper left", ncol=4)
    top.set_title(title, fontsize=8)
    bottom.axhline(1.0, color="black", linewidth=0.8)
    bottom.axhline(0.0, color="black", linewidth=0.8)
    if z is not None and x_of_z is not None:
        z = z.reshape(-1)
        z_pos = low + (z - z.min()) / (z.max() - z.min()) * (high - low)
        for zp, xg in zip(z_pos.tolist(), x_of_z.tolist()):
            bottom.annotate(
                "",
                xy=(min(max(xg, low), high), 1.0),
                xytext=(zp, 0.0),
                arrowprops={"arrowstyle": "->", "linewidth": 0.6, "color": "0.3"},
            )
        bottom.text(low, -0.35, f"z: {float(z.min()):.2f}", fontsize=7)
        bottom.text(high, -0.35, f"{float(z.max()):.2f}", fontsize=7, ha="right")
    bottom.set_ylim(-0.5, 1.2)
    bottom.set_yticks([0, 1], ["z", "x"])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
