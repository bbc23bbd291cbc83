"""What a proposal costs: seconds per ``ask`` of each registered sampler as a study grows, in the
number of dimensions of a real network's channel groups, with no network evaluated.

The objective is a smooth synthetic function of the keep-ratios (evaluated in microseconds), the
band a FLOPs-like sum of squares, so the figures are the sampler's own work: fitting its model
and choosing the next proposal. The GP's cost grows with the trials it refits on; TPE's stays
near constant. Prints, per sampler, the mean seconds per proposal over each window of trials:

    python benchmarks/sampler_cost.py --dims 17 --trials 120 --samplers random,tpe,gp
    python benchmarks/sampler_cost.py --dims 17 --trials 120 --samplers gp --without-greenlet

``--without-greenlet`` hides the ``greenlet`` package, so Optuna's GP optimises its acquisition
one L-BFGS-B start at a time, as it does where greenlet is not installed. Asserts nothing. Run it with nothing else on the machine; ``--threads`` sets torch's CPU
threads (Optuna's GP runs on torch).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

if "--without-greenlet" in sys.argv:  # before Optuna's GP module tries to import it
    sys.modules["greenlet"] = None  # type: ignore[assignment]

import optuna  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from searchprune.search.samplers import SamplerContext, make_sampler  # noqa: E402

ETA, GAMMA, TOL = 0.3, 0.5, 0.02


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dims", type=int, default=17)
    ap.add_argument("--trials", type=int, default=120)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--samplers", default="random,tpe,gp")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--without-greenlet", action="store_true",
                    help="hide greenlet (the GP's batched acquisition optimiser)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    names = [f"g{i:02d}" for i in range(args.dims)]
    weights = [1.0 + (i % 4) for i in range(args.dims)]  # groups of unequal cost
    total = sum(weights)

    def cost(params) -> float:
        return sum(w * params[n] ** 2 for w, n in zip(weights, names)) / total

    def in_band(params) -> bool:
        return abs(cost(params) - GAMMA) <= TOL

    def value(params) -> float:  # a smooth landscape with one preferred allocation
        return -sum((params[n] - (0.4 + 0.5 * math.sin(i))) ** 2 for i, n in enumerate(names))

    print(f"{args.dims} dimensions, {args.trials} trials, {args.threads} torch thread(s), "
          f"greenlet {'hidden' if args.without_greenlet else 'available'}; "
          f"mean seconds per proposal over each window of {args.window} trials")
    for sampler_name in args.samplers.split(","):
        ctx = SamplerContext(names=names, eta=ETA, in_band=in_band, seed=args.seed)
        study = optuna.create_study(direction="maximize",
                                    sampler=make_sampler(sampler_name, ctx))
        seconds = []
        for _ in range(args.trials):
            start = time.perf_counter()
            trial = study.ask()
            params = {n: trial.suggest_float(n, ETA, 1.0) for n in names}
            seconds.append(time.perf_counter() - start)
            study.tell(trial, value(params))
        windows = [sum(seconds[i:i + args.window]) / len(seconds[i:i + args.window])
                   for i in range(0, len(seconds), args.window)]
        print(f"{sampler_name:>8}: " + "  ".join(
            f"{i * args.window + 1}-{min((i + 1) * args.window, args.trials)}: {w:.3f}"
            for i, w in enumerate(windows)) + f"  total {sum(seconds):.1f} s")


if __name__ == "__main__":
    main()
