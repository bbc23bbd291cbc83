"""How well does the supernet rank sub-networks, and does its best beat uniform width?

(a) Rank check: ``--n`` random configurations inside the FLOPs band (keep-ratios uniform on
    [eta, 1], mapped to allowed widths, rejected outside gamma ± tolerance) are scored twice:
    by the trained supernet (first-k extraction + BN recalibration, val top-1 and val NLL) and
    by training each one alone from a random init for ``--alone-epochs`` (default: the
    supernet's epochs), averaged over ``--seeds`` seeds. Kendall's tau between the two.
(b) Search: ``--search-n`` random in-band configurations ranked by the supernet (what
    ``study run`` does with the random sampler); the best one against the uniform-width network
    of the same FLOPs (one keep-ratio for every group, integer widths, the ratio chosen to match
    the searched network's FLOPs), both retrained from scratch with the same recipe
    (``--retrain-epochs``), ``--seeds`` seeds.

Prints figures; asserts nothing about time.

    python benchmarks/supernet_rank.py studies/quickstart-scratch.yaml --n 10 --seeds 2
    python benchmarks/supernet_rank.py studies/cifar-subset-scratch.yaml --part b
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
import torch.nn.functional as F
from scipy.stats import kendalltau

from searchprune.config import load_config
from searchprune.supernet import (
    SupernetEngine,
    default_checkpoint,
    rank_candidates,
    sample_in_band,
    scratch_subnet,
    train_supernet,
)
from searchprune.train import accuracy, fit


def val_nll(model: torch.nn.Module, split) -> float:
    model.eval()
    with torch.no_grad():
        return float(F.cross_entropy(model(split.x), split.y))


def train_alone(engine: SupernetEngine, widths: dict[str, int], epochs: int, seed: int,
                lr: float) -> tuple[float, float, float]:
    """(val top-1, test top-1, val NLL) of ``widths`` trained alone from a random init."""
    s, data = engine.cfg.supernet, engine.data
    model = scratch_subnet(engine, widths, seed)
    fit(model, data.train_set(augment=True), epochs=epochs, lr=lr, weight_decay=s.weight_decay,
        batch_size=s.batch_size, seed=seed, device=engine.device)
    return (accuracy(model, data.val)[0], accuracy(model, data.test)[0],
            val_nll(model, data.val))


def uniform_like(engine: SupernetEngine, target: float) -> dict[str, int]:
    """One keep-ratio ``r`` for every group (widths ``round(r * channels)``, not restricted to
    the supernet's multiples) with the FLOPs ratio closest to ``target``."""
    best, err = None, float("inf")
    for i in range(2001):
        r = 0.2 + 0.8 * i / 2000
        w = {g.name: max(1, round(r * g.channels)) for g in engine.groups}
        e = abs(engine.flops_ratio(w) - target)
        if e < err:
            best, err = w, e
    assert best is not None
    return best


def mean_std(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default="studies/quickstart-scratch.yaml")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--alone-epochs", type=int, default=None)
    ap.add_argument("--retrain-epochs", type=int, default=None)
    ap.add_argument("--checkpoint", default=None, help="supernet checkpoint (trained if missing)")
    ap.add_argument("--part", choices=("a", "b", "both"), default="both")
    ap.add_argument("--search-n", type=int, default=40,
                    help="(b): in-band configurations the supernet ranks")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)

    cfg = load_config(args.config, {"supernet.checkpoint": args.checkpoint})
    s = cfg.supernet
    t = time.perf_counter()
    run = train_supernet(cfg)
    print(f"supernet: {cfg.model.name} on {cfg.data.name}, {run.epochs} epochs, "
          f"num_random {s.num_random}, sandwich {s.sandwich}, distill {s.inplace_distill}, "
          f"checkpoint {default_checkpoint(cfg)} ({time.perf_counter() - t:.0f}s incl. resume)")
    engine = SupernetEngine.from_config(cfg)
    print(f"full width (BN-recalibrated) val top-1: {engine.evaluate_baseline()[0]:.2f}%")

    if args.part in ("a", "both"):
        rank_check(engine, args)
    if args.part in ("b", "both"):
        searched_vs_uniform(engine, args)


def rank_check(engine: SupernetEngine, args) -> None:
    s, p = engine.cfg.supernet, engine.cfg.pruning
    configs = sample_in_band(engine, args.n, seed=0)
    ranked = rank_candidates(engine, configs)
    nll = []
    for c in ranked:
        nll.append(val_nll(engine.build(c.widths), engine.data.val))
    alone_epochs = args.alone_epochs or s.epochs
    alone_top1, alone_nll = [], []
    for c in ranked:
        runs = [train_alone(engine, c.widths, alone_epochs, seed, s.lr)
                for seed in range(args.seeds)]
        alone_top1.append(statistics.mean(r[0] for r in runs))
        alone_nll.append(statistics.mean(r[2] for r in runs))
    names = [g.name for g in engine.groups]
    print(f"\n(a) {len(ranked)} configs at FLOPs {p.gamma} ± {p.tolerance}; trained alone "
          f"{alone_epochs} epochs x {args.seeds} seeds (lr {s.lr}, batch {s.batch_size})")
    print(f"{'FLOPs':>6} {'supernet top1':>13} {'supernet NLL':>12} {'alone top1':>10} "
          f"{'alone NLL':>9}  widths ({', '.join(names)})")
    for c, n1, a1, an in zip(ranked, nll, alone_top1, alone_nll):
        ws = " ".join(str(c.widths[k]) for k in names)
        print(f"{c.flops_ratio:6.3f} {c.top1:13.2f} {n1:12.4f} {a1:10.2f} {an:9.4f}  {ws}")
    tau1 = kendalltau([c.top1 for c in ranked], alone_top1)
    tau2 = kendalltau(nll, alone_nll)
    print(f"Kendall tau, val top-1: {tau1.statistic:.3f} (p={tau1.pvalue:.3f}); "
          f"val NLL: {tau2.statistic:.3f} (p={tau2.pvalue:.3f})")


def searched_vs_uniform(engine: SupernetEngine, args) -> None:
    s = engine.cfg.supernet
    names = [g.name for g in engine.groups]
    t = time.perf_counter()
    ranked = rank_candidates(engine, sample_in_band(engine, args.search_n, seed=1))
    print(f"\n(b) search: {len(ranked)} in-band configurations ranked by the supernet in "
          f"{time.perf_counter() - t:.0f}s; best {ranked[0].top1:.2f}%, median "
          f"{ranked[len(ranked) // 2].top1:.2f}%, worst {ranked[-1].top1:.2f}% (supernet val)")
    best = ranked[0].widths
    uniform = uniform_like(engine, engine.flops_ratio(best))
    epochs = args.retrain_epochs or s.retrain_epochs
    print(f"retrained from scratch, {epochs} epochs x {args.seeds} seeds "
          f"(lr {s.lr}, batch {s.batch_size}, wd {s.weight_decay})")
    for label, widths in (("searched best", best), ("uniform width", uniform)):
        runs = [train_alone(engine, widths, epochs, 100 + seed, s.lr)
                for seed in range(args.seeds)]
        ws = " ".join(str(widths[k]) for k in names)
        print(f"{label:>14}: FLOPs {engine.flops_ratio(widths):.3f}, params "
              f"{engine.cost(widths).params:,}, val top-1 {mean_std([r[0] for r in runs])}, "
              f"test top-1 {mean_std([r[1] for r in runs])}  widths {ws}")


if __name__ == "__main__":
    main()
