"""The sensitivity scan in the study storage, and the warm start that reads it.

The scan prunes one group at a time to each keep-ratio of a grid (every other group full),
restores the network with the study's proxy, scores it on the validation images (the first
``sensitivity.val_images``) and records the drop against the unpruned network on the same
images. It is an Optuna study of its own, named ``sensitivity-<fingerprint>`` where the
fingerprint covers everything the drops depend on (model, data, criterion, proxy, reconstruction,
eta, the grid and the images) and nothing they do not (the band, the sampler, the seed), so every
study, comparison and baseline on the same problem shares one scan. Each scan point is one trial
(user attrs ``group``, ``keep_ratio``, ``width``, ``top1``, ``drop``; value = drop); the
unpruned network's accuracy is the study attr ``reference_top1``. Points are claimed under the
study lock, so a re-run (or a second worker) measures only the points still missing; a point
left RUNNING by a killed process for longer than ``search.grace_period`` s is claimed again.

``sensitivity.method: taylor`` (or ``taylor-sq``, the squared per-channel form) is the cheap
prior: the same points' drops estimated to first order from one forward and backward pass of the
first ``sensitivity.images`` calibration images (:mod:`searchprune.first_order`; every group at
once, no network evaluated). It is stored in a
study of the same kind (its own fingerprint: the method and the images, not the proxy nor the
validation images), the points and their cost as study attrs (``estimates``, ``cost``).

Every prior records its cost: images forwarded and backpropagated, and wall seconds. A study
charges it in *evaluation equivalents*: forward-equivalent images (a backward pass counted as
:data:`BACKWARD_COST` forwards) over the images one of its trials forwards (the proxy's
calibration images plus every validation image), rounded up. A full scan is charged its
evaluations exactly, a scan on ``sensitivity.val_images`` images less, a ``taylor`` prior about
one evaluation.

``search.warm_start: sensitivity`` enqueues, once per study, the sensitivity allocation for the
study's band and ``sensitivity.perturbations`` seeded in-band neighbours of it as the study's
first trials (user attr ``warm_start``); the study attr ``warm_start`` records the prior, its
evaluations, its cost, the evaluations it is charged (``charged_evaluations``) and the
threshold, so a report can count the prior against the budget.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from searchprune.config import Config, apply_overrides, config_to_dict, resolve_defaults
from searchprune.constraints import fixed_ratios
from searchprune.errors import ConfigError
from searchprune.search.budget import Lock, study_lock
from searchprune.search.storage import get_storage
from searchprune.sensitivity import allocate_in_band, grid, perturbations, stage_of

if TYPE_CHECKING:
    from searchprune.engine import Engine
    from searchprune.search.problem import Problem

__all__ = [
    "BACKWARD_COST",
    "WARM_ATTR",
    "PriorCost",
    "Scan",
    "ScanPoint",
    "allocation_of",
    "charged_evaluations",
    "enqueue_warm_start",
    "evaluation_images",
    "is_scan",
    "load_scan",
    "measure_prior",
    "plan_points",
    "prior_charge",
    "prior_record",
    "run_first_order",
    "run_scan",
    "scan_name",
    "scan_size",
    "sensitivity_allocation",
    "warm_start_configs",
]

PLAN_ATTR = "plan"
REFERENCE_ATTR = "reference_top1"
WARM_ATTR = "warm_start"
METHOD_ATTR = "method"
ESTIMATES_ATTR = "estimates"  # taylor: [[group, keep_ratio, width, channels, drop], ...]
COST_ATTR = "cost"  # taylor: {forward_images, backward_images, seconds}
POINT_IMAGES_ATTR = "point_images"  # scan: images one point's evaluation forwards
REFERENCE_SECONDS_ATTR = "reference_seconds"
# a backward pass costs about two forward passes (the gradients of the activations and of the
# weights, here of the activations only, and the forward is run once)
BACKWARD_COST = 2


def _fingerprint_data(cfg: Config) -> dict[str, Any]:
    """What a prior's drops depend on."""
    cfg = resolve_defaults(cfg)  # ``sensitivity.method: auto`` is the method it stands for
    d = config_to_dict(cfg)
    # the constraints do not change a drop; the per-group bounds do (which points, which base)
    pruning = {k: v for k, v in d["pruning"].items()
               if k not in ("gamma", "tolerance", "params", "latency")}
    s = cfg.sensitivity
    data = {"model": d["model"], "data": d["data"], "pruning": pruning, "setting": cfg.setting,
            "supernet": d["supernet"] if cfg.setting == "scratch" else None,
            "grid": grid(cfg.pruning.eta, s.points, s.ratios)}
    if s.method == "scan":  # the scan's fingerprint predates the other methods: unchanged
        return {**data, "val_images": s.val_images}
    # first-order estimates see neither the proxy nor the validation images
    data["pruning"] = {k: v for k, v in pruning.items()
                       if k not in ("proxy", "abn_images", "reconstruction")}
    return {**data, "method": s.method, "images": s.images}


