"""How well the latency lookup table predicts, and what a latency limit buys (prints figures;
never asserts on time).

All networks take CIFAR-sized 32x32 inputs (the size the engine gets from the CIFAR data; the
table is built for whatever input the study's data has). Weights do not change latency, so
ResNet-20 and ResNet-56 (option-A shortcuts) and torchvision's resnet18 (10 classes) are random
initialisations; configurations are keep-ratios uniform on ``[0.3, 1]`` per group.

  (a) per model and batch size: the table's build time, then ``--configs`` random
      configurations that the table was *not* fitted on, each built and timed (median of 10
      runs after 3 warm-up runs): median and 90th percentile of ``|predicted / measured - 1|``,
      for the table and, as a reference, for the FLOPs ratio used as a latency ratio
      (``measured unpruned ms x FLOPs ratio``).
  (b) ResNet-20 at FLOPs ratio 0.5 +- 0.02: the measured latency of ``--band-configs``
      band-random configurations (min, median, max, as ratios of the unpruned network): how
      much latency FLOPs leave undecided.
  (c) on the ../shared ResNet-20 and CIFAR-10-JPEG (studies/compare-resnet20.yaml with small
      validation and calibration sets): a FLOPs-band study (gamma 0.5 +- 0.02), then a study with
      no FLOPs band and a latency cap equal to the predicted latency ratio of the FLOPs study's
      best trial, and one with a latency band (that ratio +- 0.02) instead; each ``--trials``
      evaluated trials of the same sampler. Best proxy top-1 of
      each with its FLOPs ratio and measured latency ratio.

    python benchmarks/latency.py --threads 2            # the full run (a quiet CPU)
    python benchmarks/latency.py --quick --threads 1    # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import torch

from searchprune.config import config_from_dict, config_to_dict, load_config
from searchprune.constraints import LatencySpec
from searchprune.latency import build_table, cpu_threads, network_of, time_forward
from searchprune.models import CifarResNet
from searchprune.search import run_study
from searchprune.search.band import Band, draws_in_band
from searchprune.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
INPUT = (3, 32, 32)
ETA = 0.3


def _model(name: str) -> torch.nn.Module:
    if name == "resnet18":
        import torchvision

        return torchvision.models.resnet18(num_classes=10).eval()
    return CifarResNet(int(name.removeprefix("resnet")), 10, "pad").eval()


def _measured(model, space, widths, batch: int, threads: int) -> float:
    net = network_of(model, space, widths)
    with cpu_threads(threads):
        return time_forward(net, torch.randn(batch, *INPUT), repeats=10, warmup=3)


def _q(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def prediction(args) -> None:
    print(f"(a) table prediction vs measured latency of built networks not fitted on "
          f"({args.configs} random configurations, keep-ratios uniform on [{ETA}, 1], "
          f"{args.threads} threads, input {INPUT[1]}x{INPUT[2]})")
    head = (f"{'model':>9} {'batch':>5} {'build s':>8} {'shapes':>6} {'points':>6} "
            f"{'unpruned ms':>11} {'LUT med':>8} {'LUT p90':>8} {'FLOPs med':>9} "
            f"{'FLOPs p90':>9}")
    print(head)
    for name in args.models:
        model = _model(name)
        space = SearchSpace.from_model(model, torch.zeros(1, *INPUT))
        for batch in args.batches:
            spec = LatencySpec(batch_size=batch, threads=args.threads)
            t = time.perf_counter()
            table = build_table(model, space, INPUT, spec)
            build = time.perf_counter() - t
            rng = np.random.default_rng(1000 + batch)  # not the table's fitting seed
            lut, flops = [], []
            base = _measured(model, space, {}, batch, args.threads)
            for _ in range(args.configs):
                widths = space.widths({g.name: rng.uniform(ETA, 1.0) for g in space.prunable})
                ms = _measured(model, space, widths, batch, args.threads)
                lut.append(abs(table.predict_ms(widths) / ms - 1))
                flops.append(abs(base * space.flops_ratio(widths) / ms - 1))
            points = table.data["measurements"]
            print(f"{name:>9} {batch:>5} {build:>8.1f} {len(table.data['shapes']):>6} "
                  f"{points:>6} {base:>11.2f} {100 * _q(lut, 50):>7.1f}% "
                  f"{100 * _q(lut, 90):>7.1f}% {100 * _q(flops, 50):>8.1f}% "
                  f"{100 * _q(flops, 90):>8.1f}%", flush=True)


def spread(args) -> None:
    model = _model("resnet20")
    space = SearchSpace.from_model(model, torch.zeros(1, *INPUT))
    band = Band(0.5, 0.02)
    names = [g.name for g in space.prunable]
    configs = draws_in_band(np.random.default_rng(7), names, ETA,
                            lambda r: band.contains_ratios(space, r), args.band_configs)
    print(f"(b) ResNet-20, {len(configs)} band-random configurations at FLOPs ratio 0.5 +- 0.02: "
          f"measured latency as a ratio of the unpruned network's ({args.threads} threads)")
    print(f"{'batch':>5} {'min':>6} {'median':>6} {'max':>6} {'max/min':>7}")
    for batch in args.batches:
        base = _measured(model, space, {}, batch, args.threads)
        ratios = [_measured(model, space, space.widths(c), batch, args.threads) / base
                  for c in configs]
        print(f"{batch:>5} {min(ratios):>6.3f} {statistics.median(ratios):>6.3f} "
              f"{max(ratios):>6.3f} {max(ratios) / min(ratios):>7.2f}", flush=True)


def _study_cfg(args, name: str, pruning: dict) -> object:
    base = load_config(ROOT / "studies" / "compare-resnet20.yaml")
    d = config_to_dict(base)
    d["data"].update({"val_size": args.val, "calib_size": args.calib})
    d["pruning"].update(pruning)
    d["search"].update({"n_trials": args.trials, "sampler": args.sampler, "study_name": name,
                        "seed": 0})
    return config_from_dict(d, source=base.source)


def studies(args) -> None:
    from searchprune.engine import PruningEngine

    if not (SHARED / "models").is_dir():
        print(f"(c) skipped: {SHARED} not found (the ResNet-20 checkpoint and CIFAR-10-JPEG)")
        return
    latency = {"batch_size": args.batches[-1], "threads": args.threads}
    flops_cfg = _study_cfg(args, "flops-band", {"latency": latency})
    t = time.perf_counter()
    engine = PruningEngine.from_config(flops_cfg)
    print(f"(c) ResNet-20 / CIFAR-10-JPEG, {args.trials} {args.sampler} trials per study, "
          f"val {args.val}, calibration {args.calib}; engine ready in "
          f"{time.perf_counter() - t:.0f} s; latency at batch {latency['batch_size']}, "
          f"{args.threads} threads", flush=True)
    rows = []
    study = run_study(flops_cfg, engine=engine, progress=False,
                      storage=optuna.storages.InMemoryStorage())
    rows.append(("FLOPs 0.5 +- 0.02", study))
    cap = round(float(study.best_trial.user_attrs["latency_ratio"]), 4)
    forms = {"cap": ({"max": cap}, f"latency <= {cap:.3f}, no FLOPs band"),
             "band": ({"target": cap, "tolerance": 0.02},
                      f"latency {cap:.3f} +- 0.02, no FLOPs band")}
    for form in args.latency_limit:
        limit, label = forms[form]
        lat_cfg = _study_cfg(args, f"latency-{form}", {"gamma": None,
                                                        "latency": {**latency, **limit}})
        study = run_study(lat_cfg, engine=engine, progress=False,
                          storage=optuna.storages.InMemoryStorage())
        rows.append((label, study))
    print(f"{'study':>34} {'best top-1':>10} {'FLOPs':>6} {'lat. pred':>9} {'lat. meas':>9} "
          f"{'mean meas':>9}")
    for label, s in rows:
        best = s.best_trial.user_attrs
        done = s.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        mean = statistics.mean(t.user_attrs["latency_ratio_measured"] for t in done)
        print(f"{label:>34} {s.best_value:>9.2f}% {best['flops_ratio']:>6.3f} "
              f"{best['latency_ratio']:>9.3f} {best['latency_ratio_measured']:>9.3f} "
              f"{mean:>9.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads while timing (2)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: ResNet-20 and resnet18 at batch 1, 4 configurations, "
                         "6 band configurations, 2 trials per study on 200 validation images")
    ap.add_argument("--models", default="resnet20,resnet56,resnet18")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--configs", type=int, default=20, help="configurations per table (20)")
    ap.add_argument("--band-configs", type=int, default=30)
    ap.add_argument("--trials", type=int, default=30, help="evaluated trials per study (30)")
    ap.add_argument("--sampler", default="tpe")
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--calib", type=int, default=256)
    ap.add_argument("--parts", default="a,b,c", help="which parts to run (a,b,c)")
    ap.add_argument("--latency-limit", default="cap,band",
                    help="(c): the latency studies, cap ({max: r}) and/or band ({target: r, "
                         "tolerance: 0.02}) at the FLOPs winner's predicted ratio r")
    args = ap.parse_args()
    if args.quick:
        args.models, args.batches, args.configs = "resnet20,resnet18", "1", 4
        args.band_configs, args.trials, args.val, args.calib = 6, 2, 200, 64
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.batches = [int(b) for b in args.batches.split(",")]
    args.latency_limit = [f.strip() for f in args.latency_limit.split(",") if f.strip()]
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; python "
          f"{sys.version.split()[0]}", flush=True)
    t = time.perf_counter()
    parts = set(args.parts.split(","))
    if "a" in parts:
        prediction(args)
    if "b" in parts:
        spread(args)
    if "c" in parts:
        studies(args)
    print(f"total {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
