"""The criterion interface and registry: which channels of a group to keep."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from searchprune._factory import import_factory
from searchprune.data._cache import cache_folder
from searchprune.errors import ConfigError, unknown_choice
from searchprune.space import SearchSpace

__all__ = [
    "Criterion",
    "available",
    "cached_scores",
    "compute_scores",
    "get_criterion",
    "register",
    "scores_key",
]

_log = logging.getLogger(__name__)
_REGISTRY: dict[str, type[Criterion]] = {}
_MEMORY: dict[str, tuple[dict[str, torch.Tensor], float]] = {}


class Criterion(ABC):
    """Scores every channel of every prunable group; a higher score means more important.

    Scores are computed once, on the unpruned network, and reused by every candidate.
    Ranking happens within a group only, so a group's scores may be scaled freely.
    Options are constructor keyword arguments stored as public attributes; :meth:`options`
    returns them (they are part of the score cache key). Bump ``version`` when the maths changes.
    """

    name: str = ""
    # True when :meth:`scores` reads ``data``: only then do the calibration images (and what
    # the bundle says of its training set) enter the score cache key, so a data-free
    # criterion never decodes them.
    needs_data: bool = False
    version: int = 1

    @abstractmethod
    def scores(self, model: nn.Module, space: SearchSpace, data, *,
               device: torch.device) -> dict[str, torch.Tensor]:
        """One float tensor of shape ``(group.channels,)`` per prunable group."""

    def options(self) -> dict[str, Any]:
        """The criterion's options (public instance attributes), for cache keys and logs."""
        return {k: v for k, v in sorted(vars(self).items()) if not k.startswith("_")}


