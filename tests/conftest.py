from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEARCHPRUNE_SHARED", ROOT.parent / "shared"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
# No test downloads weights: timm's pretrained models come from the Hugging Face hub (read when
# huggingface_hub is imported, so set before any test imports timm; subprocesses inherit it).
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The read-only ../shared folder (real CIFAR-10 JPEGs and ResNet-20 checkpoints)."""
    if not (SHARED / "models").is_dir():
        pytest.skip(f"../shared not found at {SHARED} (real data and checkpoints live there)")
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the baseline/data caches of tests away from the user's cache."""
    cache = tmp_path_factory.getbasetemp() / "searchprune-cache"
    monkeypatch.setenv("SEARCHPRUNE_CACHE", str(cache))
