"""Sampler comparison: anytime curves and summary numbers from finished studies (no CLI, no plots).

A comparison is a set of studies on one problem that differ only in sampler and seed. Each study
becomes a :class:`Run` (its evaluated trials in trial-number order, cut at the budget); the
report aggregates runs per sampler (:func:`compare_runs`):

- the anytime curve: best-so-far validation top-1 after k evaluated trials (COMPLETE, or stopped
  early by the median pruner: those improve nothing), or, for a Pareto study, the hypervolume
  of the front so far (accuracy as a fraction, reference point ``(0, 1.0)``: 0 % accuracy at
  the unpruned FLOPs);
- final value, mean ± std over seeds (sample std);
- evaluations needed to reach the reference sampler's (random search's) mean final value, over the
  seeds that reach it;
- rejected proposals (out-of-band, never evaluated) and wall time, both up to the budget;
- each study's pick (the best trial, the best on confirmation when the study was confirmed:
  ``search.confirm``) with its cost ratio, so every row of the table shows its cost.

Baseline rows (:mod:`searchprune.baselines`) sit at the band (``baselines_at="band"``) or at
the exact cost of each study's pick (``"winner"``): then each sampler is compared with the
baselines placed at its own picks, pick by pick (paired differences at the same cost).

A warm-started study (``search.warm_start: sensitivity``) first spent its sensitivity prior (its
``offset``: the evaluations the prior is charged, a full scan's network evaluations, a cheaper
prior's images in evaluation equivalents; :mod:`searchprune.search.sensitivity`): they count
against the budget, so such a run keeps only ``budget - offset`` of its own evaluations, its
curve starts at ``offset + 1`` and its evaluations-to-reach include the prior (equal total
cost).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from searchprune.search.pareto import (
    HV_REFERENCE,
    hypervolume_2d,
    hypervolume_curve,
    pareto_front,
)

if TYPE_CHECKING:
    import optuna

__all__ = ["Comparison", "CurveBand", "Run", "SamplerRow", "best_so_far", "compare_runs",
           "evals_to_reach", "hypervolume_2d", "hypervolume_curve", "pareto_front",
           "run_from_study", "to_markdown"]

# -- one study --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One study of a comparison, reduced to what the report needs.

    ``points`` are the evaluated trials in trial-number order: ``(top1,)`` for a single-objective
    study, ``(top1, flops_ratio)`` for a Pareto study (top-1 in percent).
    """

    name: str
    sampler: str
    seed: int
    points: tuple[tuple[float, ...], ...]
    rejected: int = 0
    wall_seconds: float | None = None
    objective: str = "single"
    offset: int = 0  # network evaluations spent before the first trial (a warm start's scan)
    # the study's pick within the budget (single objective): trial, top1 (validation),
    # confirm_top1 (None: not confirmed), the cost ratios it recorded and its widths
    pick: dict[str, Any] | None = None

    @property
    def curve(self) -> list[float]:
        """The anytime curve: best-so-far top-1 or hypervolume-so-far, one value per evaluation."""
        if self.objective == "pareto":
            return hypervolume_curve([(a, r) for a, r, *_ in self.points])
        return best_so_far(p[0] for p in self.points)


def run_from_study(study: optuna.Study, sampler: str, seed: int,
                   budget: int | None = None) -> Run:
    """Reduce a stored study to a :class:`Run`, counting only the trials up to (and including)
    the ``budget``-th evaluated one, so an extended study is compared on the same budget. A
    candidate the median pruner stopped is an evaluation that improves nothing (``-inf``). A
    warm start's prior (study attr ``warm_start``: the evaluations it is charged) is the run's
    ``offset`` and is taken from the budget."""
    from searchprune.search.sensitivity import charged_evaluations
    from searchprune.search.trials import is_evaluated, is_multi_objective, rejected_proposals

    offset = charged_evaluations(study.user_attrs.get("warm_start"))
    if budget is not None:
        budget = max(0, budget - offset)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    kept, n_done = [], 0
    for t in trials:
        if budget is not None and n_done >= budget:
            break
        kept.append(t)
        n_done += is_evaluated(t)
    pareto = is_multi_objective(study)
    points = tuple(
        tuple(float(v) for v in (t.values if pareto else t.values[:1])) if t.values is not None
        else (-math.inf,) for t in kept if is_evaluated(t))
    return Run(name=study.study_name, sampler=sampler, seed=seed, points=points,
               rejected=rejected_proposals(kept), wall_seconds=_wall_seconds(kept),
               objective="pareto" if pareto else "single", offset=offset,
               pick=None if pareto else _pick(study, {t.number for t in kept}))


