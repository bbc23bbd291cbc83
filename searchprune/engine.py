"""Engines: from a channel configuration to a built, evaluated network. They know nothing of Optuna.

:class:`Engine` is the interface the search layer, the reports and the finishing steps use;
:func:`engine_for` picks one by the config's ``setting`` from the registry :data:`ENGINES`:
``pretrained`` is :class:`PruningEngine` (prune a trained network by a criterion, restore the
kept weights as ``pruning.proxy`` says), ``scratch`` is
:class:`~searchprune.supernet.SupernetEngine` (sub-networks of a trained slimmable supernet).

For :class:`PruningEngine`, everything that is done once per study (model, data, channel groups,
FLOPs profile, importance scores, the original network's features on the calibration images)
happens in :meth:`PruningEngine.from_config`; :meth:`PruningEngine.evaluate` is the per-trial
path.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from searchprune.config import PROXIES, Config
from searchprune.errors import ConfigError, unknown_choice
from searchprune.space import Cost, SearchSpace

if TYPE_CHECKING:
    from searchprune.reconstruct import Reconstructor

__all__ = ["ENGINES", "Engine", "EvalResult", "PruningEngine", "SearchSpaceView", "engine_for",
           "proxy_steps", "resolve_device"]

_log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """What one evaluated configuration yields (accuracies in percent)."""

    top1: float
    top5: float
    cost: Cost
    widths: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    images: int = 0
    # what least squares did (Reconstructor.outcome), when the proxy has an ``ls`` step
    least_squares: dict[str, int] | None = None


@runtime_checkable
class Engine(Protocol):
    """What every engine offers (the search layer, reports and finishing use nothing else).

    ``groups``: the prunable channel groups (``.name``, ``.channels``), in a stable order;
    ``widths``: keep-ratios to channel counts; ``cost``/``base_cost``/``flops_ratio``/
    ``ratio_range``: the analytic cost model; ``build``: the network of a configuration
    (``seconds`` collects timings); ``evaluate``: build and score it on ``split``
    (``on_chunk(images, top1)`` returning True stops early); ``evaluate_baseline``: the unpruned
    network's top-1/top-5. ``cfg``, ``data``, ``device``, ``model`` and ``seconds`` (time spent
    preparing, by step) are plain attributes. Optional: ``proxy_images`` (images an evaluation
    forwards before scoring, for the sensitivity prior's cost) and ``first_order_drops`` (the
    ``taylor`` sensitivity prior).
    """

    cfg: Config
    data: Any
    device: torch.device
    model: nn.Module
    seconds: dict[str, float]

    @property
    def groups(self) -> Sequence[Any]: ...

    @property
    def base_cost(self) -> Cost: ...

    def widths(self, ratios: Mapping[str, float]) -> dict[str, int]: ...

    def cost(self, widths: Mapping[str, int]) -> Cost: ...

    def flops_ratio(self, widths: Mapping[str, int]) -> float: ...

    def ratio_range(self, eta: float | None = None) -> tuple[float, float]: ...

    def build(self, widths: Mapping[str, int], *,
              seconds: dict[str, float] | None = None) -> nn.Module: ...

    def evaluate(self, widths: Mapping[str, int], *, split: str = "val",
                 on_chunk: Callable[[int, float], bool] | None = None) -> EvalResult: ...

    def evaluate_baseline(self, split: str = "val") -> tuple[float, float]: ...


# setting -> "module:attribute" of a class with ``from_config(cfg, *, progress)``; resolved when
# used, so listing an engine here never imports it (and engines may import this module).
ENGINES: dict[str, str] = {
    "pretrained": "searchprune.engine:PruningEngine",
    "scratch": "searchprune.supernet:SupernetEngine",
}


def engine_for(cfg: Config, *, progress: bool = False) -> Engine:
    """The prepared engine of ``cfg.setting`` (model, data and everything done once per study)."""
    if cfg.setting not in ENGINES:
        raise ConfigError(unknown_choice("setting", cfg.setting, sorted(ENGINES)))
    module, _, attr = ENGINES[cfg.setting].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    engine = cls.from_config(cfg, progress=progress)
    # Every configuration is scored on val: decode it now, so an unreadable image stops the
    # command before it creates or changes anything (splits are otherwise decoded when read).
    val = getattr(getattr(engine, "data", None), "val", None)
    if val is not None and hasattr(val, "stored"):
        val.stored  # noqa: B018
    return engine


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; a device this machine lacks is a one-line
    :class:`ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(unknown_choice("device", name, ("auto", "cpu", "cuda", "cuda:N",
                                                           "mps"))) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            have = f"{count} CUDA device(s)" if count else "no usable CUDA device"
            raise ConfigError(f"device '{name}' is not available: this machine has {have}; "
                              "set device: auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{name}' is not available on this machine; set device: auto "
                          "or cpu")
    return device


class SearchSpaceView:
    """The search-space side every engine shares (expects ``self.space``, ``self.cfg``,
    ``self.data`` and ``self.device``): prunable groups, keep-ratio -> width, analytic cost,
    reachable FLOPs ratios, and scoring a built network."""

    space: SearchSpace
    cfg: Config
    device: torch.device

    def _score(self, net: nn.Module, widths: dict[str, int], split: str,
               on_chunk: Callable[[int, float], bool] | None,
               seconds: dict[str, float]) -> EvalResult:
        """Top-1/top-5 of the built ``net`` on ``split`` (chunked, may stop early)."""
        from searchprune.evaluate import evaluate_chunks

        t = time.perf_counter()
        sp = getattr(self.data, split)
        top1, top5, seen, stopped = evaluate_chunks(
            net, sp.images, sp.y, batch_size=self.cfg.data.batch_size, device=self.device,
            on_chunk=on_chunk,
        )
        seconds["evaluate"] = time.perf_counter() - t
        return EvalResult(top1, top5, self.cost(widths), widths, seconds, stopped, seen)

    @property
    def groups(self):
        """The prunable channel groups, in a stable order (their names are the trial params)."""
        return self.space.prunable

    @property
    def base_cost(self) -> Cost:
        return self.space.base_cost

    def widths(self, ratios: Mapping[str, float]) -> dict[str, int]:
        return self.space.widths(ratios)

    def cost(self, widths: Mapping[str, int]) -> Cost:
        return self.space.cost(widths)

    def flops_ratio(self, widths: Mapping[str, int]) -> float:
        return self.space.cost(widths).flops / self.space.base_cost.flops

    def ratio_range(self, eta: float | None = None) -> tuple[float, float]:
        """FLOPs ratio of the all-``eta`` configuration and of the unpruned one (1.0)."""
        eta = self.cfg.pruning.eta if eta is None else eta
        return self.flops_ratio(self.widths({g.name: eta for g in self.groups})), 1.0


class PruningEngine(SearchSpaceView):
    """Prepared pruning problem for one model, dataset and criterion (an :class:`Engine`)."""

    def __init__(self, cfg: Config, model: nn.Module, data, *, device: torch.device | None = None,
                 scores: dict[str, torch.Tensor] | None = None) -> None:
        self.cfg = cfg
        self.device = device or resolve_device(cfg.device)
        self.model = model.eval().to(self.device)
        self.data = data
        # tracing needs the shape only: no image is decoded for it (`model info` decodes none)
        example = torch.zeros(1, *data.input_shape, device=self.device)
        self.space = SearchSpace.from_model(
            self.model, example, round_to=cfg.pruning.round_to,
            prune_classifier_input=cfg.pruning.prune_classifier_input,
        )
        self.seconds: dict[str, float] = {}
        t = time.perf_counter()
        self.scores = scores if scores is not None else self._compute_scores(cfg.pruning.criterion)
        self.seconds["scores"] = time.perf_counter() - t
        self._reconstructor: Reconstructor | None = None
        steps = proxy_steps(cfg.pruning.proxy)
        if "ls" in steps:
            self.reconstructor  # noqa: B018 -- the original's features, once per worker
        if "abn" in steps and hasattr(data.calib, "stored"):
            data.calib.stored  # noqa: B018 -- every trial reads it: decoded now, once

    @property
    def reconstructor(self) -> Reconstructor:
        """The least-squares fitter with the original network's features on the calibration
        images (captured on first use, then reused by every trial)."""
        from searchprune.reconstruct import Reconstructor

        if self._reconstructor is None:
            t = time.perf_counter()
            self._reconstructor = Reconstructor(
                self.model, self.space, self.data.calib.x, self.cfg.pruning.reconstruction,
                device=self.device, seed=self.cfg.data.seed,
            )
            self.seconds["features"] = time.perf_counter() - t
        return self._reconstructor

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Config, *, progress: bool = False) -> PruningEngine:
        """Load data and model as the config says and prepare everything done once per study."""
        from searchprune.confirmation import holdout_images
        from searchprune.data import load_data

        data = load_data(cfg.data, confirm_images=holdout_images(cfg))
        model = _load_model(cfg, data, progress=progress)
        return cls(cfg, model, data)

    def _compute_scores(self, criterion: str) -> dict[str, torch.Tensor]:
        from searchprune.criteria import cached_scores

        return cached_scores(criterion, self.model, self.space, self.data, device=self.device,
                             model_kwargs=self.cfg.model.kwargs)

    # -- per trial ----------------------------------------------------------------------------
    def build(self, widths: Mapping[str, int], *, proxy: str | None = None,
              keep: Mapping[str, torch.Tensor] | None = None,
              seconds: dict[str, float] | None = None,
              report: dict[str, Any] | None = None) -> nn.Module:
        """The physically pruned network, its weights restored by ``proxy`` (default: the
        config's ``pruning.proxy``): ``abn`` re-estimates BatchNorm statistics on calibration
        images, ``ls`` rebuilds weights by least squares, ``abn+ls`` does both in that order,
        ``none`` leaves the kept weights as they are. ``keep`` (group -> kept channel indices)
        overrides the criterion's choice (a baseline that picks its own channels). ``seconds``
        gets each step's time, ``report`` what least squares did (``least_squares``: layers
        fitted, kept, skipped, not fitted)."""
        from searchprune.bn import recalibrate_bn
        from searchprune.prune import prune_model

        steps = proxy_steps(self.cfg.pruning.proxy if proxy is None else proxy)
        seconds = {} if seconds is None else seconds
        t = time.perf_counter()
        keep = self.space.keep_indices(widths, self.scores) if keep is None else dict(keep)
        pruned = prune_model(self.model, self.space, keep)
        seconds["build"] = time.perf_counter() - t
        if "abn" in steps:
            t = time.perf_counter()
            n = self.cfg.pruning.abn_images or len(self.data.calib)
            recalibrate_bn(pruned, self.data.calib[:n].images, batch_size=self.cfg.data.batch_size,
                           device=self.device)
            seconds["abn"] = time.perf_counter() - t
        if "ls" in steps:
            reconstructor = self.reconstructor
            t = time.perf_counter()
            errors = reconstructor.rebuild(pruned, keep)
            seconds["reconstruct"] = time.perf_counter() - t
            if report is not None:
                report["least_squares"] = reconstructor.outcome(errors)
        return pruned

    def evaluate(self, widths: Mapping[str, int], *, split: str = "val",
                 proxy: str | None = None, keep: Mapping[str, torch.Tensor] | None = None,
                 on_chunk: Callable[[int, float], bool] | None = None) -> EvalResult:
        """Build, restore (``proxy``, default the config's) and evaluate one configuration.

        ``on_chunk(images_seen, top1_so_far)`` is called after each validation chunk; returning
        True stops the evaluation early (used by Optuna pruners).
        """
        seconds: dict[str, float] = {}
        report: dict[str, Any] = {}
        widths = dict(widths)
        pruned = self.build(widths, proxy=proxy, keep=keep, seconds=seconds, report=report)
        result = self._score(pruned, widths, split, on_chunk, seconds)
        result.least_squares = report.get("least_squares")
        return result

    @property
    def proxy_images(self) -> int:
        """Calibration images the proxy forwards per evaluation (least squares: all of them;
        BN re-estimation: ``pruning.abn_images``)."""
        steps = proxy_steps(self.cfg.pruning.proxy)
        n = len(self.data.calib)
        abn = min(self.cfg.pruning.abn_images or n, n) if "abn" in steps else 0
        return abn + (n if "ls" in steps else 0)

    def first_order_drops(self, points: Sequence[tuple[str, int]], images: int | None = None,
                          form: str = "taylor"):
        """First-order estimates (``form``: ``taylor`` or ``taylor-sq``) of each
        ``(group, width)`` point's drop on the first ``images`` calibration images (default
        all), and the passes behind them (:func:`searchprune.first_order.first_order_drops`)."""
        from searchprune.first_order import first_order_drops

        calib = self.data.calib if images is None else self.data.calib[:images]
        return first_order_drops(self.model, self.space, self.scores, calib.images, calib.y, points,
                                 batch_size=self.cfg.data.batch_size, device=self.device,
                                 form=form)

    def evaluate_baseline(self, split: str = "val") -> tuple[float, float]:
        from searchprune.evaluate import evaluate

        sp = getattr(self.data, split)
        return evaluate(self.model, sp.images, sp.y, batch_size=self.cfg.data.batch_size,
                        device=self.device)


def proxy_steps(proxy: str) -> tuple[str, ...]:
    """``"abn+ls"`` -> ``("abn", "ls")``; ``"none"`` -> ``()``; unknown names are refused."""
    if proxy not in PROXIES:
        raise ConfigError(unknown_choice("proxy", proxy, PROXIES))
    return () if proxy == "none" else tuple(proxy.split("+"))


def _load_model(cfg: Config, data, *, progress: bool = False) -> nn.Module:
    from searchprune._recipes import has_recipe
    from searchprune.models import build_model

    if has_recipe(cfg.model):
        from searchprune.models.baseline import trained_baseline

        return trained_baseline(cfg.model, data, progress=progress)
    return build_model(cfg.model, num_classes=data.num_classes, in_channels=data.input_shape[0],
                       input_shape=data.input_shape)
