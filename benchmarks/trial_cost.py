"""What one trial costs against its floor (prints figures; never asserts on time).

The floor of a trial is one forward pass of the *pruned* network over the calibration images
(reconstruction needs its features) plus one over the validation images. Everything else --
building the pruned net, Gram matrices, solves, Optuna bookkeeping, storage round-trips -- is
overhead. For ResNet-20 and ResNet-56 (random init; timing only) at gamma 0.5 with 1024
calibration + 5000 validation images (random tensors, 32x32), measured side by side in one run:

  (a) the floor, (b) a full trial through the real objective on SQLite, (c) its breakdown,
  (d) the cost of rejecting an out-of-band proposal end to end through Optuna on SQLite: a
      study of ``--reject-trials`` trials per shipped sampler that rejects inside the sampler
      (random, tpe) through the real objective and storage, with the network evaluation
      replaced by a constant (the gate comes first, so the path a rejection takes is the real
      one); the marginal cost of one rejected draw is the least-squares slope of per-trial
      wall time on the trial's rejected draws. For comparison, a proposal that does reach the
      study (an enqueued all-ones configuration, PRUNED by the gate).

    python benchmarks/trial_cost.py [--calib 1024] [--val 5000] [--trials 3] [--threads 2]

The last line is ``trial/floor ratio: X.XX`` for ResNet-56.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import optuna
import torch

from searchprune.config import apply_overrides, config_from_dict
from searchprune.data import DataBundle, Split
from searchprune.engine import PruningEngine
from searchprune.models import CifarResNet
from searchprune.search.band import Band
from searchprune.search.objective import make_objective
from searchprune.search.problem import resolve_problem
from searchprune.search.samplers import SamplerContext, make_sampler
from searchprune.search.storage import get_storage


def _bundle(calib: int, val: int) -> DataBundle:
    g = torch.Generator().manual_seed(0)

    def split(n):
        return Split(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))

    return DataBundle(name="random", num_classes=10, input_shape=(3, 32, 32), mean=(0.0,) * 3,
                      std=(1.0,) * 3, calib=split(calib), val=split(val), test=split(16))


def _in_band(engine: PruningEngine, gamma: float, tol: float, eta: float, rng: random.Random):
    while True:
        ratios = {g.name: rng.uniform(eta, 1.0) for g in engine.groups}
        if abs(engine.flops_ratio(engine.widths(ratios)) - gamma) <= tol:
            return ratios


def _floor(engine: PruningEngine, widths) -> float:
    pruned = engine.build(widths, proxy="none")
    data = engine.data
    start = time.perf_counter()
    with torch.inference_mode():
        pruned(data.calib.x)
        bs = engine.cfg.data.batch_size
        for i in range(0, len(data.val), bs):
            pruned(data.val.x[i:i + bs])
    return time.perf_counter() - start


class _ConstantEvaluation:
    """The engine with evaluation replaced by a constant: what is left of a trial is the
    sampler, the FLOPs gate, Optuna and the storage."""

    def __init__(self, engine: PruningEngine) -> None:
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def evaluate(self, widths, split="val", on_chunk=None):
        keep = sum(widths[g.name] / g.channels * (i + 1) for i, g in enumerate(self.groups))
        return replace(self._template, top1=50.0 + keep, top5=90.0)


class _Timed:
    """Wall time and calls of a function."""

    def __init__(self, fn) -> None:
        self.fn, self.calls, self.seconds = fn, 0, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - start


def _rejection_in_sampler(engine: PruningEngine, cfg, sampler: str, n: int, tmp: Path) -> str:
    cfg = apply_overrides(cfg, {"search.sampler": sampler, "search.n_trials": n})
    fast = _ConstantEvaluation(engine)
    fast._template = engine.evaluate(engine.widths({g.name: 1.0 for g in engine.groups}),
                                     split="test")
    band = Band(cfg.pruning.gamma, cfg.pruning.tolerance)
    in_band = _Timed(lambda ratios: band.contains_ratios(engine, ratios))
    ctx = SamplerContext(names=[g.name for g in engine.groups], eta=cfg.pruning.eta,
                         in_band=in_band, seed=0)
    study = optuna.create_study(storage=get_storage(str(tmp / f"reject-{sampler}.db")),
                                study_name=sampler, direction="maximize",
                                sampler=make_sampler(sampler, ctx))
    sample = study.sampler.sample_relative = _Timed(study.sampler.sample_relative)
    objective = make_objective(resolve_problem(cfg, fast))
    start = time.perf_counter()
    study.optimize(objective, n_trials=n)
    per_trial = (time.perf_counter() - start) / n
    trials = study.get_trials(deepcopy=False)
    rejected = sum(int(t.user_attrs.get("rejected_draws", 0)) for t in trials)
    states = "/".join(sorted({t.state.name for t in trials}))
    per_draw = sample.seconds / in_band.calls
    return (f"{sampler}: {n} trials ({states}), {rejected} rejected draws "
            f"({rejected / n:.1f} per trial); all sampler work {1000 * sample.seconds / n:.1f} ms "
            f"per trial = {1000 * per_draw:.3f} ms per draw (an upper bound on one rejection), "
            f"of which the FLOPs check {1000 * in_band.seconds / in_band.calls:.3f} ms; whole "
            f"trial without evaluation {1000 * per_trial:.1f} ms (Optuna + SQLite paid once per "
            "trial, not per rejection)")


def bench(depth: int, args) -> float:
    cfg = config_from_dict({
        "model": {"name": f"cifar_resnet{depth}", "shortcut": "pad"},
        "data": {"calib_size": args.calib, "val_size": args.val, "batch_size": 500},
        "pruning": {"gamma": 0.5, "tolerance": 0.02, "eta": 0.3},
        "search": {"n_trials": args.trials},
    })
    model = CifarResNet(depth, 10, "pad").eval()
    t = time.perf_counter()
    engine = PruningEngine(cfg, model, _bundle(args.calib, args.val))
    setup = time.perf_counter() - t
    rng = random.Random(depth)
    configs = [_in_band(engine, 0.5, 0.02, 0.3, rng) for _ in range(args.trials)]
    floors = [_floor(engine, engine.widths(c)) for c in configs]

    tmp = Path(tempfile.mkdtemp())
    storage = get_storage(str(tmp / "bench.db"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(storage=storage, study_name=f"r{depth}", direction="maximize")
    for c in configs:
        study.enqueue_trial(c)
    objective = make_objective(resolve_problem(cfg, engine))
    totals = []
    for _ in configs:
        start = time.perf_counter()
        study.optimize(objective, n_trials=1)
        totals.append(time.perf_counter() - start)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    parts = {k: statistics.mean(t.user_attrs[f"seconds_{k}"] for t in done)
             for k in ("build", "reconstruct", "evaluate")}

    rejections = [_rejection_in_sampler(engine, cfg, name, args.reject_trials, tmp)
                  for name in ("random", "tpe")]

    # an out-of-band proposal that reaches the study (all keep-ratios 1.0 -> FLOPs ratio 1)
    n_reject = 50
    for _ in range(n_reject):
        study.enqueue_trial({g.name: 1.0 for g in engine.groups})
    start = time.perf_counter()
    study.optimize(objective, n_trials=n_reject)
    reject_ms = 1000 * (time.perf_counter() - start) / n_reject

    floor, total = statistics.mean(floors), statistics.mean(totals)
    storage_s = total - sum(parts.values())
    print(f"ResNet-{depth}: setup {setup:.1f} s (scores {engine.seconds['scores']:.2f} s, "
          f"original features {engine.seconds['features']:.2f} s)")
    print(f"  (a) floor (pruned forward over {args.calib} calib + {args.val} val): {floor:.2f} s")
    print(f"  (b) full trial through the objective (SQLite): {total:.2f} s")
    print(f"  (c) build {parts['build']:.3f} s, reconstruct {parts['reconstruct']:.2f} s, "
          f"evaluate {parts['evaluate']:.2f} s, Optuna + storage {storage_s:.3f} s")
    print("  (d) rejecting an out-of-band proposal, end to end through Optuna on SQLite:")
    for line in rejections:
        print(f"      {line}")
    print(f"      for comparison, a proposal that reaches the study as a PRUNED trial: "
          f"{reject_ms:.1f} ms")
    return total / floor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", type=int, default=1024)
    ap.add_argument("--val", type=int, default=5000)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reject-trials", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    r20 = bench(20, args)
    print(f"trial/floor ratio ResNet-20: {r20:.2f}")
    r56 = bench(56, args)
    print(f"trial/floor ratio: {r56:.2f}")


if __name__ == "__main__":
    main()
