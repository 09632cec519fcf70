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

EVALUATIONS = ("images", "theory")


def build_evaluation(cfg, has_ema: bool):
    """What the run measures and draws each epoch, as the data set's config says (dataset.evaluation).

    images: the Parzen estimate, sample quality, sample grids, Figures 2 and 3 (advnets.metrics.images);
    theory: p_g, D, D*, the JSD, C(G) and Figure 1 on the real line (advnets.metrics.theory).
    """
    kind = cfg.dataset.get("evaluation", "images")
    if kind == "images":
        from advnets.metrics.images import ImageEvaluation

        return ImageEvaluation(cfg, has_ema)
    if kind == "theory":
        from advnets.metrics.theory import TheoryEvaluation

        return TheoryEvaluation(cfg)
    raise ValueError(f"dataset.evaluation must be one of {', '.join(EVALUATIONS)}, got {kind!r}")


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
