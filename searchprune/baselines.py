"""What a user gets without searching, at the study's FLOPs band: the reference rows of every
comparison.

- ``uniform``: one keep-ratio for every prunable group, solved so the FLOPs ratio is as close as
  possible to ``gamma``; the channels are chosen by the study's criterion.
- ``tp-global``: Torch-Pruning's own global pruning (``MetaPruner`` with
  ``GroupMagnitudeImportance``, ``global_pruning=True``, ``max_pruning_ratio = 1 - eta``), its
  pruning ratio bisected until *our* FLOPs ratio is inside the band (Torch-Pruning counts MACs,
  we count FLOPs). The channels are the ones Torch-Pruning removed, not only its widths.
- ``sensitivity``: per group, the smallest keep-ratio whose accuracy drop in the sensitivity
  scan (each group pruned alone) is within one threshold, bisected onto the band; the channels
  are chosen by the study's criterion.

All are scored like any trial: the study's proxy on the validation images.

At a given cost (``target``, a :class:`CostTarget`: e.g. the FLOPs, params or predicted latency
ratio of a searched winner, :func:`target_at`), each baseline's own knob (the common keep-ratio,
Torch-Pruning's ratio, the drop threshold) is bisected onto that ratio instead of the band, then
:func:`fit_to_cost` adds or removes single channels (whichever one move brings the cost closest)
until no one-channel move gets closer: the baseline's cost is then within half a channel's cost
of the target, so a comparison at equal cost is not partly a comparison of costs. The moves
are recorded in ``info["adjusted"]`` (for ``tp-global`` the channels added or dropped are the
study criterion's best or worst of the group).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from searchprune.errors import ConfigError, SearchpruneError, unknown_choice

if TYPE_CHECKING:
    from searchprune.search.band import Band
    from searchprune.search.problem import Problem

__all__ = ["BASELINES", "COST_METRICS", "BaselineConfig", "CostTarget", "evaluate_baselines",
           "evaluate_baselines_at", "fit_to_cost", "sensitivity", "solve_baseline", "target_at",
           "tp_global", "uniform"]

COST_METRICS = ("flops", "params", "latency")


@dataclass
class BaselineConfig:
    """A configuration chosen without search; ``keep`` holds the channels it chose itself
    (None: the study's criterion picks them)."""

    name: str
    widths: dict[str, int]
    keep: dict[str, torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CostTarget:
    """Place a baseline at ``ratio`` of the unpruned network's ``metric`` (``flops``,
    ``params`` or ``latency``, predicted by the study's table); ``value`` computes that ratio
    from widths (:func:`target_at` builds it)."""

    metric: str
    ratio: float
    value: Callable[[Mapping[str, int]], float] = field(repr=False, compare=False)

    def gap(self, widths: Mapping[str, int]) -> float:
        """Signed distance of ``widths``'s cost to the target (ratio units)."""
        return self.value(widths) - self.ratio


def cost_function(problem: Problem, metric: str) -> Callable[[Mapping[str, int]], float]:
    """``widths -> ratio`` of ``metric`` to the unpruned network's (latency: the problem's
    table, which a latency target needs)."""
    engine = problem.engine
    if metric == "flops":
        return engine.flops_ratio
    if metric == "params":
        base = engine.base_cost.params
        return lambda widths: engine.cost(widths).params / base
    if metric == "latency":
        if problem.latency is None:
            raise ConfigError("a baseline at a latency ratio needs the study's latency table "
                              "(pruning.latency); measure it with 'searchprune study run'")
        return problem.latency.ratio
    raise ConfigError(unknown_choice("cost", metric, COST_METRICS))


def target_at(problem: Problem, *, widths: Mapping[str, int] | None = None,
              ratio: float | None = None, metric: str | None = None) -> CostTarget:
    """The cost target of a configuration (``widths``, e.g. a searched winner's) or a plain
    ``ratio``, in ``metric`` (default: the problem's primary cost: the FLOPs band, else the
    latency or params limit, or a Pareto study's cost)."""
    metric = metric or problem.goal.primary_cost
    value = cost_function(problem, metric)
    if (widths is None) == (ratio is None):
        raise ValueError("target_at needs either widths or ratio")
    return CostTarget(metric, float(value(widths) if widths is not None else ratio), value)


def _band(problem: Problem) -> Band:
    return problem.goal.require_band("a no-search baseline")


def _bounds(problem: Problem) -> dict[str, tuple[float, float]]:
    """Each group's keep-ratio range under ``pruning.groups`` (``[0, 1]`` without rules: the
    baselines are not held to ``eta``)."""
    ranges = problem.ranges
    return ranges.bounds if ranges.restricted else {n: (0.0, 1.0) for n in ranges.ranges}


def _problem(engine, problem: Problem | None) -> Problem:
    """The given problem, else ``engine.cfg``'s, resolved now."""
    from searchprune.search.problem import resolve_problem

    return problem if problem is not None else resolve_problem(engine.cfg, engine)


def uniform(engine, *, problem: Problem | None = None,
            target: CostTarget | None = None) -> BaselineConfig:
    """One keep-ratio ``r`` for every prunable group (clipped to its ``pruning.groups`` range;
    fixed groups keep their ratio), ``r`` bisected so the FLOPs ratio is as close to ``gamma``
    as the integer widths allow (``problem``: default resolved from ``engine.cfg``); with
    ``target``, so that its cost is, then fitted to it channel by channel."""
    problem = _problem(engine, problem)
    aim = target.ratio if target is not None else _band(problem).gamma
    value = target.value if target is not None else engine.flops_ratio
    bounds = _bounds(problem)

    def at(r: float) -> tuple[dict[str, int], float]:
        widths = engine.widths({n: min(max(r, lo), hi) for n, (lo, hi) in bounds.items()})
        return widths, value(widths)

    lo, hi = 0.0, 1.0  # cost(lo) < aim <= cost(hi), widths monotone in r
    for _ in range(40):
        mid = (lo + hi) / 2
        if at(mid)[1] >= aim:
            hi = mid
        else:
            lo = mid
    below, above = at(lo), at(hi)
    (widths, ratio), r = min(((below, lo), (above, hi)), key=lambda c: abs(c[0][1] - aim))
    info: dict[str, Any] = {"keep_ratio": r, "flops_ratio": engine.flops_ratio(widths)}
    if target is None:
        return BaselineConfig("uniform", widths, info=info)
    return _fitted(BaselineConfig("uniform", widths, info=info), engine, problem, target)


def _ignored_layers(engine, model: nn.Module,
                    bounds: dict[str, tuple[float, float]] | None = None) -> list[nn.Module]:
    """The classifier and the producers of every group the search space does not prune (or
    ``pruning.groups`` fixes at 1.0; ``bounds``: default those of ``engine.cfg``)."""
    if bounds is None:
        bounds = _bounds(_problem(engine, None))
    prunable = {g.name for g in engine.groups if bounds[g.name][0] < 1.0}
    ignored = []
    for g in engine.space.groups:
        if g.name in prunable:
            continue
        ignored += [model.get_submodule(m.module) for m in g.producers(model)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return ignored + linears[-1:]


def _tagged_bn_member(group, model: nn.Module):
    for m in group.members:
        if m.role == "out" and isinstance(model.get_submodule(m.module),
                                          nn.modules.batchnorm._BatchNorm):
            return m
    return None


def _kept_by_tp(engine, ratio: float, eta: float,
                bounds: dict[str, tuple[float, float]]) -> dict[str, torch.Tensor]:
    """Run Torch-Pruning once on an untouched copy; read back which group channels it kept.

    Every BN's running mean is overwritten by its channel index on the copy first (the magnitude
    importance reads weights only), so the pruned copy's BN running means name the kept channels.
    """
    import torch_pruning as tp

    from searchprune.models._layers import IndexShortcut
    from searchprune.space._groups import IndexShortcutPruner

    model = copy.deepcopy(engine.model).cpu().eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.arange(m.num_features, dtype=m.running_mean.dtype))
    example = engine.data.calib.head(1).cpu()
    round_to = engine.cfg.pruning.round_to
    pruner = tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(),
        global_pruning=True, pruning_ratio=ratio, max_pruning_ratio=1.0 - eta,
        ignored_layers=_ignored_layers(engine, model, bounds),
        customized_pruners={IndexShortcut: IndexShortcutPruner()},
        round_to=round_to if round_to > 1 else None,
    )
    with torch.enable_grad():
        pruner.step()
    keep: dict[str, torch.Tensor] = {}
    for g in engine.groups:
        member = _tagged_bn_member(g, model)
        if member is None:
            raise SearchpruneError(f"tp-global needs a BatchNorm layer in every group; "
                                   f"group '{g.name}' has none")
        kept_module = model.get_submodule(member.module).running_mean.round().long().tolist()
        to_root = dict(zip(member.idxs, member.root_idxs))
        kept = sorted(to_root[i] for i in kept_module)
        if len(kept) < g.channels:
            keep[g.name] = torch.tensor(kept, dtype=torch.long)
    return keep


def _widths(engine, keep: dict[str, torch.Tensor]) -> dict[str, int]:
    return {g.name: int(keep[g.name].numel()) if g.name in keep else g.channels
            for g in engine.groups}


def tp_global(engine, *, max_steps: int = 30, problem: Problem | None = None,
              target: CostTarget | None = None) -> BaselineConfig:
    """Torch-Pruning's global group-magnitude pruning, its ratio bisected onto the FLOPs band
    (the closest configuration when no ratio lands inside); with ``target``, onto that cost,
    then fitted to it channel by channel."""
    problem = _problem(engine, problem)
    eta = problem.eta
    if target is None:
        band = _band(problem)
        aim, close, value = band.gamma, band.tolerance / 4, engine.flops_ratio
    else:
        # close to about one channel: fit_to_cost takes the last channels
        aim, close, value = target.ratio, 0.002, target.value
    bounds = _bounds(problem)
    # a group fixed at 1.0 is left out of Torch-Pruning; any other range narrower than [eta, 1]
    odd = [n for n, (lo, hi) in bounds.items() if lo < 1.0 and (lo > eta or hi < 1.0)]
    if odd:
        raise ConfigError("the tp-global baseline honours only pruning.groups that fix a group "
                          f"at 1.0; groups {', '.join(odd[:4])} have other bounds")
    lo, hi = 0.0, 1.0 - eta  # our cost falls as Torch-Pruning's ratio grows
    best: tuple[float, float, dict[str, torch.Tensor]] | None = None
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007 -- reported
        mid = (lo + hi) / 2
        keep = _kept_by_tp(engine, mid, eta, bounds)
        cost = value(_widths(engine, keep))
        if best is None or abs(cost - aim) < abs(best[1] - aim):
            best = (mid, cost, keep)
        if abs(cost - aim) <= close:
            break
        if cost > aim:
            lo = mid
        else:
            hi = mid
    assert best is not None
    ratio, _, keep = best
    widths = _widths(engine, keep)
    b = BaselineConfig("tp-global", widths, keep, {
        "tp_pruning_ratio": ratio, "flops_ratio": engine.flops_ratio(widths), "tp_calls": steps})
    return b if target is None else _fitted(b, engine, problem, target)


def sensitivity(engine, *, problem: Problem | None = None,
                target: CostTarget | None = None) -> BaselineConfig:
    """Every group at the smallest keep-ratio whose drop in the sensitivity prior is within one
    threshold, the threshold bisected onto the band (:mod:`searchprune.sensitivity`); with
    ``target``, onto that cost, then fitted to it channel by channel. The prior
    (``sensitivity.method``: a scan or first-order estimates) is read from the study storage;
    points still missing are measured first (and counted in ``scan_new_evaluations``); its
    cost is recorded (``prior_cost``, ``charged_evaluations``)."""
    from searchprune.search.sensitivity import (
        measure_prior,
        prior_record,
        sensitivity_allocation,
    )

    problem = _problem(engine, problem)
    if target is None:
        scan, alloc = sensitivity_allocation(problem)
        threshold, ratios, projected = alloc.threshold, alloc.ratios, alloc.projected
    else:
        scan = measure_prior(problem)
        threshold, ratios = _threshold_at(problem, scan.curves(), target)
        projected = False
    widths = engine.widths({**problem.ranges.fixed, **ratios})
    b = BaselineConfig("sensitivity", widths, info={
        "threshold": threshold, "flops_ratio": engine.flops_ratio(widths),
        "projected": projected, **prior_record(problem, scan)})
    return b if target is None else _fitted(b, engine, problem, target)


def _threshold_at(problem: Problem, curves: Mapping[str, Any], target: CostTarget,
                  iterations: int = 60) -> tuple[float, dict[str, float]]:
    """The drop threshold whose allocation's cost is closest to ``target`` (bisected: a
    higher threshold prunes more), and that allocation's keep-ratios."""
    from searchprune.sensitivity import allocate, bisect_threshold

    engine, ranges = problem.engine, problem.ranges

    def cost(t: float) -> float:
        return target.value(engine.widths({**ranges.fixed,
                                           **allocate(curves, t, ranges.rule_bounds)}))

    t = bisect_threshold(curves, cost, target.ratio, iterations)
    return t, allocate(curves, t, ranges.rule_bounds)


# -- at an exact cost ----------------------------------------------------------------------------
def allowed_widths(engine, problem: Problem) -> dict[str, tuple[int, ...]]:
    """The widths each group may take in :func:`fit_to_cost`: multiples of its unit (the
    supernet's allowed widths) within its ``pruning.groups`` range; a fixed group none."""
    from searchprune.space import round_width

    bounds = _bounds(problem)
    fixed = set(problem.ranges.fixed)
    choices = getattr(getattr(engine, "choices", None), "choices", None)
    out: dict[str, tuple[int, ...]] = {}
    for g in engine.groups:
        lo, hi = bounds[g.name]
        if g.name in fixed or lo >= hi:
            continue
        if choices is not None:
            ws = tuple(w for w in choices[g.name] if lo * g.channels - 1e-9 <= w
                       <= hi * g.channels + 1e-9)
        else:
            unit = engine.space.unit(engine.space.group(g.name))
            low = max(unit, round_width(lo, g.channels, unit))
            ws = tuple(range(low, round_width(hi, g.channels, unit) + 1, unit))
        if len(ws) > 1:
            out[g.name] = ws
    return out


def fit_to_cost(widths: Mapping[str, int], target: CostTarget,
                allowed: Mapping[str, Sequence[int]], *, max_moves: int = 100_000
                ) -> dict[str, int]:
    """``widths`` moved one allowed step of one group at a time, each time the move that
    brings the cost closest to ``target``, until no move gets closer. Then for every group
    that can still step towards the target, ``|cost - target|`` is at most half of that step's
    cost (else the step would have been taken)."""
    widths = dict(widths)
    gap = target.gap(widths)
    for _ in range(max_moves):
        best: tuple[float, str, int] | None = None
        for name, ws in allowed.items():
            for w in _neighbours(ws, widths[name]):
                g = target.gap({**widths, name: w})
                if abs(g) < abs(gap) and (best is None or abs(g) < abs(best[0])):
                    best = (g, name, w)
        if best is None:
            break
        gap, name, w = best
        widths[name] = w
    return widths


def _neighbours(ws: Sequence[int], width: int) -> list[int]:
    """The allowed widths next below and next above ``width``."""
    below = [w for w in ws if w < width]
    above = [w for w in ws if w > width]
    return ([max(below)] if below else []) + ([min(above)] if above else [])


def _fitted(b: BaselineConfig, engine, problem: Problem, target: CostTarget) -> BaselineConfig:
    """``b`` fitted to ``target`` (:func:`fit_to_cost`); a baseline that chose its own channels
    (``keep``) keeps them, plus or minus the study criterion's best or worst of a group."""
    allowed = allowed_widths(engine, problem)
    if b.keep is not None:  # per-conv-group selection is the criterion's: leave those whole
        allowed = {n: ws for n, ws in allowed.items()
                   if getattr(engine.space.group(n), "blocks", None) is None}
    widths = fit_to_cost(b.widths, target, allowed)
    keep = None if b.keep is None else _refit_keep(engine, b.keep, widths)
    info = {**b.info, "flops_ratio": engine.flops_ratio(widths), "target_metric": target.metric,
            "target_ratio": target.ratio, "target_gap": target.gap(widths),
            "adjusted": {n: widths[n] - b.widths[n] for n in widths if widths[n] != b.widths[n]}}
    return BaselineConfig(b.name, widths, keep, info)


def _refit_keep(engine, keep: Mapping[str, torch.Tensor],
                widths: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """Kept channels per group for the new ``widths``: the old ones, less the criterion's
    worst of them or plus its best of the others."""
    out: dict[str, torch.Tensor] = {}
    for g in engine.groups:
        width = int(widths[g.name])
        kept = keep[g.name].tolist() if g.name in keep else list(range(g.channels))
        if width >= g.channels:
            continue
        if width != len(kept):
            score = engine.scores[g.name].double()
            if width < len(kept):
                kept = sorted(kept, key=lambda i: -float(score[i]))[:width]
            else:
                others = sorted(set(range(g.channels)) - set(kept), key=lambda i: -float(score[i]))
                kept = kept + others[: width - len(kept)]
        out[g.name] = torch.tensor(sorted(kept), dtype=torch.long)
    return out


BASELINES: dict[str, Callable[..., BaselineConfig]] = {"uniform": uniform, "tp-global": tp_global,
                                                       "sensitivity": sensitivity}


def solve_baseline(name: str, engine, *, problem: Problem | None = None,
                   target: CostTarget | None = None) -> BaselineConfig:
    """The named baseline's configuration for the band of ``problem`` (default: resolved from
    ``engine.cfg``), or at the cost ``target`` (no network evaluation)."""
    if name not in BASELINES:
        raise ConfigError(unknown_choice("baseline", name, BASELINES))
    if name == "tp-global" and engine.cfg.setting != "pretrained":
        raise ConfigError("the tp-global baseline prunes a pretrained network; it does not "
                          "apply to setting: scratch")
    return BASELINES[name](engine, problem=_problem(engine, problem), target=target)


def evaluate_baselines(engine, names: list[str], split: str = "val", *,
                       problem: Problem | None = None,
                       target: CostTarget | None = None) -> list[dict[str, Any]]:
    """Solve and score each baseline with the study's proxy (at the band, or at the cost
    ``target``): one row per baseline with its FLOPs and params ratios (and predicted latency
    ratio with the problem's latency table), ``top1``/``top5`` on ``split`` and the seconds it
    took."""
    rows = []
    base = engine.base_cost
    problem = _problem(engine, problem)
    band = _band(problem) if target is None else problem.goal.flops_band
    for name in names:
        t = time.perf_counter()
        b = solve_baseline(name, engine, problem=problem, target=target)
        solve = time.perf_counter() - t
        kwargs = {"keep": b.keep} if b.keep is not None else {}
        result = engine.evaluate(b.widths, split=split, **kwargs)
        cost = result.cost
        ratio = cost.flops / base.flops
        rows.append({
            "name": name, "widths": b.widths, "flops_ratio": ratio,
            "params_ratio": cost.params / base.params,
            **({"latency_ratio": problem.latency.ratio(b.widths)}
               if problem.latency is not None else {}),
            "top1": result.top1, "top5": result.top5,
            "in_band": band.contains(ratio) if band is not None else None,
            "proxy": engine.cfg.pruning.proxy, "seconds_solve": solve,
            "seconds_evaluate": sum(result.seconds.values()), **b.info,
        })
    return rows


def evaluate_baselines_at(engine, names: list[str], winners: Sequence[Mapping[str, Any]],
                          split: str = "val", *, problem: Problem | None = None,
                          metric: str | None = None) -> list[dict[str, Any]]:
    """Each baseline at the exact cost of each searched winner (``--baselines-at winner``):
    ``winners`` are mappings with the winner's ``widths`` and what names it (e.g. ``study``,
    ``sampler``, ``seed``, ``trial``, ``top1``), copied into its rows under ``at``; the cost
    is ``metric`` (default the problem's primary cost). One row per (winner, baseline)."""
    problem = _problem(engine, problem)
    rows = []
    for winner in winners:
        target = target_at(problem, widths=winner["widths"], metric=metric)
        at = {k: v for k, v in winner.items() if k != "widths"}
        for row in evaluate_baselines(engine, names, split, problem=problem, target=target):
            rows.append({**row, "at": at, "at_ratio": target.ratio,
                         "at_metric": target.metric})
    return rows
