"""Does a sensitivity warm start make the search find better configurations sooner, and is
pruning the residual streams worth its share of the budget?

Two comparisons on one storage, every study on the same equal total budget of network
evaluations (``--n-trials``; a warm-started study spends the sensitivity scan's evaluations
first and runs only the rest):

- ``free``: ``studies/compare-resnet20.yaml`` (every group searched),
- ``fixed residual``: ``studies/compare-resnet20-fixed-residual.yaml`` (the residual streams
  fixed at 1.0 through ``pruning.groups``; only block-internal widths vary),

each with ``random``, ``tpe`` and ``tpe+warm`` over ``--seeds`` seeds, plus the ``sensitivity``
and ``uniform`` allocations alone (no search). Per row: best proxy top-1 at the budget (mean ±
std over seeds), evaluations (scan included) until random's mean final best is reached, and
evaluations *after the scan* until random's mean best of its first ``--early`` evaluations is
reached. Studies that already hold their budget are only read, so the same command re-prints the
table from a finished run:

    python benchmarks/warm_start.py --storage runs/warm.db --seeds 5 --n-trials 80 \
        --out runs/warm_start --threads 1

Prints figures and writes ``warm_start.json`` and ``anytime.png`` under ``--out``; asserts
nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from searchprune.baselines import evaluate_baselines  # noqa: E402
from searchprune.config import load_config  # noqa: E402
from searchprune.engine import engine_for  # noqa: E402
from searchprune.report import compare_runs  # noqa: E402
from searchprune.report.compare import evals_to_reach  # noqa: E402
from searchprune.report.studies import load_runs, plan_comparison, run_comparison  # noqa: E402
from searchprune.search.runner import open_storage  # noqa: E402

SPACES = {"free": "studies/compare-resnet20.yaml",
          "fixed residual": "studies/compare-resnet20-fixed-residual.yaml"}
SAMPLERS = ["random", "tpe", "tpe+warm"]


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.2f} ± {sd:.2f}"


def _reach(values: list[int | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return f"not reached (0/{len(values)})"
    return f"{statistics.fmean(got):.1f} ({len(got)}/{len(values)})"


def measure(space: str, path: str, args: argparse.Namespace) -> dict:
    cfg = load_config(ROOT / path, {"search.n_trials": args.n_trials,
                                    "storage": str(args.storage)})
    base = Path(path).stem
    plan = plan_comparison(cfg, SAMPLERS, list(range(args.seeds)), base)
    storage = open_storage(cfg)
    engine = engine_for(cfg, progress=False)
    run_comparison(plan, storage=storage, engine=engine, progress=False,
                   announce=lambda i, p, s: print(f"  [{space}] {p.name}: "
                                                  f"{'stored' if s == 'done' else 'running'}",
                                                  flush=True))
    runs, missing = load_runs(plan, storage, args.n_trials)
    if missing:
        raise SystemExit(f"missing studies: {missing}")
    comparison = compare_runs(runs, reference="random", budget=args.n_trials)
    random_runs = [r for r in runs if r.sampler == "random"]
    early = statistics.fmean(r.curve[args.early - 1] for r in random_runs)
    rows = []
    for row in comparison.rows:
        mine = [r for r in runs if r.sampler == row.sampler]
        after_scan = [evals_to_reach(r.curve, early) for r in mine]
        rows.append({"sampler": row.sampler, "scan": max(row.offsets, default=0),
                     "evaluated": row.evaluated, "finals": row.finals,
                     "reach_final": row.reach, "reach_early_after_scan": after_scan})
    refs = evaluate_baselines(engine, ["sensitivity", "uniform"])
    return {"space": space, "config": path, "target_final": comparison.target,
            f"target_first_{args.early}": early, "rows": rows,
            "baselines": [{k: r[k] for k in ("name", "top1", "flops_ratio", "params_ratio")
                           if k in r} | {"scan_evaluations": r.get("scan_evaluations", 0)}
                          for r in refs],
            "curves": {s: {"k": c.k, "mean": c.mean, "std": c.std}
                       for s, c in comparison.curves.items()}}


def print_table(results: list[dict], early: int) -> None:
    print(f"\n| space | row | evaluations | best proxy top-1 (mean ± std) | evals to reach "
          f"random's final best | evals after the scan to reach random's {early}-eval best |")
    print("|---|---|---|---|---|---|")
    for res in results:
        for row in res["rows"]:
            scan = row["scan"]
            evals = (f"{scan} scan + {min(row['evaluated'])}" if scan
                     else str(min(row["evaluated"])))
            print(f"| {res['space']} | {row['sampler']} | {evals} | {_mean_std(row['finals'])} "
                  f"| {_reach(row['reach_final'])} | {_reach(row['reach_early_after_scan'])} |")
        for b in res["baselines"]:
            evals = (f"{b['scan_evaluations']} scan + 1" if b["scan_evaluations"] else "1")
            print(f"| {res['space']} | {b['name']} alone | {evals} | {b['top1']:.2f} "
                  f"(FLOPs {b['flops_ratio']:.3f}) | - | - |")
    print()
    for res in results:
        print(f"{res['space']}: random's mean final best {res['target_final']:.2f}, "
              f"its mean best of the first {early} evaluations "
              f"{res[f'target_first_{early}']:.2f}")


def plot(results: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), sharey=True,
                             squeeze=False)
    for ax, res in zip(axes[0], results):
        for sampler, c in res["curves"].items():
            mean = c["mean"]
            lo = [m - s for m, s in zip(mean, c["std"])]
            hi = [m + s for m, s in zip(mean, c["std"])]
            (line,) = ax.plot(c["k"], mean, label=sampler)
            ax.fill_between(c["k"], lo, hi, alpha=0.15, color=line.get_color())
        for b in res["baselines"]:
            ax.axhline(b["top1"], ls="--", lw=1, color="grey" if b["name"] == "uniform" else "k")
            ax.annotate(f"{b['name']} alone", (1, b["top1"]), fontsize=8, va="bottom")
        ax.set_title(res["space"])
        ax.set_xlabel("network evaluations (a warm start's scan included)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best proxy val top-1 so far (%)")
    axes[0][0].legend(loc="lower right")
    fig.tight_layout()
    path = out / "anytime.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", type=Path, default=Path("runs/warm.db"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--n-trials", type=int, default=80,
                    help="total network evaluations per study, a warm start's scan included")
    ap.add_argument("--early", type=int, default=30,
                    help="random's best of its first N evaluations: the early target")
    ap.add_argument("--spaces", default="free,fixed residual")
    ap.add_argument("--out", type=Path, default=Path("runs/warm_start"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = [measure(s, SPACES[s], args) for s in args.spaces.split(",")]
    print_table(results, args.early)
    (args.out / "warm_start.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"\nwrote {args.out / 'warm_start.json'} and {plot(results, args.out)}")


if __name__ == "__main__":
    main()
