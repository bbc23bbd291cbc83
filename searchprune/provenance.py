"""What produced a study or an exported model: versions, commit, seeds and the problem's shape.

Stored as the study user attr ``provenance`` and as ``provenance`` in every ``card.json``.
"""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from searchprune import __version__

__all__ = ["git_commit", "provenance"]


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the searchprune checkout this code runs from (``+dirty`` with uncommitted
    changes), or None for an installed copy outside a git work tree."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no", "--", "searchprune"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head or None


def provenance(cfg: Any, data: Any = None, **extra: Any) -> dict[str, Any]:
    """Versions (searchprune, its commit when known, Python, torch, optuna), the seeds, the
    accuracy proxy, the criterion and the data split sizes (``data``: a DataBundle); ``extra``
    adds keys (e.g. fine-tuning seeds)."""
    import optuna
    import torch

    record: dict[str, Any] = {
        "searchprune": __version__,
        "commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "seeds": {"data": cfg.data.seed, "search": cfg.search.seed,
                  **({"supernet": cfg.supernet.seed} if cfg.setting == "scratch" else {})},
        "proxy": cfg.pruning.proxy,
        "criterion": cfg.pruning.criterion,
        "setting": cfg.setting,
    }
    if data is not None:
        record["splits"] = {"train": int(data.train_size), "calib": len(data.calib),
                            "val": len(data.val), "test": len(data.test)}
    record.update(extra)
    return record
