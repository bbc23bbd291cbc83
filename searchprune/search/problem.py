"""The search problem, read from the config once and handed to every step.

A config becomes a :class:`Goal` before any model is loaded (:func:`describe_goal`: the
objective, the FLOPs band, the params and latency limits, the latency table's settings), and a
:class:`Problem` once the engine is known (:func:`resolve_problem`: each group's keep-ratio range,
the band checked against the reachable FLOPs ratios, the limits against the smallest and largest
configuration, and the gate that judges every candidate). Every config error about the problem
is raised while it is built, before any trial. The runner, the objective, the samplers' context,
the sensitivity scan and allocation, the baselines, the supernet's top-k draw and the finishing
steps receive the problem instead of reading the config again; a new limit or step is added
here. A latency limit needs the study's latency table, measured once the study exists:
:meth:`Problem.with_latency` adds it (and checks that limit). See docs/problem.md.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from searchprune.config import resolve_defaults
from searchprune.confirmation import ConfirmSpec, confirm_spec
from searchprune.constraints import KeepRanges, LatencySpec, Limit, latency_spec, limit_from
from searchprune.errors import BandError, ConfigError
from searchprune.search.band import Band, Gate
from searchprune.search.pareto import DIRECTIONS, pareto_band
from searchprune.search.samplers import SamplerContext, sampler_spec

if TYPE_CHECKING:
    from searchprune.config import Config
    from searchprune.engine import Engine
    from searchprune.latency import LatencyModel

__all__ = ["Goal", "ObjectiveSpec", "Problem", "describe_goal", "describe_objective",
           "resolve_problem"]


@dataclass(frozen=True)
class ObjectiveSpec:
    """What a study optimises and how a trial's value is computed.

    ``band`` gates every candidate before evaluation (None: ``pruning.gamma: null``, the
    limits gate alone); ``target`` names the primary constraint in messages and in the
    dashboard note; ``project`` maps proposals onto it first (samplers that cannot be steered
    into it); ``cost`` is the ratio a Pareto study minimises (``flops``, ``params``,
    ``latency``); ``values`` turns ``(top1, cost ratio)`` into the trial's value(s).
    """

    kind: str
    directions: tuple[str, ...]
    metric_names: tuple[str, ...]
    band: Band | None
    target: str
    sampler: str | None = None
    cost: str = "flops"

    @property
    def project(self) -> bool:
        """Whether proposals are mapped onto the primary constraint first: asked by the
        sampler, and looked up only when a search needs it (a user's ``package.module:factory``
        sampler is imported then, not by commands that never sample, such as ``export``)."""
        return self.sampler is not None and sampler_spec(self.sampler).projects

    @property
    def multi(self) -> bool:
        return len(self.directions) > 1

    def values(self, top1: float, cost_ratio: float) -> float | tuple[float, ...]:
        if self.multi:
            return float(top1), float(cost_ratio)
        return float(top1)

    def failed(self) -> float | tuple[float, ...]:
        """The value that makes Optuna mark the trial FAIL (and go on)."""
        return (math.nan,) * len(self.directions) if self.multi else math.nan


@dataclass(frozen=True)
class Goal:
    """What a config asks for, read before any model is loaded: the ``objective``, the FLOPs
    band of ``pruning.gamma`` (None when it is null), the ``pruning.params`` limit, the
    latency table's settings (``pruning.latency``, or the defaults of a Pareto study over
    latency; None: no table) and the confirmation of the best trials (``search.confirm``;
    None: the pick is the best on validation)."""

    objective: ObjectiveSpec
    flops_band: Band | None
    params: Limit | None
    latency: LatencySpec | None
    confirm: ConfirmSpec | None = None

    @property
    def primary_cost(self) -> str:
        """The cost a configuration is held to first (``flops``, ``params`` or ``latency``):
        a Pareto study's ``search.pareto_cost``, the FLOPs band, else the primary limit."""
        spec = self.objective
        if spec.multi:
            return spec.cost
        if self.flops_band is not None:
            return "flops"
        return "latency" if self.latency_capped else "params"

    @property
    def latency_capped(self) -> bool:
        """Whether candidates are gated on the predicted latency (the gate needs the table)."""
        return self.latency is not None and self.latency.capped

    def require_band(self, what: str) -> Band:
        """The FLOPs band; ``what`` needs one, so ``gamma: null`` is a one-line
        :class:`ConfigError`."""
        if self.flops_band is None:
            raise ConfigError(f"{what} needs a FLOPs band: set pruning.gamma (it is null in "
                              "this config)")
        return self.flops_band


