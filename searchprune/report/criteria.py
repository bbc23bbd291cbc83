"""The criteria benchmark (paper Tables 1-2): the same random in-band configurations evaluated
under every importance criterion, a paired comparison.

Each criterion gets its own Optuna study (``<base>-criteria-<name>``) holding the same enqueued
configurations, so the dashboard shows them and an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from searchprune.config import Config

__all__ = ["CriteriaReport", "draw_configs", "plot_criteria", "run_criteria_benchmark",
           "summarise"]

_log = logging.getLogger(__name__)


@dataclass
class CriteriaReport:
    """Per criterion: accuracies on the shared configurations (same order), ratios, seconds."""

    criteria: list[str]
    configs: list[dict[str, float]]
    top1: dict[str, list[float]] = field(default_factory=dict)
    flops_ratio: list[float] = field(default_factory=list)
    params_ratio: dict[str, list[float]] = field(default_factory=dict)
    score_seconds: dict[str, float] = field(default_factory=dict)
    eval_seconds: dict[str, float] = field(default_factory=dict)
    baseline_top1: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "summary": summarise(self)}


def draw_configs(engine, n: int, *, gamma: float, tolerance: float, eta: float, seed: int,
                 groups: Mapping[str, Any] | None = None,
                 max_draws: int = 1_000_000) -> list[dict[str, float]]:
    """``n`` keep-ratio vectors uniform on ``[eta, 1]^L`` (each group's range under the
    ``pruning.groups`` rules ``groups``) conditioned on the FLOPs band."""
    from searchprune.constraints import resolve_bounds
    from searchprune.search.band import Band

    bounds = resolve_bounds(groups, [g.name for g in engine.groups], eta)
    return _draw(engine, n, Band(gamma, tolerance), bounds, seed, max_draws)


def _draw(engine, n: int, band, bounds: Mapping[str, tuple[float, float]], seed: int,
          max_draws: int = 1_000_000) -> list[dict[str, float]]:
    from searchprune.search.band import draws_in_bounds

    out = draws_in_bounds(np.random.default_rng(seed), bounds,
                          lambda r: band.contains_ratios(engine, r), n, max_draws=max_draws)
    if len(out) == n:
        return out
    raise RuntimeError(f"found only {len(out)} in-band configurations in {max_draws} draws")


def run_criteria_benchmark(cfg: Config, criteria: Sequence[str], *, n_configs: int, seed: int,
                           engine=None, storage=None, study_prefix: str = "criteria",
                           on_trial: Callable[[str, int], None] | None = None) -> CriteriaReport:
    """Evaluate ``n_configs`` shared configurations under every criterion (scores computed once
    per criterion and cached; reconstruction as in a study)."""
    from searchprune.criteria import cached_scores
    from searchprune.search.objective import make_objective
    from searchprune.search.problem import resolve_problem

    if engine is None:
        from searchprune.engine import PruningEngine

        engine = PruningEngine.from_config(cfg)
    p = cfg.pruning
    # one problem for every criterion: the criterion changes the scores, not the problem
    problem = resolve_problem(dataclasses.replace(
        cfg, search=dataclasses.replace(cfg.search, sampler="random")), engine)
    band = problem.goal.require_band("the criteria benchmark")
    configs = _draw(engine, n_configs, band, problem.ranges.bounds, seed)
    report = CriteriaReport(list(criteria), configs)
    report.baseline_top1 = engine.evaluate_baseline("val")[0]
    storage = storage if storage is not None else optuna.storages.InMemoryStorage()
    for name in criteria:
        engine.scores, report.score_seconds[name] = cached_scores(
            name, engine.model, engine.space, engine.data, device=engine.device,
            with_seconds=True, model_kwargs=cfg.model.kwargs)
        ccfg = dataclasses.replace(cfg, pruning=dataclasses.replace(p, criterion=name),
                                   search=dataclasses.replace(cfg.search, sampler="random"))
        study = _study(storage, f"{study_prefix}-{name}", ccfg, configs, seed)
        todo = n_configs - len(_complete(study))
        start = time.perf_counter()
        if todo > 0:
            objective = make_objective(problem)

            def callback(st, trial, name=name):
                if on_trial:
                    on_trial(name, trial.number)

            study.optimize(objective, n_trials=todo, callbacks=[callback])
        report.eval_seconds[name] = time.perf_counter() - start
        trials = sorted(_complete(study), key=lambda t: t.number)[:n_configs]
        report.top1[name] = [float(t.value) for t in trials]
        report.params_ratio[name] = [float(t.user_attrs["params_ratio"]) for t in trials]
        if not report.flops_ratio:
            report.flops_ratio = [float(t.user_attrs["flops_ratio"]) for t in trials]
    return report


def _complete(study: optuna.Study):
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _study(storage, name: str, cfg: Config, configs, seed: int) -> optuna.Study:
    from searchprune.provenance import provenance
    from searchprune.redact import public_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    load_if_exists=True, pruner=optuna.pruners.NopPruner(),
                                    sampler=optuna.samplers.RandomSampler(seed=seed))
        study.set_metric_names(["val_top1"])
    if not study.get_trials(deepcopy=False):
        study.set_user_attr("config", public_config(cfg))
        study.set_user_attr("benchmark", "criteria")
        study.set_user_attr("provenance", provenance(cfg))
        for ratios in configs:  # the same configurations, in the same order, for every criterion
            study.enqueue_trial(ratios)
    return study


def summarise(report: CriteriaReport) -> dict[str, Any]:
    """Mean/median/best top-1 per criterion, pairwise win rates, paired Wilcoxon tests."""
    from scipy import stats

    per = {}
    for name in report.criteria:
        acc = report.top1.get(name, [])
        if not acc:
            continue
        per[name] = {
            "mean_top1": statistics.fmean(acc), "median_top1": statistics.median(acc),
            "best_top1": max(acc), "std_top1": statistics.pstdev(acc),
            "flops_ratio": statistics.fmean(report.flops_ratio),
            "params_ratio": statistics.fmean(report.params_ratio[name]),
            "score_seconds": report.score_seconds.get(name, 0.0),
            "eval_seconds": report.eval_seconds.get(name, 0.0),
        }
    wins: dict[str, dict[str, float]] = {a: {} for a in per}
    tests: list[dict[str, Any]] = []
    for a, b in itertools.permutations(per, 2):
        xa, xb = np.array(report.top1[a]), np.array(report.top1[b])
        wins[a][b] = float(np.mean((xa > xb) + 0.5 * (xa == xb)))
    for a, b in itertools.combinations(per, 2):
        xa, xb = np.array(report.top1[a]), np.array(report.top1[b])
        diff = xa - xb
        if np.allclose(diff, 0):
            p = 1.0
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p = float(stats.wilcoxon(xa, xb, zero_method="zsplit").pvalue)
        tests.append({"a": a, "b": b, "mean_diff": float(diff.mean()), "wilcoxon_p": p})
    friedman = None
    if len(per) >= 3 and len(report.configs) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            friedman = float(stats.friedmanchisquare(*[report.top1[n] for n in per]).pvalue)
    return {"criteria": per, "win_rate": wins, "paired_tests": tests, "friedman_p": friedman,
            "n_configs": len(report.configs), "baseline_top1": report.baseline_top1}


def plot_criteria(report: CriteriaReport, path: str) -> str:
    """Accuracy distribution per criterion, with each configuration's paired results joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in report.criteria if report.top1.get(n)]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 3, 4.8))
    data = [report.top1[n] for n in names]
    ax.boxplot(data, showfliers=False, widths=0.5)
    ax.set_xticks(range(1, len(names) + 1), [n.upper() for n in names])
    rows = np.array(data).T  # configs x criteria
    for row in rows:
        ax.plot(range(1, len(names) + 1), row, color="0.7", lw=0.6, zorder=1)
    rng = np.random.default_rng(0)
    for i, acc in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.08, 0.08, len(acc)), acc, s=14, zorder=2)
    if report.baseline_top1 is not None:
        ax.axhline(report.baseline_top1, ls="--", color="k", lw=0.8, label="unpruned")
        ax.legend(loc="lower right")
    ax.set_ylabel("validation top-1 after reconstruction (%)")
    ratio = statistics.fmean(report.flops_ratio) if report.flops_ratio else float("nan")
    ax.set_title(f"{len(report.configs)} shared random configurations, FLOPs ratio {ratio:.3f}")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
