"""Evaluation metrics: the Parzen-window log-likelihood of Goodfellow et al. 2014 (Table 1)."""

from advnets.metrics.parzen import (
    SIGMAS,
    ParzenLogLikelihood,
    ParzenResult,
    parzen_log_likelihood,
    parzen_protocol,
    parzen_sigma_search,
)

__all__ = [
    "SIGMAS",
    "ParzenLogLikelihood",
    "ParzenResult",
    "parzen_log_likelihood",
    "parzen_protocol",
    "parzen_sigma_search",
]
