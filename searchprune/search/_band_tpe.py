"""TPE that only ever proposes in-band configurations.

Optuna's TPE draws ``n_ei_candidates`` configurations from the Parzen estimator of the good
trials and keeps the one with the best acquisition value. Here the estimator's ``sample``
discards out-of-band candidates against the analytic FLOPs function and draws again until it
has enough in-band ones, so a rejected proposal costs one analytic FLOPs evaluation (tens of
microseconds) and never becomes a trial. Startup trials are the paper's band-conditioned
uniform draws (:class:`BandRandomSampler`), so they are in the band too and every startup
trial is an evaluated network. The sampler is multivariate: the whole keep-ratio vector is
proposed at once, which is what a joint FLOPs constraint needs.

Rejected draws per trial are stored as the ``rejected_draws`` user attribute (one write per
trial, not per rejection), like the random sampler's.

The in-band estimator subclasses Optuna's private ``_ParzenEstimator`` and is installed through
``TPESampler._parzen_estimator_cls``, the hook Optuna's TPE builds its estimators with. Doing
without them would mean re-implementing TPE (and changing every TPE study's trials), so the
dependence is pinned instead: ``pyproject.toml`` admits only the Optuna minor versions in
:data:`TESTED_OPTUNA`, ``tests/test_band_tpe.py`` checks the hook and the pin, and a sampler
built on an Optuna without these internals is a one-line error, never a silently unconstrained
TPE.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import TPESampler
from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator
from optuna.trial import TrialState

from searchprune.search._band_random import REJECTED_DRAWS_ATTR, BandRandomSampler

if TYPE_CHECKING:
    from optuna.study import Study
    from optuna.trial import FrozenTrial

__all__ = ["TESTED_OPTUNA", "BandTPESampler"]

_log = logging.getLogger(__name__)
# the Optuna minor versions whose TPE internals this module is tested against (pyproject's pin)
TESTED_OPTUNA = ("5.0", "5.1")


def check_tpe_internals(sampler: TPESampler) -> None:
    """Raise a one-line RuntimeError when Optuna's TPE lacks what the in-band estimator relies
    on: the ``_parzen_estimator_cls`` hook, ``_sample`` and ``_n_startup_trials``, and
    ``_ParzenEstimator.sample(rng, size)``."""
    sample = list(inspect.signature(_ParzenEstimator.sample).parameters)
    missing = [name for name, ok in (
        ("TPESampler._parzen_estimator_cls",
         getattr(sampler, "_parzen_estimator_cls", None) is _ParzenEstimator),
        ("TPESampler._sample", callable(getattr(TPESampler, "_sample", None))),
        ("TPESampler._n_startup_trials", hasattr(sampler, "_n_startup_trials")),
        ("_ParzenEstimator.sample(rng, size)", sample == ["self", "rng", "size"]),
    ) if not ok]
    if missing:
        import optuna

        tested = " or ".join(f"{v}.x" for v in TESTED_OPTUNA)
        raise RuntimeError(f"the tpe sampler needs Optuna's TPE internals ({', '.join(missing)} "
                           f"not found in optuna {optuna.__version__}); install optuna {tested}, "
                           "the versions it is tested with")


class _Tally:
    """Out-of-band candidates discarded while sampling the current trial."""

    def __init__(self) -> None:
        self.rejected = 0
        self.exhausted = False


class _InBandParzenEstimator(_ParzenEstimator):
    """A Parzen estimator whose samples are in-band configurations only."""

    def __init__(self, *args: Any, in_band: Callable[[Mapping[str, float]], bool],
                 tally: _Tally, max_rounds: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_band = in_band
        self._tally = tally
        self._max_rounds = max_rounds

    def sample(self, rng: np.random.RandomState, size: int) -> dict[str, np.ndarray]:
        kept: list[dict[str, np.ndarray]] = []
        n_kept = 0
        for _ in range(self._max_rounds):
            batch = super().sample(rng, size)
            names = list(batch)
            mask = np.fromiter(
                (self._in_band({n: float(batch[n][i]) for n in names}) for i in range(size)),
                dtype=bool, count=size)
            self._tally.rejected += int(size - mask.sum())
            if mask.any():
                kept.append({n: v[mask] for n, v in batch.items()})
                n_kept += int(mask.sum())
            if n_kept >= size:
                break
        if n_kept == 0:
            self._tally.exhausted = True
            return batch  # nothing in band: the caller falls back to a band-random draw
        return {n: np.concatenate([k[n] for k in kept])[:size] for n in kept[0]}


class BandTPESampler(TPESampler):
    """Multivariate TPE restricted to the FLOPs band (see the module docstring).

    Args:
        names: the prunable groups (trial parameter names), in the objective's order.
        low: ``eta``; every parameter is ``FloatDistribution(low, 1)``.
        in_band: the analytic band test on a ``{name: ratio}`` dict.
        seed: the study seed (startup draws use ``(seed, trial number)`` like ``random``).
        tpe_seed: seed of the TPE model's own randomness (resume-safe, see ``resume_seed``).
        n_startup_trials: band-random trials before the model takes over.
        n_ei_candidates: in-band candidates scored by the acquisition function.
        max_rounds: candidate batches drawn before giving up on the model for one trial.
        bounds: per-group ``(lo, hi)`` keep-ratio ranges (``pruning.groups``).
    """

    def __init__(self, names: Sequence[str], low: float,
                 in_band: Callable[[Mapping[str, float]], bool], *, seed: int = 0,
                 tpe_seed: int | None = None, n_startup_trials: int = 10,
                 n_ei_candidates: int = 24, max_rounds: int = 200,
                 bounds: Mapping[str, tuple[float, float]] | None = None) -> None:
        super().__init__(seed=seed if tpe_seed is None else tpe_seed, multivariate=True,
                         n_startup_trials=n_startup_trials, n_ei_candidates=n_ei_candidates)
        check_tpe_internals(self)
        self._names = list(names)
        self._low = float(low)
        self._startup = BandRandomSampler(names, low, in_band, seed=seed, bounds=bounds)
        self._tally = _Tally()
        self._parzen_estimator_cls = functools.partial(  # type: ignore[assignment]
            _InBandParzenEstimator, in_band=in_band, tally=self._tally, max_rounds=max_rounds)

    def infer_relative_search_space(self, study: Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._startup.search_space

    def _sample_relative(self, study: Study, trial: FrozenTrial,
                         search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space or "fixed_params" in trial.system_attrs:
            return {}  # a retried or enqueued trial brings its own parameters
        trials = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                           TrialState.PRUNED), use_cache=True)
        params: dict[str, Any] | None = None
        self._tally.rejected, self._tally.exhausted = 0, False
        if len(trials) >= self._n_startup_trials:
            params = self._sample(study, trial, search_space)
            if self._tally.exhausted:
                _log.warning("TPE found no in-band candidate for trial %d; drawing it uniformly "
                             "from the band instead", trial.number)
                params = None
        rejected = self._tally.rejected
        if params is None:
            params, more = self._startup.draw(trial.number)
            rejected += more
        study._storage.set_trial_user_attr(trial._trial_id, REJECTED_DRAWS_ATTR, rejected)
        return params