def scan_name(cfg: Config) -> str:
    """``sensitivity-<10 hex digits>``: one scan per problem, shared by all its studies."""
    text = json.dumps(_fingerprint_data(cfg), sort_keys=True, default=str)
    return "sensitivity-" + hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass
class ScanPoint:
    group: str
    keep_ratio: float
    width: int
    channels: int
    top1: float | None  # None: estimated, not evaluated (method taylor)
    drop: float


@dataclass(frozen=True)
class PriorCost:
    """What measuring a prior took: images forwarded, images backpropagated, wall seconds."""

    forward_images: int
    backward_images: int
    seconds: float

    @property
    def forward_equivalent(self) -> int:
        """Forward-equivalent images: a backward pass counted as :data:`BACKWARD_COST`."""
        return self.forward_images + BACKWARD_COST * self.backward_images

    def equivalents(self, evaluation_images: int) -> float | None:
        """The cost in evaluations of ``evaluation_images`` images each (None: unknown)."""
        if evaluation_images <= 0:
            return None
        return self.forward_equivalent / evaluation_images

    def to_dict(self, evaluation_images: int) -> dict[str, Any]:
        return {**asdict(self), "forward_equivalent_images": self.forward_equivalent,
                "evaluation_images": evaluation_images,
                "evaluation_equivalents": self.equivalents(evaluation_images)}


@dataclass
class Scan:
    """A (possibly partial) prior: the grid, the planned points, the measured (``scan``) or
    estimated (``taylor``) ones."""

    name: str
    grid: list[float]
    reference_top1: float | None
    planned: list[tuple[str, float, int, int]]  # (group, keep_ratio, width, channels)
    points: list[ScanPoint] = field(default_factory=list)
    new_evaluations: int = 0  # networks evaluated by this call (the reference included)
    method: str = "scan"
    point_images: int = 0  # scan: images one point's evaluation forwards (0: not recorded)
    seconds: float = 0.0  # scan: wall seconds of the stored evaluations
    estimate_cost: PriorCost | None = None  # taylor: the passes' cost

    @property
    def evaluations(self) -> int:
        """Networks evaluated for the stored scan: its points and the unpruned reference (none
        for an estimated prior)."""
        if self.method != "scan":
            return 0
        return len(self.points) + (self.reference_top1 is not None)

    @property
    def complete(self) -> bool:
        if self.method != "scan":
            return len(self.points) >= len(self.planned)
        return self.reference_top1 is not None and len(self.points) >= len(self.planned)

    @property
    def unit(self) -> str:
        """What a drop is measured in."""
        return {"scan": "top-1 points", "taylor": "estimated loss change (nats per image)",
                "taylor-sq": "estimated squared loss change (nats^2 per image)"
                }.get(self.method, "estimated drop")

    @property
    def cost(self) -> PriorCost:
        """Images forwarded and backpropagated, and wall seconds, of the stored prior."""
        if self.estimate_cost is not None:
            return self.estimate_cost
        return PriorCost(self.evaluations * self.point_images, 0, self.seconds)

    def charge(self, evaluation_images: int) -> int:
        """The evaluations a study whose trials forward ``evaluation_images`` images each is
        charged for this prior: its forward-equivalent images over that, rounded up (a scan
        whose images are not known: its evaluations)."""
        eq = self.cost.equivalents(evaluation_images)
        if eq is None or (self.method == "scan" and not self.point_images):
            return self.evaluations
        return math.ceil(eq - 1e-9)

    def curves(self) -> dict[str, list[tuple[float, float]]]:
        """Group -> ``(keep_ratio, drop)`` points, ascending, every planned group present."""
        out: dict[str, list[tuple[float, float]]] = {g: [] for g, *_ in self.planned}
        for p in self.points:
            out[p.group].append((p.keep_ratio, p.drop))
        return {g: sorted(c) for g, c in out.items()}

    def to_dict(self, evaluation_images: int = 0) -> dict[str, Any]:
        return {"study": self.name, "method": self.method, "unit": self.unit, "grid": self.grid,
                "reference_top1": self.reference_top1,
                "planned": len(self.planned), "evaluations": self.evaluations,
                "new_evaluations": self.new_evaluations, "complete": self.complete,
                "cost": self.cost.to_dict(evaluation_images),
                "charged_evaluations": self.charge(evaluation_images),
                "points": [{**asdict(p), "stage": stage_of(p.group)} for p in self.points]}


