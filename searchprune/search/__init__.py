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
)
from searchprune.search.objective import Counters, make_objective, make_pruner, rejected_proposals
from searchprune.search.runner import (
    check_band,
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

__all__ = [
    "Band",
    "BandRandomSampler",
    "Budget",
    "Counters",
    "ProgressCallback",
    "RecordRejections",
    "StopOnFailures",
    "StopOnSignal",
    "StudyInterrupted",
    "available_samplers",
    "check_band",
    "config_diff",
    "derive_study_name",
    "get_storage",
    "make_objective",
    "make_pruner",
    "make_sampler",
    "preflight",
    "project_to_band",
    "register_sampler",
    "rejected_proposals",
    "resume_seed",
    "run_study",
]
