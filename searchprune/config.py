"""Study configuration: frozen dataclasses, YAML loading, validation and flag overrides.

Precedence is flag > file > default, resolved in one place (:func:`load_config` with
``overrides``). Unknown keys are errors that name the closest valid key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from searchprune.constraints import check_group_rules, latency_spec, limit_from
from searchprune.errors import ConfigError, did_you_mean, unknown_choice

__all__ = [
    "Config",
    "DataConfig",
    "DistillConfig",
    "FinetuneConfig",
    "ModelConfig",
    "PruningConfig",
    "ReconstructionConfig",
    "SearchConfig",
    "SensitivityConfig",
    "SupernetConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "resolve_defaults",
    "upgrade_stored",
    "validate_distill",
    "validate_study_name",
]

VAL_SOURCES = ("train", "test")
# How a pruned candidate's weights are restored before it is scored (docs/how-to/proxies.md).
PROXIES = ("ls", "abn", "abn+ls", "none")
DEFAULT_PROXY = "ls"
# A study stored before ``pruning.proxy`` existed was scored with least squares.
LEGACY_PROXY = "ls"
OBJECTIVES = ("single", "pareto")
# What a Pareto study trades accuracy against (its second objective, a ratio to minimise).
PARETO_COSTS = ("flops", "params", "latency")
# ``auto``: ``sensitivity`` where the sampler learns from seeded trials (LEARNING_SAMPLERS) and
# the study is single-objective with a FLOPs band on a pretrained network, else ``none``.
WARM_STARTS = ("auto", "none", "sensitivity")
# The samplers ``search.warm_start: auto`` seeds with the sensitivity allocation: they build
# their model from every finished trial, so the seeded trials steer what they propose next
# (random and QMC ignore them; CMA-ES would restart its distribution from them).
LEARNING_SAMPLERS = ("tpe", "gp")
# What ``search.sampler`` is when a config does not say (docs/benchmarks.md: deep search).
DEFAULT_SAMPLER = "gp"
# ... and in a ``pareto`` study file: the GP learns only from evaluated trials, so out-of-range
# proposals (PRUNED) teach it nothing and it keeps proposing them; TPE draws inside the range.
PARETO_DEFAULT_SAMPLER = "tpe"
# ``compare``: ``<sampler>+warm`` is that sampler warm-started from the config's
# sensitivity.method; without ``--samplers`` a single-objective comparison runs the paper's
# random search, the default sampler alone and the default search, a Pareto one three samplers.
WARM_SUFFIX = "+warm"
DEFAULT_SAMPLERS = {"single": ("random", DEFAULT_SAMPLER, DEFAULT_SAMPLER + WARM_SUFFIX),
                    "pareto": ("random", PARETO_DEFAULT_SAMPLER, "nsga2")}
# How per-group sensitivity is measured (searchprune/search/sensitivity.py): ``scan`` evaluates
# every group pruned alone at each grid ratio; ``taylor`` and ``taylor-sq`` estimate the same
# curves from one forward and backward pass of ``sensitivity.images`` calibration images
# (searchprune/first_order.py).
SENSITIVITY_METHODS = ("auto", "scan", "taylor", "taylor-sq")
# ``sensitivity.method: auto``: the cheap first-order prior on a pretrained network, the scan on
# a supernet (setting: scratch), whose gradients are not a trained network's.
AUTO_METHOD = {"pretrained": "taylor-sq", "scratch": "scan"}
FIRST_ORDER_METHODS = ("taylor", "taylor-sq")
# ``device``: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass(frozen=True)
class ModelConfig:
    """Which network to prune.

    ``name``: ``cifar_resnet<depth>``, ``cifar_vgg16_bn``, ``digits_resnet8``,
    ``cifar_mobilenet_v2``, any torchvision classification model name, ``timm:<name>`` (a timm
    model; ``pip install searchprune[timm]``) or ``package.module:factory``. ``kwargs``: more
    constructor arguments of a torchvision, timm or factory model (plain YAML values, e.g.
    ``{aux_logits: false}``).
    """

    name: str = "digits_resnet8"
    """``cifar_resnet<6n+2>``, ``cifar_vgg16_bn``, ``digits_resnet8``, ``cifar_mobilenet_v2``
    (trained by searchprune itself on CIFAR-10 when no checkpoint is given; ``kwargs:
    {width_mult: w}``), any torchvision classification model, ``timm:<name>`` (any timm model;
    needs ``pip install 'searchprune[timm]'``, else one line says so), or
    ``package.module:factory`` (called with ``num_classes`` and ``in_channels`` if it accepts
    them)."""
    num_classes: int | None = None
    """Override the class count (default: from the data)."""
    checkpoint: str | None = None
    """A state_dict file (``module.`` prefixes and ``{"state_dict": ...}`` wrappers are handled);
    read weights-only: tensors and plain containers, no code runs."""
    shortcut: str = "projection"
    """CIFAR ResNets: ``pad`` (option A, parameter-free; the ``../shared`` checkpoints) or
    ``projection`` (1x1 conv + BN, the paper's numbers)."""
    pretrained: bool = False
    """torchvision weights enum ``DEFAULT`` (downloads; needs a network); timm: its pretrained
    weights, from the Hugging Face cache or the network (offline and not cached: one line);
    without it, random init."""
    # Full unpickling of ``checkpoint`` (it can run code from the file): only for trusted files.
    trust_checkpoint: bool = False
    """Allow full unpickling of ``model.checkpoint`` (files that also hold other objects, e.g. an
    ``argparse.Namespace``); unpickling can run code from the file, so only for files you
    trust. Also ``--trust-checkpoint`` on ``study run``, ``model eval/info``, ``criteria``,
    ``compare``. Without it such a file is refused: ``error: checkpoint F holds objects other
    than tensors, and loading it would run code from the file; ...`` (exit 1). Never stored
    with a study: ``finetune`` and ``export`` unpickle the study's ``model.checkpoint`` only
    with ``--trust-checkpoint F`` naming that same file (links resolved)."""
    kwargs: dict[str, Any] | None = None
    """Keyword arguments for the model's constructor (a torchvision builder, ``timm:<name>`` or a
    ``package.module:factory``), e.g. ``{aux_logits: false}`` for googlenet or ``{image_size:
    32}`` for a ViT; plain YAML values only. Arguments searchprune sets itself
    (``num_classes``, ``in_channels``, ``weights``, ``pretrained``) and ones that load weights
    from a path (``checkpoint_path``, ``pretrained_cfg``, ``cache_dir``) are refused."""


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how the fixed, seeded splits are drawn."""

    name: str = "digits"
    """``digits``, ``cifar10``, ``cifar100`` or ``imagefolder``. A split (calib, val, test) is
    decoded when a command first reads it (``model info`` decodes none; ``model eval`` only its
    split) and kept as stored, uint8, normalised batch by batch to the same floats."""
    root: str | None = None
    """The dataset folder. ImageFolder: ``root/train`` and ``root/test`` (or ``root/val``), at
    least two classes, the same class folders with images in both; an image PIL cannot read
    stops the run with ``error: cannot read image FILE: ...``."""
    download: bool = False
    """Let torchvision download CIFAR."""
    calib_size: int = 512
    """Calibration images (from train) for reconstruction and data-driven criteria."""
    val_size: int = 400
    """Validation images that rank candidates."""
    val_from: str = "train"
    """``train``: a seeded hold-out of train; ``test``: a seeded half of the official test split
    (the other half stays test). Use ``test`` for checkpoints trained on all of train (see the
    how-to "Your data and your model")."""
    test_size: int | None = None
    """Cap on test images (final reports only); default all."""
    train_size: int | None = None
    """Cap on training images: a seeded subset, what ``finetune`` and training from scratch
    read (e.g. a quick fine-tune on a CPU; calibration images are its first ``calib_size``);
    default all."""
    image_size: int | None = None
    """Resize the shorter side to this size and center-crop a square (default: the native size).
    The model runs once on a blank image of this size when it is built; a size it cannot take is
    one line (set another size, or pass the size through ``model.kwargs``)."""
    seed: int = 0
    """The split seed."""
    batch_size: int = 256
    """Evaluation batch size."""


@dataclass(frozen=True)
class ReconstructionConfig:
    """Layer-wise least-squares reconstruction (paper Sec. 4.2); used by the ``ls`` and
    ``abn+ls`` proxies."""

    ridge: float = 1e-4
    """Ridge ``alpha``; lambda = alpha·trace(G)/n'."""
    positions_per_image: int = 32
    """Spatial positions sampled per image and layer."""
    intercept: bool = True
    """Fit ``X z + c``."""
    guard: bool = True
    """Keep X = I where the fit does not beat identity on held-out columns."""
    holdout_fraction: float = 0.1
    """Calibration images held out for that check."""


@dataclass(frozen=True)
class PruningConfig:
    """The FLOPs band, the search-space bounds, the limits on other costs, the channel
    criterion and the proxy.

    ``gamma: null`` switches the FLOPs band off (then ``params`` or ``latency`` must limit the
    search).

    ``proxy``: ``ls`` (least-squares rebuild), ``abn`` (BatchNorm statistics re-estimated on
    ``abn_images`` calibration images, all of them when None), ``abn+ls`` (both, statistics
    first) or ``none`` (prune only).
    """

    gamma: float | None = 0.5
    """Fraction of FLOPs **kept** (the band's centre); ``null``: no FLOPs band, ``pruning.params``
    or ``pruning.latency`` must then limit the search."""
    tolerance: float = 0.02
    """Band half-width T: accept ``|ratio − gamma| <= T``. A band that meets the reachable FLOPs
    ratios in one point only (e.g. ``gamma: 1.0, tolerance: 0``) is refused before any trial,
    with the reachable range."""
    eta: float = 0.3
    """Smallest keep-ratio per group."""
    criterion: str = "l1"
    """Which channels go: ``l1``, ``l2``, ``gm``, ``te``, ``es``, ``kl`` (the criterion registry),
    or ``package.module:factory`` returning a ``searchprune.criteria.Criterion``."""
    proxy: str = DEFAULT_PROXY
    """How a candidate's weights are restored before it is scored: ``ls``, ``abn``, ``abn+ls``,
    ``none`` (see the how-to "Proxies")."""
    abn_images: int | None = None
    """Images ``abn`` and ``abn+ls`` re-estimate BN statistics on (default: all calibration
    images)."""
    round_to: int = 1
    """Widths rounded to this multiple (at least one unit)."""
    prune_classifier_input: bool = False
    """Also prune the residual stream that feeds the classifier."""
    reconstruction: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    """Layer-wise least squares, used by the ``ls`` and ``abn+ls`` proxies."""
    # Per-group keep-ratio bounds: ``{pattern: {min: r, max: r} | {fixed: r}}`` (constraints.py).
    groups: dict[str, Any] | None = None
    """Per-group keep-ratio bounds: glob patterns over group names (``*`` matches dots) mapped to
    ``{min: r, max: r}`` or ``{fixed: r}``; a group's range is ``[eta, 1]`` intersected with
    every pattern that matches it."""
    # The params ratio: ``{max: r}`` or ``{target: r, tolerance: t}`` (constraints.py).
    params: dict[str, Any] | None = None
    """A limit on the params ratio, checked before any network is built: ``{max: r}`` or
    ``{target: r, tolerance: t}``."""
    # The latency: ``{max: r}``, ``{target: r, tolerance: t}`` or ``{max_ms: x}`` plus
    # ``batch_size``, ``threads``, ``dtype``, ``measure`` (constraints.latency_spec; latency.py).
    latency: dict[str, Any] | None = None
    """A limit on the predicted CPU latency, checked before any network is built: ``{max: r}`` or
    ``{target: r, tolerance: t}`` (ratios of the unpruned network's latency) or ``{max_ms:
    x}``; with ``batch_size`` (64), ``threads`` (2), ``dtype`` (``float32`` or ``bfloat16``)
    and ``measure`` (``true``: time every evaluated trial's network). Without a limit it only
    predicts and measures."""


@dataclass(frozen=True)
class SearchConfig:
    """The Optuna side: sampler, budget of evaluated trials, seed, early stopping."""

    sampler: str = DEFAULT_SAMPLER
    """``gp`` (the default: Optuna's Gaussian-process sampler, warm-started by ``warm_start:
    auto``; a ``pareto`` study file that names no sampler gets ``tpe``), ``random`` (the paper's
    search), ``tpe`` (band-aware TPE), ``cmaes``, ``qmc``, ``nsga2`` (the sampler registry), or
    ``package.module:factory``: a function of a ``SamplerContext`` returning an Optuna sampler
    (give it ``projects = True`` to have proposals projected onto the band); imported by every
    worker."""
    n_trials: int = 30
    """**Evaluated** (in-band) trials to reach, across all workers."""
    seed: int = 0
    """The sampler seed."""
    study_name: str | None = None
    """The study's name (default: the config file's stem)."""
    pruner: str = "none"
    """``none``, or ``median``: report top-1 after each validation batch (``data.batch_size``
    images) and stop candidates below the median of earlier ones; a stopped candidate counts
    toward ``n_trials``."""
    heartbeat_interval: int = 30
    """Seconds between a running trial's heartbeats (RDB storages): dead-worker detection."""
    grace_period: int = 120
    """Seconds of silence after which a running trial is marked FAIL by the next worker and
    retried."""
    max_retry: int = 2
    """How many times a trial of a dead worker is retried."""
    max_consecutive_failures: int = 5
    """A trial whose evaluation raises FAILs (``fail_reason``) and the study goes on; this many
    FAILed trials in a row stop the run, every worker of it, with one line naming the last
    trial and its error (exit 1)."""
    # ``pareto``: maximise top-1 and minimise the FLOPs ratio over ``gamma_range`` in one study
    # (search/pareto.py); ``pruning.gamma`` and ``pruning.tolerance`` are then unused.
    objective: str = "single"
    """``single``, or ``pareto``: maximise top-1 and minimise a cost ratio in one study (samplers
    ``random``, ``tpe``, ``nsga2``, ``gp``, ``qmc``; not ``cmaes``; ``search.pruner`` must be
    ``none``)."""
    gamma_range: list[float] | None = None
    """``[lo, hi]``: the FLOPs-ratio range of a ``pareto`` study."""
    # the Pareto study's second objective: ``flops``, ``params`` or ``latency`` (predicted)
    pareto_cost: str = "flops"
    """What a ``pareto`` study minimises: ``flops``, ``params`` or ``latency`` (the predicted
    latency ratio)."""
    # ``sensitivity``: the first trials are the sensitivity allocation and seeded in-band
    # perturbations of it (searchprune/search/sensitivity.py)
    warm_start: str = "auto"
    """``auto`` (default), ``none``, or ``sensitivity``: the first trials are the sensitivity
    allocation and its perturbations (single-objective only). ``auto`` is ``sensitivity`` for a
    sampler that learns from them (``tpe``, ``gp``) on a pretrained network with a FLOPs band,
    and ``none`` otherwise (``random`` stays the paper's unseeded search)."""
    confirm: dict[str, Any] | None = None
    """``{top_k: k, images: n}``: after the search, re-score the ``top_k`` trials by validation
    top-1 (default 5) on ``images`` confirmation images, disjoint from validation, calibration,
    test and the training images, and pick by that (``searchprune/confirmation.py``: with
    ``data.val_from: test`` the validation half's unused images, default all; with ``train`` a
    hold-out drawn before the built-in baseline is trained, default ``data.val_size``)."""


@dataclass(frozen=True)
class SensitivityConfig:
    """The per-group sensitivity scan: each group pruned alone to each keep-ratio of a grid.

    ``method``: ``scan`` (each point evaluated) or ``taylor``/``taylor-sq`` (first-order
    estimates from gradients on the first ``images`` calibration images, default all;
    pretrained networks only); ``ratios``: the grid (default ``points`` evenly spaced keep-ratios from ``eta`` up
    to, not including, 1); ``val_images``: validation images each scan point is scored on
    (default all; rounded up to whole batches of ``data.batch_size``); ``perturbations`` and
    ``perturb_scale``: the warm start's extra trials (log-normal noise on each keep-ratio).
    """

    method: str = "auto"
    """How the prior is measured: ``scan`` (evaluate every point), ``taylor`` or ``taylor-sq``
    (first-order estimates from one forward and backward pass; pretrained networks only), or
    ``auto`` (default): ``taylor-sq`` on a pretrained network, ``scan`` with ``setting:
    scratch`` or an engine without first-order estimates."""
    images: int | None = None
    """Calibration images ``taylor``/``taylor-sq`` backpropagate (default all)."""
    points: int = 4
    """Keep-ratios per group in the scan, evenly spaced from ``eta`` up to (not including) 1."""
    ratios: list[float] | None = None
    """Explicit scan keep-ratios in ``[eta, 1)`` (replace ``points``)."""
    val_images: int | None = None
    """Validation images per scan point (whole batches of ``data.batch_size``); default all."""
    perturbations: int = 3
    """The warm start's extra in-band trials around the allocation."""
    perturb_scale: float = 0.15
    """The sigma of their log-normal noise (each keep-ratio times ``exp(N(0, perturb_scale))``)."""


@dataclass(frozen=True)
class SupernetConfig:
    """Setting 2: a slimmable supernet trained from scratch."""

    width_multiple: int = 8
    """Allowed widths are multiples of this."""
    min_ratio: float = 0.4
    """Smallest allowed width as a fraction of a group's channels."""
    epochs: int = 10
    """Supernet training epochs (cosine schedule)."""
    batch_size: int = 128
    """Training batch size (supernet, top-k fine-tuning, retraining)."""
    lr: float = 0.1
    """SGD learning rate (top-k fine-tuning uses a tenth)."""
    weight_decay: float = 5e-4
    """SGD weight decay."""
    num_random: int = 3
    """Random sub-networks per step besides the full one."""
    sandwich: bool = False
    """US-Nets rule: the smallest sub-network is one of the ``num_random``."""
    inplace_distill: bool = True
    """Sub-networks learn from the full network's softmax."""
    bn_calib_images: int = 1000
    """Training images that recalibrate BN of every evaluated sub-network."""
    checkpoint: str | None = None
    """Where the trained supernet is saved and loaded (default
    ``runs/supernet/<stem>/supernet.pt``)."""
    seed: int = 0
    """Initialisation, sampling and data-order seed."""
    top_k: int = 5
    """``supernet rank --train-top-k``: candidates fine-tuned."""
    finetune_epochs: int = 5
    """Epochs of top-k fine-tuning from supernet weights."""
    retrain_epochs: int = 50
    """Epochs of retraining the best from scratch."""


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation while fine-tuning, from the unpruned network (logits): the loss is
    ``(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) ||
    softmax(student / T))``. ``alpha: 0`` (the default) fine-tunes on labels alone."""

    alpha: float = 0.0
    """Weight of the distillation loss in [0, 1]: loss = (1 - alpha)·CE(labels) +
    alpha·T²·KL(softmax(teacher/T) ‖ softmax(student/T)); 0 = labels only. Used by ``finetune``
    (and ``--each``); flag ``--distill-alpha``."""
    temperature: float = 4.0
    """T of that loss, > 0; flag ``--distill-temperature``."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Defaults of ``searchprune finetune`` for this study (its flags override them)."""

    distill: DistillConfig = field(default_factory=DistillConfig)
    """Distillation from the unpruned network while fine-tuning."""