def register(name: str) -> Callable[[type[Criterion]], type[Criterion]]:
    """Class decorator that adds a criterion under ``name`` (duplicates are refused)."""

    def deco(cls: type[Criterion]) -> type[Criterion]:
        if name in _REGISTRY:
            raise ValueError(f"criterion '{name}' is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def get_criterion(name: str, **options) -> Criterion:
    """A registered criterion, or a user's ``package.module:factory`` returning a
    :class:`Criterion` (called with ``options``)."""
    if ":" in name and name not in _REGISTRY:
        return _from_factory(name, options)
    if name not in _REGISTRY:
        raise ConfigError(unknown_choice("criterion", name, [*available(),
                                                             "package.module:factory"]))
    try:
        return _REGISTRY[name](**options)
    except (TypeError, ValueError) as exc:  # an unknown option or a bad value
        raise ConfigError(f"criterion '{name}': {exc}") from exc


def _from_factory(spec: str, options: dict[str, Any]) -> Criterion:
    factory = import_factory(spec, "pruning.criterion")
    try:
        crit = factory(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"criterion '{spec}': {exc}") from exc
    if not isinstance(crit, Criterion):
        raise ConfigError(f"criterion factory '{spec}' returned {type(crit).__name__}, not a "
                          "searchprune.criteria.Criterion")
    if not crit.name:
        type(crit).name = spec
    return crit


def compute_scores(name: str, model: nn.Module, space: SearchSpace, data=None, *,
                   device: torch.device | None = None, **options) -> dict[str, torch.Tensor]:
    """Scores of criterion ``name`` (built with ``options``) for every prunable group of ``space``.

    The model is scored in eval mode and left as it was (mode, parameters, BN statistics).
    """
    crit = get_criterion(name, **options)
    return _run(crit, model, space, data, device or torch.device("cpu"))


def _run(crit: Criterion, model: nn.Module, space: SearchSpace, data,
         device: torch.device) -> dict[str, torch.Tensor]:
    if crit.needs_data and data is None:
        raise ConfigError(f"criterion '{crit.name}' needs data")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        scores = crit.scores(model, space, data, device=device)
    finally:
        model.train(was_training)
    _log.info("criterion %s scored %d groups in %.2fs", crit.name, len(scores),
              time.perf_counter() - start)
    return {k: v.detach().double().cpu() for k, v in scores.items()}


# -- score cache ------------------------------------------------------------------------------
def _hash_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous().reshape(-1)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _data_fingerprint(h, data, needs_data: bool = True) -> None:
    if data is None:
        h.update(b"no-data")
        return
    if not needs_data:
        h.update(b"data-free")
        return
    calib = getattr(data, "calib", None)
    if calib is not None:
        _hash_tensor(h, calib.x)
        _hash_tensor(h, calib.y)
    # The training set (used by TE) is identified by what the bundle says about it.
    for attr in ("name", "seed", "train_size"):
        h.update(f"{attr}={getattr(data, attr, None)!r};".encode())


def scores_key(crit: Criterion, model: nn.Module, space: SearchSpace, data,
               model_kwargs: Mapping[str, Any] | None = None) -> str:
    """Hash of (criterion name, version and options; model state; groups; calibration data,
    for a criterion that reads it; the model's constructor arguments when there are some: they
    may change what the network computes without changing its weights)."""
    h = hashlib.sha256()
    h.update(json.dumps([crit.name, crit.version, crit.options()], sort_keys=True,
                        default=repr).encode())
    if model_kwargs:
        h.update(json.dumps({"model.kwargs": model_kwargs}, sort_keys=True).encode())
    for key, value in model.state_dict().items():
        h.update(key.encode())
        _hash_tensor(h, value)
    for g in space.prunable:
        h.update(f"{g.name}:{g.channels};".encode())
        for m in g.members:
            h.update(f"{m.module}/{m.role}/{m.idxs}/{m.root_idxs};".encode())
    _data_fingerprint(h, data, crit.needs_data)
    return h.hexdigest()[:32]


_SECONDS = "__seconds__"


def _default_cache_dir() -> Path:
    from searchprune.data import default_cache_dir

    return default_cache_dir()



def cached_scores(name: str, model: nn.Module, space: SearchSpace, data=None, *,
                  device: torch.device | None = None, cache_dir: str | Path | None = None,
                  with_seconds: bool = False, model_kwargs: Mapping[str, Any] | None = None,
                  **options):
    """:func:`compute_scores`, memoised in memory and in ``<cache_dir>/scores/<key>.pt``.

    ``model_kwargs``: the arguments the model was built with (``model.kwargs``), part of the key.
    ``cache_dir`` defaults to ``$SEARCHPRUNE_CACHE`` or ``~/.cache/searchprune``. Files are written
    atomically (temporary file + rename), so parallel workers can share them safely. With
    ``with_seconds`` the result is ``(scores, seconds the scores took to compute)``, the
    original computation's time even when they come from the cache.
    """
    crit = get_criterion(name, **options)
    key = scores_key(crit, model, space, data, model_kwargs)
    if key not in _MEMORY:
        _MEMORY[key] = _load_or_compute(crit, key, model, space, data, device, cache_dir)
    scores, seconds = _MEMORY[key]
    scores = {k: v.clone() for k, v in scores.items()}
    return (scores, seconds) if with_seconds else scores


def _load_or_compute(crit, key, model, space, data, device, cache_dir):
    name = f"{crit.name}-{key}.pt"
    root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    with cache_folder(root, "scores") as folder:
        stored = _load_stored(folder, name, crit.name)
        if stored is not None:
            return stored
        start = time.perf_counter()
        scores = _run(crit, model, space, data, device or torch.device("cpu"))
        seconds = time.perf_counter() - start
        if folder is not None:  # a refused folder is never written to either
            folder.save({**scores, _SECONDS: torch.tensor(seconds)}, name)
    return scores, seconds


def _load_stored(folder, name: str, crit_name: str):
    """(scores, seconds) from the checked cache file, read from its own descriptor; None to
    recompute."""
    f = folder.open(name) if folder is not None else None
    if f is None:
        return None
    with f:
        try:
            stored = torch.load(f, map_location="cpu", weights_only=True)
            seconds = float(stored.pop(_SECONDS, torch.tensor(float("nan"))))
        except Exception as exc:  # a damaged file is recomputed and replaced
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            _log.warning("ignoring unreadable score cache %s (%s); recomputing it", f.name,
                         reason)
            return None
    _log.info("criterion %s: scores loaded from %s", crit_name, f.name)
    return stored, seconds
