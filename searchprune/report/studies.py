"""The studies of a sampler comparison: which ones, running them on one shared engine, reading
them back as :class:`~searchprune.report.compare.Run` records.

Every study solves the identical problem (model, data splits, criterion, band, reconstruction,
budget); only ``search.sampler``, ``search.seed`` and ``search.study_name`` differ, so the
per-model work (data, channel groups, scores, calibration features) is done once and the engine
is shared by all of them. Studies are named ``<base>-<sampler>-s<seed>``; running the comparison
again finishes or extends the missing ones, and several processes may run it at once against one
storage (each study stops at its budget of COMPLETE trials across all workers).

A sampler named ``<sampler>+warm`` (e.g. ``tpe+warm``) is that sampler with
``search.warm_start: sensitivity`` (the config's ``sensitivity.method``), ``<sampler>+scan``,
``+taylor`` and ``+taylor-sq`` the same warm-started from the full scan or a cheap
first-order prior (``sensitivity.method: scan``, ``taylor``, ``taylor-sq``); a plain name is
that sampler alone (no warm start, unless the config sets ``search.warm_start: sensitivity``,
which then applies to it); such a
study runs ``n_trials`` minus the evaluations its prior is charged (a full scan's evaluations, a
cheaper prior's images in evaluation equivalents), so every sampler gets the same total cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from searchprune.config import (
    DEFAULT_SAMPLERS,
    SENSITIVITY_METHODS,
    WARM_SUFFIX,
    apply_overrides,
    resolve_defaults,
)
from searchprune.report.compare import Run, run_from_study

if TYPE_CHECKING:
    import optuna

    from searchprune.config import Config
    from searchprune.engine import Engine

__all__ = ["COMPARISON_ATTR", "DEFAULT_SAMPLERS", "WARM_SUFFIX", "PlannedStudy",
           "baselines_at_picks", "load_runs", "plan_comparison", "run_comparison"]

COMPARISON_ATTR = "comparison"
# ``<sampler>+scan``, ``+taylor``, ``+taylor-sq``: warm-started from that prior
PRIOR_METHODS = tuple(m for m in SENSITIVITY_METHODS if m != "auto")


@dataclass(frozen=True)
class PlannedStudy:
    sampler: str
    seed: int
    cfg: Config

    @property
    def name(self) -> str:
        return str(self.cfg.search.study_name)


def plan_comparison(cfg: Config, samplers: Sequence[str], seeds: Sequence[int],
                    base: str) -> list[PlannedStudy]:
    """One config per (sampler, seed), seed-major (all samplers of seed 0 first), so a partial
    run already compares every sampler. Invalid combinations raise ``ConfigError``."""
    return [PlannedStudy(s, seed, apply_overrides(cfg, {
        **_sampler_keys(s, cfg), "search.seed": seed, "search.study_name": f"{base}-{s}-s{seed}"}))
        for seed in seeds for s in samplers]


def _sampler_keys(label: str, cfg: Config) -> dict[str, str]:
    if label.endswith(WARM_SUFFIX):
        return {"search.sampler": label.removesuffix(WARM_SUFFIX),
                "search.warm_start": "sensitivity"}
    for method in PRIOR_METHODS:
        if label.endswith(f"+{method}"):
            return {"search.sampler": label.removesuffix(f"+{method}"),
                    "search.warm_start": "sensitivity", "sensitivity.method": method}
    if cfg.search.warm_start == "auto":  # a plain label is that sampler alone
        return {"search.sampler": label, "search.warm_start": "none"}
    return {"search.sampler": label}


def _equal_total(cfg: Config, engine: Engine) -> Config:
    """A warm-started study's own budget: ``n_trials`` minus the scan's network evaluations
    (its points and the unpruned reference)."""
    if resolve_defaults(cfg).search.warm_start != "sensitivity":
        return cfg
    from searchprune.search.problem import resolve_problem
    from searchprune.search.sensitivity import prior_charge

    return _without_scan(cfg, prior_charge(resolve_problem(cfg, engine)))


def run_comparison(plan: Sequence[PlannedStudy], *, storage: optuna.storages.BaseStorage,
                   engine: Engine | None = None, progress: bool = True,
                   force_config: bool = False,
                   announce: Callable[[int, PlannedStudy, str], None] | None = None,
                   engine_factory: Callable[[Config], Engine] | None = None) -> int:
    """Run or finish every planned study; build the engine (once, with ``engine_factory``,
    default :func:`searchprune.engine.engine_for`) only if some study needs trials.
    ``announce(i, study, status)`` is told ``"done"`` (already complete) or ``"run"``.
    Returns the number of engines built (0 or 1)."""
    from searchprune.engine import engine_for
    from searchprune.search import run_study

    built = 0
    for i, planned in enumerate(plan):
        complete, offset = _is_complete(planned, storage)
        if announce is not None:
            announce(i, planned, "done" if complete else "run")
        if engine is None and not complete:
            engine = (engine_factory(planned.cfg) if engine_factory is not None
                      else engine_for(planned.cfg, progress=progress))
            built += 1
        cfg = (_without_scan(planned.cfg, offset) if complete
               else _equal_total(planned.cfg, engine))
        study = run_study(cfg, engine=None if complete else engine, progress=progress,
                          force_config=force_config, storage=storage)
        tag = {"sampler": planned.sampler, "seed": planned.seed}
        if study.user_attrs.get(COMPARISON_ATTR) != tag:
            study.set_user_attr(COMPARISON_ATTR, tag)
    return built


def _without_scan(cfg: Config, offset: int) -> Config:
    if not offset:
        return cfg
    return apply_overrides(cfg, {"search.n_trials": max(1, cfg.search.n_trials - offset)})


def _is_complete(planned: PlannedStudy, storage: optuna.storages.BaseStorage
                 ) -> tuple[bool, int]:
    """Whether the study holds its budget of evaluated trials (less a warm start's scan), and
    that scan's evaluations."""
    import optuna

    from searchprune.search.trials import n_evaluated

    try:
        study = optuna.load_study(study_name=planned.name, storage=storage)
    except KeyError:
        return False, 0
    from searchprune.search.sensitivity import charged_evaluations

    offset = charged_evaluations(study.user_attrs.get("warm_start"))
    return n_evaluated(study) >= max(1, planned.cfg.search.n_trials - offset), offset


def load_runs(plan: Sequence[PlannedStudy], storage: optuna.storages.BaseStorage,
              budget: int | None) -> tuple[list[Run], list[str]]:
    """The stored studies as runs cut at ``budget``, and the names of those not found."""
    import optuna

    runs: list[Run] = []
    missing: list[str] = []
    for planned in plan:
        try:
            study: Any = optuna.load_study(study_name=planned.name, storage=storage)
        except KeyError:
            missing.append(planned.name)
            continue
        runs.append(run_from_study(study, planned.sampler, planned.seed, budget))
    return runs, missing


def baselines_at_picks(engine: Engine, names: Sequence[str], runs: Sequence[Run], *,
                       problem: Any = None, metric: str | None = None) -> list[dict[str, Any]]:
    """Every baseline placed at the exact cost of every run's pick (its best trial, the best
    on confirmation when confirmed): rows of :func:`~searchprune.baselines.evaluate_baselines_at`
    naming the study, sampler, seed and trial under ``at``; ``metric``: default the problem's
    primary cost. Runs without a pick (nothing evaluated, Pareto studies) get none."""
    from searchprune.baselines import evaluate_baselines_at

    winners = [{"study": r.name, "sampler": r.sampler, "seed": r.seed,
                "trial": r.pick["trial"], "top1": r.pick["top1"], "widths": r.pick["widths"]}
               for r in runs if r.pick is not None and r.pick.get("widths")]
    return evaluate_baselines_at(engine, list(names), winners, problem=problem, metric=metric)