@dataclass(frozen=True)
class Config:
    """A whole study: model, data, pruning, search, storage."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Which network to prune."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where images come from; the seeded splits."""
    pruning: PruningConfig = field(default_factory=PruningConfig)
    """The FLOPs band, bounds, limits, criterion and proxy."""
    search: SearchConfig = field(default_factory=SearchConfig)
    """The Optuna side: sampler, budget, seed, early stopping, objective."""
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    """Setting ``scratch``: the slimmable supernet."""
    sensitivity: SensitivityConfig = field(default_factory=SensitivityConfig)
    """The per-group sensitivity scan and the warm start."""
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    """Defaults of ``searchprune finetune``."""
    setting: str = "pretrained"
    """``pretrained`` (prune a trained network), or ``scratch``: search a trained slimmable
    supernet (see ``supernet.*``)."""
    storage: str | None = None
    """SQLite path or any Optuna storage URL (default ``$SEARCHPRUNE_STORAGE``, else
    ``studies/searchprune.db``). A SQLite path under a regular file, or in a folder that is not
    writable, is a one-line error (exit 1)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; one this machine
    lacks is refused before anything runs."""
    source: str | None = None
    """Set by searchprune: the study file the config was read from (not written by hand)."""

    def validate(self) -> Config:
        """Check value ranges; raise :class:`ConfigError` with a one-line fix."""
        p = self.pruning
        if p.gamma is not None and (not (0.0 < p.gamma <= 1.0) or math.isnan(p.gamma)):
            raise ConfigError(f"pruning.gamma must be in (0, 1], got {p.gamma} (or null: no "
                              "FLOPs band)")
        if not (p.tolerance >= 0.0) or math.isnan(p.tolerance):
            raise ConfigError(f"pruning.tolerance must be >= 0, got {p.tolerance}")
        if not (0.0 < p.eta <= 1.0) or math.isnan(p.eta):
            raise ConfigError(f"pruning.eta must be in (0, 1], got {p.eta}")
        if p.proxy not in PROXIES:
            raise ConfigError(unknown_choice("pruning.proxy", p.proxy, PROXIES))
        if p.abn_images is not None and not (2 <= p.abn_images <= self.data.calib_size):
            raise ConfigError(f"pruning.abn_images must be between 2 and data.calib_size "
                              f"({self.data.calib_size}), got {p.abn_images}")
        check_group_rules(p.groups)
        params = limit_from("pruning.params", p.params)
        latency = latency_spec(p.latency)
        if p.gamma is None and self.search.objective == "single" and params is None and not (
                latency is not None and latency.capped):
            raise ConfigError("pruning.gamma: null switches the FLOPs band off; limit the "
                              "search another way: pruning.params {max: r} or pruning.latency "
                              "{max: r} / {max_ms: x}")
        r = p.reconstruction
        if r.ridge < 0:
            raise ConfigError(f"pruning.reconstruction.ridge must be >= 0, got {r.ridge}")
        if not (0.0 <= r.holdout_fraction < 1.0):
            raise ConfigError("pruning.reconstruction.holdout_fraction must be in [0, 1)")
        s = self.search
        from searchprune.search.samplers import check_sampler_name

        check_sampler_name(s.sampler)  # a registered name, or package.module:factory (not
        # imported here: a config read back from a study is validated too; see LocalTrust)
        _validate_objective(s)
        from searchprune.confirmation import confirm_spec

        confirm_spec(self)
        if s.study_name is not None:
            validate_study_name(s.study_name)
        d = self.data
        if d.val_from not in VAL_SOURCES:
            raise ConfigError(unknown_choice("data.val_from", d.val_from, VAL_SOURCES))
        check_model_kwargs(self.model.kwargs)
        if self.model.shortcut not in ("pad", "projection"):
            raise ConfigError(unknown_choice("model.shortcut", self.model.shortcut,
                                             ("pad", "projection")))
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(unknown_choice("device", self.device, DEVICES))
        if self.setting not in ("pretrained", "scratch"):
            raise ConfigError(unknown_choice("setting", self.setting, ("pretrained", "scratch")))
        validate_supernet(self.supernet)
        _validate_sensitivity(self.sensitivity, s, p.eta, p.gamma)
        validate_distill(self.finetune.distill.alpha, self.finetune.distill.temperature)
        if self.sensitivity.method in FIRST_ORDER_METHODS and self.setting != "pretrained":
            raise ConfigError(f"sensitivity.method: {self.sensitivity.method} needs setting: "
                              "pretrained (a trained network to take gradients of); use "
                              "method: scan")
        return self


