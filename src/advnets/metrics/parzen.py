"""Parzen-window (Gaussian kernel density) log-likelihood, as in Goodfellow et al. 2014, Table 1.

For a point ``x`` and centres ``mu_1..mu_M`` (e.g. 10,000 samples of a generator)::

    log p(x) = logmeanexp_j( -||x - mu_j||^2 / (2 sigma^2) ) - d * log(sigma * sqrt(2 pi))

with ``d`` the dimension. The protocol of the paper (the official ``parzen_ll.py``) picks
``sigma`` on the grid ``logspace(-1, 0, 10)`` by the mean log-likelihood of a validation set
and reports the mean over the test set with its standard error ``std / sqrt(N)`` (ddof 0).

Exactness and speed
-------------------
Squared distances use the expansion ``||x||^2 + ||mu||^2 - 2 x.mu``, blocked over points and
centres (``chunk_size`` x ``chunk_size`` at most, so memory is bounded whatever the sizes), with
a streaming log-sum-exp across centre blocks that is shared by every sigma: its reference is the
running minimum distance of each point, the same for all sigmas, so each distance block is
computed once and serves every sigma.

Kernel terms below ``exp(-_TAIL)`` (``_TAIL = 50``) times the largest one may be left out: they
add at most ``M exp(-50)`` relative to the sum (2e-18 for M = 10,000), far below float64
resolution. Two ways to get the distances that matter exact to float64:

* dense: the block's matmul in float64. A sigma for which few entries of the block are within
  ``_TAIL * 2 sigma^2`` of the running minimum is summed over those entries only (on MNIST's
  grid: the small sigmas), the others over the whole block.
* screened (CPU, float32 matmul precision "highest"): the block's matmul in float32, with a
  rigorous bound ``eps`` on its error. A pair whose float32 distance exceeds the row's smallest
  by more than ``_TAIL * 2 sigma_max^2 + 2 eps`` is left out; the remaining pairs (typically a
  handful per point at the sigma picked on MNIST) get their distance recomputed exactly in
  float64 as ``sum((x - mu)^2)``. When a block has too many such pairs (a large sigma), the
  call goes on with the dense path.

The float32 screen halves the cost of the matmul, which dominates the full MNIST protocol
(10,000 centres, 1,000 + 10,000 points, d = 784: about 2 s on 2 CPU cores). Results agree with
a float64 brute force to ~1e-13 relative and do not depend on ``chunk_size`` beyond rounding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torchmetrics
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

__all__ = [
    "SIGMAS",
    "ParzenResult",
    "parzen_log_likelihood",
    "parzen_sigma_search",
    "parzen_protocol",
    "ParzenLogLikelihood",
]

SIGMAS = torch.logspace(-1, 0, 10, dtype=torch.float64)
"""The paper's sigma grid: ``numpy.logspace(-1, 0, 10)`` (0.1 ... 1.0)."""

DEFAULT_CHUNK_SIZE = 2048

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# Kernel terms smaller than exp(-_TAIL) times the largest one are dropped by the float32 screen.
_TAIL = 50.0
# Above this fraction of candidate pairs in a block, the screen is slower than a float64 matmul.
_MAX_CANDIDATE_FRACTION = 0.05
# Pairs whose exact distance is recomputed at once (32 MiB of float64 at most).
_PAIR_ELEMENTS = 1 << 22
_U32 = 2.0**-24  # unit roundoff of float32

SigmaLike = float | Tensor | Sequence[float]


@dataclass(frozen=True)
class ParzenResult:
    """Outcome of the Parzen protocol.

    ll: mean log-likelihood (nats) of the test points; se: its standard error std/sqrt(N)
    (ddof 0); sigma: the bandwidth chosen on the selection points; n_samples: number of
    centres; n_points: number of test points.
    """

    ll: float
    se: float
    sigma: float
    n_samples: int
    n_points: int


def _as_rows(x: Any, name: str) -> Tensor:
    """(N, ...) -> (N, d): every row flattened to a vector; the first axis indexes points."""
    x = torch.as_tensor(x)
    if x.ndim == 0:
        raise ValueError(f"{name} must have a leading axis of points, got a scalar")
    if not torch.is_floating_point(x):
        x = x.to(torch.float64)
    return x.flatten(1) if x.ndim > 1 else x.unsqueeze(1)


