"""The FLOPs band of Eq. 1 as plain functions: no Optuna, only the engine's analytic cost.

A configuration is a dict of keep-ratios in ``[eta, 1]`` per prunable group; it is inside the
band when ``|flops_ratio - gamma| <= tolerance`` (paper Eq. 1, ``gamma`` = fraction of FLOPs kept).
A :class:`Gate` adds the limits on other ratios (``pruning.params``, ``pruning.latency``); with
``pruning.gamma: null`` there is no band and the first limit is the *primary* constraint, the
one proposals are projected onto.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from searchprune.constraints import Limit, fixed_ratios, free_names

__all__ = ["Band", "CostModel", "Gate", "draw_in_band", "draws_in_band",
           "draws_in_bounds", "project_to_band", "project_to_limit"]

BAND_CONSTRAINT = "flops_band"


class CostModel(Protocol):
    """The part of :class:`~searchprune.engine.PruningEngine` the band needs."""

    def widths(self, ratios: Mapping[str, float]) -> dict[str, int]: ...

    def flops_ratio(self, widths: Mapping[str, int]) -> float: ...


@dataclass(frozen=True)
class Band:
    """``|r - gamma| <= tolerance`` on the kept-FLOPs ratio ``r``."""

    gamma: float
    tolerance: float

    def distance(self, flops_ratio: float) -> float:
        """Signed distance to the band edge: ``<= 0`` inside (the Optuna constraint value)."""
        return abs(flops_ratio - self.gamma) - self.tolerance

    def contains(self, flops_ratio: float) -> bool:
        return self.distance(flops_ratio) <= 0.0

    def contains_ratios(self, model: CostModel, ratios: Mapping[str, float]) -> bool:
        return self.contains(model.flops_ratio(model.widths(ratios)))


@dataclass(frozen=True)
class Gate:
    """Everything a candidate must satisfy before a network is built: the FLOPs ``band``
    (None: ``pruning.gamma: null``) and any ``limits`` on other ratios (``pruning.params``,
    ``pruning.latency``), each with the function that computes its ratio from the widths,
    cheapest first (without a band, the primary limit first). ``fixed`` keep-ratios are added
    to every ratio dict tested."""

    model: CostModel
    band: Band | None
    limits: tuple[tuple[Limit, Callable[[Mapping[str, int]], float]], ...] = ()
    fixed: Mapping[str, float] | None = None

    def distances(self, widths: Mapping[str, int]) -> dict[str, float]:
        """Constraint name -> signed distance (``<= 0``: satisfied), the band first."""
        out = ({} if self.band is None
               else {BAND_CONSTRAINT: self.band.distance(self.model.flops_ratio(widths))})
        for limit, value in self.limits:
            out[limit.name] = limit.distance(value(widths))
        return out

    def ratios_ok(self, ratios: Mapping[str, float]) -> bool:
        """Whether keep-ratios (the fixed groups added) satisfy every constraint; the band is
        tested first and the rest only when it holds."""
        widths = self.model.widths({**(self.fixed or {}), **ratios})
        if self.band is not None and not self.band.contains(self.model.flops_ratio(widths)):
            return False
        return all(limit.contains(value(widths)) for limit, value in self.limits)

    def project(self, ratios: Mapping[str, float], eta: float, *,
                bounds: Mapping[str, tuple[float, float]] | None = None) -> dict[str, float]:
        """``ratios`` (the free groups) scaled onto the primary constraint: the FLOPs band
        (:func:`project_to_band`), else the first limit (:func:`project_to_limit`); the fixed
        groups added. The other constraints are the caller's to check."""
        if self.band is not None:
            return project_to_band(self.model, ratios, self.band, eta, bounds=bounds,
                                   fixed=self.fixed)
        if not self.limits:
            return {**(self.fixed or {}), **ratios}
        limit, value = self.limits[0]
        return project_to_limit(self.model, ratios, limit, value, eta, bounds=bounds,
                                fixed=self.fixed)


def draw_in_band(rng: np.random.Generator, names: Sequence[str], eta: float | Sequence[float],
                 in_band: Callable[[Mapping[str, float]], bool], *,
                 high: float | Sequence[float] = 1.0,
                 max_draws: int = 100_000) -> tuple[dict[str, float], int, bool]:
    """The paper's random configuration: keep-ratios uniform on ``[eta, high]^L``, redrawn until
    ``in_band``. ``eta`` and ``high`` may be one value per name (per-group bounds). Returns the
    ratios, the number of draws rejected before them, and whether they are in band (False:
    ``max_draws`` draws failed; the last one is returned)."""
    ratios: dict[str, float] = {}
    low_v, high_v = (np.asarray(v, dtype=float) if not np.isscalar(v) else v
                     for v in (eta, high))
    for attempt in range(max_draws):
        values = rng.uniform(low_v, high_v, size=len(names))
        ratios = {n: float(v) for n, v in zip(names, values)}
        if in_band(ratios):
            return ratios, attempt, True
    return ratios, max_draws, False