def is_scan(name: str, attrs: dict[str, Any]) -> bool:
    """Whether a stored study (by name and user attrs) is a sensitivity scan."""
    return name.startswith("sensitivity-") and PLAN_ATTR in attrs


def _base(engine: Engine, fixed: dict[str, float]) -> dict[str, int]:
    """Widths of the least-pruned allowed network: fixed groups at their ratio, the rest full."""
    widths = engine.widths({g.name: fixed.get(g.name, 1.0) for g in engine.groups})
    return {k: int(v) for k, v in widths.items()}


def plan_points(engine: Engine, ratios: list[float],
                bounds: dict[str, tuple[float, float]] | None = None
                ) -> list[tuple[str, float, int, int]]:
    """One point per group and distinct pruned width: ``(group, keep_ratio, width, channels)``
    (grid ratios that round to the same width, or to the full width, are measured once/never).

    With ``bounds`` (per-group keep-ratio ranges): fixed groups are not scanned, grid ratios
    outside a group's range are skipped and a lower bound above ``eta`` is a point of its own."""
    fixed = fixed_ratios(bounds or {})
    base = {g.name: fixed.get(g.name, 1.0) for g in engine.groups}
    plan = []
    for g in engine.groups:
        if g.name in fixed:
            continue
        lo, hi = (bounds or {}).get(g.name, (0.0, 1.0))
        points = [r for r in ratios if lo <= r <= hi]
        if bounds and lo > min(ratios, default=lo):
            points = sorted({lo, *points})
        seen = set()
        for r in points:
            w = int(engine.widths({**base, g.name: r})[g.name])
            if w < g.channels and w not in seen:
                seen.add(w)
                plan.append((g.name, float(r), w, int(g.channels)))
    return plan


def _open(cfg: Config, storage: optuna.storages.BaseStorage | None):
    """The given storage, else the config's (no heartbeats: stale points are claimed again
    after ``search.grace_period``)."""
    return storage if storage is not None else get_storage(cfg.storage, heartbeat_interval=None)


def load_scan(cfg: Config, storage: optuna.storages.BaseStorage | None = None) -> Scan | None:
    """The stored scan of ``cfg``'s problem (None if it was never started); evaluates nothing."""
    storage = _open(cfg, storage)
    name = scan_name(cfg)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    return _read(study)


