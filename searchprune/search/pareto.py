"""Multi-objective search (``search.objective: pareto``): accuracy against FLOPs in one study.

Instead of one target ``gamma ± T``, the study covers a whole range of FLOPs ratios
``search.gamma_range: [lo, hi]`` and keeps a Pareto front: maximise validation top-1, minimise
the kept-FLOPs ratio (directions ``["maximize", "minimize"]``). The gate is the same analytic
band, ``lo <= ratio <= hi`` (a :class:`Band` centred on the range), so out-of-range proposals are
PRUNED without evaluation exactly as in the single-objective path, and the random sampler
conditions on the range. CMA-ES is single-objective and is refused by the config; Optuna's
pruners cannot stop multi-objective trials, so ``search.pruner`` must be ``none``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from searchprune.config import config_to_dict
from searchprune.errors import BandError, StudyConfigMismatch
from searchprune.search.band import Band
from searchprune.search.callbacks import ProgressCallback, RecordRejections, StopOnFailures
from searchprune.search.objective import Counters, _record_cost, rejected_proposals
from searchprune.search.runner import (
    _describe,
    _n_complete,
    derive_study_name,
    preflight,
)
from searchprune.search.samplers import SamplerContext, make_sampler

if TYPE_CHECKING:
    from searchprune.config import Config
    from searchprune.engine import PruningEngine

__all__ = ["DIRECTIONS", "METRIC_NAMES", "make_pareto_objective", "pareto_band",
           "run_pareto_study"]

DIRECTIONS = ("maximize", "minimize")
METRIC_NAMES = ("val_top1", "flops_ratio")


def pareto_band(cfg: Config) -> Band:
    """``lo <= ratio <= hi`` as a band centred on the range."""
    if cfg.search.gamma_range is None:
        raise BandError("search.gamma_range is required with search.objective: pareto")
    lo, hi = (float(v) for v in cfg.search.gamma_range)
    return Band(0.5 * (lo + hi), 0.5 * (hi - lo))


def make_pareto_objective(engine: PruningEngine, cfg: Config, counters: Counters | None = None
                          ) -> Callable[[optuna.Trial], tuple[float, float]]:
    """The function ``study.optimize`` calls: ``(validation top-1 in percent, FLOPs ratio)``."""
    eta = cfg.pruning.eta
    band = pareto_band(cfg)
    counts = counters if counters is not None else Counters()

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        ratios = {g.name: trial.suggest_float(g.name, eta, 1.0) for g in engine.groups}
        widths = engine.widths(ratios)
        if not _record_cost(trial, engine, widths, band):
            counts.rejected += 1
            raise optuna.TrialPruned("outside the FLOPs range")
        result = engine.evaluate(widths, split="val")
        for key in ("build", "reconstruct", "evaluate"):
            trial.set_user_attr(f"seconds_{key}", float(result.seconds.get(key, 0.0)))
        if not (math.isfinite(result.top1) and math.isfinite(result.top5)):
            counts.failed += 1
            trial.set_user_attr("fail_reason", f"evaluation returned top1={result.top1}, "
                                               f"top5={result.top5}")
            return math.nan, math.nan  # Optuna marks the trial FAIL and the study goes on
        trial.set_user_attr("top1", float(result.top1))
        trial.set_user_attr("top5", float(result.top5))
        counts.evaluated += 1
        return float(result.top1), float(engine.flops_ratio(widths))

    return objective


def run_pareto_study(cfg: Config, *, engine: PruningEngine | None = None, progress: bool = True,
                     force_config: bool = False,
                     storage: optuna.storages.BaseStorage | None = None,
                     callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = ()
                     ) -> optuna.Study:
    """:func:`~searchprune.search.runner.run_study` for ``search.objective: pareto``: the same
    budget (COMPLETE trials), resume and config check, on a two-objective study."""
    storage, existing = preflight(cfg, force_config=force_config, storage=storage)
    config = config_to_dict(cfg)
    if existing is not None:
        if len(existing.directions) != len(DIRECTIONS):
            raise StudyConfigMismatch(f"study '{existing.study_name}' is single-objective; pass "
                                      "--study-name to start a pareto study")
        if _n_complete(existing) >= cfg.search.n_trials:
            return existing
    if engine is None:
        from searchprune.supernet import engine_for

        engine = engine_for(cfg, progress=progress)
    band = pareto_band(cfg)
    _check_range(cfg, engine, band)
    study = optuna.create_study(storage=storage, study_name=derive_study_name(cfg),
                                directions=list(DIRECTIONS), load_if_exists=True)
    ctx = SamplerContext(names=[g.name for g in engine.groups], eta=cfg.pruning.eta,
                         in_band=lambda ratios: band.contains_ratios(engine, ratios),
                         seed=cfg.search.seed, n_existing=len(study.get_trials(deepcopy=False)))
    study.sampler = make_sampler(cfg.search.sampler, ctx)
    _describe(study, cfg, config, engine, METRIC_NAMES, note=_save_note)
    with _ParetoProgress(cfg.search.n_trials, enabled=progress) as bar:
        study.optimize(make_pareto_objective(engine, cfg), n_trials=None, callbacks=[
            MaxTrialsCallback(cfg.search.n_trials, states=(TrialState.COMPLETE,)),
            RecordRejections(), StopOnFailures(), bar, *callbacks,
        ])
    return study


def _check_range(cfg: Config, engine: PruningEngine, band: Band) -> None:
    low, _ = engine.ratio_range(cfg.pruning.eta)
    hi = band.gamma + band.tolerance
    if hi < low:
        raise BandError(f"search.gamma_range ends at {hi:g}, below the FLOPs ratio {low:.4f} of "
                        f"the all-eta configuration (eta={cfg.pruning.eta}); lower eta or raise "
                        "the range")


def _save_note(study: optuna.Study, cfg: Config, engine: PruningEngine) -> None:
    try:
        from optuna_dashboard import save_note
    except ImportError:
        return
    p, s = cfg.pruning, cfg.search
    lo, hi = s.gamma_range or (0.0, 1.0)
    save_note(study, "\n".join([
        f"# {study.study_name} (Pareto front)",
        f"- model: `{cfg.model.name}` on `{cfg.data.name}` ({cfg.setting})",
        f"- objectives: maximise `val_top1` (%), minimise `flops_ratio` over [{lo}, {hi}]; "
        f"keep-ratios in [{p.eta}, 1]",
        f"- criterion: `{p.criterion}`, proxy: `{p.proxy}`",
        f"- sampler: `{s.sampler}` (seed {s.seed}), target {s.n_trials} evaluated trials",
        f"- prunable groups: {len(engine.groups)}, base FLOPs {engine.base_cost.flops:,}",
        f"- config file: `{cfg.source}`",
    ]))


class _ParetoProgress(ProgressCallback):
    """The progress bar with the size of the current front instead of a best value."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._progress is None:
            return
        trials: list[Any] = study.get_trials(deepcopy=False)
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        self._progress.update(self._task, completed=min(complete, self.target),
                              rejected=rejected_proposals(trials),
                              best=f"front of {len(study.best_trials)}")
