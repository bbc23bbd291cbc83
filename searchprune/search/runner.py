"""One study run as a straight line: storage, study, engine, band check, sampler, optimize.

Single- and multi-objective studies take the same path; what differs is described by an
:class:`~searchprune.search.problem.ObjectiveSpec` (directions, metric names, the band, how a
trial's value is computed). The config is read once into a
:class:`~searchprune.search.problem.Problem` (the ranges, the band and limits with their gate,
the objective, the latency table) that every later step receives.

The budget counts evaluated (COMPLETE) trials across all workers, exactly (see
:mod:`searchprune.search.budget`); re-running a study that already has them does nothing, and
re-running with a higher ``n_trials`` continues it. Every worker that joins a study gets the next
worker index (study user attr ``workers_joined``, taken under the study lock): Optuna's samplers
are seeded from ``(seed, trials stored, worker index)`` so simultaneous workers do not propose the
same configurations. Trials FAILed by a signal are enqueued again (``requeued_from``) when a
worker joins, as the heartbeat retries a dead worker's trial.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

import searchprune.search.callbacks as cb
from searchprune.config import Config, config_to_dict, upgrade_stored
from searchprune.errors import StudyConfigMismatch
from searchprune.provenance import provenance
from searchprune.redact import public_config
from searchprune.search._interrupt import Interrupted, InterruptGuard, StudyInterrupted
from searchprune.search._liveness import REQUEUED_ATTR, drop_waiting, reap_dead_workers
from searchprune.search.budget import Budget, Lock, StopAtBudget, study_lock
from searchprune.search.callbacks import RUN_ENV
from searchprune.search.confirm import pending
from searchprune.search.identity import ensure_study_uuid
from searchprune.search.objective import Counters, make_objective, make_pruner
from searchprune.search.problem import (
    Goal,
    ObjectiveSpec,
    Problem,
    describe_goal,
    resolve_problem,
)
from searchprune.search.samplers import make_sampler, sampler_spec
from searchprune.search.storage import get_storage
from searchprune.search.trials import n_evaluated

if TYPE_CHECKING:
    from searchprune.engine import Engine

__all__ = ["CONFIG_ATTR", "LATENCY_ATTR", "RUNTIME_KEYS", "config_diff", "derive_study_name",
           "open_storage", "preflight", "run_study"]

CONFIG_ATTR = "config"
LATENCY_ATTR = "latency"  # study user attr: the latency table's summary (latency.py)
WORKERS_ATTR = "workers_joined"
# Keys that say how or where to run, not what to search: they may differ between runs of a study.
RUNTIME_KEYS = frozenset({
    "search.n_trials", "search.study_name", "storage", "source", "device",
    "search.heartbeat_interval", "search.grace_period", "search.max_retry",
    "model.trust_checkpoint", "search.max_consecutive_failures",
    "finetune.distill.alpha", "finetune.distill.temperature",  # fine-tuning, not the search
})
_log = logging.getLogger(__name__)


def run_study(cfg: Config, *, engine: Engine | None = None, progress: bool = True,
              force_config: bool = False, storage: optuna.storages.BaseStorage | None = None,
              callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
              objective: ObjectiveSpec | None = None) -> optuna.Study:
    """Run (or continue) the study until it holds ``cfg.search.n_trials`` evaluated trials.

    ``objective`` describes what is optimised (default :func:`describe_objective` of ``cfg``:
    ``search.objective`` single or pareto). ``storage`` replaces ``cfg.storage`` (e.g. an
    ``InMemoryStorage`` for quick experiments); ``callbacks`` are added to the study's own
    (budget, rejection tally, progress). Any number of processes may run this on one study in a
    shared storage; together they stop at exactly ``n_trials`` evaluated trials. SIGINT/SIGTERM
    abandon the trial in flight (FAIL, with a ``fail_reason``) and raise
    :class:`StudyInterrupted`.

    Raises:
        StudyConfigMismatch: the study exists with a different config (unless ``force_config``).
        BandError: no configuration in ``[eta, 1]^L`` can reach the FLOPs band.
        StorageError: the storage cannot be opened.
        StudyInterrupted: a SIGINT or SIGTERM arrived (exit code 130 or 143).
    """
    goal = describe_goal(cfg, objective)
    storage, existing = preflight(cfg, force_config=force_config, storage=storage,
                                  check_names=engine is None, objective=goal.objective)
    if existing is not None and n_evaluated(existing) >= cfg.search.n_trials:
        config = public_config(cfg)
        if force_config and existing.user_attrs.get(CONFIG_ATTR) != config:
            # no trial runs, but finetune and export read the stored config: store the new one
            existing.set_user_attr(CONFIG_ATTR, config)
        tidy_up(existing, study_lock(storage, existing.study_name), cfg.search.n_trials)
        if goal.confirm is not None and pending(existing, goal.confirm):
            _confirm_finished(existing, cfg, goal, engine, storage, progress)
        return existing
    counters = Counters()
    with InterruptGuard() as guard:
        try:
            study = _prepare_and_optimize(cfg, goal, engine, storage, progress, callbacks,
                                          guard, counters)
        except KeyboardInterrupt as exc:
            raise StudyInterrupted(getattr(exc, "signum", 2), counters.interrupted) from None
    if guard.pending is not None:  # stopped between trials
        raise StudyInterrupted(guard.pending, counters.interrupted)
    return study


def preflight(cfg: Config, *, force_config: bool = False,
              storage: optuna.storages.BaseStorage | None = None, check_names: bool = True,
              objective: ObjectiveSpec | None = None
              ) -> tuple[optuna.storages.BaseStorage, optuna.Study | None]:
    """The cheap checks, before any model or data is loaded: registry names (criterion,
    pruner), the storage, a stored study's config and directions. Returns the storage and the
    existing study (or None)."""
    if check_names:
        check_names_exist(cfg)
    sampler_spec(cfg.search.sampler)  # a user's package.module:factory imports, or fails, here
    storage = storage if storage is not None else open_storage(cfg)
    existing = _load_study(derive_study_name(cfg), storage)
    if existing is not None:
        spec = objective if objective is not None else describe_goal(cfg).objective
        if len(existing.directions) != len(spec.directions):
            kinds = {1: "single-objective", 2: "multi-objective"}
            raise StudyConfigMismatch(
                f"study '{existing.study_name}' is {kinds.get(len(existing.directions))}, this "
                f"config is {kinds.get(len(spec.directions))}; pass --study-name to start a "
                "new study")
        _check_config(existing, public_config(cfg), force_config)
    return storage, existing


def check_names_exist(cfg: Config) -> None:
    """Fail in milliseconds on an unknown criterion or pruner, or a device this machine lacks
    (the sampler and other choices are checked when the config is loaded)."""
    from searchprune.criteria import get_criterion
    from searchprune.engine import resolve_device

    make_pruner(cfg.search.pruner)
    get_criterion(cfg.pruning.criterion)
    resolve_device(cfg.device)


def _prepare_and_optimize(cfg: Config, goal: Goal, engine: Engine | None,
                          storage: optuna.storages.BaseStorage, progress: bool,
                          callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]],
                          guard: InterruptGuard, counters: Counters) -> optuna.Study:
    if engine is None:
        from searchprune.engine import engine_for

        engine = engine_for(cfg, progress=progress)
    problem = resolve_problem(cfg, engine, goal=goal)  # every config error, before any trial
    if problem.ranges.restricted and progress:
        low, high = problem.reachable
        n_free = len(problem.ranges.free)
        sys.stderr.write(f"pruning.groups: reachable FLOPs ratios [{low:.4f}, {high:.4f}]; "
                         f"{n_free} groups searched, "
                         f"{len(problem.ranges.ranges) - n_free} fixed\n")
    name = derive_study_name(cfg)
    study = optuna.create_study(storage=storage, study_name=name,
                                directions=list(goal.objective.directions), load_if_exists=True,
                                pruner=make_pruner(cfg.search.pruner))
    lock = study_lock(storage, name)
    ensure_study_uuid(study, lock)  # identifies this study, not another of its name
    worker, first = _join(study, lock)
    problem = _with_latency(study, lock, problem, progress)
    if problem.cfg.search.warm_start == "sensitivity":  # ``auto`` resolved by the problem
        from searchprune.search.sensitivity import enqueue_warm_start

        enqueue_warm_start(study, problem, lock, storage)
    warm = study.user_attrs.get("warm_start")
    study.sampler = make_sampler(cfg.search.sampler, problem.sampler_context(
        n_existing=len(study.get_trials(deepcopy=False)), worker=worker,
        warm=warm.get("allocation") if warm else None))
    _describe(study, problem, cfg)
    dead_stay_running = isinstance(storage, optuna.storages.RDBStorage) and not getattr(
        storage, "heartbeat_interval", None)
    budget = Budget(cfg.search.n_trials, lock, check=guard.check,
                    wait_for_others=not dead_stay_running)
    failures = cb.StopOnFailures(cfg.search.max_consecutive_failures, first=first, lock=lock,
                                 run=os.environ.get(RUN_ENV) or uuid.uuid4().hex)
    if failures.marked(study) is None:  # another worker of this run may have stopped it
        with guard.deferred():
            _optimize(study, cfg, progress, [failures, *callbacks],
                      make_objective(problem, counters, budget=budget, guard=guard), guard,
                      counters)
            tidy_up(study, lock, cfg.search.n_trials)
    mark = failures.mark or failures.marked(study)
    if mark is not None and guard.pending is None:
        raise cb.TrialsFailing(mark)
    if problem.goal.confirm is not None and guard.pending is None:
        with guard.deferred():  # a signal abandons the evaluation in flight, never a write
            _confirm(study, problem, lock, progress, guard)
    return study


def _confirm(study: optuna.Study, problem: Problem, lock: Lock, progress: bool,
             guard: InterruptGuard | None = None) -> None:
    """``search.confirm``: the top-k trials re-scored on the confirmation images (those that
    another worker or an earlier run has not confirmed yet)."""
    from searchprune.search.confirm import confirm_study

    spec = problem.goal.confirm
    todo = len(pending(study, spec)) if spec is not None else 0
    if progress and todo:
        sys.stderr.write(f"confirming the top {spec.top_k} trials on the confirmation images "
                         f"({todo} to evaluate)\n")
    confirm_study(study, problem, lock=lock, guard=guard)


def _confirm_finished(study: optuna.Study, cfg: Config, goal: Goal, engine: Engine | None,
                      storage: optuna.storages.BaseStorage, progress: bool) -> None:
    """Confirm a study that already holds its trials (the engine built only now)."""
    if engine is None:
        from searchprune.engine import engine_for

        engine = engine_for(cfg, progress=progress)
    problem = resolve_problem(cfg, engine, goal=goal)
    with InterruptGuard() as guard, guard.deferred():
        try:
            _confirm(study, problem, study_lock(storage, study.study_name), progress, guard)
        except KeyboardInterrupt as exc:
            raise StudyInterrupted(getattr(exc, "signum", 2)) from None


def _with_latency(study: optuna.Study, lock: Lock, problem: Problem,
                  progress: bool) -> Problem:
    """The problem with the study's latency table (measured by the first worker, shared
    through the study) when it needs one."""
    if problem.goal.latency is None:
        return problem
    from searchprune.latency import study_latency

    return problem.with_latency(study_latency(study, lock, problem.engine, problem.goal.latency,
                                              progress=progress))


def tidy_up(study: optuna.Study, lock: Lock, n_trials: int) -> None:
    """Trials of dead workers on this host FAIL; once ``n_trials`` are evaluated, retries
    still WAITING are dropped: no WAITING or RUNNING trial of this host is left behind."""
    with lock():
        reap_dead_workers(study)
        if n_evaluated(study) >= n_trials:
            drop_waiting(study, f"not run: the study already holds {n_trials} evaluated trials")


def _join(study: optuna.Study, lock: Lock) -> tuple[int, int]:
    """This worker's index (0 for the first ever) and the number its trials start from
    (its count of failures in a row starts there); re-enqueue trials FAILed by a signal."""
    with lock():
        reap_dead_workers(study)  # a worker killed on this host: FAIL and retry at once
        index = int(study.user_attrs.get(WORKERS_ATTR, 0))
        study.set_user_attr(WORKERS_ATTR, index + 1)
        trials = study.get_trials(deepcopy=False)
        done = {t.user_attrs.get(REQUEUED_ATTR) for t in trials}
        for t in trials:
            reason = str(t.user_attrs.get("fail_reason", ""))
            if (t.state == TrialState.FAIL and reason.startswith("interrupted")
                    and t.number not in done and t.params):
                study.enqueue_trial(t.params, user_attrs={REQUEUED_ATTR: t.number})
    return index, len(trials)


def open_storage(cfg: Config) -> optuna.storages.BaseStorage:
    s = cfg.search
    return get_storage(cfg.storage, heartbeat_interval=s.heartbeat_interval,
                       grace_period=s.grace_period, max_retry=s.max_retry)


def derive_study_name(cfg: Config) -> str:
    """``search.study_name``, else the config file's stem, else ``searchprune``."""
    if cfg.search.study_name:
        return cfg.search.study_name
    return Path(cfg.source).stem if cfg.source else "searchprune"


