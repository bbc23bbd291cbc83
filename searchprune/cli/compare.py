"""``searchprune compare``: random vs guided samplers on one problem, and the report.

One study per (sampler, seed), named ``<base>-<sampler>-s<seed>``, all on one engine; then the
anytime curves (PNG), the table (terminal, ``report.md``, ``report.json``) and, for Pareto
studies, the fronts. ``--report-only`` rebuilds the report from the stored studies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from searchprune.cli._output import add_trust_flag, console, emit_json, jsonable, table
from searchprune.config import DEFAULT_SAMPLERS
from searchprune.errors import ConfigError, SearchpruneError, unknown_choice

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("compare", parents=[common],
                       help="run one study per sampler and seed on one problem; report")
    p.add_argument("config", metavar="CONFIG.yaml")
    p.add_argument("--samplers", help=f"comma list (default {','.join(DEFAULT_SAMPLERS['single'])}"
                                      f"; with search.objective: pareto "
                                      f"{','.join(DEFAULT_SAMPLERS['pareto'])}); "
                                      "<sampler>+warm: with search.warm_start: sensitivity, "
                                      "the scan counted against --n-trials; "
                                      "<sampler>+taylor, <sampler>+taylor-sq: warm-started "
                                      "from a first-order prior (sensitivity.method), charged "
                                      "its cost")
    p.add_argument("--seeds", default="3",
                   help="a count N (seeds 0..N-1) or a comma list of seeds (default 3)")
    p.add_argument("--n-trials", type=int, help="evaluated trials per study (default: the file)")
    p.add_argument("--storage", help="storage URL or SQLite file (env SEARCHPRUNE_STORAGE)")
    p.add_argument("--study-name", metavar="BASE",
                   help="base name (default: the config file's stem)")
    p.add_argument("--out", metavar="DIR", help="write report.md, report.json and the PNGs here")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing; build the report from the stored studies")
    p.add_argument("--proxy", help="ls, abn, abn+ls or none (default: the file's)")
    p.add_argument("--baselines", default=None, metavar="LIST",
                   help="reference rows without search, comma list of uniform, tp-global, "
                        "sensitivity")
    p.add_argument("--baselines-at", choices=("band", "winner"), default="band",
                   help="band: each baseline solved for the FLOPs band (default); winner: each "
                        "baseline at the exact cost (FLOPs, or the params/latency limit) of "
                        "each study's pick, compared pick by pick")
    p.add_argument("--force-config", action="store_true",
                   help="continue studies whose stored config differs")
    add_trust_flag(p)
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    from searchprune.config import load_config
    from searchprune.report import compare_runs
    from searchprune.report.studies import load_runs, plan_comparison, run_comparison
    from searchprune.search import derive_study_name
    from searchprune.search.runner import open_storage

    cfg = load_config(args.config, {"search.n_trials": args.n_trials, "storage": args.storage,
                                    "search.study_name": args.study_name,
                                    "pruning.proxy": args.proxy,
                                    "model.trust_checkpoint": args.trust_checkpoint})
    samplers = (_list(args.samplers, "--samplers") if args.samplers
                else list(DEFAULT_SAMPLERS[cfg.search.objective]))
    plan = plan_comparison(cfg, samplers, _seeds(args.seeds), derive_study_name(cfg))
    baselines = _list(args.baselines, "--baselines") if args.baselines else []
    engine = _baseline_engine(cfg, baselines, progress=not args.json)
    storage = open_storage(cfg)
    if not args.report_only:
        def announce(i: int, planned: Any, status: str) -> None:
            if not args.json:
                verb = "complete" if status == "done" else "running"
                console.print(f"[{i + 1}/{len(plan)}] {planned.name}: {verb}")

        run_comparison(plan, storage=storage, engine=engine, progress=not args.json,
                       force_config=args.force_config, announce=announce)
    runs, missing = load_runs(plan, storage, cfg.search.n_trials)
    if not runs:
        raise SearchpruneError("none of the comparison's studies exist in this storage ("
                               + ", ".join(missing[:3]) + ", ...); run it without --report-only")
    if missing and not args.json:
        console.print(f"[yellow]missing studies (left out):[/] {', '.join(missing)}")
    references = _references(engine, baselines, runs, cfg, storage, args.baselines_at)
    comparison = compare_runs(runs, reference="random", budget=cfg.search.n_trials,
                              references=references, cost=_primary_cost(cfg),
                              baselines_at=args.baselines_at)
    files = _write_report(comparison, runs, Path(args.out), _baseline(plan, storage),
                          derive_study_name(cfg)) if args.out else {}
    if args.json:
        emit_json({**comparison.to_dict(), "missing": missing, "files": files})
    else:
        _print(comparison, files)
    return 0


def _baseline_engine(cfg: Any, names: list[str], progress: bool) -> Any:
    """The engine the baselines are scored with (None without baselines); bad names and a
    Pareto comparison fail before any work."""
    if not names:
        return None
    from searchprune.baselines import BASELINES

    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ConfigError(unknown_choice("baseline", unknown[0], BASELINES) + " (--baselines)")
    if cfg.search.objective != "single":
        raise ConfigError("--baselines needs a single-objective comparison (one FLOPs band)")
    from searchprune.engine import engine_for

    return engine_for(cfg, progress=progress)


def _primary_cost(cfg: Any) -> str:
    from searchprune.search.problem import describe_goal

    return describe_goal(cfg).primary_cost


def _references(engine: Any, names: list[str], runs: list[Any], cfg: Any, storage: Any,
                at: str) -> list[dict[str, Any]]:
    """The baseline rows: at the band, or at each study's pick's exact cost (``winner``)."""
    if engine is None:
        return []
    from searchprune.baselines import evaluate_baselines
    from searchprune.search.problem import resolve_problem

    problem = resolve_problem(cfg, engine)
    if at == "band":
        return evaluate_baselines(engine, names, problem=problem)
    from searchprune.report.studies import baselines_at_picks

    if problem.goal.primary_cost == "latency":
        problem = problem.with_latency(_latency_table(runs, problem, storage))
    return baselines_at_picks(engine, names, runs, problem=problem)


def _latency_table(runs: list[Any], problem: Any, storage: Any) -> Any:
    """The comparison's latency table (stored with its studies on this machine)."""
    import optuna

    from searchprune.search.finishing import study_latency_table

    for run in runs:
        study = optuna.load_study(study_name=run.name, storage=storage)
        _, table = study_latency_table(study, problem.goal, problem.engine)
        if table is not None:
            return table
    raise SearchpruneError("--baselines-at winner at a latency ratio needs the studies' latency "
                           "table on this machine; run the comparison here first")