_PICK_COSTS = ("flops_ratio", "params_ratio", "latency_ratio")


def _pick(study: optuna.Study, numbers: set[int]) -> dict[str, Any] | None:
    """The study's pick among the trials ``numbers``: the best on confirmation when confirmed,
    else the best on validation (:func:`~searchprune.search.confirm.ranked_trials`)."""
    from searchprune.search.confirm import confirmations, ranked_trials
    from searchprune.search.trials import top1

    best = next((t for t in ranked_trials(study) if t.number in numbers), None)
    if best is None:
        return None
    confirmed = confirmations(study).get(best.number)
    u = best.user_attrs
    return {"trial": best.number, "top1": top1(best),
            "confirm_top1": confirmed.top1 if confirmed is not None else None,
            **{k: u[k] for k in _PICK_COSTS if k in u}, "widths": u.get("widths")}


def _wall_seconds(trials: Sequence[Any]) -> float | None:
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    ends = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    if not starts or not ends:
        return None
    return (max(ends) - min(starts)).total_seconds()


# -- curves and fronts ------------------------------------------------------------------------
def best_so_far(values: Iterable[float]) -> list[float]:
    out: list[float] = []
    for v in values:
        out.append(v if not out else max(out[-1], v))
    return out


def evals_to_reach(curve: Sequence[float], target: float) -> int | None:
    """The number of evaluations after which ``curve`` first reaches ``target`` (1-based)."""
    for k, v in enumerate(curve, start=1):
        if v >= target - 1e-12:
            return k
    return None


# -- aggregation ------------------------------------------------------------------------------
@dataclass
class CurveBand:
    """Anytime curve of one sampler over seeds: ``k[i]`` evaluations -> mean/std/min/max over the
    ``n[i]`` seeds that have at least ``k[i]`` evaluations."""

    k: list[int] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    min: list[float] = field(default_factory=list)
    max: list[float] = field(default_factory=list)
    n: list[int] = field(default_factory=list)


@dataclass
class SamplerRow:
    sampler: str
    seeds: list[int]
    evaluated: list[int]
    finals: list[float]
    final_mean: float
    final_std: float
    reach: list[int | None]
    reach_mean: float | None
    reached: int
    rejected: list[int]
    rejected_mean: float
    wall_seconds: list[float | None]
    wall_mean: float | None
    offsets: list[int] = field(default_factory=list)  # scan evaluations before the first trial
    pick_top1: list[float | None] = field(default_factory=list)  # each seed's pick, validation
    pick_confirm: list[float | None] = field(default_factory=list)  # ... on confirmation
    pick_cost: list[float | None] = field(default_factory=list)  # ... its cost ratio
    # baselines_at "winner": baseline name -> pick top-1 minus that baseline's at the pick's cost
    paired: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Comparison:
    objective: str
    metric: str
    reference_sampler: str
    target: float | None
    budget: int | None
    rows: list[SamplerRow]
    curves: dict[str, CurveBand]
    studies: list[str]
    # configurations chosen without search (searchprune.baselines), scored like trials
    references: list[dict[str, Any]] = field(default_factory=list)
    # the cost every row shows: the primary cost (FLOPs band, else the limit; a Pareto study's
    # second objective, search.pareto_cost)
    cost: str = "flops"
    baselines_at: str = "band"  # "winner": each reference row at a study's pick's cost

    def best_reference(self) -> dict[str, Any] | None:
        if self.baselines_at == "winner":
            return None
        return max(self.references, key=lambda r: r["top1"], default=None)

    def reference_lines(self) -> list[tuple[str, float]]:
        """What the anytime plot draws for the baselines: each one (at the band), or each
        one's mean over the picks it was placed at (``winner``)."""
        if self.baselines_at != "winner":
            return [(f"{r['name']}, no search", r["top1"]) for r in self.references]
        groups = _by_pick_sampler(self.references)
        return [(f"{name} at {sampler}'s picks, no search", _mean([r["top1"] for r in rows]))
                for (name, sampler), rows in groups.items()]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_runs(runs: Sequence[Run], *, reference: str = "random",
                 budget: int | None = None,
                 references: Sequence[Mapping[str, Any]] = (),
                 cost: str = "flops", baselines_at: str = "band") -> Comparison:
    """Aggregate runs per sampler (in first-seen order). The target for "evaluations to reach"
    is the reference sampler's mean final value (None when it has no runs). ``references`` are
    baseline rows (:func:`searchprune.baselines.evaluate_baselines`, or with ``baselines_at=
    "winner"`` :func:`~searchprune.baselines.evaluate_baselines_at`, whose rows name the study
    whose pick they were placed at under ``at``)."""
    if not runs:
        raise ValueError("no runs to compare")
    objective = runs[0].objective
    by_sampler: dict[str, list[Run]] = {}
    for r in runs:
        by_sampler.setdefault(r.sampler, []).append(r)
    ref_finals = [r.curve[-1] for r in by_sampler.get(reference, []) if r.curve]
    target = _mean(ref_finals) if ref_finals else None
    rows = [_row(s, rs, target, cost, references if baselines_at == "winner" else ())
            for s, rs in by_sampler.items()]
    curves = {s: _band([r.curve for r in rs], offset=min(r.offset for r in rs))
              for s, rs in by_sampler.items()}
    metric = "hypervolume" if objective == "pareto" else "best val top-1 (%)"
    return Comparison(objective, metric, reference, target, budget, rows, curves,
                      [r.name for r in runs], [dict(r) for r in references], cost, baselines_at)


