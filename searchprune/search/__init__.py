"""The study layer: the only place that knows Optuna (objective, samplers, storage, callbacks)."""

from __future__ import annotations

from searchprune.search._band_random import BandRandomSampler
from searchprune.search._interrupt import StudyInterrupted
from searchprune.search.band import Band, project_to_band
from searchprune.search.budget import Budget
from searchprune.search.callbacks import (
    ProgressCallback,
    RecordRejections,
    StopOnFailures,
    StopOnSignal,
    TrialsFailing,
)
from searchprune.search.objective import Counters, make_objective, make_pruner
from searchprune.search.problem import (
    Goal,
    ObjectiveSpec,
    Problem,
    describe_goal,
    describe_objective,
    resolve_problem,
)
from searchprune.search.runner import (
    config_diff,
    derive_study_name,
    preflight,
    run_study,
)
from searchprune.search.samplers import (
    available_samplers,
    make_sampler,
    register_sampler,
    resume_seed,
)
from searchprune.search.storage import get_storage
from searchprune.search.trials import best_trials, is_evaluated, n_evaluated, rejected_proposals

__all__ = [
    "Band",
    "BandRandomSampler",
    "Budget",
    "Counters",
    "Goal",
    "ObjectiveSpec",
    "Problem",
    "ProgressCallback",
    "RecordRejections",
    "StopOnFailures",
    "StopOnSignal",
    "StudyInterrupted",
    "TrialsFailing",
    "available_samplers",
    "best_trials",
    "config_diff",
    "derive_study_name",
    "describe_goal",
    "describe_objective",
    "get_storage",
    "is_evaluated",
    "make_objective",
    "make_pruner",
    "make_sampler",
    "n_evaluated",
    "preflight",
    "project_to_band",
    "register_sampler",
    "rejected_proposals",
    "resolve_problem",
    "resume_seed",
    "run_study",
]