# Constructor arguments searchprune sets itself, and the key that sets each; weights come only
# through model.pretrained or model.checkpoint (its trust rules), never a path or URL in kwargs.
_SET_ELSEWHERE = {"num_classes": "model.num_classes", "weights": "model.pretrained",
                  "pretrained": "model.pretrained", "in_channels": "the data's channels",
                  "in_chans": "the data's channels", "checkpoint_path": "model.checkpoint",
                  "pretrained_cfg": "model.pretrained or model.checkpoint",
                  "pretrained_cfg_overlay": "model.pretrained or model.checkpoint",
                  "cache_dir": "model.pretrained (timm's own cache)"}


def check_model_kwargs(kwargs: Any) -> None:
    """``model.kwargs`` is a mapping of argument names to plain YAML values (null, booleans,
    numbers, strings, and lists or mappings of them); one-line :class:`ConfigError` if not."""
    if kwargs is None:
        return
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"model.kwargs must be a mapping of constructor arguments "
                          f"(name: value), got {kwargs!r}")
    for key, value in kwargs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ConfigError(f"model.kwargs: {key!r} is not an argument name")
        if key in _SET_ELSEWHERE:
            raise ConfigError(f"model.kwargs.{key} is set by searchprune; use "
                              f"{_SET_ELSEWHERE[key]} instead")
        bad = _not_plain(value)
        if bad is not None:
            raise ConfigError(f"model.kwargs.{key} must be null, true/false, a number, a "
                              f"string, or a list or mapping of them; got {bad!r}")