def _row(sampler: str, runs: list[Run], target: float | None, cost: str = "flops",
         at_picks: Sequence[Mapping[str, Any]] = ()) -> SamplerRow:
    curves = [r.curve for r in runs]
    finals = [c[-1] for c in curves if c]
    reach = [_shift(evals_to_reach(c, target), r.offset) if target is not None else None
             for c, r in zip(curves, runs)]
    reached = [k for k in reach if k is not None]
    walls = [r.wall_seconds for r in runs]
    known_walls = [w for w in walls if w is not None]
    return SamplerRow(
        sampler=sampler, seeds=[r.seed for r in runs], evaluated=[len(c) for c in curves],
        finals=finals, final_mean=_mean(finals), final_std=_std(finals), reach=reach,
        reach_mean=_mean(reached) if reached else None, reached=len(reached),
        rejected=[r.rejected for r in runs], rejected_mean=_mean([r.rejected for r in runs]),
        wall_seconds=walls, wall_mean=_mean(known_walls) if known_walls else None,
        offsets=[r.offset for r in runs],
        pick_top1=[(r.pick or {}).get("top1") for r in runs],
        pick_confirm=[(r.pick or {}).get("confirm_top1") for r in runs],
        pick_cost=[(r.pick or {}).get(f"{cost}_ratio") for r in runs],
        paired=_paired(runs, at_picks))


