"""The paper's Parzen protocol written out directly in float64, to check advnets.metrics and eval.py against.

Not the project's code path: no blocking, no float32 screen, no streaming log-sum-exp; the sigma grid is
numpy.logspace(-1, 0, 10) spelled as 10 ** linspace(-1, 0, 10).
"""

from __future__ import annotations

import math

import torch

GRID = 10 ** torch.linspace(-1, 0, 10, dtype=torch.float64)


def log_densities(points: torch.Tensor, centres: torch.Tensor, sigmas) -> torch.Tensor:
    """(len(sigmas), N): log (1/M) sum_j N(x; mu_j, sigma^2 I), every distance in float64."""
    x, mu = points.flatten(1).double(), centres.flatten(1).double()
    d2 = ((x * x).sum(1, keepdim=True) + (mu * mu).sum(1)[None, :] - 2 * x @ mu.T).clamp_(min=0)
    return torch.stack(
        [
            torch.logsumexp(-d2 / (2 * s * s), dim=1)
            - math.log(len(mu))
            - x.shape[1] * math.log(s * math.sqrt(2 * math.pi))
            for s in torch.as_tensor(sigmas, dtype=torch.float64).tolist()
        ]
    )


def protocol(centres: torch.Tensor, select: torch.Tensor, test: torch.Tensor) -> dict:
    """sigma: the grid value with the best mean log-likelihood of `select`; ll, se: mean and std (ddof 0) /
    sqrt(N) over `test`."""
    best = float(GRID[int(log_densities(select, centres, GRID).mean(1).argmax())])
    ll = log_densities(test, centres, [best])[0]
    return {
        "ll": ll.mean().item(),
        "se": (ll.std(unbiased=False) / math.sqrt(len(ll))).item(),
        "sigma": best,
        "n_samples": len(centres),
        "n_points": len(test),
    }
