"""Search in many dimensions at equal total cost: random, TPE, TPE warm-started from the full
sensitivity scan, TPE and the GP warm-started from the cheap first-order prior (the GP so
seeded is the default search), and the configurations a user gets without searching, on deeper
networks.

Networks (``--networks``): ``resnet20`` (``studies/compare-resnet20.yaml``, the ../shared
ResNet-20 fine-tuned on CIFAR-10-JPEG), ``resnet32`` (``studies/deep-resnet32.yaml``, the
../shared public ResNet-32) and ``mobilenetv2`` (``studies/mobilenetv2.yaml``, 25 groups: the
CIFAR MobileNetV2 searchprune trains itself on CIFAR-10-JPEG; its full scan measures 2 points
per group). Rows per network:

- samplers (``--samplers``, default ``random,tpe,tpe+warm,tpe+taylor-sq,gp+taylor-sq``;
  ``gp``, ``tpe+taylor`` and any other registered sampler work too): one study per seed
  (``--seeds``), every study on the same total cost ``--n-trials`` (default per network: 80,
  120 and 80 evaluations); a warm-started study is first charged its prior (``tpe+warm``: the
  full scan, one evaluation per point and the reference; ``+taylor``, ``+taylor-sq``: one forward
  and backward pass of the calibration images, in evaluation equivalents: forward images + 2 x
  backward images over the images one trial forwards, rounded up) and runs only the rest;
- no search: ``uniform``, ``tp-global``, ``sensitivity`` (the full scan's allocation),
  ``sensitivity (taylor)`` and ``sensitivity (taylor-sq)`` (the first-order priors'), each
  charged its prior + 1 evaluation.

Per row: best proxy val top-1 at the budget (mean ± std over seeds), the evaluations and the
images forwarded until the full scan's allocation's top-1 is reached (the prior included),
the final best minus that allocation's and minus random's, out-of-band proposals rejected,
wall time. Per prior: images forwarded and backpropagated, forward-equivalent images,
evaluation equivalents, evaluations charged, wall seconds. Figures: best-so-far against
evaluations and against images forwarded (forward-equivalent, the prior included), one panel
per network. Studies that already hold their budget are only read, so the same command
re-prints the report from a finished run:

    python benchmarks/deep_search.py --storage runs/deep.db --seeds 3 --out runs/deep_search \\
        --threads 4

``--set KEY=VALUE`` overrides config keys on every network (e.g. ``--set data.val_size=200``)
for a quick dry run. Writes ``deep_search.json``, ``deep_search.md``, ``anytime-evaluations.png``
and ``anytime-images.png`` under ``--out``; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from searchprune.baselines import evaluate_baselines  # noqa: E402
from searchprune.config import apply_overrides, load_config  # noqa: E402
from searchprune.engine import engine_for  # noqa: E402
from searchprune.report import compare_runs  # noqa: E402
from searchprune.report.compare import evals_to_reach  # noqa: E402
from searchprune.report.studies import load_runs, plan_comparison, run_comparison  # noqa: E402
from searchprune.search.problem import resolve_problem  # noqa: E402
from searchprune.search.runner import open_storage  # noqa: E402
from searchprune.search.sensitivity import evaluation_images, measure_prior  # noqa: E402

NETWORKS = {"resnet20": ("studies/compare-resnet20.yaml", 80),
            "resnet32": ("studies/deep-resnet32.yaml", 120),
            "mobilenetv2": ("studies/mobilenetv2.yaml", 80)}
SAMPLERS = "random,tpe,tpe+warm,tpe+taylor-sq,gp+taylor-sq"
PRIORS = ("scan", "taylor", "taylor-sq")


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.2f} ± {sd:.2f}"


def _reach(values: list[float | None], scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    got = [v / scale for v in values if v is not None]
    if not got:
        return f"not reached (0/{len(values)})"
    return f"{fmt.format(statistics.fmean(got))} ({len(got)}/{len(values)})"


def _overrides(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def _priors(cfg, engine, storage, trial_images: int) -> dict[str, dict[str, Any]]:
    """Each prior's cost (measured now if no study measured it yet)."""
    out = {}
    for method in PRIORS:
        problem = resolve_problem(apply_overrides(cfg, {"sensitivity.method": method}), engine)
        start = time.perf_counter()
        scan = measure_prior(problem, storage=storage)
        out[method] = {"study": scan.name, "evaluations": scan.evaluations,
                       "charged": scan.charge(trial_images),
                       "measured_now_seconds": time.perf_counter() - start,
                       **scan.cost.to_dict(trial_images)}
    return out


