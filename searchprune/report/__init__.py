"""Reports built from stored studies: the sampler comparison (numbers, Markdown) and its plots."""

from __future__ import annotations

from searchprune.report.compare import (
    Comparison,
    CurveBand,
    Run,
    SamplerRow,
    best_so_far,
    compare_runs,
    evals_to_reach,
    hypervolume_2d,
    hypervolume_curve,
    pareto_front,
    run_from_study,
    to_markdown,
)

__all__ = [
    "Comparison",
    "CurveBand",
    "Run",
    "SamplerRow",
    "best_so_far",
    "compare_runs",
    "evals_to_reach",
    "hypervolume_2d",
    "hypervolume_curve",
    "pareto_front",
    "run_from_study",
    "to_markdown",
]
