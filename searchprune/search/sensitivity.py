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

``search.warm_start: sensitivity`` enqueues, once per study, the sensitivity allocation for the
study's band and ``sensitivity.perturbations`` seeded in-band neighbours of it as the study's
first trials (user attr ``warm_start``); the study attr ``warm_start`` records the scan, its
evaluations and the threshold, so a report can count the scan against the budget.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from searchprune.config import Config, config_to_dict
from searchprune.constraints import fixed_ratios
from searchprune.search.budget import Lock, study_lock
from searchprune.search.storage import get_storage
from searchprune.sensitivity import allocate_in_band, grid, perturbations, stage_of

if TYPE_CHECKING:
    from searchprune.engine import Engine
    from searchprune.search.problem import Problem

__all__ = [
    "WARM_ATTR",
    "Scan",
    "ScanPoint",
    "allocation_of",
    "enqueue_warm_start",
    "is_scan",
    "load_scan",
    "plan_points",
    "run_scan",
    "scan_name",
    "scan_size",
    "sensitivity_allocation",
    "warm_start_configs",
]

PLAN_ATTR = "plan"
REFERENCE_ATTR = "reference_top1"
WARM_ATTR = "warm_start"


def _fingerprint_data(cfg: Config) -> dict[str, Any]:
    """What a scan's drops depend on."""
    d = config_to_dict(cfg)
    # the constraints do not change a drop; the per-group bounds do (which points, which base)
    pruning = {k: v for k, v in d["pruning"].items()
               if k not in ("gamma", "tolerance", "params", "latency")}
    s = cfg.sensitivity
    return {"model": d["model"], "data": d["data"], "pruning": pruning, "setting": cfg.setting,
            "supernet": d["supernet"] if cfg.setting == "scratch" else None,
            "grid": grid(cfg.pruning.eta, s.points, s.ratios), "val_images": s.val_images}


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
    top1: float
    drop: float


@dataclass
class Scan:
    """A (possibly partial) scan: the grid, the planned points, the measured ones."""

    name: str
    grid: list[float]
    reference_top1: float | None
    planned: list[tuple[str, float, int, int]]  # (group, keep_ratio, width, channels)
    points: list[ScanPoint] = field(default_factory=list)
    new_evaluations: int = 0  # networks evaluated by this call (the reference included)

    @property
    def evaluations(self) -> int:
        """Networks evaluated for the stored scan: its points and the unpruned reference."""
        return len(self.points) + (self.reference_top1 is not None)

    @property
    def complete(self) -> bool:
        return self.reference_top1 is not None and len(self.points) >= len(self.planned)

    def curves(self) -> dict[str, list[tuple[float, float]]]:
        """Group -> ``(keep_ratio, drop)`` points, ascending, every planned group present."""
        out: dict[str, list[tuple[float, float]]] = {g: [] for g, *_ in self.planned}
        for p in self.points:
            out[p.group].append((p.keep_ratio, p.drop))
        return {g: sorted(c) for g, c in out.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.name, "grid": self.grid, "reference_top1": self.reference_top1,
                "planned": len(self.planned), "evaluations": self.evaluations,
                "new_evaluations": self.new_evaluations, "complete": self.complete,
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
    points = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        points[(a["group"], a["width"])] = ScanPoint(a["group"], a["keep_ratio"], a["width"],
                                                     a["channels"], a["top1"], a["drop"])
    order = {(g, w): i for i, (g, _, w, _) in enumerate(plan)}
    measured = sorted((p for k, p in points.items() if k in order),
                      key=lambda p: order[(p.group, p.width)])
    return Scan(study.study_name, list(attrs.get("grid", [])), attrs.get(REFERENCE_ATTR),
                plan, measured)


def _grid(cfg: Config) -> list[float]:
    return grid(cfg.pruning.eta, cfg.sensitivity.points, cfg.sensitivity.ratios)


def _plan(problem: Problem) -> list[tuple[str, float, int, int]]:
    return plan_points(problem.engine, _grid(problem.cfg), problem.ranges.rule_bounds)


def scan_size(problem: Problem) -> int:
    """The networks a complete scan of ``problem`` evaluates: its points and the reference."""
    return len(_plan(problem)) + 1


def run_scan(problem: Problem, *, storage: optuna.storages.BaseStorage | None = None,
             on_point: Callable[[int, int], None] | None = None) -> Scan:
    """Measure every point of the problem's scan not stored yet (none when it is complete);
    returns the scan with ``new_evaluations`` = networks evaluated by this call.
    ``on_point(done, total)`` is called after each point."""
    cfg, engine, fixed = problem.cfg, problem.engine, problem.ranges.fixed
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
    evaluate = _evaluator(cfg, engine)
    new = 0
    if REFERENCE_ATTR not in study.user_attrs:
        top1 = evaluate(_base(engine, fixed))
        new += 1
        with lock():
            if REFERENCE_ATTR not in study.user_attrs:
                study.set_user_attr(REFERENCE_ATTR, top1)
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
    """The scan (measured now where points are missing) and the allocation for the problem's
    band."""
    problem.goal.require_band("the sensitivity allocation")  # before any evaluation
    scan = run_scan(problem, storage=storage)
    return scan, allocation_of(problem, scan)


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
    info = {"method": "sensitivity", "scan_study": scan.name,
            "scan_evaluations": scan.evaluations, "scan_new_evaluations": scan.new_evaluations,
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