def _as_sigmas(sigmas: SigmaLike) -> Tensor:
    s = torch.as_tensor(sigmas, dtype=torch.float64).detach().reshape(-1).cpu()
    if s.numel() == 0:
        raise ValueError("need at least one sigma")
    if not bool(torch.all(torch.isfinite(s) & (s > 0))):
        raise ValueError(f"sigmas must be finite and positive, got {s.tolist()}")
    return s


def _check_chunk(chunk_size: int) -> int:
    chunk_size = int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return chunk_size


def _cpu_float32_matmul_is_ieee() -> bool:
    """False where float32 CPU matmuls may run in TF32/bf16 (precision "high"/"medium")."""
    try:  # torch >= 2.9: per-backend settings, "none" = inherited (IEEE at the root)
        chain = [
            torch.backends.mkldnn.matmul.fp32_precision,
            torch.backends.mkldnn.fp32_precision,
            torch.backends.fp32_precision,
        ]
    except AttributeError:
        chain = None
    if chain is not None:
        for setting in chain:
            if setting != "none":
                return setting == "ieee"
        return True
    try:
        return torch.get_float32_matmul_precision() == "highest"
    except RuntimeError:  # mixed legacy / new API settings: play safe
        return False


def _can_screen(device: torch.device) -> bool:
    # The float32 error bound assumes IEEE float32 products and sums. On GPUs the float64
    # matmul is fast enough (and TF32 is common there): keep them dense.
    return device.type == "cpu" and _cpu_float32_matmul_is_ieee()