def _list(text: str, flag: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ConfigError(f"{flag} needs at least one name")
    if len(set(items)) != len(items):
        raise ConfigError(f"{flag} lists a name twice: {text}")
    return items


def _seeds(text: str) -> list[int]:
    try:
        if "," in text:
            seeds = [int(s) for s in _list(text, "--seeds")]
        else:
            n = int(text)
            if n < 1:
                raise ConfigError(f"--seeds must be >= 1, got {n}")
            seeds = list(range(n))
    except ValueError:
        raise ConfigError(f"--seeds takes a count or a comma list of integers, got {text!r}"
                          ) from None
    return seeds


def _baseline(plan: list[Any], storage: Any) -> float | None:
    """The unpruned network's validation top-1 stored with the first study that has it."""
    import optuna

    for planned in plan:
        try:
            attrs = optuna.load_study(study_name=planned.name, storage=storage).user_attrs
        except KeyError:
            continue
        if "baseline_val_top1" in attrs:
            return float(attrs["baseline_val_top1"])
    return None


def _write_report(comparison: Any, runs: list[Any], out: Path, baseline: float | None,
                  base: str) -> dict[str, str]:
    from searchprune.report import to_markdown
    from searchprune.report.plots import plot_anytime, plot_fronts

    out.mkdir(parents=True, exist_ok=True)
    files = {"anytime": "anytime.png"}
    plot_anytime(comparison, out / files["anytime"], baseline=baseline,
                 title=f"{base}: anytime performance per sampler")
    if comparison.objective == "pareto":
        files["fronts"] = "fronts.png"
        plot_fronts(runs, out / files["fronts"], title=f"{base}: Pareto fronts per seed",
                    cost=comparison.cost)
    captions = {"anytime curves": files["anytime"], **(
        {"Pareto fronts": files["fronts"]} if "fronts" in files else {})}
    (out / "report.md").write_text(to_markdown(comparison, title=f"Sampler comparison: {base}",
                                               images=captions))
    data = {**comparison.to_dict(), "baseline_val_top1": baseline,
            "runs": [{"study": r.name, "sampler": r.sampler, "seed": r.seed,
                      "curve": r.curve, "points": r.points, "rejected": r.rejected,
                      "wall_seconds": r.wall_seconds} for r in runs]}
    (out / "report.json").write_text(json.dumps(jsonable(data), indent=2, allow_nan=False)
                                     + "\n")
    files.update(markdown="report.md", json="report.json")
    return {k: str(out / v) for k, v in files.items()}


def _print(comparison: Any, files: dict[str, str]) -> None:
    from searchprune.report.compare import table_rows

    cols, rows = table_rows(comparison)
    budget = comparison.budget if comparison.budget is not None else "all"
    table(f"sampler comparison ({comparison.metric}, budget {budget} evaluated trials)",
          cols, rows)
    for kind, path in files.items():
        console.print(f"{kind}: {path}")