def _not_plain(value: Any) -> Any:
    """The first part of ``value`` that is not a plain YAML value, or None."""
    if value is None or isinstance(value, (bool, int, str)):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else value
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            return value
        items: Any = value.values()
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        return value
    return next((bad for bad in map(_not_plain, items) if bad is not None), None)


def validate_study_name(name: str) -> str:
    """A study name becomes a folder name (fine-tuning output, reports): refuse names that are
    empty, absolute, contain a path separator, or are ``.``/``..``. Returns ``name``."""
    bad = (not name or name.strip() != name or name in (".", "..")
           or any(c in name for c in ("/", "\\", "\0")) or name.startswith("~"))
    if bad:
        raise ConfigError(f"study name {name!r} cannot be used as a folder name; use letters, "
                          "digits, '-', '_' or '.' without '/' (not '.', '..' or empty)")
    return name


def validate_distill(alpha: float, temperature: float,
                     names: tuple[str, str] = ("finetune.distill.alpha",
                                               "finetune.distill.temperature")) -> None:
    """``alpha`` in [0, 1] and ``temperature`` > 0 (one-line :class:`ConfigError` naming
    ``names``, the key or flag of each)."""
    if not (0.0 <= alpha <= 1.0):
        raise ConfigError(f"{names[0]} must be in [0, 1] (the weight of the distillation "
                          f"loss; 0: labels only), got {alpha}")
    if not (temperature > 0.0) or math.isinf(temperature):
        raise ConfigError(f"{names[1]} must be a finite number > 0, got {temperature}")