class _Block:
    """Streaming log-sum-exp state of one block of points, shared by all sigmas.

    ``run_min[i]`` is the smallest exact squared distance seen so far for point i and
    ``sums[s, i] = sum_j exp(c_s (D_ij - run_min[i]))`` with ``c_s = -1 / (2 sigma_s^2)``.
    """

    def __init__(self, x: Tensor, coef: list[float]) -> None:
        self.x64 = x.to(torch.float64)
        self.x32 = x.to(torch.float32)
        self.norm = (self.x64 * self.x64).sum(1)
        self.coef = coef
        n = x.shape[0]
        self.run_min = torch.full((n,), math.inf, dtype=torch.float64, device=x.device)
        self.bound = self.run_min.clone()  # upper bound on the true minimum (screen only)
        self.sums = torch.zeros(len(coef), n, dtype=torch.float64, device=x.device)

    def _rebase(self, new_min: Tensor) -> None:
        shift = self.run_min - new_min  # >= 0; +inf on the first block (sums are 0 there)
        for s, c in enumerate(self.coef):
            self.sums[s].mul_(torch.exp(shift * c))
        self.run_min = new_min

    def dense(self, mu: Tensor, mu_norm: Tensor) -> None:
        """Exact float64 distances of the whole block, every sigma from the same matrix."""
        dist = torch.addmm(mu_norm.unsqueeze(0), self.x64, mu.to(torch.float64).T, alpha=-2.0)
        dist.add_(self.norm.unsqueeze(1)).clamp_(min=0.0)
        self._rebase(torch.minimum(self.run_min, dist.amin(1)))
        excess = dist.sub_(self.run_min.unsqueeze(1))  # D - running min: >= 0
        # A sigma whose kernel is below exp(-_TAIL) (relative to the largest term) on all but a
        # few entries is summed over those entries only; the others over the whole block.
        few = self._few_entries(excess)
        if few:
            rows, cols = torch.nonzero(excess <= _TAIL / -max(self.coef[s] for s in few), as_tuple=True)
            kept = excess[rows, cols]
            for s in few:
                self.sums[s].index_add_(0, rows, torch.exp(kept * self.coef[s]))
        buf = torch.empty_like(excess)
        for s, c in enumerate(self.coef):
            if s not in few:
                torch.mul(excess, c, out=buf).exp_()
                self.sums[s].add_(buf.sum(1))

    def _few_entries(self, excess: Tensor) -> set[int]:
        """Sigmas for which, on a sample of rows, few entries are within exp(-_TAIL)."""
        sample = excess[:: max(1, excess.shape[0] // 8)]
        return {
            s
            for s, c in enumerate(self.coef)
            if float((sample <= _TAIL / -c).sum()) <= _MAX_CANDIDATE_FRACTION * sample.numel()
        }

    def screened(self, mu: Tensor, mu_norm: Tensor, tail: float) -> bool:
        """Float32 screen, exact float64 distances for the candidates; False: too many of them."""
        # f = ||mu||^2 - 2 x.mu = D - ||x||^2 in float32 (the row constant ||x||^2 is left out).
        f32 = torch.addmm(mu_norm.to(torch.float32).unsqueeze(0), self.x32, mu.to(torch.float32).T, alpha=-2.0)
        # |f32 - f| <= (d + 10) u (||x||^2 + ||mu||^2) whatever the summation order: d u 2 ||x|| ||mu||
        # for the dot product, the rest for the additions, the float32 norms, a float64 ->
        # float32 rounding of the inputs and of the threshold below. Doubled for safety.
        dim = self.x64.shape[1]
        eps = 2.0 * (dim + 10) * _U32 * (self.norm + mu_norm.max())
        self.bound = torch.minimum(self.bound, f32.amin(1).to(torch.float64) + self.norm + eps)
        # D_ij - min_k D_ik >= D_ij - bound_i >= f32_ij + ||x_i||^2 - eps_i - bound_i: the pair
        # is dropped when that is > tail (its kernel term is < exp(-_TAIL) times the largest).
        limit = (self.bound + eps + tail - self.norm).to(torch.float32)
        rows, cols = torch.nonzero(f32 <= limit.unsqueeze(1), as_tuple=True)
        del f32
        n_cand = rows.numel()
        if n_cand > _MAX_CANDIDATE_FRACTION * self.x64.shape[0] * mu.shape[0]:
            return False
        exact = torch.empty(n_cand, dtype=torch.float64, device=self.x64.device)
        step = max(1, _PAIR_ELEMENTS // max(dim, 1))
        for k in range(0, n_cand, step):
            diff = self.x64.index_select(0, rows[k : k + step])
            diff.sub_(mu.index_select(0, cols[k : k + step]))  # in float64
            exact[k : k + step] = torch.linalg.vector_norm(diff, dim=1).square_()
        blk_min = torch.full_like(self.run_min, math.inf)
        blk_min.scatter_reduce_(0, rows, exact, reduce="amin")
        self._rebase(torch.minimum(self.run_min, blk_min))
        excess = exact - self.run_min[rows]
        for s, c in enumerate(self.coef):
            self.sums[s].index_add_(0, rows, torch.exp(excess * c))
        return True

    def log_sums(self) -> Tensor:
        coef = torch.tensor(self.coef, dtype=torch.float64, device=self.sums.device)
        return coef.unsqueeze(1) * self.run_min.unsqueeze(0) + torch.log(self.sums)


def _parzen(points: Any, centres: Any, sigmas: SigmaLike, chunk_size: int) -> Tensor:
    """(len(sigmas), N) float64 log-likelihoods; distances computed once for all sigmas."""
    sigmas = _as_sigmas(sigmas)
    x = _as_rows(points, "points")
    mu = _as_rows(centres, "centres")
    chunk = _check_chunk(chunk_size)
    n, dim = x.shape
    m = mu.shape[0]
    if mu.shape[1] != dim:
        raise ValueError(f"points have dimension {dim} but centres have {mu.shape[1]}")
    if m == 0:
        raise ValueError("need at least one centre")
    device = x.device
    coef = (-0.5 / sigmas**2).tolist()
    # Threshold (in squared distance) of the float32 screen: exp(-_TAIL) at the largest sigma.
    tail = _TAIL * 2.0 * float(sigmas.max()) ** 2
    screen = _can_screen(device)
    out = torch.empty(len(coef), n, dtype=torch.float64, device=device)
    with torch.no_grad():
        mu_norm = torch.cat([b.to(device=device, dtype=torch.float64).square().sum(1) for b in mu.split(chunk)])
        for p0 in range(0, n, chunk):
            block = _Block(x[p0 : p0 + chunk], coef)
            for c0 in range(0, m, chunk):
                mu_blk = mu[c0 : c0 + chunk].to(device)
                if screen and block.screened(mu_blk, mu_norm[c0 : c0 + chunk], tail):
                    continue
                screen = False  # too many candidates: dense for the rest of this call
                block.dense(mu_blk, mu_norm[c0 : c0 + chunk])
            out[:, p0 : p0 + chunk] = block.log_sums()
        norm = math.log(m) + dim * (torch.log(sigmas) + _HALF_LOG_2PI)
        out -= norm.to(device).unsqueeze(1)
    return out


def parzen_log_likelihood(
    points: Tensor, centres: Tensor, sigma: float | Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Tensor:
    """Per-point Parzen log-likelihood log p(x), float64 of shape (N,), on ``points``' device.

    ``points`` (N, ...) and ``centres`` (M, ...) are flattened to rows; any float dtype.
    """
    sig = _as_sigmas(sigma)
    if sig.numel() != 1:
        raise ValueError("parzen_log_likelihood takes one sigma; see parzen_sigma_search")
    return _parzen(points, centres, sig, chunk_size)[0]


def parzen_sigma_search(
    points: Tensor,
    centres: Tensor,
    sigmas: SigmaLike = SIGMAS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """Per-sigma, per-point log p(x): float64 (len(sigmas), N). Distances computed once."""
    return _parzen(points, centres, _as_sigmas(sigmas), chunk_size)


def parzen_protocol(
    centres: Tensor,
    select_points: Tensor,
    test_points: Tensor,
    sigmas: SigmaLike = SIGMAS,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> ParzenResult:
    """The paper's protocol: sigma maximising the mean log p of ``select_points`` (first grid
    value on ties), then the mean log p of ``test_points`` and its standard error (ddof 0)."""
    grid = _as_sigmas(sigmas)
    test = _as_rows(test_points, "test_points")
    if _as_rows(select_points, "select_points").shape[0] == 0 or test.shape[0] == 0:
        raise ValueError("need at least one selection point and one test point")
    select_ll = parzen_sigma_search(select_points, centres, grid, chunk_size).mean(1)
    if bool(torch.isnan(select_ll).any()):
        raise ValueError("NaN log-likelihood on the selection points (NaN in the inputs?)")
    best = float(grid[int(torch.argmax(select_ll.cpu()))])
    ll = parzen_log_likelihood(test, centres, best, chunk_size)
    return ParzenResult(
        ll=float(ll.mean()),
        se=float(ll.std(correction=0) / math.sqrt(ll.numel())),
        sigma=best,
        n_samples=int(_as_rows(centres, "centres").shape[0]),
        n_points=int(ll.numel()),
    )


class _Opaque:
    """Hides the frozen ParzenResult from torchmetrics' ``apply_to_collection`` (which tries
    to rebuild dataclasses field by field and refuses frozen ones)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class ParzenLogLikelihood(torchmetrics.Metric):
    """Parzen-window protocol as a torchmetrics Metric.

    ``update(centres=..., select_points=..., test_points=...)`` appends whatever is given
    (each row flattened to a vector); ``compute()`` runs :func:`parzen_protocol` on the
    concatenated states (gathered across processes with ``cat``) and returns a
    :class:`ParzenResult`. Calling the metric (``forward``) only updates it and returns None:
    the protocol has no per-batch value.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    centres: list[Tensor]
    select_points: list[Tensor]
    test_points: list[Tensor]

    def __init__(self, sigmas: SigmaLike = SIGMAS, chunk_size: int = DEFAULT_CHUNK_SIZE, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sigmas = _as_sigmas(sigmas)
        self.chunk_size = _check_chunk(chunk_size)
        self.add_state("centres", default=[], dist_reduce_fx="cat")
        self.add_state("select_points", default=[], dist_reduce_fx="cat")
        self.add_state("test_points", default=[], dist_reduce_fx="cat")

    def update(
        self,
        centres: Tensor | None = None,
        select_points: Tensor | None = None,
        test_points: Tensor | None = None,
    ) -> None:
        for name, value in (
            ("centres", centres),
            ("select_points", select_points),
            ("test_points", test_points),
        ):
            if value is not None:
                getattr(self, name).append(_as_rows(value, name).detach())

    def compute(self) -> ParzenResult:
        for name in ("centres", "select_points", "test_points"):
            # A list of pieces, or (after the cross-process sync) one gathered tensor: empty either way.
            if len(getattr(self, name)) == 0:
                raise ValueError(f"ParzenLogLikelihood.compute: no {name} given to update()")
        return parzen_protocol(
            dim_zero_cat(self.centres),
            dim_zero_cat(self.select_points),
            dim_zero_cat(self.test_points),
            sigmas=self.sigmas,
            chunk_size=self.chunk_size,
        )

    def forward(self, *args: Any, **kwargs: Any) -> None:
        self.update(*args, **kwargs)

    def _wrap_compute(self, compute: Any) -> Any:
        wrapped = super()._wrap_compute(lambda *a, **k: _Opaque(compute(*a, **k)))

        def compute_result(*args: Any, **kwargs: Any) -> ParzenResult:
            return wrapped(*args, **kwargs).value

        compute_result.__doc__ = compute.__doc__
        return compute_result
