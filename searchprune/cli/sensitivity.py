"""``searchprune sensitivity``: how much accuracy each group loses when pruned alone."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from searchprune.cli._output import console, emit_json, jsonable, table
from searchprune.errors import ConfigError

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("sensitivity", parents=[common],
                       help="prune each group alone over a grid of keep-ratios; table and plot")
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("--method", help="scan (evaluate every point), taylor or taylor-sq "
                                    "(first-order estimates from one backward pass; default: "
                                    "sensitivity.method)")
    p.add_argument("--images", type=int, metavar="N",
                   help="calibration images taylor and taylor-sq use (default: all)")
    p.add_argument("--points", type=int, help="keep-ratios per group, from eta up to 1 "
                                              "(default: sensitivity.points, 4)")
    p.add_argument("--ratios", metavar="LIST", help="explicit comma list of keep-ratios in "
                                                    "[eta, 1) (replaces --points)")
    p.add_argument("--val-images", type=int, metavar="N",
                   help="validation images per point (default: all)")
    p.add_argument("--eta", type=float)
    p.add_argument("--proxy", help="ls, abn, abn+ls or none (default: the file's)")
    p.add_argument("--storage", help="storage URL or SQLite file (env SEARCHPRUNE_STORAGE)")
    p.add_argument("--out", metavar="DIR", help="write sensitivity.json and sensitivity.png "
                                                "here (default runs/sensitivity/<scan study>)")
    p.set_defaults(func=_run)


def _ratios(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--ratios takes a comma list of numbers, got {text!r}") from None


def _run(args: argparse.Namespace) -> int:
    from searchprune.config import load_config
    from searchprune.engine import engine_for
    from searchprune.report.sensitivity import plot_sensitivity
    from searchprune.search.problem import describe_goal, resolve_problem
    from searchprune.search.runner import open_storage
    from searchprune.search.sensitivity import allocation_of, evaluation_images, measure_prior

    cfg = load_config(args.config, {
        "sensitivity.method": args.method, "sensitivity.images": args.images,
        "sensitivity.points": args.points, "sensitivity.ratios": _ratios(args.ratios),
        "sensitivity.val_images": args.val_images, "pruning.eta": args.eta,
        "pruning.proxy": args.proxy, "storage": args.storage})
    if cfg.search.objective != "single":
        raise ConfigError("sensitivity needs search.objective: single (one FLOPs band)")
    goal = describe_goal(cfg)
    band = goal.require_band("the sensitivity allocation")  # before the model is loaded
    storage = open_storage(cfg)
    engine = engine_for(cfg, progress=not args.json)
    problem = resolve_problem(cfg, engine, goal=goal)
    with _Progress(enabled=not args.json) as bar:
        scan = measure_prior(problem, storage=storage, on_point=bar.step)
    alloc = allocation_of(problem, scan)
    widths = engine.widths({**problem.ranges.fixed, **alloc.ratios})
    allocation = {"gamma": band.gamma, "tolerance": band.tolerance,
                  "threshold": alloc.threshold, "flops_ratio": alloc.flops_ratio,
                  "in_band": alloc.in_band, "projected": alloc.projected,
                  "ratios": alloc.ratios, "widths": widths}
    out = Path(args.out or Path("runs") / "sensitivity" / scan.name)
    out.mkdir(parents=True, exist_ok=True)
    trial = evaluation_images(engine, cfg.data.batch_size)
    data = {**scan.to_dict(trial), "allocation": allocation}
    (out / "sensitivity.json").write_text(json.dumps(jsonable(data), indent=2) + "\n")
    png = plot_sensitivity(scan, out / "sensitivity.png")
    files = {"plot": str(png), "json": str(out / "sensitivity.json")}
    if args.json:
        emit_json({**data, "files": files})
    else:
        _print(scan, engine, allocation, files, data["charged_evaluations"])
    return 0


def _print(scan: Any, engine: Any, allocation: dict[str, Any], files: dict[str, str],
           charged: int) -> None:
    from searchprune.sensitivity import stage_of

    measured = {(p.group, p.keep_ratio): p for p in scan.points}
    estimated = scan.method != "scan"
    cols = ["group", "stage", "channels", *[f"keep {r:.3g}" for r in scan.grid],
            f"kept at gamma {allocation['gamma']:g}"]
    rows = []
    for g in engine.groups:
        cells = []
        for r in scan.grid:
            p = measured.get((g.name, r))
            if p is None:
                cells.append(None)
                continue
            value = f"{p.drop:.3g}" if estimated else f"{p.drop:+.2f}"
            cells.append(f"{value} ({p.width})")
        rows.append([g.name, stage_of(g.name), g.channels, *cells,
                     f"{allocation['widths'][g.name]} ({allocation['ratios'][g.name]:.2f})"])
    if estimated:
        table(f"{scan.unit} with one group pruned to each keep-ratio (width), {scan.method} "
              "estimates", cols, rows)
    else:
        table(f"top-1 drop (points) with one group pruned to each keep-ratio (width), unpruned "
              f"{scan.reference_top1:.2f}%", cols, rows)
    console.print(
        f"evaluations: {scan.evaluations} stored ({scan.new_evaluations} new) in study "
        f"'{scan.name}'" + ("" if scan.complete else " [yellow](incomplete)[/]"))
    cost = scan.cost
    console.print(f"cost: {cost.forward_images} images forwarded, {cost.backward_images} "
                  f"backpropagated, {cost.seconds:.1f} s; charged {charged} evaluation(s) of a "
                  "study")
    console.print(
        f"sensitivity allocation: drop threshold {allocation['threshold']:.3f}, FLOPs ratio "
        f"{allocation['flops_ratio']:.4f}" + ("" if allocation["in_band"] else
                                              " [yellow](outside the band)[/]")
        + (" (scaled onto the band)" if allocation["projected"] else ""))
    for kind, path in files.items():
        console.print(f"{kind}: {path}")


class _Progress:
    """A rich bar over the scan's points; silent with --json or off a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = self._task = None

    def __enter__(self) -> _Progress:
        if self.enabled and console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(TextColumn("sensitivity scan"), BarColumn(),
                                 MofNCompleteColumn(), console=console, transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("scan", total=None)
        return self

    def step(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