def draws_in_band(rng: np.random.Generator, names: Sequence[str], eta: float | Sequence[float],
                  in_band: Callable[[Mapping[str, float]], bool], n: int, *,
                  high: float | Sequence[float] = 1.0, max_draws: int = 1_000_000,
                  key: Callable[[Mapping[str, float]], Hashable] | None = None
                  ) -> list[dict[str, float]]:
    """Up to ``n`` successive :func:`draw_in_band` configurations from one generator, at most
    ``max_draws`` draws in all; with ``key``, configurations with a key already drawn are
    skipped (e.g. two ratio vectors that map to the same widths)."""
    out: list[dict[str, float]] = []
    seen: set[Hashable] = set()
    left = max_draws
    while left > 0 and len(out) < n:
        ratios, rejected, found = draw_in_band(rng, names, eta, in_band, high=high,
                                               max_draws=left)
        left -= rejected + 1
        k = key(ratios) if key is not None else len(out)
        if found and k not in seen:
            seen.add(k)
            out.append(ratios)
    return out


def draws_in_bounds(rng: np.random.Generator, bounds: Mapping[str, tuple[float, float]],
                    in_band: Callable[[Mapping[str, float]], bool], n: int, *,
                    max_draws: int = 1_000_000,
                    key: Callable[[Mapping[str, float]], Hashable] | None = None
                    ) -> list[dict[str, float]]:
    """:func:`draws_in_band` over per-group ranges (``pruning.groups``): every group whose range
    is wider than a point uniform on it, the fixed ones at their ratio; ``in_band`` and ``key``
    see, and the result holds, every group."""
    fixed = fixed_ratios(bounds)
    names = free_names(bounds)
    lows = [bounds[n][0] for n in names]
    highs = [bounds[n][1] for n in names]
    drawn = draws_in_band(rng, names, lows, lambda r: in_band({**fixed, **r}), n, high=highs,
                          max_draws=max_draws,
                          key=None if key is None else lambda r: key({**fixed, **r}))
    return [{**fixed, **r} for r in drawn]


def project_to_band(model: CostModel, ratios: Mapping[str, float], band: Band, eta: float,
                    *, bounds: Mapping[str, tuple[float, float]] | None = None,
                    fixed: Mapping[str, float] | None = None,
                    iterations: int = 50) -> dict[str, float]:
    """Scale all keep-ratios by one common factor ``s`` so the FLOPs ratio lands on ``gamma``.

    Returns ``clip(s * ratios, lo, hi)`` per group (``[eta, 1]``, or the group's ``bounds``)
    with ``s`` found by bisection (the FLOPs ratio is non-decreasing in ``s``); ``fixed``
    groups are added unscaled. Width rounding can leave the result slightly off ``gamma``; it
    is returned anyway and the caller checks the band.
    """
    scaled, low, high = _scaling(ratios, eta, bounds, fixed)
    best, _ = _bisect(lambda s: model.flops_ratio(model.widths(scaled(s))), band.gamma, low,
                      high, iterations)
    return scaled(best)


def project_to_limit(model: CostModel, ratios: Mapping[str, float], limit: Limit,
                     value: Callable[[Mapping[str, int]], float], eta: float, *,
                     bounds: Mapping[str, tuple[float, float]] | None = None,
                     fixed: Mapping[str, float] | None = None,
                     iterations: int = 50) -> dict[str, float]:
    """:func:`project_to_band` for a limit on another ratio (``value`` of the widths, e.g.
    the predicted latency ratio; non-decreasing in the common scale ``s``). A target limit
    (``low > 0``) is projected onto its centre, like the band onto ``gamma``; an upper bound
    scales a proposal above it down to the largest ``s`` that satisfies it and leaves a
    proposal inside it unchanged."""
    scaled, low, high = _scaling(ratios, eta, bounds, fixed)

    def at(s: float) -> float:
        return value(model.widths(scaled(s)))

    if limit.low > 0.0:
        best, _ = _bisect(at, 0.5 * (limit.low + limit.high), low, high, iterations)
        return scaled(best)
    if at(1.0) <= limit.high:
        return scaled(1.0)
    _, below = _bisect(at, limit.high, low, 1.0, iterations)
    return scaled(below)


def _scaling(ratios: Mapping[str, float], eta: float,
             bounds: Mapping[str, tuple[float, float]] | None,
             fixed: Mapping[str, float] | None
             ) -> tuple[Callable[[float], dict[str, float]], float, float]:
    """``scaled(s)``: the ratios times ``s`` clipped to each group's range, fixed groups
    added; and the range of ``s`` that moves some group (from all-lowest to all-highest)."""
    fixed = dict(fixed or {})
    limits = {k: (bounds or {}).get(k, (eta, 1.0)) for k in ratios}
    values = {k: max(float(v), 1e-12) for k, v in ratios.items()}
    low = min(limits[k][0] / v for k, v in values.items()) if values else 1.0
    high = max(limits[k][1] / v for k, v in values.items()) if values else 1.0

    def scaled(s: float) -> dict[str, float]:
        return {**fixed, **{k: min(limits[k][1], max(limits[k][0], s * float(v)))
                            for k, v in ratios.items()}}

    return scaled, low, high


def _bisect(f: Callable[[float], float], target: float, low: float, high: float,
            iterations: int) -> tuple[float, float]:
    """Bisection on a non-decreasing ``f``: the ``s`` whose ``f(s)`` came closest to
    ``target``, and the last ``s`` seen with ``f(s) < target`` (``low`` if none)."""
    best, best_err = low, abs(f(low) - target)
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        r = f(mid)
        if abs(r - target) < best_err:
            best, best_err = mid, abs(r - target)
        if r < target:
            low = mid
        else:
            high = mid
    return best, low
