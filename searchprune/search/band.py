"""The FLOPs band of Eq. 1 as plain functions: no Optuna, only the engine's analytic cost.

A configuration is a dict of keep-ratios in ``[eta, 1]`` per prunable group; it is inside the
band when ``|flops_ratio - gamma| <= tolerance`` (paper Eq. 1, ``gamma`` = fraction of FLOPs kept).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from searchprune.constraints import Limit, fixed_ratios, free_names

__all__ = ["Band", "CostModel", "Gate", "draw_in_band", "draws_in_band", "draws_in_bounds", "project_to_band"]

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
    """Everything a candidate must satisfy before a network is built: the FLOPs ``band`` and
    any ``limits`` on other ratios (``pruning.params``), each with the function that computes
    its ratio from the widths. ``fixed`` keep-ratios are added to every ratio dict tested."""

    model: CostModel
    band: Band
    limits: tuple[tuple[Limit, Callable[[Mapping[str, int]], float]], ...] = ()
    fixed: Mapping[str, float] | None = None

    def distances(self, widths: Mapping[str, int]) -> dict[str, float]:
        """Constraint name -> signed distance (``<= 0``: satisfied), the band first."""
        out = {BAND_CONSTRAINT: self.band.distance(self.model.flops_ratio(widths))}
        for limit, value in self.limits:
            out[limit.name] = limit.distance(value(widths))
        return out

    def ratios_ok(self, ratios: Mapping[str, float]) -> bool:
        """Whether keep-ratios (the fixed groups added) satisfy every constraint; the band is
        tested first and the rest only when it holds."""
        widths = self.model.widths({**(self.fixed or {}), **ratios})
        if not self.band.contains(self.model.flops_ratio(widths)):
            return False
        return all(limit.contains(value(widths)) for limit, value in self.limits)


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
    fixed = dict(fixed or {})
    limits = {k: (bounds or {}).get(k, (eta, 1.0)) for k in ratios}
    values = {k: max(float(v), 1e-12) for k, v in ratios.items()}
    low = min(limits[k][0] / v for k, v in values.items()) if values else 1.0
    high = max(limits[k][1] / v for k, v in values.items()) if values else 1.0

    def scaled(s: float) -> dict[str, float]:
        return {**fixed, **{k: min(limits[k][1], max(limits[k][0], s * float(v)))
                            for k, v in ratios.items()}}

    def flops(s: float) -> float:
        return model.flops_ratio(model.widths(scaled(s)))

    best, best_err = low, abs(flops(low) - band.gamma)
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        r = flops(mid)
        if abs(r - band.gamma) < best_err:
            best, best_err = mid, abs(r - band.gamma)
        if r < band.gamma:
            low = mid
        else:
            high = mid
    return scaled(best)