def _validate_sensitivity(v: SensitivityConfig, s: SearchConfig, eta: float,
                          gamma: float | None = 0.5) -> None:
    """The ``sensitivity`` section and ``search.warm_start`` (one-line :class:`ConfigError`)."""
    if s.warm_start not in WARM_STARTS:
        raise ConfigError(unknown_choice("search.warm_start", s.warm_start, WARM_STARTS))
    if s.warm_start == "sensitivity" and s.objective != "single":
        raise ConfigError("search.warm_start needs search.objective: single (one FLOPs band)")
    if s.warm_start == "sensitivity" and gamma is None:
        raise ConfigError("search.warm_start needs a FLOPs band; set pruning.gamma (it is null)")
    if v.method not in SENSITIVITY_METHODS:
        raise ConfigError(unknown_choice("sensitivity.method", v.method, SENSITIVITY_METHODS))
    if v.images is not None and v.images < 1:
        raise ConfigError(f"sensitivity.images must be >= 1, got {v.images}")
    if v.images is not None and v.method not in (*FIRST_ORDER_METHODS, "auto"):
        raise ConfigError("sensitivity.images is read by method: taylor (or taylor-sq) only; "
                          "for a scan on fewer images set sensitivity.val_images")
    if v.points < 1:
        raise ConfigError(f"sensitivity.points must be >= 1, got {v.points}")
    if v.ratios is not None and (
            not isinstance(v.ratios, (list, tuple)) or not v.ratios
            or not all(isinstance(r, (int, float)) and not isinstance(r, bool)
                       and eta <= r < 1.0 for r in v.ratios)):
        raise ConfigError(f"sensitivity.ratios must be a non-empty list of keep-ratios in "
                          f"[pruning.eta, 1) = [{eta}, 1), got {v.ratios!r}")
    if v.val_images is not None and v.val_images < 1:
        raise ConfigError(f"sensitivity.val_images must be >= 1, got {v.val_images}")
    if v.perturbations < 0 or not (v.perturb_scale >= 0.0):
        raise ConfigError("sensitivity.perturbations and sensitivity.perturb_scale must be "
                          f">= 0, got {v.perturbations} and {v.perturb_scale}")