def config_diff(stored: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ, runtime keys excluded: ``{key: (stored, new)}``."""
    a, b = _flatten(upgrade_stored(stored)), _flatten(new)
    # A key added to the schema after a study was stored compares as its default value.
    defaults = _flatten(config_to_dict(Config()))
    a, b = {**defaults, **a}, {**defaults, **b}
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in RUNTIME_KEYS and a.get(k) != b.get(k)}


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _load_study(name: str, storage: optuna.storages.BaseStorage) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _check_config(study: optuna.Study, config: dict[str, Any], force: bool) -> None:
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        return
    diff = config_diff(stored, config)
    if not diff:
        return
    shown = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in list(diff.items())[:6])
    if len(diff) > 6:
        shown += f", and {len(diff) - 6} more"
    if not force:
        raise StudyConfigMismatch(
            f"study '{study.study_name}' exists with a different config: {shown}; pass "
            "--study-name to start a new study or --force-config to continue this one")
    _log.warning("continuing study '%s' with a changed config: %s", study.study_name, shown)


def _describe(study: optuna.Study, problem: Problem, cfg: Config) -> None:
    """Study user attrs (config: ``cfg`` as given, its ``auto`` settings unresolved, so a
    resumed study compares like with like; baseline, base cost, latency table summary), metric
    names and a dashboard note."""
    engine, latency = problem.engine, problem.latency
    attrs = study.user_attrs
    config = public_config(cfg)
    if attrs.get(CONFIG_ATTR) != config:
        study.set_user_attr(CONFIG_ATTR, config)
        _save_note(study, problem)
    if latency is not None and attrs.get(LATENCY_ATTR) != latency.summary():
        study.set_user_attr(LATENCY_ATTR, latency.summary())
    if "baseline_val_top1" not in attrs:
        top1, top5 = engine.evaluate_baseline("val")
        base = engine.base_cost
        for key, value in {
            "baseline_val_top1": float(top1), "baseline_val_top5": float(top5),
            "base_cost": {"flops": int(base.flops), "macs": int(base.macs),
                          "params": int(base.params)},
            "groups": {g.name: int(g.channels) for g in engine.groups},
            "engine_seconds": {k: float(v) for k, v in engine.seconds.items()},
            "provenance": provenance(cfg, getattr(engine, "data", None)),
        }.items():
            study.set_user_attr(key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(problem.objective.metric_names))


def note_lines(study_name: str, problem: Problem) -> list[str]:
    """The dashboard note of a study (Markdown lines)."""
    cfg, spec, engine = problem.cfg, problem.objective, problem.engine
    p, s = cfg.pruning, cfg.search
    low = problem.reachable[0]
    band = spec.band
    goal = (f"- objectives: maximise `val_top1` (%), minimise `{spec.cost}_ratio`; Pareto front "
            f"over FLOPs ratio {band.gamma - band.tolerance:g} to "
            f"{band.gamma + band.tolerance:g}" if spec.multi and band is not None
            else "- objective: maximise `val_top1` (%)")
    where = (f"FLOPs ratio {band.gamma:g} ± {band.tolerance:g} ({spec.target})"
             if band is not None else f"no FLOPs band; {spec.target}")
    return [
        f"# {study_name}" + (" (Pareto front)" if spec.multi else ""),
        f"- model: `{cfg.model.name}` on `{cfg.data.name}` ({cfg.setting})",
        goal,
        f"- band: {where}; "
        f"keep-ratios in [{p.eta}, 1] (reachable FLOPs ratios [{low:.3f}, 1])",
        f"- criterion: `{p.criterion}`, proxy: `{p.proxy}`",
        f"- sampler: `{s.sampler}` (seed {s.seed}), target {s.n_trials} evaluated trials",
        f"- prunable groups: {len(engine.groups)}, base FLOPs {engine.base_cost.flops:,}",
        f"- config file: `{cfg.source}`",
    ]


def _save_note(study: optuna.Study, problem: Problem) -> None:
    try:
        from optuna_dashboard import save_note
    except ImportError:
        return
    save_note(study, "\n".join(note_lines(study.study_name, problem)))


def _optimize(study: optuna.Study, cfg: Config, progress: bool,
              callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]],
              objective: Callable[[optuna.Trial], Any], guard: InterruptGuard,
              counters: Counters) -> None:
    target = cfg.search.n_trials
    quiet = _QuietFailures(counters)
    optuna_log = logging.getLogger("optuna.study._optimize")
    optuna_log.addFilter(quiet)
    try:
        with cb.ProgressCallback(target, enabled=progress) as bar, warnings.catch_warnings():
            # CMA-ES warns that it ignores constraints: by design, the objective projects.
            warnings.filterwarnings("ignore", message="Constraints have been set, but CmaEs")
            study.optimize(objective, n_trials=None, callbacks=[
                cb.StopOnSignal(guard), StopAtBudget(target),
                cb.RecordRejections(), cb.StopOnRejections(), bar, *callbacks,
            ])
    finally:
        optuna_log.removeFilter(quiet)


class _QuietFailures(logging.Filter):
    """Optuna logs a FAILed trial in two lines (with its traceback or its parameters); the
    objective has already logged it in one (a signal, or the failure's reason), so these go."""

    def __init__(self, counters: Counters) -> None:
        super().__init__()
        self.counters = counters
        self._follow_up: str | None = None  # Optuna's second line about an interrupted trial

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        if isinstance(exc, Interrupted):
            self._follow_up = message.split(" failed with")[0] + " failed with value"
            return False
        if self._follow_up and message.startswith(self._follow_up):
            return False
        return not any(message.startswith(f"Trial {n} failed with ")
                       for n in self.counters.failures[-2:])