def _read(study: optuna.Study) -> Scan | None:
    attrs = study.user_attrs
    if PLAN_ATTR not in attrs:
        return None
    plan = [tuple(p) for p in attrs[PLAN_ATTR]]
    method = attrs.get(METHOD_ATTR, "scan")
    if method != "scan":
        estimated = [ScanPoint(g, r, w, c, None, d) for g, r, w, c, d in attrs[ESTIMATES_ATTR]]
        return Scan(study.study_name, list(attrs.get("grid", [])), None, plan, estimated,
                    method=method, estimate_cost=PriorCost(**attrs[COST_ATTR]))
    points, seconds = {}, {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        key = (a["group"], a["width"])
        points[key] = ScanPoint(a["group"], a["keep_ratio"], a["width"], a["channels"],
                                a["top1"], a["drop"])
        if t.datetime_start is not None and t.datetime_complete is not None:
            seconds[key] = (t.datetime_complete - t.datetime_start).total_seconds()
    order = {(g, w): i for i, (g, _, w, _) in enumerate(plan)}
    measured = sorted((p for k, p in points.items() if k in order),
                      key=lambda p: order[(p.group, p.width)])
    spent = sum(v for k, v in seconds.items() if k in order)
    return Scan(study.study_name, list(attrs.get("grid", [])), attrs.get(REFERENCE_ATTR),
                plan, measured, point_images=int(attrs.get(POINT_IMAGES_ATTR, 0)),
                seconds=spent + float(attrs.get(REFERENCE_SECONDS_ATTR, 0.0)))


def _grid(cfg: Config) -> list[float]:
    return grid(cfg.pruning.eta, cfg.sensitivity.points, cfg.sensitivity.ratios)


def _plan(problem: Problem) -> list[tuple[str, float, int, int]]:
    return plan_points(problem.engine, _grid(problem.cfg), problem.ranges.rule_bounds)


def scan_size(problem: Problem) -> int:
    """The networks a complete scan of ``problem`` evaluates: its points and the reference."""
    return len(_plan(problem)) + 1


def evaluation_images(engine: Engine, batch_size: int, limit: int | None = None) -> int:
    """Images one evaluation forwards: the proxy's (``engine.proxy_images``) and the
    validation images scored (the first ``limit``, in whole batches; default all). 0 when the
    engine does not tell (then priors are charged their network evaluations)."""
    val = getattr(getattr(engine, "data", None), "val", None)
    if val is None:
        return 0
    n = len(val)
    if limit is not None:
        n = min(n, math.ceil(limit / batch_size) * batch_size)
    return int(getattr(engine, "proxy_images", 0)) + n


def _trial_images(problem: Problem) -> int:
    return evaluation_images(problem.engine, problem.cfg.data.batch_size)


def _point_images(problem: Problem) -> int:
    cfg = problem.cfg
    return evaluation_images(problem.engine, cfg.data.batch_size, cfg.sensitivity.val_images)


def _taylor_images(problem: Problem) -> int:
    calib = problem.engine.data.calib
    n = len(calib)
    return min(problem.cfg.sensitivity.images or n, n)


def prior_charge(problem: Problem) -> int:
    """The evaluations a complete prior of ``problem`` will be charged (known before it is
    measured: a scan's evaluations scaled by its images, a ``taylor`` prior's passes)."""
    trial = _trial_images(problem)
    if problem.cfg.sensitivity.method == "scan":
        n, point = scan_size(problem), _point_images(problem)
        if trial <= 0 or point <= 0:
            return n
        return math.ceil(n * point / trial - 1e-9)
    images = _taylor_images(problem)
    eq = PriorCost(images, images, 0.0).equivalents(trial)
    return 0 if eq is None else math.ceil(eq - 1e-9)


def charged_evaluations(info: Mapping[str, Any] | None) -> int:
    """The evaluations a warm start or baseline record (study attr ``warm_start``, baseline
    info) charges for its prior (records written before costs were kept: the scan's
    evaluations)."""
    info = info or {}
    return int(info.get("charged_evaluations", info.get("scan_evaluations", 0)))


def measure_prior(problem: Problem, *, storage: optuna.storages.BaseStorage | None = None,
                  on_point: Callable[[int, int], None] | None = None) -> Scan:
    """The problem's prior by ``sensitivity.method`` (:func:`run_scan` or
    :func:`run_first_order`), measured now where it is missing."""
    if problem.cfg.sensitivity.method == "scan":
        return run_scan(problem, storage=storage, on_point=on_point)
    return run_first_order(problem, storage=storage)


def run_first_order(problem: Problem, *,
                    storage: optuna.storages.BaseStorage | None = None) -> Scan:
    """The ``taylor`` (or ``taylor-sq``) prior: every planned point's drop estimated to first
    order from one forward and backward pass of the first ``sensitivity.images`` calibration
    images (:mod:`searchprune.first_order`), stored once (a second process that measured it
    too keeps the stored one)."""
    cfg, engine = problem.cfg, problem.engine
    estimate = getattr(engine, "first_order_drops", None)
    if estimate is None:
        raise ConfigError(f"sensitivity.method: {cfg.sensitivity.method} needs a pretrained "
                          "network's engine (setting: pretrained); use sensitivity.method: scan")
    storage = _open(cfg, storage)
    name = scan_name(cfg)
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                load_if_exists=True)
    stored = _read(study)
    if stored is not None and stored.complete:  # measured once per problem, then read
        return stored
    plan = _plan(problem)
    drops, passes = estimate([(g, w) for g, _, w, _ in plan], cfg.sensitivity.images,
                             cfg.sensitivity.method)
    cost = PriorCost(passes.images, passes.images, float(passes.seconds))
    with study_lock(storage, name)():
        if PLAN_ATTR not in study.user_attrs:
            study.set_user_attr(METHOD_ATTR, cfg.sensitivity.method)
            study.set_user_attr("grid", _grid(cfg))
            study.set_user_attr("config", _fingerprint_data(cfg))
            study.set_user_attr(ESTIMATES_ATTR, [[*p, float(d)] for p, d in zip(plan, drops)])
            study.set_user_attr(COST_ATTR, asdict(cost))
            study.set_user_attr(PLAN_ATTR, [list(p) for p in plan])  # last: it marks the prior
    scan = _read(study)
    assert scan is not None
    return scan