def validate_supernet(s: SupernetConfig) -> None:
    """Range checks of the ``supernet`` section (one-line :class:`ConfigError`)."""
    if s.width_multiple < 1:
        raise ConfigError(f"supernet.width_multiple must be >= 1, got {s.width_multiple}")
    if not (0.0 < s.min_ratio <= 1.0):
        raise ConfigError(f"supernet.min_ratio must be in (0, 1], got {s.min_ratio}")
    for key in ("num_random", "epochs", "finetune_epochs", "retrain_epochs"):
        if getattr(s, key) < 0:
            raise ConfigError(f"supernet.{key} must be >= 0, got {getattr(s, key)}")
    for key, low in (("batch_size", 1), ("top_k", 1), ("bn_calib_images", 2)):
        if getattr(s, key) < low:
            raise ConfigError(f"supernet.{key} must be >= {low}, got {getattr(s, key)}")
    if not (s.lr > 0.0) or s.weight_decay < 0.0:
        raise ConfigError(f"supernet.lr must be > 0 and supernet.weight_decay >= 0, got "
                          f"{s.lr} and {s.weight_decay}")


def _validate_objective(s: SearchConfig) -> None:
    """``search.objective`` and, for ``pareto``, ``search.gamma_range`` and what it excludes."""
    if s.objective not in OBJECTIVES:
        raise ConfigError(unknown_choice("search.objective", s.objective, OBJECTIVES))
    if s.pareto_cost not in PARETO_COSTS:
        raise ConfigError(unknown_choice("search.pareto_cost", s.pareto_cost, PARETO_COSTS))
    if s.objective == "single":
        if s.pareto_cost != "flops":
            raise ConfigError("search.pareto_cost is only used with search.objective: pareto; "
                              "for one target limit the cost with pruning.params or "
                              "pruning.latency")
        if s.gamma_range is not None:
            raise ConfigError("search.gamma_range is only used with search.objective: pareto; "
                              "use pruning.gamma and pruning.tolerance for one target")
        return
    r = s.gamma_range
    if (not isinstance(r, (list, tuple)) or len(r) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in r)
            or not (0.0 < r[0] < r[1] <= 1.0)):
        raise ConfigError(f"search.gamma_range must be [lo, hi] with 0 < lo < hi <= 1 for "
                          f"search.objective: pareto, got {r!r}")
    if s.sampler == "cmaes":
        raise ConfigError("search.sampler 'cmaes' is single-objective; with search.objective: "
                          "pareto use nsga2, tpe, random, gp or qmc")
    if s.pruner != "none":
        raise ConfigError("search.pruner must be 'none' with search.objective: pareto (Optuna "
                          "cannot stop multi-objective trials early)")