def _baselines(cfg, engine) -> list[dict[str, Any]]:
    rows = evaluate_baselines(engine, ["uniform", "tp-global", "sensitivity"],
                              problem=resolve_problem(cfg, engine))
    for method in PRIORS[1:]:
        problem = resolve_problem(apply_overrides(cfg, {"sensitivity.method": method}), engine)
        rows += [{**r, "name": f"sensitivity ({method})"}
                 for r in evaluate_baselines(engine, ["sensitivity"], problem=problem)]
    keep = ("name", "top1", "flops_ratio", "params_ratio", "in_band", "prior",
            "scan_evaluations", "charged_evaluations", "prior_cost", "seconds_solve",
            "seconds_evaluate")
    return [{k: r[k] for k in keep if k in r} for r in rows]


def _prior_images(storage, name: str) -> int:
    info = optuna.load_study(study_name=name, storage=storage).user_attrs.get("warm_start")
    return int(((info or {}).get("prior_cost") or {}).get("forward_equivalent_images", 0))


def measure(net: str, args: argparse.Namespace) -> dict[str, Any]:
    path, default_budget = NETWORKS[net]
    budget = args.n_trials or default_budget
    cfg = load_config(ROOT / path, {"search.n_trials": budget, "storage": str(args.storage),
                                    **args.overrides})
    samplers = args.samplers.split(",")
    plan = plan_comparison(cfg, samplers, list(range(args.seeds)), f"deep-{net}")
    storage = open_storage(cfg)
    engine = engine_for(cfg, progress=False)
    trial_images = evaluation_images(engine, cfg.data.batch_size)
    run_comparison(plan, storage=storage, engine=engine, progress=False,
                   announce=lambda i, p, s: print(f"  [{net}] {p.name}: "
                                                  f"{'stored' if s == 'done' else 'running'}",
                                                  flush=True))
    runs, missing = load_runs(plan, storage, budget)
    if missing:
        raise SystemExit(f"missing studies: {missing}")
    comparison = compare_runs(runs, reference="random", budget=budget)
    priors = _priors(cfg, engine, storage, trial_images)
    baselines = _baselines(cfg, engine)
    allocation = next(b["top1"] for b in baselines if b["name"] == "sensitivity")
    random_final = comparison.target
    rows, image_curves = [], {}
    for row in comparison.rows:
        mine = [r for r in runs if r.sampler == row.sampler]
        spent = [_prior_images(storage, r.name) for r in mine]
        reach = [evals_to_reach(r.curve, allocation) for r in mine]
        reach_evals = [None if k is None else k + r.offset for k, r in zip(reach, mine)]
        reach_images = [None if k is None else p + k * trial_images
                        for k, p in zip(reach, spent)]
        rows.append({
            "sampler": row.sampler, "seeds": row.seeds, "prior_evaluations": row.offsets,
            "prior_images": spent, "evaluated": row.evaluated, "finals": row.finals,
            "reach_allocation_evaluations": reach_evals,
            "reach_allocation_images": reach_images,
            "minus_allocation": [f - allocation for f in row.finals],
            "minus_random": ([f - random_final for f in row.finals]
                             if random_final is not None else None),
            "rejected": row.rejected, "wall_seconds": row.wall_seconds})
        image_curves[row.sampler] = _image_band(mine, spent, trial_images)
    return {"network": net, "config": path, "groups": len(engine.groups), "budget": budget,
            "evaluation_images": trial_images, "allocation_top1": allocation,
            "random_final": random_final, "rows": rows, "priors": priors,
            "baselines": baselines,
            "curves": {s: {"k": c.k, "mean": c.mean, "std": c.std}
                       for s, c in comparison.curves.items()},
            "image_curves": image_curves}


def _image_band(runs, spent: list[int], trial_images: int) -> dict[str, list[float]]:
    """Mean and std over seeds of best-so-far against forward-equivalent images (prior
    included), at each own evaluation every seed reached."""
    n = min((len(r.curve) for r in runs), default=0)
    x, mean, std = [], [], []
    for k in range(1, n + 1):
        at = [r.curve[k - 1] for r in runs]
        x.append(statistics.fmean(p + k * trial_images for p in spent))
        mean.append(statistics.fmean(at))
        std.append(statistics.stdev(at) if len(at) > 1 else 0.0)
    return {"images": x, "mean": mean, "std": std}


