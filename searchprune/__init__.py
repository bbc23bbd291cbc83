"""searchprune: find the best channel configuration of a pruned CNN with Optuna."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