# Counts that must be >= 1 and values that must be >= 0 (checked with the types, in one pass).
_POSITIVE = frozenset({
    "model.num_classes", "data.calib_size", "data.val_size", "data.test_size",
    "data.train_size", "data.image_size", "data.batch_size", "pruning.round_to",
    "pruning.reconstruction.positions_per_image", "search.n_trials", "search.grace_period",
    "search.max_consecutive_failures",
})
_NON_NEGATIVE = frozenset({
    "data.seed", "search.seed", "search.heartbeat_interval", "search.max_retry", "supernet.seed",
})  # the other supernet ranges: validate_supernet
# Upper bounds of integer values: seeds fit 32 bits (samplers and torch generators derive
# other seeds from them), an image side stays far below what fits in memory, and every other
# count fits a C int (larger values overflow inside torch or numpy).
_INT_MAX = 2**31 - 1
_SEED_MAX = 2**32 - 1
MAX_IMAGE_SIZE = 2048
_UPPER = {"data.seed": _SEED_MAX, "search.seed": _SEED_MAX, "supernet.seed": _SEED_MAX,
          "data.image_size": MAX_IMAGE_SIZE}


def _build(cls: type, data: Mapping[str, Any], where: str,
           problems: list[str] | None = None) -> Any:
    """``cls(**data)`` with every value checked against the field's type (and the ranges
    above); all type problems are reported together in one :class:`ConfigError`."""
    top = problems is None
    problems = [] if problems is None else problems
    if not isinstance(data, Mapping):
        raise ConfigError(f"'{where or 'config'}' must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            if path == "pruning.reconstruction.enabled":
                raise ConfigError("'pruning.reconstruction.enabled' was replaced by "
                                  "'pruning.proxy': use proxy: ls (enabled) or none (disabled)")
            raise ConfigError(f"unknown config key '{path}'{did_you_mean(key, known)}")
        if is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value or {}, path, problems)
            continue
        value, problem = _coerce(value, hints[key], path)
        if problem is None and isinstance(value, (int, float)) and not isinstance(value, bool):
            if path in _POSITIVE and value < 1:
                problem = f"'{path}' must be >= 1, got {value!r}"
            elif path in _NON_NEGATIVE and value < 0:
                problem = f"'{path}' must be >= 0, got {value!r}"
            elif isinstance(value, int) and value > _UPPER.get(path, _INT_MAX):
                problem = f"'{path}' must be <= {_UPPER.get(path, _INT_MAX)}, got {value!r}"
        if problem is not None:
            problems.append(problem)
        kwargs[key] = value
    if top and problems:
        raise ConfigError("; ".join(problems))
    return cls(**kwargs) if not problems else None


_KINDS = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}


