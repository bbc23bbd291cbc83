"""Channel-importance criteria behind one small interface (see :class:`Criterion`)."""

from searchprune.criteria import _norms  # noqa: F401  (registers l1, l2)
from searchprune.criteria._base import Criterion, available, compute_scores, get_criterion, register

__all__ = ["Criterion", "available", "compute_scores", "get_criterion", "register"]
