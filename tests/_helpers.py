"""Helpers shared by the tests: a fast fake engine (no torch), configs, the CLI as a subprocess."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from collections import namedtuple
from collections.abc import Callable, Mapping
from pathlib import Path

import optuna

from searchprune.config import Config, apply_overrides
from searchprune.search import run_study

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = ["random", "tpe", "cmaes", "qmc"]

Cost = namedtuple("Cost", "flops macs params")
Group = namedtuple("Group", "name channels")


@dataclasses.dataclass
class FakeResult:
    top1: float
    top5: float
    cost: Cost
    widths: dict[str, int]
    seconds: dict[str, float]
    stopped_early: bool = False
    images: int = 100


class FakeEngine:
    """An :class:`~searchprune.engine.Engine` without torch: a chain of convs whose FLOPs are
    bilinear in the widths; the "network" it builds is its widths, and accuracy rewards keeping
    late layers."""

    cfg = None
    data = None
    device = "cpu"
    model = None

    def __init__(self, channels: tuple[int, ...] = (16, 16, 32, 32, 64, 64), eta: float = 0.3,
                 nan_every: int = 0) -> None:
        self.groups = [Group(f"layer{i}.conv", c) for i, c in enumerate(channels)]
        self.eta = eta
        self.nan_every = nan_every
        self.calls = 0
        self.seconds = {"scores": 0.0, "features": 0.0}
        self.base_cost = self.cost({g.name: g.channels for g in self.groups})

    def widths(self, ratios: Mapping[str, float]) -> dict[str, int]:
        return {g.name: max(1, round(ratios[g.name] * g.channels)) for g in self.groups}

    def cost(self, widths: Mapping[str, int]) -> Cost:
        w = [3] + [widths[g.name] for g in self.groups] + [10]
        macs = sum(9 * 64 * a * b for a, b in zip(w[:-2], w[1:-1])) + w[-2] * w[-1]
        params = sum(9 * a * b + 2 * b for a, b in zip(w[:-2], w[1:-1])) + w[-2] * 11
        return Cost(2 * macs, macs, params)

    def flops_ratio(self, widths: Mapping[str, int]) -> float:
        return self.cost(widths).flops / self.base_cost.flops

    def ratio_range(self, eta: float | None = None) -> tuple[float, float]:
        eta = self.eta if eta is None else eta
        return self.flops_ratio(self.widths({g.name: eta for g in self.groups})), 1.0

    def build(self, widths: Mapping[str, int], *,
              seconds: dict[str, float] | None = None) -> dict[str, int]:
        if seconds is not None:
            seconds["build"] = 0.001
        return dict(widths)

    def evaluate(self, widths: Mapping[str, int], *, split: str = "val",
                 on_chunk: Callable[[int, float], bool] | None = None) -> FakeResult:
        self.calls += 1
        keep = [widths[g.name] / g.channels for g in self.groups]
        top1 = 50.0 + 40.0 * sum(k * (i + 1) for i, k in enumerate(keep)) / 21.0
        if self.nan_every and self.calls % self.nan_every == 0:
            top1 = math.nan
        return FakeResult(top1, min(100.0, top1 + 5), self.cost(widths), dict(widths),
                          {"build": 0.001, "evaluate": 0.002})

    def evaluate_baseline(self, split: str = "val") -> tuple[float, float]:
        return 90.0, 99.0


GAMMA, TOL = 0.4, 0.05


def make_cfg(tmp_path: Path, sampler: str = "random", seed: int = 0, n_trials: int = 5,
             **overrides) -> Config:
    return apply_overrides(Config(), {
        "search.sampler": sampler, "search.seed": seed, "search.n_trials": n_trials,
        "search.warm_start": "none",  # the sampler alone unless a test asks for the warm start
        "sensitivity.method": "scan",  # what auto is on the fake engine (no first-order)
        "search.study_name": "s", "storage": str(tmp_path / "studies.db"),
        "pruning.gamma": GAMMA, "pruning.tolerance": TOL, "pruning.eta": 0.3, **overrides,
    })


def run(cfg: Config, engine=None, storage=None) -> optuna.Study:
    """run_study on an in-memory storage unless one is given."""
    storage = storage if storage is not None else optuna.storages.InMemoryStorage()
    return run_study(cfg, engine=engine or FakeEngine(), progress=False, storage=storage)


def configs(study: optuna.Study) -> list[tuple[float, ...]]:
    return [tuple(round(v, 12) for v in t.params.values()) for t in study.get_trials()]


class ChunkedEngine(FakeEngine):
    """Reports accuracy after each of 10 chunks, as the real engine does."""

    def evaluate(self, widths: Mapping[str, int], *, split: str = "val",
                 on_chunk: Callable[[int, float], bool] | None = None) -> FakeResult:
        result = super().evaluate(widths, split=split)
        for seen in range(100, 1001, 100):
            if on_chunk is not None and seen < 1000 and on_chunk(seen, result.top1):
                result.stopped_early, result.images = True, seen
                return result
        result.stopped_early, result.images = False, 1000
        return result


def cli(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    """``searchprune ARGS`` as a user runs it (a subprocess of this checkout)."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    full.pop("SEARCHPRUNE_STORAGE", None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "searchprune.cli.main", *args], cwd=cwd or ROOT,
                          env=full, capture_output=True, text=True, timeout=900)


WORKER = ROOT / "tests" / "_fake_worker.py"


def start_worker(config: Path, storage: str, name: str, n_trials: int, *extra: str,
                 delay: float = 0.1, mark: Path | None = None,
                 env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """``searchprune study run`` as a process whose engine is the FakeEngine (each evaluation
    sleeps ``delay`` s and, with ``mark``, touches ``mark/<pid>`` when it starts; ``env`` adds
    the other ``FAKE_*`` settings of tests/_fake_worker.py)."""
    env = {**os.environ, "FAKE_DELAY": str(delay), "PYTHONPATH": str(ROOT), **(env or {})}
    env.pop("SEARCHPRUNE_STORAGE", None)
    if mark is not None:
        mark.mkdir(exist_ok=True)
        env["FAKE_MARK"] = str(mark)
    return subprocess.Popen(
        [sys.executable, str(WORKER), "study", "run", str(config), "--storage", storage,
         "--study-name", name, "--n-trials", str(n_trials), "--json", *extra],
        env=env, cwd=config.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]