def describe_goal(cfg: Config, objective: ObjectiveSpec | None = None) -> Goal:
    """``cfg``'s goal; ``objective`` replaces the one ``search.objective`` asks for."""
    p = cfg.pruning
    params = limit_from("pruning.params", p.params)
    latency = latency_spec(p.latency)
    table = latency
    if table is None and cfg.search.objective == "pareto" and cfg.search.pareto_cost == "latency":
        table = LatencySpec()
    if objective is None:
        objective = _objective(cfg, params, latency)
    band = None if p.gamma is None else Band(p.gamma, p.tolerance)
    return Goal(objective, band, params, table, confirm_spec(cfg))


def describe_objective(cfg: Config) -> ObjectiveSpec:
    """The objective ``cfg.search.objective`` asks for."""
    return describe_goal(cfg).objective


def _objective(cfg: Config, params: Limit | None, latency: LatencySpec | None) -> ObjectiveSpec:
    if cfg.search.objective == "pareto":
        lo, hi = cfg.search.gamma_range or (0.0, 1.0)
        cost = cfg.search.pareto_cost
        return ObjectiveSpec("pareto", DIRECTIONS, ("val_top1", f"{cost}_ratio"),
                             pareto_band(cfg), f"search.gamma_range [{lo:g}, {hi:g}]",
                             cost=cost)
    p = cfg.pruning
    sampler = cfg.search.sampler
    if p.gamma is None:
        target = (f"pruning.latency ({latency.describe()})"
                  if latency is not None and latency.capped
                  else f"pruning.params ({params.describe() if params else None})")
        return ObjectiveSpec("single", ("maximize",), ("val_top1",), None, target,
                             sampler=sampler)
    return ObjectiveSpec("single", ("maximize",), ("val_top1",), Band(p.gamma, p.tolerance),
                         f"gamma {p.gamma:g}", sampler=sampler)


