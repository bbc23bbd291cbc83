"""``searchprune study run|show|list``."""

from __future__ import annotations

import argparse
import signal
import sys
from collections import Counter
from typing import Any

from searchprune.cli._output import console, emit_json, table
from searchprune.errors import ConfigError, SearchpruneError

__all__ = ["add_parser", "load_study"]

# flag -> dotted config key (None = flag not given, the file decides)
_OVERRIDES = {
    "sampler": "search.sampler", "n_trials": "search.n_trials", "seed": "search.seed",
    "study_name": "search.study_name", "storage": "storage", "gamma": "pruning.gamma",
    "tolerance": "pruning.tolerance", "eta": "pruning.eta", "criterion": "pruning.criterion",
    "proxy": "pruning.proxy",
}


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    study = sub.add_parser("study", help="run and inspect searches")
    cmds = study.add_subparsers(dest="study_command", metavar="{run,show,list}", required=True)

    run = cmds.add_parser("run", parents=[common], help="run or continue a study")
    run.add_argument("config", metavar="CONFIG.yaml")
    run.add_argument("--sampler", help="random (paper), tpe, cmaes, gp, qmc, nsga2")
    run.add_argument("--n-trials", type=int, help="evaluated (in-band) trials to reach")
    run.add_argument("--seed", type=int)
    run.add_argument("--storage", help="storage URL or SQLite file (env SEARCHPRUNE_STORAGE)")
    run.add_argument("--study-name")
    run.add_argument("--gamma", type=float, help="fraction of FLOPs kept")
    run.add_argument("--tolerance", type=float, help="band half-width T")
    run.add_argument("--eta", type=float, help="smallest keep-ratio per group")
    run.add_argument("--criterion", help="channel importance criterion")
    run.add_argument("--proxy", help="how a candidate is restored before scoring: ls, abn, "
                     "abn+ls, none")
    run.add_argument("--force-config", action="store_true",
                     help="continue a study whose stored config differs")
    run.add_argument("--workers", type=int, default=1, metavar="K",
                     help="K worker processes on this machine sharing one study (needs a "
                          "storage they can share: PostgreSQL, or a SQLite file)")
    run.add_argument("--threads", type=int, default=None, metavar="T",
                     help="torch threads per worker (default: cores // workers when K > 1)")
    run.set_defaults(func=_run)

    show = cmds.add_parser("show", parents=[common], help="the best trials of a study")
    show.add_argument("--storage")
    show.add_argument("--study-name", required=True)
    show.add_argument("--top", type=int, default=None, metavar="K")
    show.set_defaults(func=_show)

    ls = cmds.add_parser("list", parents=[common], help="studies in a storage")
    ls.add_argument("--storage")
    ls.set_defaults(func=_list)


def _run(args: argparse.Namespace) -> int:
    from searchprune.config import load_config
    from searchprune.search import run_study

    overrides = {key: getattr(args, flag) for flag, key in _OVERRIDES.items()}
    cfg = load_config(args.config, overrides)
    if args.workers < 1 or (args.threads is not None and args.threads < 1):
        raise ConfigError("--workers and --threads must be >= 1")
    if args.workers > 1:
        return _run_workers(args, cfg)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    study = run_study(cfg, progress=not args.json, force_config=args.force_config)
    _report(args, study)
    return 0


def _run_workers(args: argparse.Namespace, cfg: Any) -> int:
    """Check what can be checked once, then supervise ``--workers`` processes."""
    from searchprune.cli._workers import run_workers, threads_per_worker
    from searchprune.search import StudyInterrupted, preflight
    from searchprune.search.storage import resolve_storage_url

    url = resolve_storage_url(cfg.storage)
    if url.startswith("sqlite") and ":memory:" in url:
        raise ConfigError("--workers > 1 needs a storage the workers share; an in-memory "
                          "SQLite database is private to one process")
    if url.startswith("sqlite"):
        sys.stderr.write("warning: several workers on one SQLite file work on one machine, but "
                         "Optuna advises PostgreSQL for parallel workers\n")
    storage, existing = preflight(cfg, force_config=args.force_config)
    if existing is None or _n_complete(existing) < cfg.search.n_trials:
        threads = args.threads or threads_per_worker(args.workers)
        code, lines, abandoned, signum = run_workers(
            cfg, storage, _worker_args(args, threads), args.workers, progress=not args.json)
        for line in lines:
            sys.stderr.write(line + "\n")
        if signum is not None or abandoned:
            raise StudyInterrupted(signum or signal.SIGINT, abandoned)
        if code != 0:
            return code
    _report(args, load_study(cfg.storage, _study_name(cfg)))
    return 0


