"""A study's random identity: a uuid stored as a study system attribute when the study is
created (``searchprune:study_uuid``). A study deleted and created again under the same name gets
another one, so what is keyed by it (fine-tune checkpoints, see
:func:`searchprune.search.finishing.study_identity`) is never taken for the old study's.

It names nothing to load or import: whoever edits it can only make searchprune start a
fine-tuning afresh.
"""

from __future__ import annotations

import uuid

import optuna

from searchprune.search.budget import Lock

__all__ = ["STUDY_UUID_ATTR", "ensure_study_uuid", "study_uuid"]

STUDY_UUID_ATTR = "searchprune:study_uuid"


def study_uuid(study: optuna.Study) -> str | None:
    """The study's uuid, or None for a study created without one (older versions)."""
    value = study._storage.get_study_system_attrs(study._study_id).get(STUDY_UUID_ATTR)
    return value if isinstance(value, str) and value else None


def ensure_study_uuid(study: optuna.Study, lock: Lock) -> str:
    """The study's uuid, a new random one stored first if it has none (under the study
    ``lock``, so that workers joining at once agree on one)."""
    with lock():
        existing = study_uuid(study)
        if existing is not None:
            return existing
        new = uuid.uuid4().hex
        study._storage.set_study_system_attr(study._study_id, STUDY_UUID_ATTR, new)
        return new
