"""``searchprune criteria``: do the fancy criteria beat L1/L2 on my model? (paper Tables 1-2)"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from searchprune.cli._output import add_trust_flag, console, emit_json, table

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("criteria", parents=[common],
                       help="evaluate the same random configurations under every criterion")
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("--criteria", default="l1,l2,gm,te,es,kl",
                   help="comma-separated criteria (default: all six)")
    p.add_argument("--n-configs", type=int, default=20, help="shared configurations (20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gamma", type=float)
    p.add_argument("--tolerance", type=float)
    p.add_argument("--eta", type=float)
    p.add_argument("--proxy", help="ls, abn, abn+ls or none (default: the file's)")
    p.add_argument("--storage", help="where the per-criterion studies go (default: config's)")
    add_trust_flag(p)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write criteria.json and criteria.png here (default runs/criteria/<name>)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from searchprune.config import load_config
    from searchprune.criteria import get_criterion
    from searchprune.report.criteria import plot_criteria, run_criteria_benchmark, summarise
    from searchprune.search.runner import derive_study_name
    from searchprune.search.storage import get_storage

    cfg = load_config(args.config, {"pruning.gamma": args.gamma,
                                    "pruning.tolerance": args.tolerance, "pruning.eta": args.eta,
                                    "pruning.proxy": args.proxy,
                                    "storage": args.storage,
                                    "model.trust_checkpoint": args.trust_checkpoint})
    names = [c.strip() for c in args.criteria.split(",") if c.strip()]
    for name in names:
        get_criterion(name)  # unknown names fail before any work
    base = derive_study_name(cfg)
    storage = get_storage(cfg.storage, heartbeat_interval=None)
    progress = _Progress(len(names) * args.n_configs, enabled=not args.json)
    with progress:
        report = run_criteria_benchmark(
            cfg, names, n_configs=args.n_configs, seed=args.seed, storage=storage,
            study_prefix=f"{base}-criteria-s{args.seed}", on_trial=progress.step)
    out = Path(args.out or Path("runs") / "criteria" / base)
    out.mkdir(parents=True, exist_ok=True)
    data = report.as_dict()
    (out / "criteria.json").write_text(json.dumps(data, indent=2) + "\n")
    png = plot_criteria(report, str(out / "criteria.png"))
    if args.json:
        emit_json(data)
        return 0
    _print(summarise(report), png, out)
    return 0


def _print(summary, png, out) -> None:
    rows = [[n.upper(), f"{s['mean_top1']:.2f}", f"{s['median_top1']:.2f}", f"{s['best_top1']:.2f}",
             f"{s['flops_ratio']:.3f}", f"{s['params_ratio']:.3f}", f"{s['score_seconds']:.1f}"]
            for n, s in summary["criteria"].items()]
    table(f"criteria on {summary['n_configs']} shared configurations (val top-1 %)",
          ["criterion", "mean", "median", "best", "FLOPs ratio", "params ratio", "score s"], rows)
    names = list(summary["criteria"])
    table("win rate (row beats column)", ["", *[n.upper() for n in names]],
          [[a.upper(), *["-" if a == b else f"{summary['win_rate'][a][b]:.2f}" for b in names]]
           for a in names])
    tests = sorted(summary["paired_tests"], key=lambda t: t["wilcoxon_p"])
    table("paired Wilcoxon signed-rank tests", ["pair", "mean diff", "p"],
          [[f"{t['a'].upper()} - {t['b'].upper()}", f"{t['mean_diff']:+.2f}",
            f"{t['wilcoxon_p']:.3f}"] for t in tests])
    if summary["friedman_p"] is not None:
        console.print(f"Friedman test over all criteria: p = {summary['friedman_p']:.3f}")
    console.print(f"plot: {png}\ndata: {out / 'criteria.json'}")


class _Progress:
    """A rich bar over all (criterion, configuration) evaluations; silent with --json."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self._bar = self._task = None

    def __enter__(self):
        if self.enabled and console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                                 transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("criteria", total=self.total)
        return self

    def step(self, criterion: str, number: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"criterion {criterion}")

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