def _worker_args(args: argparse.Namespace, threads: int) -> list[str]:
    """The same ``study run`` for one worker: flags passed on, progress off (``--json``)."""
    argv = [args.config, "--workers", "1", "--threads", str(threads), "--json"]
    for flag in _OVERRIDES:
        value = getattr(args, flag)
        if value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    return argv + (["--force-config"] if args.force_config else []) + (
        ["--debug"] if args.debug else [])


def _n_complete(study: Any) -> int:
    from searchprune.search.budget import n_evaluated

    return n_evaluated(study)


def _study_name(cfg: Any) -> str:
    from searchprune.search import derive_study_name

    return derive_study_name(cfg)


def _report(args: argparse.Namespace, study: Any) -> None:
    summary = _summary(study)
    if args.json:
        emit_json(summary)
    else:
        _print_summary(summary)


def _show(args: argparse.Namespace) -> int:
    study = load_study(args.storage, args.study_name)
    trials = _ranked(study.get_trials(deepcopy=False))
    if args.top is not None:
        trials = trials[: args.top]
    if args.json:
        emit_json({**_summary(study), "trials": [_trial(t) for t in trials]})
    else:
        _print_summary(_summary(study))
        _print_trials(trials[:10] if args.top is None else trials)
    return 0


def _list(args: argparse.Namespace) -> int:
    import optuna

    from searchprune.search import get_storage

    storage = get_storage(args.storage, heartbeat_interval=None)
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        best = s.best_trial
        rows.append({"study_name": s.study_name, "n_trials": s.n_trials,
                     "best_value": best.value if best else None,
                     "best_trial": best.number if best else None,
                     "sampler": s.user_attrs.get("config", {}).get("search", {}).get("sampler"),
                     "datetime_start": s.datetime_start.isoformat() if s.datetime_start else None})
    if args.json:
        emit_json({"studies": rows})
    else:
        table("studies", ["study", "trials", "best val top-1", "sampler", "started"],
              [[r["study_name"], r["n_trials"], _pct(r["best_value"]), r["sampler"],
                r["datetime_start"]] for r in rows])
    return 0


# -- helpers ----------------------------------------------------------------------------------
def load_study(storage_url: str | None, name: str) -> Any:
    """Open an existing study; a one-line error names the fix when it does not exist."""
    import optuna

    from searchprune.search import get_storage

    storage = get_storage(storage_url, heartbeat_interval=None)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise SearchpruneError(f"no study named '{name}' in this storage; "
                               "see 'searchprune study list'") from None


def _ranked(trials: list[Any]) -> list[Any]:
    """COMPLETE trials by value (best first), then the rest by number."""
    from optuna.trial import TrialState

    done = sorted((t for t in trials if t.state == TrialState.COMPLETE),
                  key=lambda t: -(t.value if t.value is not None else float("-inf")))
    return done + sorted((t for t in trials if t.state != TrialState.COMPLETE),
                         key=lambda t: t.number)


def _trial(t: Any) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
            "user_attrs": t.user_attrs}


def _summary(study: Any) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    try:
        best = _trial(study.best_trial)
    except ValueError:  # no feasible COMPLETE trial yet
        best = None
    return {"study_name": study.study_name, "counts": dict(counts), "best_trial": best,
            "user_attrs": study.user_attrs}


def _print_summary(summary: dict[str, Any]) -> None:
    attrs, best = summary["user_attrs"], summary["best_trial"]
    counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(summary["counts"].items())) or "none"
    rows = [["trials", counts],
            ["rejected proposals", attrs.get("rejected_proposals", 0)],
            ["baseline val top-1", _pct(attrs.get("baseline_val_top1"))]]
    if best is not None:
        u = best["user_attrs"]
        rows += [["best trial", best["number"]], ["best val top-1", _pct(best["value"])],
                 ["its FLOPs ratio", _num(u.get("flops_ratio"))],
                 ["its params ratio", _num(u.get("params_ratio"))]]
    table(f"study {summary['study_name']}", ["", ""], rows)


def _print_trials(trials: list[Any]) -> None:
    table("trials", ["#", "state", "val top-1", "top-5", "FLOPs ratio", "params ratio"],
          [[t.number, t.state.name, _pct(t.value), _pct(t.user_attrs.get("top5")),
            _num(t.user_attrs.get("flops_ratio")), _num(t.user_attrs.get("params_ratio"))]
           for t in trials])
    if not trials:
        console.print("no trials yet")


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{v:.2f}%"


def _num(v: float | None) -> str | None:
    return None if v is None else f"{v:.4f}"
