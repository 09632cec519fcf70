"""Evaluation metrics: the Parzen-window log-likelihood of Goodfellow et al. 2014 (Table 1), sample quality,
and, on 1-D data, the quantities of the paper's section 4 (D*, C(G), the JSD)."""

from advnets.metrics.parzen import (
    SIGMAS,
    ParzenLogLikelihood,
    ParzenResult,
    parzen_log_likelihood,
    parzen_protocol,
    parzen_sigma_search,
)


def _images(cfg, has_ema: bool):
    """The Parzen estimate, sample quality, sample grids, Figures 2 and 3 (advnets.metrics.images)."""
    from advnets.metrics.images import ImageEvaluation

    return ImageEvaluation(cfg, has_ema)


def _theory(cfg, has_ema: bool):
    """p_g, D, D*, the JSD, C(G) and Figure 1 on the real line (advnets.metrics.theory)."""
    from advnets.metrics.theory import TheoryEvaluation

    return TheoryEvaluation(cfg)


# dataset.evaluation -> builder: the one list of evaluation kinds (imported lazily: torchmetrics, matplotlib).
EVALUATIONS = {"images": _images, "theory": _theory}


def build_evaluation(cfg, has_ema: bool):
    """What the run measures and draws each epoch, as the data set's config says (dataset.evaluation)."""
    kind = cfg.dataset.get("evaluation", "images")  # checkpoints of code older than dataset.evaluation: images
    if kind not in EVALUATIONS:
        raise ValueError(f"dataset.evaluation must be one of {', '.join(EVALUATIONS)}, got {kind!r}")
    return EVALUATIONS[kind](cfg, has_ema)


__all__ = [
    "EVALUATIONS",
    "SIGMAS",
    "ParzenLogLikelihood",
    "ParzenResult",
    "build_evaluation",
    "parzen_log_likelihood",
    "parzen_protocol",
    "parzen_sigma_search",
]
