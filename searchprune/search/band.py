"""The FLOPs band of Eq. 1 as plain functions: no Optuna, only the engine's analytic cost.

A configuration is a dict of keep-ratios in ``[eta, 1]`` per prunable group; it is inside the
band when ``|flops_ratio - gamma| <= tolerance`` (paper Eq. 1, ``gamma`` = fraction of FLOPs kept).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["Band", "CostModel", "draw_in_band", "draws_in_band", "project_to_band"]


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


def draw_in_band(rng: np.random.Generator, names: Sequence[str], eta: float,
                 in_band: Callable[[Mapping[str, float]], bool], *, high: float = 1.0,
                 max_draws: int = 100_000) -> tuple[dict[str, float], int, bool]:
    """The paper's random configuration: keep-ratios uniform on ``[eta, high]^L``, redrawn until
    ``in_band``. Returns the ratios, the number of draws rejected before them, and whether they
    are in band (False: ``max_draws`` draws failed; the last one is returned)."""
    ratios: dict[str, float] = {}
    for attempt in range(max_draws):
        values = rng.uniform(eta, high, size=len(names))
        ratios = {n: float(v) for n, v in zip(names, values)}
        if in_band(ratios):
            return ratios, attempt, True
    return ratios, max_draws, False


def draws_in_band(rng: np.random.Generator, names: Sequence[str], eta: float,
                  in_band: Callable[[Mapping[str, float]], bool], n: int, *,
                  max_draws: int = 1_000_000,
                  key: Callable[[Mapping[str, float]], Hashable] | None = None
                  ) -> list[dict[str, float]]:
    """Up to ``n`` successive :func:`draw_in_band` configurations from one generator, at most
    ``max_draws`` draws in all; with ``key``, configurations with a key already drawn are
    skipped (e.g. two ratio vectors that map to the same widths)."""
    out: list[dict[str, float]] = []
    seen: set[Hashable] = set()
    left = max_draws
    while left > 0 and len(out) < n:
        ratios, rejected, found = draw_in_band(rng, names, eta, in_band, max_draws=left)
        left -= rejected + 1
        k = key(ratios) if key is not None else len(out)
        if found and k not in seen:
            seen.add(k)
            out.append(ratios)
    return out


def project_to_band(model: CostModel, ratios: Mapping[str, float], band: Band, eta: float,
                    *, iterations: int = 50) -> dict[str, float]:
    """Scale all keep-ratios by one common factor ``s`` so the FLOPs ratio lands on ``gamma``.

    Returns ``clip(s * ratios, eta, 1)`` with ``s`` found by bisection (the FLOPs ratio is
    non-decreasing in ``s``). Width rounding can leave the result slightly off ``gamma``; it is
    returned anyway and the caller checks the band.
    """
    values = [max(float(v), 1e-12) for v in ratios.values()]
    low, high = eta / max(values), 1.0 / min(values)

    def scaled(s: float) -> dict[str, float]:
        return {k: min(1.0, max(eta, s * float(v))) for k, v in ratios.items()}

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