@dataclass(frozen=True, eq=False)
class Problem:
    """One study's search problem: the config and engine it was resolved from, the
    :class:`Goal`, every group's keep-ratio range and, when the goal needs one, the latency
    table (``latency``). Build it with :func:`resolve_problem`."""

    cfg: Config
    engine: Engine
    goal: Goal
    ranges: KeepRanges
    latency: LatencyModel | None = None

    @property
    def objective(self) -> ObjectiveSpec:
        return self.goal.objective

    @property
    def band(self) -> Band | None:
        """The band that gates every candidate (a Pareto study's: its FLOPs range)."""
        return self.goal.objective.band

    @property
    def eta(self) -> float:
        return self.cfg.pruning.eta

    @property
    def needs_latency(self) -> bool:
        """Whether the goal needs a latency table that this problem does not hold yet."""
        return self.goal.latency is not None and self.latency is None

    @functools.cached_property
    def gate(self) -> Gate:
        """The constraints every candidate is checked against before it is built: the band on
        the FLOPs ratio, ``pruning.params`` on the params ratio, ``pruning.latency`` on the
        predicted latency ratio, the fixed groups added to every configuration. Without a band
        the primary limit comes first (latency, else params)."""
        engine = self.engine
        limits: list[tuple[Limit, Callable[[Mapping[str, int]], float]]] = []
        if self.goal.params is not None:
            base = engine.base_cost.params
            limits.append((self.goal.params, lambda widths: engine.cost(widths).params / base))
        if self.goal.latency_capped:
            if self.latency is None:
                raise ValueError("pruning.latency limits the search: add the study's latency "
                                 "model (Problem.with_latency)")
            limit = self.goal.latency.limit_for(self.latency.base_ms)
            entry = (limit, self.latency.ratio)
            limits = [entry, *limits] if self.band is None else [*limits, entry]
        return Gate(engine, self.band, tuple(limits), self.ranges.fixed)

    @functools.cached_property
    def reachable(self) -> tuple[float, float]:
        """The FLOPs ratios of every group at the smallest and at the largest keep-ratio it
        may take (``[eta, 1]`` intersected with ``pruning.groups``)."""
        if not self.ranges.restricted:
            return self.engine.ratio_range(self.eta)
        e = self.engine
        return (e.flops_ratio(e.widths(self.ranges.lowest())),
                e.flops_ratio(e.widths(self.ranges.highest())))

    def with_latency(self, latency: LatencyModel) -> Problem:
        """This problem with the study's latency table, its limits checked."""
        problem = replace(self, latency=latency)
        problem.check_limits()
        return problem

    def sampler_context(self, *, n_existing: int = 0, worker: int = 0,
                        warm: Mapping[str, float] | None = None) -> SamplerContext:
        """What a sampler factory gets: the groups that vary, the gate, the seed, the
        per-group ranges (``pruning.groups``) and the warm start's keep-ratios."""
        return SamplerContext(names=self.ranges.free, eta=self.eta, in_band=self.gate.ratios_ok,
                              seed=self.cfg.search.seed, n_existing=n_existing, worker=worker,
                              bounds=self.ranges.rule_bounds, warm=warm)

    def check_band(self) -> None:
        """Fail fast when the band (or the Pareto range) lies outside the reachable FLOPs
        ratios ``[r(eta), 1]`` (with ``pruning.groups``: every group at its lowest and highest
        bound). Without a band the limits are checked by :meth:`check_limits`."""
        spec, band, eta = self.objective, self.band, self.eta
        if band is None:
            return
        knob = spec.target.split()[0]
        low, high = self.reachable
        if self.ranges.restricted:
            if band.gamma + band.tolerance < low or band.gamma - band.tolerance > high:
                raise BandError(f"{spec.target} (band half-width {band.tolerance:g}) is outside "
                                f"the reachable FLOPs ratios [{low:.4f}, {high:.4f}] with "
                                f"pruning.groups and eta={eta}; move {knob} into that range "
                                "or loosen the group bounds")
            self._check_room(band, low, high)
            return
        if band.gamma + band.tolerance < low:
            raise BandError(f"{spec.target} is below the FLOPs ratio {low:.4f} of the all-eta "
                            f"configuration (eta={eta}); lower eta or raise {knob}")
        if band.gamma - band.tolerance > high:
            raise BandError(f"{spec.target} (band half-width {band.tolerance:g}) is above 1, "
                            f"the FLOPs ratio of the unpruned network; lower {knob}")
        self._check_room(band, low, high)

    def _check_room(self, band: Band, low: float, high: float) -> None:
        """A band that meets the reachable FLOPs ratios ``[low, high]`` in one point only (e.g.
        ``gamma: 1.0, tolerance: 0``) has no width for a random draw to land in: every proposal
        would be rejected, so it is refused like a band outside the range."""
        if high <= low:  # every group fixed: one configuration, in the band or not (checked above)
            return
        room = min(band.gamma + band.tolerance, high) - max(band.gamma - band.tolerance, low)
        if room <= 0.0:
            spec = self.objective
            widen = "search.gamma_range" if spec.multi else "pruning.tolerance"
            raise BandError(f"{spec.target} (band half-width {band.tolerance:g}) leaves no room "
                            f"inside the reachable FLOPs ratios [{low:.4f}, {high:.4f}]: no draw "
                            f"can land in it; widen {widen} or move the band inside that range")

    def check_confirm(self) -> None:
        """With ``search.confirm``, fail fast when the data holds no confirmation image (the
        validation half taken whole by ``data.val_size``)."""
        if self.goal.confirm is None:
            return
        available = getattr(self.engine.data, "confirm_size", None)
        if available == 0:
            d = self.cfg.data
            raise ConfigError(f"search.confirm has no images: data.val_size {d.val_size} takes "
                              "the whole validation half of the test split; lower "
                              "data.val_size")

    def check_limits(self) -> None:
        """Fail fast when a limit cannot be met: its ratio at the cheapest configuration (every
        group at its lowest keep-ratio) is above the limit, or at the dearest below it."""
        cheapest = self.engine.widths(self.ranges.lowest())
        dearest = self.engine.widths(self.ranges.highest())
        for limit, value in self.gate.limits:
            low, high = value(cheapest), value(dearest)
            if limit.high < low:
                raise BandError(f"{limit.describe()} cannot be met: the smallest configuration "
                                f"(every group at its lowest keep-ratio) has a {limit.name} "
                                f"ratio of {low:.4f}; raise the limit or lower pruning.eta")
            if limit.low > high:
                raise BandError(f"{limit.describe()} cannot be met: the largest configuration "
                                f"has a {limit.name} ratio of {high:.4f}; lower the target")


def resolve_problem(cfg: Config, engine: Engine, *, goal: Goal | None = None,
                    latency: LatencyModel | None = None) -> Problem:
    """``cfg``'s problem on ``engine`` (``goal``: one already described), checked: a
    ``pruning.groups`` pattern that matches no group or leaves a group no keep-ratio is a
    :class:`ConfigError`, a band or limit out of reach a :class:`BandError`. A latency limit
    is checked once the table is added (:meth:`Problem.with_latency`). The problem's config
    has its ``auto`` settings resolved (:func:`~searchprune.config.resolve_defaults`)."""
    cfg = resolve_defaults(cfg, first_order=callable(getattr(engine, "first_order_drops", None)))
    ranges = KeepRanges.resolve(cfg.pruning.groups, [g.name for g in engine.groups],
                                cfg.pruning.eta)
    problem = Problem(cfg, engine, goal if goal is not None else describe_goal(cfg), ranges,
                      latency)
    problem.check_band()
    if not (problem.goal.latency_capped and latency is None):
        problem.check_limits()
    problem.check_confirm()
    return problem
