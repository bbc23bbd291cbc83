"""What trial early-stopping (Optuna's median pruner on chunked validation) saves (prints figures).

Two studies on the same problem and seed, one with ``search.pruner: none`` and one with
``median``. The random sampler draws trial n from (seed, n), so both see the same candidates in
the same order: a paired comparison. Reports the mean validation images and seconds per
evaluated trial, and the best validation top-1 found.

    python benchmarks/early_stopping.py studies/resnet20-cifar10jpg.yaml --n-trials 40
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import optuna
import torch

from searchprune.config import load_config
from searchprune.engine import engine_for
from searchprune.search import run_study
from searchprune.search.trials import is_evaluated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--n-trials", type=int, default=40)
    ap.add_argument("--val", type=int, default=2000)
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=250, help="validation images per report")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{Path(tempfile.mkdtemp()) / 'early.db'}"
    base = {"data.val_size": args.val, "data.calib_size": args.calib,
            "data.batch_size": args.chunk, "search.n_trials": args.n_trials,
            "search.sampler": "random", "storage": storage}
    engine = engine_for(load_config(args.config, base))
    rows = {}
    for pruner in ("none", "median"):
        cfg = load_config(args.config, {**base, "search.pruner": pruner,
                                         "search.study_name": f"early-{pruner}"})
        start = time.perf_counter()
        study = run_study(cfg, engine=engine, progress=False)
        wall = time.perf_counter() - start
        trials = [t for t in study.trials if is_evaluated(t)]
        images = [args.val if t.state.name == "COMPLETE" else
                  int(t.intermediate_values and max(t.intermediate_values)) for t in trials]
        evals = [t.user_attrs.get("seconds_evaluate", 0.0) for t in trials]
        rows[pruner] = {
            "trials": len(trials),
            "stopped": sum(t.state.name == "PRUNED" for t in trials),
            "images": statistics.fmean(images), "eval_s": statistics.fmean(evals),
            "best": study.best_value, "wall": wall,
        }
    print(f"{args.n_trials} evaluated trials per study, {args.val} validation images in chunks "
          f"of {args.chunk}, {args.calib} calibration images")
    print(f"{'pruner':>7} {'stopped':>8} {'val imgs/trial':>15} {'eval s/trial':>13} "
          f"{'best top-1':>11} {'wall s':>8}")
    for name, r in rows.items():
        print(f"{name:>7} {r['stopped']:>8} {r['images']:>15.0f} {r['eval_s']:>13.2f} "
              f"{r['best']:>11.2f} {r['wall']:>8.0f}")
    n, m = rows["none"], rows["median"]
    print(f"evaluation cost ratio (median/none): {m['eval_s'] / n['eval_s']:.2f} "
          f"(images {m['images'] / n['images']:.2f}); best-found difference: "
          f"{m['best'] - n['best']:+.2f} points")


if __name__ == "__main__":
    main()
