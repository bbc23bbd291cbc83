"""Samplers by name: a dict registry, every entry seeded and safe to resume.

Seeding: ``random`` derives each trial's randomness from ``(seed, trial number)``. Optuna's own
samplers get ``resume_seed(seed, n_existing, worker)``, so a resumed study, or a second worker
started at the same moment, does not replay the configurations already proposed, while two
fresh single-worker runs with one seed agree.
QMC is the exception: its position in the sequence is stored in the study, so it keeps the
configured seed and simply continues the sequence.

Out-of-band proposals never become trials with the shipped samplers in the single-objective
study: ``random`` redraws inside the sampler, ``tpe`` keeps only in-band candidates of its Parzen
estimator (both check the analytic FLOPs function, microseconds per draw), and CMA-ES, GP,
NSGA-II and QMC, which cannot be steered that way, have their proposals projected onto the band
by one common width scale in the objective (``SamplerSpec.projects``). A registered sampler
without ``projects`` may still propose out of band: such a trial is PRUNED before any evaluation
with ``trial.set_constraint``, which TPE, GP and NSGA-II also read in the Pareto study (there
the range is wide and nothing is projected).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from optuna.exceptions import ExperimentalWarning
from optuna.samplers import (
    BaseSampler,
    CmaEsSampler,
    GPSampler,
    NSGAIISampler,
    QMCSampler,
    RandomSampler,
)

from searchprune._factory import check_spec, import_factory
from searchprune.errors import ConfigError, unknown_choice
from searchprune.search._band_random import BandRandomSampler
from searchprune.search._band_tpe import BandTPESampler

__all__ = ["SamplerContext", "SamplerSpec", "available_samplers", "check_sampler_name",
           "make_sampler",
           "register_sampler", "resume_seed", "sampler_spec"]


@dataclass(frozen=True)
class SamplerContext:
    """What a sampler factory may use."""

    names: Sequence[str]
    eta: float
    in_band: Callable[[Mapping[str, float]], bool]
    seed: int
    n_existing: int = 0
    worker: int = 0  # join order of this worker in the study (0 = the first)
    # keep-ratios the study was warm-started from (search.warm_start), or None
    warm: Mapping[str, float] | None = None
    # per-group keep-ratio ranges (``pruning.groups``); ``names`` are the groups that vary,
    # ``in_band`` adds the fixed ones
    bounds: Mapping[str, tuple[float, float]] | None = None

    @property
    def resume_seed(self) -> int:
        return resume_seed(self.seed, self.n_existing, self.worker)


@dataclass(frozen=True)
class SamplerSpec:
    factory: Callable[[SamplerContext], BaseSampler]
    projects: bool = False  # the objective maps proposals onto the band (CMA-ES, GP, ...)


Factory = Callable[[SamplerContext], BaseSampler]
_SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(name: str, *, projects: bool = False) -> Callable[[Factory], Factory]:
    """Decorator adding a sampler factory under ``name``; duplicate names are refused. The name
    becomes a valid ``search.sampler`` in configs loaded afterwards. ``projects``: the objective
    maps each proposal onto the FLOPs band (for samplers that cannot be steered into it)."""

    def wrap(factory: Factory) -> Factory:
        if name in _SAMPLERS:
            raise ValueError(f"sampler '{name}' is already registered")
        _SAMPLERS[name] = SamplerSpec(factory, projects)
        return factory

    return wrap


def resume_seed(seed: int, n_existing: int, worker: int = 0) -> int:
    """A 31-bit seed determined by the study seed, the number of trials already stored and the
    worker's join index (so workers started together do not replay each other's proposals)."""
    entropy = [seed % 2**63, n_existing] + ([worker] if worker else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] >> 1)


def available_samplers() -> list[str]:
    return sorted(_SAMPLERS)


def sampler_spec(name: str) -> SamplerSpec:
    """A registered sampler, or a user's ``package.module:factory`` (a function of a
    :class:`SamplerContext` returning a sampler; a ``projects = True`` attribute on it asks the
    objective to project proposals onto the band)."""
    if name in _SAMPLERS:
        return _SAMPLERS[name]
    if ":" in name:
        factory = import_factory(name, "search.sampler")
        return SamplerSpec(factory, bool(getattr(factory, "projects", False)))
    raise ConfigError(unknown_choice("sampler", name, [*available_samplers(),
                                                       "package.module:factory"]))


def check_sampler_name(name: str) -> None:
    """A registered sampler or a well-formed ``package.module:factory``, checked without
    importing anything (:func:`sampler_spec` imports)."""
    if name in _SAMPLERS:
        return
    if ":" in name:
        check_spec(name, "search.sampler")
        return
    raise ConfigError(unknown_choice("sampler", name, [*available_samplers(),
                                                       "package.module:factory"]))


def make_sampler(name: str, ctx: SamplerContext) -> BaseSampler:
    return sampler_spec(name).factory(ctx)


@register_sampler("random")
def _random(ctx: SamplerContext) -> BaseSampler:
    return BandRandomSampler(ctx.names, ctx.eta, ctx.in_band, seed=ctx.seed, bounds=ctx.bounds)


@register_sampler("tpe")
def _tpe(ctx: SamplerContext) -> BaseSampler:
    return BandTPESampler(ctx.names, ctx.eta, ctx.in_band, seed=ctx.seed,
                          tpe_seed=ctx.resume_seed, bounds=ctx.bounds)


@register_sampler("cmaes", projects=True)
def _cmaes(ctx: SamplerContext) -> BaseSampler:
    # CMA-ES learns only from its own generations: a warm start becomes its initial mean
    # (``x0``, deprecated since Optuna 4.9 and still supported until 6.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`x0` has been deprecated", category=FutureWarning)
        return CmaEsSampler(seed=ctx.resume_seed, warn_independent_sampling=False,
                            x0={k: v for k, v in ctx.warm.items() if k in ctx.names}
                            if ctx.warm else None)


@register_sampler("gp", projects=True)
def _gp(ctx: SamplerContext) -> BaseSampler:
    return GPSampler(seed=ctx.resume_seed)


@register_sampler("qmc", projects=True)
def _qmc(ctx: SamplerContext) -> BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return QMCSampler(scramble=True, seed=ctx.seed % 2**32, warn_independent_sampling=False,
                          independent_sampler=RandomSampler(seed=ctx.resume_seed))


@register_sampler("nsga2", projects=True)
def _nsga2(ctx: SamplerContext) -> BaseSampler:
    return NSGAIISampler(seed=ctx.resume_seed)
