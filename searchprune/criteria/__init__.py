"""Channel-importance criteria behind one small interface (see :class:`Criterion`).

Registered: ``l1``, ``l2`` (filter norms), ``gm`` (geometric median), ``te`` (Taylor gate),
``es`` (empirical sensitivity), ``kl`` (KL divergence of the prediction).
"""

from searchprune.criteria import _gm, _kl, _norms, _sensitivity, _taylor  # noqa: F401  (register)
from searchprune.criteria._base import (
    Criterion,
    available,
    cached_scores,
    compute_scores,
    get_criterion,
    register,
    scores_key,
)

__all__ = [
    "Criterion",
    "available",
    "cached_scores",
    "compute_scores",
    "get_criterion",
    "register",
    "scores_key",
]
