"""What least-squares reconstruction buys, and how fast a pruned net runs (prints figures).

ResNet-20 (../shared checkpoint) on ../shared CIFAR-10-JPEG, L1 criterion, random configurations
inside the FLOPs band gamma +- T: top-1 on the validation images without and with reconstruction,
the time of each step, and the forward time of the pruned net against the original.

    python benchmarks/reconstruction.py [--configs 5] [--gamma 0.5] [--calib 1024] [--val 2000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

from searchprune.config import load_config
from searchprune.engine import PruningEngine
from searchprune.export import measure_latency

ROOT = Path(__file__).resolve().parents[1]


def _band_sample(engine: PruningEngine, gamma: float, tol: float, eta: float, rng: random.Random):
    while True:
        ratios = {g.name: rng.uniform(eta, 1.0) for g in engine.groups}
        widths = engine.widths(ratios)
        if abs(engine.flops_ratio(widths) - gamma) <= tol:
            return widths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "studies" / "resnet20-cifar10jpg.yaml"))
    ap.add_argument("--configs", type=int, default=5)
    ap.add_argument("--gamma", type=float, default=0.5)
    ap.add_argument("--tolerance", type=float, default=0.02)
    ap.add_argument("--eta", type=float, default=0.3)
    ap.add_argument("--calib", type=int, default=1024)
    ap.add_argument("--val", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(args.config, {"data.calib_size": args.calib, "data.val_size": args.val,
                                    "pruning.criterion": "l1"})
    t = time.perf_counter()
    engine = PruningEngine.from_config(cfg)
    print(f"setup: {time.perf_counter() - t:.1f} s (data, groups, scores "
          f"{engine.seconds['scores']:.2f} s, original features {engine.seconds['features']:.2f} s)")
    base1, _ = engine.evaluate_baseline("val")
    print(f"baseline val top-1: {base1:.2f}%  ({len(engine.data.val)} images, "
          f"{len(engine.data.calib)} calibration images)")
    rng = random.Random(args.seed)
    rows = []
    print(f"{'cfg':>3} {'flops':>6} {'no LS':>7} {'LS':>7} {'build s':>8} {'LS s':>6} {'eval s':>7}")
    for i in range(args.configs):
        widths = _band_sample(engine, args.gamma, args.tolerance, args.eta, rng)
        plain = engine.evaluate(widths, proxy="none")
        ls = engine.evaluate(widths, proxy="ls")
        rows.append((plain.top1, ls.top1))
        print(f"{i:>3} {engine.flops_ratio(widths):6.3f} {plain.top1:7.2f} {ls.top1:7.2f} "
              f"{ls.seconds['build']:8.3f} {ls.seconds['reconstruct']:6.2f} "
              f"{ls.seconds['evaluate']:7.2f}")
    print(f"mean top-1 without LS: {statistics.mean(r[0] for r in rows):.2f}%, "
          f"with LS: {statistics.mean(r[1] for r in rows):.2f}%")
    x = engine.data.val.x[:256]
    pruned = engine.build(widths)
    t_orig = measure_latency(engine.model, tuple(x.shape), len(x), repeats=5)
    t_pruned = measure_latency(pruned, tuple(x.shape), len(x), repeats=5)
    print(f"forward of 256 images: original {t_orig:.1f} ms, pruned {t_pruned:.1f} ms "
          f"(time ratio {t_pruned / t_orig:.2f}, FLOPs ratio {engine.flops_ratio(widths):.2f})")


if __name__ == "__main__":
    main()
