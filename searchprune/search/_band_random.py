"""The paper's random search: keep-ratios uniform on ``[eta, 1]^L``, conditioned on the FLOPs band.

Rejection happens inside the sampler against the analytic FLOPs function (microseconds per
draw), so the study only ever holds in-band configurations and its trial count is the number of
evaluated networks. Each trial's randomness comes from ``(seed, trial.number)``: a resumed or
parallel study never replays a configuration, and the same seed and config give the same
sequence.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler

from searchprune.search.band import draw_in_band

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial, TrialState

__all__ = ["REJECTED_DRAWS_ATTR", "BandRandomSampler"]

REJECTED_DRAWS_ATTR = "rejected_draws"
_log = logging.getLogger(__name__)


def trial_rng(seed: int, number: int, *salt: int) -> np.random.Generator:
    """A generator determined by ``(seed, trial number)`` alone."""
    return np.random.default_rng(np.random.SeedSequence([seed % 2**63, number, *salt]))


class BandRandomSampler(BaseSampler):
    """Uniform keep-ratios per group, redrawn until the configuration is inside the band.

    Args:
        names: the prunable groups (trial parameter names), in the objective's order.
        low: ``eta``; every parameter is ``FloatDistribution(low, high)``.
        in_band: the analytic band test on a ``{name: ratio}`` dict.
        seed: the study seed.
        max_draws: after this many out-of-band draws the last draw is returned as is (the
            objective then rejects it as an infeasible trial).
        bounds: per-group ``(lo, hi)`` keep-ratio ranges (``pruning.groups``); groups not in
            it use ``[low, high]``.
    """

    def __init__(self, names: Sequence[str], low: float,
                 in_band: Callable[[Mapping[str, float]], bool], *, high: float = 1.0,
                 seed: int = 0, max_draws: int = 100_000,
                 bounds: Mapping[str, tuple[float, float]] | None = None) -> None:
        self._names = list(names)
        self._low, self._high = float(low), float(high)
        self._bounds = {n: tuple(map(float, (bounds or {}).get(n, (self._low, self._high))))
                        for n in self._names}
        self._per_group = bool(bounds)
        self._in_band = in_band
        self._seed = int(seed)
        self._max_draws = max_draws

    @property
    def search_space(self) -> dict[str, BaseDistribution]:
        return {n: FloatDistribution(*self._bounds[n]) for n in self._names}

    def reseed_rng(self) -> None:
        # Randomness is derived per trial from (seed, number); nothing to reseed.
        pass

    def infer_relative_search_space(self, study: Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.search_space

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space or "fixed_params" in trial.system_attrs:
            return {}  # a retried or enqueued trial brings its own parameters
        ratios, rejected = self.draw(trial.number)
        study._storage.set_trial_user_attr(trial._trial_id, REJECTED_DRAWS_ATTR, rejected)
        return ratios

    def draw(self, number: int) -> tuple[dict[str, float], int]:
        """The in-band configuration of trial ``number`` and how many draws were rejected first."""
        low: float | list[float] = self._low
        high: float | list[float] = self._high
        if self._per_group:
            low = [self._bounds[n][0] for n in self._names]
            high = [self._bounds[n][1] for n in self._names]
        ratios, rejected, found = draw_in_band(trial_rng(self._seed, number), self._names,
                                               low, self._in_band, high=high,
                                               max_draws=self._max_draws)
        if found:
            return ratios, rejected
        _log.warning("no in-band configuration in %d draws for trial %d; the band may be "
                     "unreachable with these groups", self._max_draws, number)
        return ratios, self._max_draws - 1

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        seed = int(trial_rng(self._seed, trial.number, zlib.crc32(param_name.encode()))
                   .integers(2**31))
        return RandomSampler(seed=seed).sample_independent(study, trial, param_name,
                                                           param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        pass