def _paired(runs: list[Run], references: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Per baseline: each run's pick top-1 minus the baseline's placed at that pick's cost."""
    out: dict[str, list[float]] = {}
    picks = {r.name: (r.pick or {}).get("top1") for r in runs}
    for ref in references:
        study = (ref.get("at") or {}).get("study")
        if picks.get(study) is not None:
            out.setdefault(ref["name"], []).append(picks[study] - ref["top1"])
    return out


def _by_pick_sampler(references: Sequence[Mapping[str, Any]]
                     ) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """Baseline rows placed at picks, grouped by (baseline, the picks' sampler), in order."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for ref in references:
        key = (ref["name"], str((ref.get("at") or {}).get("sampler")))
        groups.setdefault(key, []).append(ref)
    return groups


def _shift(k: int | None, offset: int) -> int | None:
    return None if k is None else k + offset


def _band(curves: Sequence[Sequence[float]], offset: int = 0) -> CurveBand:
    """Mean/std/min/max over seeds at each evaluation; ``k`` counts ``offset`` evaluations
    spent before the curves start."""
    band = CurveBand()
    for k in range(1, max((len(c) for c in curves), default=0) + 1):
        at = [c[k - 1] for c in curves if len(c) >= k]
        band.k.append(k + offset)
        band.mean.append(_mean(at))
        band.std.append(_std(at))
        band.min.append(min(at))
        band.max.append(max(at))
        band.n.append(len(at))
    return band


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else math.nan


def _std(xs: Sequence[float]) -> float:
    """Sample standard deviation (0 for a single value)."""
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


# -- text -------------------------------------------------------------------------------------
def table_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    """Column headers and formatted cells of the summary table (Markdown and the terminal).
    Every row shows its cost (each sampler's picks, each baseline's configuration); with
    confirmed studies a column shows the picks' validation and confirmation top-1."""
    fmt = "{:.4f}" if c.objective == "pareto" else "{:.2f}"
    final = "final HV" if c.objective == "pareto" else "final best %"
    cost = f"{cost_label(c.cost)} ratio"
    confirmed = any(v is not None for r in c.rows for v in r.pick_confirm)
    cols = ["sampler", "seeds", "evaluated", f"{final} (mean ± std)", "per seed",
            f"evals to reach {c.reference_sampler}", "rejected (mean)", "wall (mean)", cost]
    if confirmed:
        cols.append("pick val / confirm %")
    best_ref = c.best_reference()
    paired = _paired_label(c)
    if best_ref is not None:
        cols.append(f"vs {best_ref['name']}")
    elif paired is not None:
        cols.append(paired)
    rows = []
    for r in c.rows:
        row = [
            r.sampler, str(len(r.seeds)), _evaluated_text(r),
            f"{fmt.format(r.final_mean)} ± {fmt.format(r.final_std)}",
            ", ".join(fmt.format(v) for v in r.finals),
            _reach_text(r, c.target), f"{r.rejected_mean:.1f}",
            "-" if r.wall_mean is None else _duration(r.wall_mean), _cost_text(r.pick_cost),
        ] + ([_pick_text(r)] if confirmed else [])
        if best_ref is not None:
            row.append(f"{r.final_mean - best_ref['top1']:+.2f}")
        elif paired is not None:
            row.append(_paired_text(r, paired))
        rows.append(row)
    extra = len(cols) - 9 - (1 if confirmed else 0)
    for name, refs in _reference_groups(c):
        tops = [ref["top1"] for ref in refs]
        rows.append([
            name, str(len(refs)) if c.baselines_at == "winner" else "-",
            _reference_evaluations(refs[0]),
            f"{_mean(tops):.2f}" + (f" ± {_std(tops):.2f}" if len(tops) > 1 else ""),
            (", ".join(f"{v:.2f}" for v in tops) if c.baselines_at == "winner"
             else f"FLOPs {refs[0]['flops_ratio']:.3f}, params {refs[0]['params_ratio']:.3f}"),
            "-", "-", _duration(sum(ref["seconds_solve"] + ref["seconds_evaluate"]
                                    for ref in refs) / len(refs)),
            _cost_text([ref.get(f"{c.cost}_ratio") for ref in refs]),
        ] + (["-"] if confirmed else []) + ["-"] * extra)
    return cols, rows


def _reference_groups(c: Comparison) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """The reference rows of the table: each baseline (at the band), or each baseline at each
    sampler's picks."""
    if c.baselines_at != "winner":
        return [(f"{ref['name']} (no search)", [ref]) for ref in c.references]
    return [(f"{name} at {sampler}'s picks (no search)", refs)
            for (name, sampler), refs in _by_pick_sampler(c.references).items()]


def _paired_label(c: Comparison) -> str | None:
    """The header of the paired column (baselines at each pick's cost), None without it:
    ``vs NAME`` when one baseline is the strongest for every sampler, else ``vs best
    baseline``."""
    if c.baselines_at != "winner" or not any(r.paired for r in c.rows):
        return None
    names = {_strongest(r) for r in c.rows if r.paired}
    which = names.pop() if len(names) == 1 else "best baseline"
    return f"vs {which} (paired, same cost)"


def _strongest(r: SamplerRow) -> str:
    """The baseline the sampler's picks beat by the least (the strongest at their costs)."""
    return min(r.paired, key=lambda n: _mean(r.paired[n]))


def _paired_text(r: SamplerRow, label: str) -> str:
    if not r.paired:
        return "-"
    name = _strongest(r)
    diffs = r.paired[name]
    text = f"{_mean(diffs):+.2f}" + (f" ± {_std(diffs):.2f}" if len(diffs) > 1 else "")
    return text if label.startswith(f"vs {name} ") else f"{text} ({name})"


def _cost_text(values: Sequence[float | None]) -> str:
    """``0.515``, or the mean and range ``0.512 (0.510-0.515)`` of several."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    if max(known) - min(known) < 5e-4:
        return f"{_mean(known):.3f}"
    return f"{_mean(known):.3f} ({min(known):.3f}-{max(known):.3f})"


def _pick_text(r: SamplerRow) -> str:
    vals = [v for v in r.pick_top1 if v is not None]
    confs = [v for v in r.pick_confirm if v is not None]
    if not vals:
        return "-"
    return f"{_mean(vals):.2f} / " + (f"{_mean(confs):.2f}" if confs else "-")


def to_markdown(c: Comparison, *, title: str = "Sampler comparison",
                images: Mapping[str, str] | None = None) -> str:
    """The report as Markdown: what was compared, the table, and the figures."""
    cols, rows = table_rows(c)
    target = "-" if c.target is None else (
        f"{c.target:.4f}" if c.objective == "pareto" else f"{c.target:.2f}%")
    lines = [
        f"# {title}", "",
        f"- objective: {c.objective}; anytime metric and 'final': {c.metric} after the budget",
        f"- budget: {c.budget if c.budget is not None else 'all'} evaluated trials (COMPLETE, "
        "or stopped early by the pruner) per study; the curves follow trial numbers; a "
        "warm-started sampler's sensitivity scan ('N scan + M') counts against the budget and "
        "in 'evals to reach'",
        f"- target for 'evals to reach': {c.reference_sampler}'s mean final value ({target}); "
        "the mean counts the seeds that reach it (reached/seeds in brackets)",
        "- rejected proposals: out-of-band configurations that were never evaluated (draws "
        "rejected inside the random and TPE samplers, PRUNED out-of-band trials of any other)",
        "- wall time: first trial start to the budget-th evaluation's end (per study)",
    ]
    lines.append(f"- {cost_label(c.cost)} ratio: of each sampler's picks (the best trial of "
                 "each study, the best on confirmation when the study was confirmed; mean and "
                 "range over seeds) and of each baseline")
    if any(v is not None for r in c.rows for v in r.pick_confirm):
        lines.append("- pick val / confirm: the picks' validation top-1 and their top-1 on the "
                     "confirmation images (disjoint from validation, calibration and test), "
                     "mean over seeds")
    if c.references and c.baselines_at == "winner":
        lines.append("- rows marked '(no search)': baselines a user gets without searching, "
                     f"each placed at the exact {cost_label(c.cost)} ratio of one study's pick "
                     "(within one channel) and scored with the same proxy on the same "
                     "validation images; the last column is each sampler's pick minus the "
                     "baseline at that pick's cost (paired over seeds, same cost)")
    elif c.references:
        lines.append("- rows marked '(no search)': baselines a user gets without searching, "
                     "scored with the same proxy on the same validation images; the last column "
                     "is each sampler's mean final value minus the best of them")
    if c.objective == "pareto":
        lines.append(f"- hypervolume: accuracy as a fraction x {cost_label(c.cost)} ratio, "
                     "reference point "
                     f"{HV_REFERENCE}")
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    for caption, path in (images or {}).items():
        lines += ["", f"![{caption}]({path})"]
    lines += ["", "Studies: " + ", ".join(f"`{s}`" for s in c.studies), ""]
    return "\n".join(lines)


def cost_label(cost: str) -> str:
    """How reports name a Pareto study's second objective (``search.pareto_cost``)."""
    return {"flops": "FLOPs", "params": "params", "latency": "predicted latency"}.get(cost, cost)


def _reach_text(r: SamplerRow, target: float | None) -> str:
    if target is None:
        return "-"
    if r.reach_mean is None:
        return f"not reached (0/{len(r.seeds)})"
    return f"{r.reach_mean:.1f} ({r.reached}/{len(r.seeds)})"


def _evaluated_text(r: SamplerRow) -> str:
    """``30``, or ``49 scan + 31`` for a warm-started sampler."""
    if not any(r.offsets):
        return _span(r.evaluated)
    return f"{_span(r.offsets)} scan + {_span(r.evaluated)}"


def _reference_evaluations(ref: Mapping[str, Any]) -> str:
    """``1``, ``45 scan + 1``, or ``1 taylor + 1`` (a prior charged in evaluations)."""
    if "scan_evaluations" not in ref:
        return "1"
    charged = ref.get("charged_evaluations", ref["scan_evaluations"])
    return f"{charged} {ref.get('prior', 'scan')} + 1"


def _span(xs: Sequence[int]) -> str:
    return str(xs[0]) if len(set(xs)) == 1 else f"{min(xs)}-{max(xs)}"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