def run_scan(problem: Problem, *, storage: optuna.storages.BaseStorage | None = None,
             on_point: Callable[[int, int], None] | None = None) -> Scan:
    """Measure every point of the problem's scan not stored yet (none when it is complete);
    returns the scan with ``new_evaluations`` = networks evaluated by this call.
    ``on_point(done, total)`` is called after each point."""
    cfg, engine, fixed = problem.cfg, problem.engine, problem.ranges.fixed
    if cfg.sensitivity.method != "scan":  # stored under the name of what it measures
        cfg = apply_overrides(cfg, {"sensitivity.method": "scan"})
    storage = _open(cfg, storage)
    name = scan_name(cfg)
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                load_if_exists=True)
    lock = study_lock(storage, name)
    ratios = _grid(cfg)
    plan = _plan(problem)
    with lock():
        if PLAN_ATTR not in study.user_attrs:
            study.set_user_attr(PLAN_ATTR, [list(p) for p in plan])
            study.set_user_attr("grid", ratios)
            study.set_user_attr("config", _fingerprint_data(cfg))
        if POINT_IMAGES_ATTR not in study.user_attrs:  # a scan stored before costs were kept
            study.set_user_attr(METHOD_ATTR, "scan")
            study.set_user_attr(POINT_IMAGES_ATTR, _point_images(problem))
    evaluate = _evaluator(cfg, engine)
    new = 0
    if REFERENCE_ATTR not in study.user_attrs:
        start = time.perf_counter()
        top1 = evaluate(_base(engine, fixed))
        seconds = time.perf_counter() - start
        new += 1
        with lock():
            if REFERENCE_ATTR not in study.user_attrs:
                study.set_user_attr(REFERENCE_ATTR, top1)
                study.set_user_attr(REFERENCE_SECONDS_ATTR, seconds)
    reference = float(study.user_attrs[REFERENCE_ATTR])
    full = _base(engine, fixed)
    stale = timedelta(seconds=cfg.search.grace_period)
    while (claimed := _claim(study, lock, plan, stale)) is not None:
        trial, (group, ratio, width, channels) = claimed
        try:
            top1 = evaluate({**full, group: width})
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        new += 1
        trial.set_user_attr("top1", top1)
        trial.set_user_attr("drop", reference - top1)
        study.tell(trial, reference - top1)
        if on_point is not None:
            scan = _read(study)
            on_point(len(scan.points) if scan else 0, len(plan))
    scan = _read(study)
    assert scan is not None
    scan.new_evaluations = new
    return scan


def _evaluator(cfg: Config, engine: Engine) -> Callable[[dict[str, int]], float]:
    """Validation top-1 of a width configuration, restored with the study's proxy, on the first
    ``sensitivity.val_images`` validation images (whole batches)."""
    limit = cfg.sensitivity.val_images

    def stop(images: int, _top1: float) -> bool:
        return limit is not None and images >= limit

    def evaluate(widths: dict[str, int]) -> float:
        result = engine.evaluate(widths, split="val", on_chunk=stop if limit else None)
        return float(result.top1)

    return evaluate


