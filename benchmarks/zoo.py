"""Which torchvision classification models searchprune prunes exactly (prints a table; never
asserts).

For the smallest member of every torchvision classification family (``--all``: every model), at
random init and the smallest input size it accepts (of 32, 64, 96, 128, 160, 224, 299 px), each
in its own process:

- the channel groups: searched / kept whole, and the most common reasons for keeping them whole;
- ``model info``'s work (tracing, groups, cost model, exactness check): seconds and the
  process's peak memory;
- least squares: layers it fits of those the search narrows (``ls``), and the most common
  reasons it does not;
- cost exactness: on 5 random configurations inside the FLOPs band 0.5 +- 0.02 (keep-ratios in
  [0.3, 1]), kept channels by L1, the analytic FLOPs/MACs/params against those counted on the
  built network (``torch.utils.flop_counter`` and parameter counts);
- a verdict: ``exact`` (searched groups, 5/5 exact), ``refused`` (one line, shown), ``nothing to
  search``, or ``WRONG`` (a cost differs: a bug).

    python benchmarks/zoo.py [--models resnet18,densenet121] [--all] [--timeout 900]
        [--json rows.json]

Heavy: every model is built and traced; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

FAMILIES = {
    "alexnet": "alexnet", "convnext": "convnext_tiny", "densenet": "densenet121",
    "efficientnet": "efficientnet_b0", "efficientnet_v2": "efficientnet_v2_s",
    "googlenet": "googlenet", "inception_v3": "inception_v3", "maxvit": "maxvit_t",
    "mnasnet": "mnasnet0_5", "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3": "mobilenet_v3_small", "regnet_x": "regnet_x_400mf",
    "regnet_y": "regnet_y_400mf", "resnet": "resnet18", "resnext": "resnext50_32x4d",
    "wide_resnet": "wide_resnet50_2", "shufflenet_v2": "shufflenet_v2_x0_5",
    "squeezenet": "squeezenet1_0", "swin": "swin_t", "swin_v2": "swin_v2_t", "vgg": "vgg11_bn",
    "vit": "vit_b_16",
}
SIZES = (32, 64, 96, 128, 160, 224, 299)
GAMMA, TOL, ETA = 0.5, 0.02, 0.3


def _kwargs(name: str, size: int) -> dict:
    if name in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": True}
    if name.startswith("vit_"):
        return {"image_size": size}
    return {}


def _build(name: str):
    """The model at the smallest input size it runs on, and that size."""
    import torch
    import torchvision

    last = None
    for size in SIZES:
        model = torchvision.models.get_model(name, weights=None, num_classes=10,
                                             **_kwargs(name, size)).eval()
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
            return model, size
        except Exception as exc:  # noqa: BLE001 -- try the next size
            last = exc
    raise RuntimeError(f"runs at none of {SIZES} px ({type(last).__name__})")


def _in_band(space, rng: random.Random) -> dict[str, int] | None:
    """A random direction, scaled so the FLOPs ratio lands in the band (None if it cannot)."""
    direction = {g.name: rng.random() for g in space.prunable}

    def widths(t: float) -> dict[str, int]:
        return space.widths({n: 1.0 - (1.0 - ETA) * t * u for n, u in direction.items()})

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if space.flops_ratio(widths(mid)) > GAMMA:
            lo = mid
        else:
            hi = mid
    for t in (lo, hi):
        w = widths(t)
        if abs(space.flops_ratio(w) - GAMMA) <= TOL:
            return w
    return None


def one(name: str) -> dict:
    """One row, measured in this process."""
    import torch

    from searchprune.criteria import compute_scores
    from searchprune.errors import ModelError
    from searchprune.prune import prune_model
    from searchprune.reconstruct import plan
    from searchprune.space import SearchSpace, count_cost

    torch.manual_seed(0)
    row: dict = {"model": name}
    try:
        model, size = _build(name)
    except RuntimeError as exc:
        return {**row, "verdict": "refused", "why": str(exc)}
    row["size"] = size
    x = torch.randn(1, 3, size, size)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    try:
        space = SearchSpace.from_model(model, x)
    except ModelError as exc:
        return {**row, "verdict": "refused", "why": str(exc),
                "info_s": round(time.perf_counter() - t, 1)}
    row["info_s"] = round(time.perf_counter() - t, 1)
    row["info_peak_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss)
                                / 1024)
    row["searched"], row["fixed"] = len(space.prunable), len(space.fixed)
    row["why_fixed"] = dict(Counter(g.reason for g in space.fixed).most_common(3))
    steps = plan(model, space, x)  # what least squares does to each narrowed layer
    row["ls"] = f"{sum(p.fitted for p in steps)}/{len(steps)}"
    row["ls_not"] = dict(Counter(p.how for p in steps if not p.fitted).most_common(2))
    if not space.prunable:
        return {**row, "verdict": "nothing to search"}
    scores = compute_scores("l1", model, space)
    rng = random.Random(f"zoo-{name}")
    exact = tried = 0
    mismatches = []
    for attempt in range(30):  # 5 in-band configurations (a draw may miss the band by rounding)
        widths = _in_band(space, rng)
        if widths is None and attempt >= 10 and (tried == 0 or "band" in row):  # out of reach:
            row["band"] = "unreachable"  # check random configurations instead
            widths = space.widths({g.name: rng.uniform(ETA, 1.0) for g in space.prunable})
        if widths is None:
            continue
        tried += 1
        pruned = prune_model(model, space, space.keep_indices(widths, scores))
        counted, analytic = count_cost(pruned, x), space.cost(widths)
        exact += counted == analytic
        if counted != analytic:
            mismatches.append({"analytic": analytic.__dict__, "counted": counted.__dict__})
        if tried == 5:
            break
    row.update(exact=f"{exact}/{tried}", mismatches=mismatches[:1])
    row["verdict"] = "WRONG" if exact < tried else (
        "exact" if "band" not in row else "exact (band 0.5 out of reach)")
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated torchvision names (default: one per family)")
    ap.add_argument("--all", action="store_true", help="every torchvision classification model")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per model")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one)))
        return 0
    if args.all:
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
    else:
        names = args.models.split(",") if args.models else list(FAMILIES.values())
    rows = []
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True,
                              text=True, timeout=args.timeout)
        lines = proc.stdout.strip().splitlines()
        row = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
            "model": name, "verdict": "CRASH",
            "why": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        rows.append(row)
        print(f"{name:22s} {row.get('size', '-'):>4} px  "
              f"{row.get('searched', '-'):>4} searched {row.get('fixed', '-'):>3} fixed  "
              f"info {row.get('info_s', '-')} s {row.get('info_peak_mb', '-')} MB  "
              f"ls {row.get('ls', '-')}  exact {row.get('exact', '-')}  {row['verdict']}"
              + (f": {row['why']}" if row.get("why") else ""), flush=True)
        for reason, count in row.get("why_fixed", {}).items():
            print(f"{'':26s}{count} x {reason}")
        for reason, count in row.get("ls_not", {}).items():
            print(f"{'':26s}least squares not on {count}: {reason}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    verdicts = Counter(r["verdict"] for r in rows)
    print("verdicts: " + ", ".join(f"{k} {v}" for k, v in verdicts.most_common()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
