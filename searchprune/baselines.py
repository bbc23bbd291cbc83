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
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from searchprune.errors import ConfigError, SearchpruneError, unknown_choice

if TYPE_CHECKING:
    from searchprune.search.band import Band
    from searchprune.search.problem import Problem

__all__ = ["BASELINES", "BaselineConfig", "evaluate_baselines", "sensitivity", "solve_baseline",
           "tp_global", "uniform"]


@dataclass
class BaselineConfig:
    """A configuration chosen without search; ``keep`` holds the channels it chose itself
    (None: the study's criterion picks them)."""

    name: str
    widths: dict[str, int]
    keep: dict[str, torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)


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


def uniform(engine, *, problem: Problem | None = None) -> BaselineConfig:
    """One keep-ratio ``r`` for every prunable group (clipped to its ``pruning.groups`` range;
    fixed groups keep their ratio), ``r`` bisected so the FLOPs ratio is as close to ``gamma``
    as the integer widths allow (``problem``: default resolved from ``engine.cfg``)."""
    problem = _problem(engine, problem)
    gamma = _band(problem).gamma
    bounds = _bounds(problem)

    def at(r: float) -> tuple[dict[str, int], float]:
        widths = engine.widths({n: min(max(r, lo), hi) for n, (lo, hi) in bounds.items()})
        return widths, engine.flops_ratio(widths)

    lo, hi = 0.0, 1.0  # flops(lo) < gamma <= flops(hi), widths monotone in r
    for _ in range(40):
        mid = (lo + hi) / 2
        if at(mid)[1] >= gamma:
            hi = mid
        else:
            lo = mid
    below, above = at(lo), at(hi)
    (widths, ratio), r = min(((below, lo), (above, hi)), key=lambda c: abs(c[0][1] - gamma))
    return BaselineConfig("uniform", widths, info={"keep_ratio": r, "flops_ratio": ratio})


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


def tp_global(engine, *, max_steps: int = 30, problem: Problem | None = None) -> BaselineConfig:
    """Torch-Pruning's global group-magnitude pruning, its ratio bisected onto the FLOPs band
    (the closest configuration when no ratio lands inside)."""
    problem = _problem(engine, problem)
    band, eta = _band(problem), problem.eta
    gamma, tol = band.gamma, band.tolerance
    bounds = _bounds(problem)
    # a group fixed at 1.0 is left out of Torch-Pruning; any other range narrower than [eta, 1]
    odd = [n for n, (lo, hi) in bounds.items() if lo < 1.0 and (lo > eta or hi < 1.0)]
    if odd:
        raise ConfigError("the tp-global baseline honours only pruning.groups that fix a group "
                          f"at 1.0; groups {', '.join(odd[:4])} have other bounds")
    lo, hi = 0.0, 1.0 - eta  # our FLOPs ratio falls as Torch-Pruning's ratio grows
    best: tuple[float, float, dict[str, torch.Tensor]] | None = None
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007 -- reported
        mid = (lo + hi) / 2
        keep = _kept_by_tp(engine, mid, eta, bounds)
        flops = engine.flops_ratio(_widths(engine, keep))
        if best is None or abs(flops - gamma) < abs(best[1] - gamma):
            best = (mid, flops, keep)
        if abs(flops - gamma) <= tol / 4:
            break
        if flops > gamma:
            lo = mid
        else:
            hi = mid
    assert best is not None
    ratio, flops, keep = best
    return BaselineConfig("tp-global", _widths(engine, keep), keep,
                          {"tp_pruning_ratio": ratio, "flops_ratio": flops, "tp_calls": steps})


def sensitivity(engine, *, problem: Problem | None = None) -> BaselineConfig:
    """Every group at the smallest keep-ratio whose drop in the sensitivity prior is within one
    threshold, the threshold bisected onto the band (:mod:`searchprune.sensitivity`). The prior
    (``sensitivity.method``: a scan or first-order estimates) is read from the study storage;
    points still missing are measured first (and counted in ``scan_new_evaluations``); its
    cost is recorded (``prior_cost``, ``charged_evaluations``)."""
    from searchprune.search.sensitivity import prior_record, sensitivity_allocation

    problem = _problem(engine, problem)
    scan, alloc = sensitivity_allocation(problem)
    widths = engine.widths({**problem.ranges.fixed, **alloc.ratios})
    return BaselineConfig("sensitivity", widths, info={
        "threshold": alloc.threshold, "flops_ratio": alloc.flops_ratio,
        "projected": alloc.projected, **prior_record(problem, scan)})


BASELINES: dict[str, Callable[..., BaselineConfig]] = {"uniform": uniform, "tp-global": tp_global,
                                                       "sensitivity": sensitivity}


def solve_baseline(name: str, engine, *, problem: Problem | None = None) -> BaselineConfig:
    """The named baseline's configuration for the band of ``problem`` (default: resolved from
    ``engine.cfg``) (no network evaluation)."""
    if name not in BASELINES:
        raise ConfigError(unknown_choice("baseline", name, BASELINES))
    if name == "tp-global" and engine.cfg.setting != "pretrained":
        raise ConfigError("the tp-global baseline prunes a pretrained network; it does not "
                          "apply to setting: scratch")
    return BASELINES[name](engine, problem=_problem(engine, problem))


def evaluate_baselines(engine, names: list[str], split: str = "val", *,
                       problem: Problem | None = None) -> list[dict[str, Any]]:
    """Solve and score each baseline with the study's proxy: one row per baseline with its
    FLOPs and params ratios, ``top1``/``top5`` on ``split`` and the seconds it took."""
    rows = []
    base = engine.base_cost
    problem = _problem(engine, problem)
    band = _band(problem)
    for name in names:
        t = time.perf_counter()
        b = solve_baseline(name, engine, problem=problem)
        solve = time.perf_counter() - t
        kwargs = {"keep": b.keep} if b.keep is not None else {}
        result = engine.evaluate(b.widths, split=split, **kwargs)
        cost = result.cost
        ratio = cost.flops / base.flops
        rows.append({
            "name": name, "widths": b.widths, "flops_ratio": ratio,
            "params_ratio": cost.params / base.params, "top1": result.top1,
            "top5": result.top5, "in_band": band.contains(ratio),
            "proxy": engine.cfg.pruning.proxy, "seconds_solve": solve,
            "seconds_evaluate": sum(result.seconds.values()), **b.info,
        })
    return rows
