"""Per-group sensitivity as plain functions: the scan's grid, the drop curves, the allocation that
reads them, and the warm start's perturbations: functions of the curves and the analytic cost
model only (the scan that measures the curves, stored in the study storage, is
:mod:`searchprune.search.sensitivity`).

A group's *drop curve* holds ``(keep_ratio, accuracy drop)`` points measured with that group
pruned alone (every other group full), plus ``(1.0, 0.0)``: the unpruned group costs nothing.
The curve between points is linear. For a threshold ``t`` each group gets the smallest keep-ratio
whose interpolated drop is ``<= t`` (the set of such ratios only grows with ``t``, so every
group's ratio, and with it the FLOPs ratio, is non-increasing in ``t``); ``t`` is bisected until
the FLOPs ratio lands in the band. No network is evaluated on the way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from searchprune.search.band import Band, CostModel, project_to_band

__all__ = ["Allocation", "allocate", "allocate_in_band", "bisect_threshold", "grid", "min_ratio", "perturbations",
           "stage_of"]

Curve = Sequence[tuple[float, float]]


def grid(eta: float, points: int, ratios: Sequence[float] | None = None) -> list[float]:
    """The scan's keep-ratios: ``ratios`` when given, else ``points`` evenly spaced from ``eta``
    up to (not including) 1, ascending and without repeats."""
    if ratios:
        return sorted({float(r) for r in ratios})
    return [eta + (1.0 - eta) * i / points for i in range(points)]


def stage_of(group: str) -> str:
    """``layer2.1.conv1`` -> ``layer2``; ``layer3.residual`` -> ``layer3``; ``conv1`` -> ``conv1``."""
    return group.split(".")[0]


def _with_full(curve: Curve) -> list[tuple[float, float]]:
    points = {float(r): float(d) for r, d in curve if r < 1.0}
    points[1.0] = 0.0
    return sorted(points.items())


def min_ratio(curve: Curve, threshold: float) -> float:
    """The smallest keep-ratio whose (linearly interpolated) drop is within ``threshold``; 1.0
    when none is (keeping the whole group costs nothing)."""
    pts = _with_full(curve)
    r0, d0 = pts[0]
    if d0 <= threshold:
        return r0
    for (ra, da), (rb, db) in zip(pts[:-1], pts[1:]):
        if db <= threshold:  # da > threshold >= db: the crossing lies in this segment
            return ra + (da - threshold) / (da - db) * (rb - ra)
    return 1.0


Bounds = Mapping[str, tuple[float, float]]


def allocate(curves: Mapping[str, Curve], threshold: float,
             bounds: Bounds | None = None) -> dict[str, float]:
    """Every group's :func:`min_ratio` at ``threshold``, clipped to its ``bounds`` when given
    (still non-increasing in ``threshold``)."""
    out = {g: min_ratio(c, threshold) for g, c in curves.items()}
    if bounds:
        out = {g: min(max(r, bounds[g][0]), bounds[g][1]) if g in bounds else r
               for g, r in out.items()}
    return out


@dataclass
class Allocation:
    """The keep-ratios chosen for a band, the threshold they come from, and how they landed."""

    ratios: dict[str, float]
    threshold: float
    flops_ratio: float
    in_band: bool
    projected: bool = False  # no threshold landed in band: scaled onto it (one common factor)
    info: dict[str, float] = field(default_factory=dict)


def bisect_threshold(curves: Mapping[str, Curve], cost: Callable[[float], float],
                     target: float, iterations: int = 60) -> float:
    """The drop threshold whose allocation's ``cost`` is closest to ``target``, bisected: a
    higher threshold prunes more, so ``cost`` falls as the threshold rises."""
    drops = [d for c in curves.values() for _, d in c]
    lo = min([0.0, *drops]) - 1.0  # every group at 1.0 (or at a ratio that helps accuracy)
    hi = max([0.0, *drops]) + 1.0  # every group at its smallest scanned ratio
    for _ in range(iterations):  # cost(lo) >= target > cost(hi) where reachable
        mid = 0.5 * (lo + hi)
        if cost(mid) >= target:
            lo = mid
        else:
            hi = mid
    return min((lo, hi), key=lambda t: abs(cost(t) - target))


def allocate_in_band(model: CostModel, curves: Mapping[str, Curve], band: Band, eta: float,
                     *, bounds: Bounds | None = None, fixed: Mapping[str, float] | None = None,
                     iterations: int = 60) -> Allocation:
    """Bisect the drop threshold until the allocation's FLOPs ratio is as close to ``gamma`` as
    the curves allow; if that is still outside the band (a jump of the non-convex curves), the
    ratios are scaled onto the band by one common factor and ``projected`` is set.

    ``curves`` holds the groups the search varies; ``bounds`` (per-group keep-ratio ranges)
    clip their ratios and ``fixed`` groups are added to every FLOPs count. The returned ratios
    are the varied groups' only."""
    fixed = dict(fixed or {})

    def flops(t: float) -> float:
        return model.flops_ratio(model.widths({**fixed, **allocate(curves, t, bounds)}))

    threshold = bisect_threshold(curves, flops, band.gamma, iterations)
    ratios = allocate(curves, threshold, bounds)
    ratio = flops(threshold)
    if band.contains(ratio):
        return Allocation(ratios, threshold, ratio, True)
    projected = project_to_band(model, ratios, band, eta, bounds=bounds, fixed=fixed)
    ratio = model.flops_ratio(model.widths(projected))
    projected = {k: v for k, v in projected.items() if k not in fixed}
    return Allocation(projected, threshold, ratio, band.contains(ratio), projected=True)


def perturbations(model: CostModel, ratios: Mapping[str, float], band: Band, eta: float,
                  n: int, scale: float, seed: int, *, bounds: Bounds | None = None,
                  fixed: Mapping[str, float] | None = None, max_draws: int = 1000
                  ) -> list[dict[str, float]]:
    """Up to ``n`` seeded in-band neighbours of ``ratios`` (the varied groups): each keep-ratio
    times ``exp(N(0, scale))``, clipped to ``[eta, 1]`` (or its ``bounds``), scaled onto the
    band by one common factor (``fixed`` groups added unscaled); draws that still miss the
    band, or repeat a width configuration, are skipped. Returns the varied groups' ratios."""
    rng = np.random.default_rng(seed)
    fixed = dict(fixed or {})
    names = list(ratios)
    limits = {k: (bounds or {}).get(k, (eta, 1.0)) for k in names}
    seen = {tuple(model.widths({**fixed, **ratios}).values())}
    out: list[dict[str, float]] = []
    for _ in range(max_draws):
        if len(out) >= n:
            break
        noise = rng.normal(0.0, scale, size=len(names))
        moved = {k: float(np.clip(ratios[k] * np.exp(z), *limits[k]))
                 for k, z in zip(names, noise)}
        moved = project_to_band(model, moved, band, eta, bounds=bounds, fixed=fixed)
        widths = model.widths(moved)
        key = tuple(widths.values())
        if key in seen or not band.contains(model.flops_ratio(widths)):
            continue
        seen.add(key)
        out.append({k: v for k, v in moved.items() if k not in fixed})
    return out