def report(results: list[dict[str, Any]]) -> str:
    lines = ["| network (groups) | row | cost: prior + own evaluations | best val top-1 (mean ± "
             "std) | evals to reach the scan allocation | k images to reach it | vs allocation "
             "| vs random | rejected (mean) |", "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        net = f"{res['network']} ({res['groups']})"
        for row in res["rows"]:
            prior = max(row["prior_evaluations"], default=0)
            cost = f"{prior} + {min(row['evaluated'])}" if prior else str(min(row["evaluated"]))
            vs_random = (_mean_std(row["minus_random"]) if row["minus_random"] is not None
                         else "-")
            lines.append(
                f"| {net} | {row['sampler']} | {cost} | {_mean_std(row['finals'])} | "
                f"{_reach(row['reach_allocation_evaluations'])} | "
                f"{_reach(row['reach_allocation_images'], 1e3, '{:.0f}')} | "
                f"{_mean_std(row['minus_allocation'])} | {vs_random} | "
                f"{statistics.fmean(row['rejected']):.0f} |")
        for b in res["baselines"]:
            charged = b.get("charged_evaluations")
            cost = f"{charged} {b.get('prior', 'scan')} + 1" if charged is not None else "1"
            lines.append(f"| {net} | {b['name']} (no search) | {cost} | {b['top1']:.2f} "
                         f"(FLOPs {b['flops_ratio']:.3f}) | - | - | "
                         f"{b['top1'] - res['allocation_top1']:+.2f} | - | - |")
    lines += ["", "| network | prior | networks evaluated | images forwarded | images "
              "backpropagated | forward-equivalent images | evaluation equivalents | charged "
              "| wall (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for method, p in res["priors"].items():
            eq = p["evaluation_equivalents"]
            lines.append(f"| {res['network']} | {method} | {p['evaluations']} | "
                         f"{p['forward_images']} | {p['backward_images']} | "
                         f"{p['forward_equivalent_images']} | "
                         f"{'-' if eq is None else f'{eq:.2f}'} | {p['charged']} | "
                         f"{p['seconds']:.1f} |")
    lines.append("")
    lines += [f"{r['network']}: one trial forwards {r['evaluation_images']} images; the scan "
              f"allocation scores {r['allocation_top1']:.2f}, random's mean final best "
              f"{r['random_final']:.2f}" if r["random_final"] is not None else
              f"{r['network']}: one trial forwards {r['evaluation_images']} images"
              for r in results]
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], out: Path, axis: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, res in zip(axes[0], results):
        curves = res["curves"] if axis == "evaluations" else res["image_curves"]
        for sampler, c in curves.items():
            x = c["k"] if axis == "evaluations" else [v / 1e6 for v in c["images"]]
            lo = [m - s for m, s in zip(c["mean"], c["std"])]
            hi = [m + s for m, s in zip(c["mean"], c["std"])]
            (line,) = ax.plot(x, c["mean"], label=sampler)
            ax.fill_between(x, lo, hi, alpha=0.15, color=line.get_color())
        for b in res["baselines"]:
            ax.axhline(b["top1"], ls="--", lw=0.8, color="grey")
            ax.annotate(b["name"], (ax.get_xlim()[0], b["top1"]), fontsize=7, va="bottom")
        ax.set_title(f"{res['network']} ({res['groups']} groups)")
        ax.set_xlabel("network evaluations (the prior's charge included)" if axis ==
                      "evaluations" else "images forwarded, millions (forward-equivalent, "
                      "the prior included)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("best proxy val top-1 so far (%)")
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = out / f"anytime-{axis}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", type=Path, default=Path("runs/deep.db"))
    ap.add_argument("--networks", default="resnet20,resnet32")
    ap.add_argument("--samplers", default=SAMPLERS)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n-trials", type=int, default=None,
                    help="total cost per study in evaluations, a prior's charge included "
                         "(default: 80 for resnet20, 120 for resnet32, 80 for mobilenetv2)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="config override for every network (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("runs/deep_search"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()
    args.overrides = _overrides(args.overrides)
    for net in args.networks.split(","):
        if net not in NETWORKS:
            raise SystemExit(f"unknown network {net!r}; choose from {', '.join(NETWORKS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    results = [measure(net, args) for net in args.networks.split(",")]
    text = report(results)
    print("\n" + text)
    (args.out / "deep_search.md").write_text(text)
    (args.out / "deep_search.json").write_text(json.dumps(results, indent=2, default=float))
    figures = [plot(results, args.out, axis) for axis in ("evaluations", "images")]
    print(f"wrote {args.out / 'deep_search.json'}, {args.out / 'deep_search.md'}, "
          f"{figures[0]} and {figures[1]}")


if __name__ == "__main__":
    main()