def _claim(study: optuna.Study, lock: Lock, plan: list[tuple[str, float, int, int]],
           stale: timedelta) -> tuple[optuna.Trial, tuple[str, float, int, int]] | None:
    """The next planned point nobody has measured or is measuring, as a new RUNNING trial."""
    with lock():
        taken = set()
        now = datetime.now()
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                          TrialState.RUNNING)):
            key = (t.user_attrs.get("group"), t.user_attrs.get("width"))
            if (t.state == TrialState.RUNNING and t.datetime_start is not None
                    and now - t.datetime_start > stale):
                study.tell(t.number, state=TrialState.FAIL)  # its process died
                continue
            taken.add(key)
        for point in plan:
            group, ratio, width, channels = point
            if (group, width) in taken:
                continue
            with warnings.catch_warnings():  # stale points are handled above, not by heartbeats
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = study.ask()  # a storage shared with a study run may have heartbeats
            for key, value in {"group": group, "stage": stage_of(group), "keep_ratio": ratio,
                               "width": width, "channels": channels}.items():
                trial.set_user_attr(key, value)
            return trial, point
    return None


# -- the allocation and the warm start -----------------------------------------------------------
def sensitivity_allocation(problem: Problem, *,
                           storage: optuna.storages.BaseStorage | None = None):
    """The prior (measured now where points are missing; ``sensitivity.method``) and the
    allocation for the problem's band."""
    problem.goal.require_band("the sensitivity allocation")  # before any evaluation
    scan = measure_prior(problem, storage=storage)
    return scan, allocation_of(problem, scan)


def prior_record(problem: Problem, scan: Scan) -> dict[str, Any]:
    """What a warm start or baseline records about its prior: the study, the method, the
    networks it evaluated (``scan_evaluations``, ``scan_new_evaluations``), its cost and the
    evaluations this problem's study is charged for it."""
    trial = _trial_images(problem)
    return {"scan_study": scan.name, "prior": scan.method,
            "scan_evaluations": scan.evaluations, "scan_new_evaluations": scan.new_evaluations,
            "charged_evaluations": scan.charge(trial), "prior_cost": scan.cost.to_dict(trial)}


def allocation_of(problem: Problem, scan: Scan):
    """The allocation a (complete) scan gives for the problem's band and per-group ranges;
    its ratios cover the varied groups (add ``problem.ranges.fixed`` for widths)."""
    band = problem.goal.require_band("the sensitivity allocation")
    ranges = problem.ranges
    return allocate_in_band(problem.engine, scan.curves(), band, problem.eta,
                            bounds=ranges.rule_bounds, fixed=ranges.fixed)


def warm_start_configs(problem: Problem, *,
                       storage: optuna.storages.BaseStorage | None = None
                       ) -> tuple[list[dict[str, float]], dict[str, Any]]:
    """The warm start's keep-ratios (the allocation, if in band, then its perturbations) and
    what to record about them."""
    scan, alloc = sensitivity_allocation(problem, storage=storage)
    band = problem.goal.require_band("the warm start")
    cfg, ranges = problem.cfg, problem.ranges
    s = cfg.sensitivity
    extra = perturbations(problem.engine, alloc.ratios, band, problem.eta, s.perturbations,
                          s.perturb_scale, cfg.search.seed, bounds=ranges.rule_bounds,
                          fixed=ranges.fixed)
    configs = ([alloc.ratios] if alloc.in_band else []) + extra
    info = {"method": "sensitivity", **prior_record(problem, scan),
            "threshold": alloc.threshold, "allocation_flops_ratio": alloc.flops_ratio,
            "allocation_in_band": alloc.in_band, "projected": alloc.projected,
            "enqueued": len(configs), "allocation": alloc.ratios}
    return configs, info


def enqueue_warm_start(study: optuna.Study, problem: Problem, lock: Lock,
                       storage: optuna.storages.BaseStorage) -> None:
    """Once per study (the first worker to get here): enqueue the warm-start configurations as
    the study's first trials and record the study attr ``warm_start``."""
    if WARM_ATTR in study.user_attrs:
        return
    configs, info = warm_start_configs(problem, storage=storage)
    with lock():
        if WARM_ATTR in study.user_attrs:
            return
        for i, ratios in enumerate(configs):
            label = "allocation" if i == 0 and info["allocation_in_band"] else "perturbation"
            study.enqueue_trial(ratios, user_attrs={WARM_ATTR: label})
        study.set_user_attr(WARM_ATTR, info)