def _coerce(value: Any, hint: Any, path: str) -> tuple[Any, str | None]:
    """``value`` converted to ``hint`` (``int``, ``float``, ``str``, ``bool``, ``list[float]``,
    any of them ``| None``), or a problem saying what is expected."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        ok = type(None) in options
        return value, None if ok else f"'{path}' must be set, got null"
    kinds = [o for o in options if o is not type(None)]
    for kind in kinds:
        converted = _as(value, kind)
        if converted is not _NO:
            return converted, None
    wanted = " or ".join(_KINDS.get(k, "a list of finite numbers") for k in kinds)
    return value, f"'{path}' must be {wanted}, got {value!r}"


_NO = object()


def _as(value: Any, kind: Any) -> Any:
    """``value`` as ``kind``, or ``_NO``: integers are not booleans, numbers are finite."""
    if kind is bool:
        return value if isinstance(value, bool) else _NO
    if kind is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if kind is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return _NO
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            return _NO
        return number if math.isfinite(number) else _NO
    if kind is str:
        return value if isinstance(value, str) else _NO
    if typing.get_origin(kind) is list:
        if not isinstance(value, (list, tuple)):
            return _NO
        items = [_as(v, typing.get_args(kind)[0]) for v in value]
        return _NO if any(v is _NO for v in items) else items
    return value


def config_from_dict(data: Mapping[str, Any] | None, source: str | None = None) -> Config:
    """Build and validate a :class:`Config` from a plain mapping (e.g. parsed YAML). A
    ``pareto`` search section without a sampler gets :data:`PARETO_DEFAULT_SAMPLER`."""
    data = dict(data or {})
    search = data.get("search")
    if isinstance(search, Mapping) and search.get("objective") == "pareto" \
            and "sampler" not in search:
        data["search"] = {**search, "sampler": PARETO_DEFAULT_SAMPLER}
    cfg = _build(Config, data, "")
    if source is not None:
        cfg = dataclasses.replace(cfg, source=source)
    return cfg.validate()


def upgrade_stored(data: Mapping[str, Any]) -> dict[str, Any]:
    """A config stored with an older study, in today's schema: a study stored before
    ``pruning.proxy`` existed used least squares (or nothing, with ``reconstruction.enabled:
    false``), whatever today's default is, so it resumes, fine-tunes and exports as before."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    pruning = out.setdefault("pruning", {})
    recon = dict(pruning.get("reconstruction") or {})
    enabled = recon.pop("enabled", True)
    if "reconstruction" in pruning:
        pruning["reconstruction"] = recon
    pruning.setdefault("proxy", LEGACY_PROXY if enabled else "none")
    return out


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The fully resolved config as plain JSON-able data (stored with every study). An unset
    ``model.kwargs`` is left out, so a config without it reads (and fingerprints) as before
    the key existed."""
    data = dataclasses.asdict(cfg)
    if not data["model"].get("kwargs"):
        data["model"].pop("kwargs", None)
    return data


def apply_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """Return ``cfg`` with dotted-key overrides applied (``{"pruning.gamma": 0.7}``); ``None`` values
    are ignored so unset command-line flags never shadow the file."""
    data = config_to_dict(cfg)
    data["model"].setdefault("kwargs", None)  # left out when unset, yet a key to override
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"unknown override '{dotted}'")
            node = node[part]
        if not isinstance(node, dict) or leaf not in node:
            raise ConfigError(f"unknown override '{dotted}'")
        node[leaf] = value
    source = data.pop("source", None)
    return config_from_dict(data, source=source)


def resolve_defaults(cfg: Config, *, first_order: bool = True) -> Config:
    """``cfg`` with ``search.warm_start: auto`` and ``sensitivity.method: auto`` replaced by what
    they mean for it (the config keeps ``auto``, so overriding the sampler or the setting later
    changes what it means). ``first_order``: whether the engine can measure a first-order prior
    (an engine of one's own may not); without it ``sensitivity.method: auto`` is the scan and
    ``search.warm_start: auto`` starts no warm start."""
    over: dict[str, str] = {}
    method, cheap = cfg.sensitivity.method, True
    if method == "auto":
        method = AUTO_METHOD[cfg.setting] if first_order else "scan"
        over["sensitivity.method"], cheap = method, method in FIRST_ORDER_METHODS
    s = cfg.search
    if s.warm_start == "auto":  # never a full scan the config did not ask for
        seeded = (s.sampler in LEARNING_SAMPLERS and s.objective == "single"
                  and cfg.pruning.gamma is not None and cfg.setting == "pretrained" and cheap)
        over["search.warm_start"] = "sensitivity" if seeded else "none"
    return apply_overrides(cfg, over) if over else cfg


def load_config(path: str | Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load a YAML study file (or the built-in defaults when ``path`` is None) and apply overrides.

    Relative paths inside the file (``model.checkpoint``, ``data.root``) are resolved against the
    current directory first and then against the YAML file's own folder.
    """
    if path is None:
        cfg = Config().validate()
    else:
        p = Path(path)
        raw = _read_with_includes(p, ())
        cfg = config_from_dict(raw, source=str(p))
    return apply_overrides(cfg, overrides or {})


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(key, line, first)
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key written twice in one mapping (plain YAML keeps
    the last one and silently drops the first, a whole section for ``search:`` twice)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode,
                    deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *anchor`` may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise _DuplicateKey(key, line, seen[key])
            seen[key] = line
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _unique_mapping)


def _read_yaml(p: Path) -> dict[str, Any]:
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506  # a SafeLoader
    except _DuplicateKey as dup:
        raise ConfigError(f"duplicate key '{dup.key}' at line {dup.line} of {p} (first at line "
                          f"{dup.first}); write each key once per section") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"malformed YAML in {p}{where}: fix the syntax") from None
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(f"{p} must contain a mapping of sections (model, data, pruning, ...)")
    return _resolve_paths(dict(raw or {}), p.parent)


def _read_with_includes(p: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """A study file may start with ``include: [preset.yaml, ...]`` (paths relative to it):
    the presets are merged first, in order, and the file's own keys win."""
    if p.resolve() in seen:
        raise ConfigError(f"config include cycle at {p}")
    raw = _read_yaml(p)
    includes = raw.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) and i for i in includes):
        raise ConfigError(f"'include' in {p} must be a file name or a list of file names, got "
                          f"{includes!r}")
    merged: dict[str, Any] = {}
    for inc in includes:
        path = Path(inc) if Path(inc).is_absolute() else p.parent / inc
        _merge(merged, _read_with_includes(path, (*seen, p.resolve())))
    return _merge(merged, raw)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    for section, key in (("model", "checkpoint"), ("data", "root"), ("supernet", "checkpoint")):
        node = raw.get(section)
        if isinstance(node, dict) and isinstance(node.get(key), str):
            value = Path(node[key]).expanduser()
            if not value.is_absolute() and not value.exists() and (base / value).exists():
                value = base / value
            if value.exists():  # absolute, so a study resumed from another folder matches
                node[key] = os.path.abspath(value)
    return raw
