"""Where searchprune keeps derived files (trained baselines, downloaded data sets)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """``$SEARCHPRUNE_CACHE`` if set, else ``~/.cache/searchprune``."""
    env = os.environ.get("SEARCHPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "searchprune"
