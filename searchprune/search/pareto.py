"""What is really multi-objective (``search.objective: pareto``): the FLOPs range, the front,
its hypervolume.

Instead of one target ``gamma ± T``, a Pareto study covers a range of FLOPs ratios
``search.gamma_range: [lo, hi]``: maximise validation top-1, minimise the kept-FLOPs ratio
(directions ``["maximize", "minimize"]``). Everything else (the gate, budget, workers, signals,
progress) is the single-objective runner's: the range is a :class:`Band` centred on it, so
out-of-range proposals are rejected before any evaluation exactly as in a single-objective study.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from searchprune.errors import BandError
from searchprune.search.band import Band

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from searchprune.config import Config

__all__ = ["DIRECTIONS", "HV_REFERENCE", "METRIC_NAMES", "front_trials", "hypervolume_2d",
           "hypervolume_curve", "pareto_band", "pareto_front"]

DIRECTIONS = ("maximize", "minimize")
METRIC_NAMES = ("val_top1", "flops_ratio")
HV_REFERENCE = (0.0, 1.0)  # (accuracy fraction, FLOPs ratio)


def pareto_band(cfg: Config) -> Band:
    """``lo <= ratio <= hi`` as a band centred on the range."""
    if cfg.search.gamma_range is None:
        raise BandError("search.gamma_range is required with search.objective: pareto")
    lo, hi = (float(v) for v in cfg.search.gamma_range)
    return Band(0.5 * (lo + hi), 0.5 * (hi - lo))


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Non-dominated ``(accuracy, flops_ratio)`` points (maximise the first, minimise the
    second), sorted by FLOPs ratio."""
    front: list[tuple[float, float]] = []
    for a, r in sorted(set(points), key=lambda p: (p[1], -p[0])):
        if not front or a > front[-1][0]:
            front.append((a, r))
    return front


def front_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    """The COMPLETE trials of a Pareto study on the front of their values ``(top1,
    flops_ratio)``, by FLOPs ratio (one trial per front point: the lowest number)."""
    by_point: dict[tuple[float, float], FrozenTrial] = {}
    for t in sorted(trials, key=lambda t: t.number):
        point = (float(t.values[0]), float(t.values[1]))
        by_point.setdefault(point, t)
    return [by_point[p] for p in pareto_front(by_point)]


def hypervolume_2d(points: Iterable[tuple[float, float]],
                   reference: tuple[float, float] = HV_REFERENCE, *,
                   percent: bool = True) -> float:
    """Area dominated by ``(accuracy, flops_ratio)`` points and bounded by ``reference``
    (accuracy at least ``reference[0]``, ratio at most ``reference[1]``). With ``percent``,
    accuracies are in percent and divided by 100, so the area lies in ``[0, 1]``."""
    scale = 0.01 if percent else 1.0
    a_ref, r_ref = reference
    front = [(a * scale, r) for a, r in pareto_front(points)]
    front = [(a, r) for a, r in front if a > a_ref and r < r_ref]
    area = 0.0
    for i, (a, r) in enumerate(front):  # sorted by ratio, accuracy rising: a staircase
        r_next = front[i + 1][1] if i + 1 < len(front) else r_ref
        area += (r_next - r) * (a - a_ref)
    return area


def hypervolume_curve(points: Sequence[tuple[float, float]],
                      reference: tuple[float, float] = HV_REFERENCE) -> list[float]:
    return [hypervolume_2d(points[: k + 1], reference) for k in range(len(points))]
