"""TFD's Table 1 figure: the Parzen protocol run on each fold, summarised as the paper reports it."""

from __future__ import annotations

import math
from collections.abc import Sequence

from advnets.metrics.parzen import ParzenResult


def over_folds(results: Sequence[ParzenResult]) -> tuple[float, float]:
    """(mean of the folds' test log-likelihoods, standard error across folds: std (ddof 0) / sqrt(folds))."""
    if not results:
        raise ValueError("need at least one fold")
    lls = [r.ll for r in results]
    mean = sum(lls) / len(lls)
    std = math.sqrt(sum((x - mean) ** 2 for x in lls) / len(lls))
    return mean, std / math.sqrt(len(lls))
