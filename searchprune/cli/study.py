"""``searchprune study run|show|list|confirm``."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections import Counter
from typing import Any

from searchprune.cli._errors import EXIT_FAILURE
from searchprune.cli._output import (
    add_stored_trust_flags,
    add_trust_flag,
    console,
    emit_json,
    error,
    stored_trust,
    table,
)
from searchprune.config import DEFAULT_SAMPLER
from searchprune.errors import ConfigError, SearchpruneError
from searchprune.redact import redact_config, redact_url

__all__ = ["add_parser", "load_study"]

# flag -> dotted config key (None = flag not given, the file decides)
_OVERRIDES = {
    "sampler": "search.sampler", "n_trials": "search.n_trials", "seed": "search.seed",
    "study_name": "search.study_name", "storage": "storage", "gamma": "pruning.gamma",
    "tolerance": "pruning.tolerance", "eta": "pruning.eta", "criterion": "pruning.criterion",
    "proxy": "pruning.proxy",
    "trust_checkpoint": "model.trust_checkpoint",
}


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    study = sub.add_parser("study", help="run and inspect searches")
    cmds = study.add_subparsers(dest="study_command", metavar="{run,show,list,confirm}",
                                required=True)

    run = cmds.add_parser("run", parents=[common], help="run or continue a study")
    run.add_argument("config", metavar="CONFIG.yaml")
    run.add_argument("--sampler", help=f"default {DEFAULT_SAMPLER}; random (the paper's), tpe, "
                                       "cmaes, gp, qmc, nsga2")
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
    add_trust_flag(run)
    run.add_argument("--force-config", action="store_true",
                     help="continue a study whose stored config differs")
    run.add_argument("--workers", type=int, default=1, metavar="K",
                     help="K worker processes on this machine sharing one study (needs a "
                          "storage they can share: PostgreSQL, or a SQLite file)")
    run.add_argument("--threads", type=int, default=None, metavar="T",
                     help="torch threads per worker (default: cores // workers when K > 1)")
    run.set_defaults(func=_run)

    show = cmds.add_parser("show", parents=[common],
                           help="the best trials of a study (its Pareto front if multi-objective)")
    show.add_argument("--storage")
    show.add_argument("--study-name", required=True)
    show.add_argument("--top", type=int, default=None, metavar="K")
    show.add_argument("--plot", metavar="FILE.png",
                      help="also draw the best trials' pruned architecture (kept channels per "
                           "group vs the original widths) and top-1 vs FLOPs ratio of every "
                           "evaluated trial")
    show.add_argument("--plot-top", type=int, default=3, metavar="K",
                      help="trials drawn in the architecture panel (3)")
    show.set_defaults(func=_show)

    ls = cmds.add_parser("list", parents=[common], help="studies in a storage")
    ls.add_argument("--storage")
    ls.set_defaults(func=_list)

    confirm = cmds.add_parser(
        "confirm", parents=[common],
        help="re-score a study's top-k trials on images disjoint from validation, calibration "
             "and test; the pick becomes the best of them there")
    confirm.add_argument("--study-name", required=True)
    confirm.add_argument("--storage")
    confirm.add_argument("--top-k", type=int, default=None, metavar="K",
                         help="trials by validation top-1 to confirm (default: the study's "
                              "search.confirm, else 5)")
    confirm.add_argument("--images", type=int, default=None, metavar="N",
                         help="confirmation images (default: the study's search.confirm, else "
                              "all the validation half's images ranking did not use)")

    add_stored_trust_flags(confirm)  # the stored config is not trusted to unpickle or import
    confirm.set_defaults(func=_confirm)


def _run(args: argparse.Namespace) -> int:
    from searchprune.cli._workers import STORAGE_ENV
    from searchprune.config import load_config
    from searchprune.search import run_study

    overrides = {key: getattr(args, flag) for flag, key in _OVERRIDES.items()}
    overrides["storage"] = overrides["storage"] or os.environ.get(STORAGE_ENV)  # a worker's
    cfg = load_config(args.config, overrides)
    if args.workers < 1 or (args.threads is not None and args.threads < 1):
        raise ConfigError("--workers and --threads must be >= 1")
    if args.workers > 1:
        return _run_workers(args, cfg)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    study = run_study(cfg, progress=not args.json, force_config=args.force_config)
    _report(args, study, cfg)
    return 0


def _run_workers(args: argparse.Namespace, cfg: Any) -> int:
    """Check what can be checked once, then supervise ``--workers`` processes."""
    from searchprune.cli._workers import run_workers, threads_per_worker
    from searchprune.search import StudyInterrupted, n_evaluated, preflight
    from searchprune.search.storage import resolve_storage_url

    url = resolve_storage_url(cfg.storage)
    if url.startswith("sqlite") and ":memory:" in url:
        raise ConfigError("--workers > 1 needs a storage the workers share; an in-memory "
                          "SQLite database is private to one process")
    if url.startswith("sqlite"):
        sys.stderr.write("warning: several workers on one SQLite file work on one machine, but "
                         "Optuna advises PostgreSQL for parallel workers\n")
    storage, existing = preflight(cfg, force_config=args.force_config)
    if existing is None or n_evaluated(existing) < cfg.search.n_trials:
        threads = args.threads or threads_per_worker(args.workers)
        result = run_workers(
            cfg, storage, _worker_args(args, threads), args.workers, progress=not args.json)
        for line in result.lines:
            sys.stderr.write(line + "\n")
        if result.signum is not None or result.abandoned:
            raise StudyInterrupted(result.signum or signal.SIGINT, result.abandoned)
        if result.killed:
            error(_killed_line(result.killed, args.workers, storage, cfg))
            return EXIT_FAILURE
        if result.code != 0:
            return result.code
    _report(args, load_study(cfg.storage, _study_name(cfg)), cfg)
    return 0


def _killed_line(killed: list[Any], workers: int, storage: Any, cfg: Any) -> str:
    """``worker 2 (pid N) was killed by SIGKILL; the other worker finished the study: ...``."""
    import optuna

    from searchprune.search import n_evaluated

    who = ", ".join(f"worker {k.describe()}" for k in killed)
    target = cfg.search.n_trials
    try:
        done = n_evaluated(optuna.load_study(study_name=_study_name(cfg), storage=storage))
    except KeyError:  # killed before the study was created
        done = 0
    if done < target:
        return (f"{who}; the study holds {done} of {target} evaluated trials: re-run the same "
                "command to resume")
    others = "the other worker" if workers - len(killed) == 1 else "the other workers"
    return f"{who}; {others} finished the study: {done} of {target} evaluated trials"


def _worker_args(args: argparse.Namespace, threads: int) -> list[str]:
    """The same ``study run`` for one worker: flags passed on, progress off (``--json``)."""
    argv = [args.config, "--workers", "1", "--threads", str(threads), "--json"]
    for flag in _OVERRIDES:
        value = getattr(args, flag)
        if flag == "storage":  # passed in the environment (see _workers.STORAGE_ENV)
            continue
        if value is True:  # a switch
            argv.append(f"--{flag.replace('_', '-')}")
        elif value is not None:
            argv += [f"--{flag.replace('_', '-')}", str(value)]
    return argv + (["--force-config"] if args.force_config else []) + (
        ["--debug"] if args.debug else [])


def _study_name(cfg: Any) -> str:
    from searchprune.search import derive_study_name

    return derive_study_name(cfg)


def _report(args: argparse.Namespace, study: Any, cfg: Any) -> None:
    summary = _summary(study)
    if args.json:
        emit_json(summary)
    else:
        _print_summary(summary)
        _print_next(study.study_name, cfg)


def _storage_flag(storage: str | None) -> tuple[str, list[str]]:
    """`` --storage URL`` for the next commands, and the lines to print before them: a URL
    with a password is never printed (nor masked, which would not work when copied); the
    commands read it from ``$SEARCHPRUNE_STORAGE`` instead."""
    from searchprune.search.storage import ENV_VAR

    if not storage:
        return "", []
    if redact_url(storage) == storage:
        return f" --storage {shlex.quote(storage)}", []
    return f' --storage "${ENV_VAR}"', [
        f"(the storage URL holds a password, so it is not shown: export {ENV_VAR}=<that URL> "
        "before running these)"]


def _print_next(name: str, cfg: Any) -> None:
    """The commands a user runs next, with this study's name and storage filled in."""
    storage, note = _storage_flag(cfg.storage)
    source = _relative(cfg.source) if cfg.source else "CONFIG.yaml"
    console.print("\n".join([
        *note,
        "next: the best trials and a picture of their pruned architecture,",
        f"  searchprune study show --study-name {name}{storage} --plot {name}.png",
        "every trial in optuna-dashboard (http://127.0.0.1:8080/dashboard/),",
        f"  searchprune dashboard{storage}",
        "the paper's random search against the default on this problem (equal cost),",
        f"  searchprune compare {source} --seeds 2 --out report/",
        "and fine-tune the winners, then export one:",
        f"  searchprune finetune --study-name {name}{storage} --top 3",
    ]), soft_wrap=True)


def _relative(path: str) -> str:
    """``path`` relative to the current directory when it lies below it."""
    import os

    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _show(args: argparse.Namespace) -> int:
    from searchprune.search.sensitivity import is_scan

    study = load_study(args.storage, args.study_name)
    if is_scan(study.study_name, study.user_attrs):
        raise ConfigError(f"'{study.study_name}' is a sensitivity scan (accuracy drops per "
                          "group, not configurations); see it with 'searchprune sensitivity "
                          "CONFIG.yaml'")
    trials = _ranked(study)
    if args.top is not None:
        trials = trials[: args.top]
    plot = _plot(study, args.plot, args.plot_top) if args.plot else None
    summary = _summary(study)
    confirmed = {r["number"]: r["confirm_top1"] for r in (summary.get("confirm") or {}).get(
        "trials", [])}
    if args.json:
        emit_json({**summary, "trials": [
            {**_trial(t), **({"confirm_top1": confirmed[t.number]} if t.number in confirmed
                             else {})} for t in trials],
                   **({"plot": plot} if plot else {})})
    else:
        _print_summary(summary)
        front = {t["number"] for t in summary.get("front", [])}
        _print_trials(trials[:10] if args.top is None else trials,
                      front if "front" in summary else None, confirmed)
        if plot:
            console.print(f"plot: {plot}")
    return 0


def _plot(study: Any, path: str, top: int) -> str:
    from searchprune.report.study_plot import plot_study

    if not path.lower().endswith(".png"):
        raise ConfigError(f"--plot wants a .png file name, not '{path}'")
    if top < 1:
        raise ConfigError("--plot-top must be >= 1")
    return str(plot_study(study, path, top=top))


def _list(args: argparse.Namespace) -> int:
    import optuna

    from searchprune.search import best_trials, get_storage
    from searchprune.search.sensitivity import is_scan

    storage = get_storage(args.storage, heartbeat_interval=None)
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=True):
        if is_scan(s.study_name, s.user_attrs):
            rows.append({"study_name": s.study_name, "objective": "sensitivity scan",
                         "n_trials": s.n_trials, "best_value": None, "best_trial": None,
                         "front_size": None, "sampler": None,
                         "datetime_start": s.datetime_start.isoformat()
                         if s.datetime_start else None})
            continue
        multi = len(s.directions) > 1
        best = best_trials(optuna.load_study(study_name=s.study_name, storage=storage)) if multi \
            else [s.best_trial] if s.best_trial else []
        rows.append({"study_name": s.study_name, "objective": "pareto" if multi else "single",
                     "n_trials": s.n_trials,
                     "best_value": best[0].values[0] if best else None,
                     "best_trial": best[0].number if best else None,
                     "front_size": len(best) if multi else None,
                     "sampler": s.user_attrs.get("config", {}).get("search", {}).get("sampler"),
                     "datetime_start": s.datetime_start.isoformat() if s.datetime_start else None})
    if args.json:
        emit_json({"studies": rows})
    else:
        table("studies", ["study", "objective", "trials", "best val top-1", "sampler", "started"],
              [[r["study_name"], r["objective"] + (f" (front of {r['front_size']})"
                                                   if r["front_size"] is not None else ""),
                r["n_trials"], _pct(r["best_value"]), r["sampler"], r["datetime_start"]]
               for r in rows])
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


def _ranked(study: Any) -> list[Any]:
    """The best (confirmed trials first, best on confirmation first; the Pareto front, by FLOPs
    ratio, for a multi-objective study), then the other COMPLETE trials by validation top-1,
    then the rest by number."""
    from optuna.trial import TrialState

    from searchprune.search.confirm import ranked_trials
    from searchprune.search.trials import is_multi_objective

    trials = study.get_trials(deepcopy=False)
    first = ranked_trials(study)
    if is_multi_objective(study):
        first = sorted(first, key=lambda t: t.values[1])
    seen = {t.number for t in first}
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.number not in seen
                   and t.values), key=lambda t: (-t.values[0], t.number))
    seen |= {t.number for t in done}
    return first + done + sorted((t for t in trials if t.number not in seen),
                                 key=lambda t: t.number)


def _trial(t: Any) -> dict[str, Any]:
    """One trial as JSON; ``value`` is validation top-1 (the first objective) in both kinds of
    study, ``values`` all objectives."""
    return {"number": t.number, "state": t.state.name,
            "value": t.values[0] if t.values else None, "values": t.values,
            "params": t.params, "user_attrs": t.user_attrs}


def _summary(study: Any) -> dict[str, Any]:
    from searchprune.search import n_evaluated
    from searchprune.search.confirm import ranked_trials
    from searchprune.search.trials import is_multi_objective

    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    best = ranked_trials(study)
    attrs = dict(study.user_attrs)
    if isinstance(attrs.get("config"), dict):  # studies stored before passwords were removed
        attrs["config"] = redact_config(attrs["config"])
    multi = is_multi_objective(study)
    out = {"study_name": study.study_name, "objective": "pareto" if multi else "single",
           "cost_columns": _cost_columns(trials),
           "directions": [d.name.lower() for d in study.directions],
           "counts": dict(counts), "evaluated": n_evaluated(study),
           "best_trial": _trial(best[0]) if best else None, "user_attrs": attrs}
    if multi:
        out["front"] = [_trial(t) for t in sorted(best, key=lambda t: t.values[1])]
        out["pareto_cost"] = _pareto_cost(study)
    else:
        out["spread"] = _spread(study.user_attrs, trials)
        confirm = _confirm_summary(study)
        if confirm is not None:
            out["confirm"] = confirm
    return out


def _confirm_summary(study: Any) -> dict[str, Any] | None:
    """The study's confirmation: where its images come from, how many, the confirmed trials
    (pick first) with both accuracies and their cost, and the top-k by validation still not
    confirmed (None: never confirmed)."""
    from searchprune.search.confirm import CONFIRM_ATTR, confirmations, ranked_trials
    from searchprune.search.trials import best_trials, top1

    record = study.user_attrs.get(CONFIRM_ATTR)
    confirmed = confirmations(study)
    if not isinstance(record, dict) or not confirmed:
        return None
    top_k = int(record.get("top_k") or len(confirmed))
    rows = [{"number": t.number, "val_top1": top1(t),
             "confirm_top1": confirmed[t.number].top1,
             **{k: t.user_attrs.get(k) for k in _cost_columns([t])}}
            for t in ranked_trials(study) if t.number in confirmed]
    by_val = best_trials(study)
    return {"source": record.get("source"), "images": record.get("images"), "top_k": top_k,
            "pick": rows[0]["number"] if rows else None,
            "best_on_validation": by_val[0].number if by_val else None,
            "trials": rows,
            "not_confirmed": [t.number for t in by_val[:top_k] if t.number not in confirmed]}


# The cost ratios a study may record per trial (objective.py), in the order tables show them:
# the analytic ones, then the predicted and the measured latency (with a latency table).
COST_RATIOS = (("flops_ratio", "FLOPs ratio"), ("params_ratio", "params ratio"),
               ("latency_ratio", "latency pred."), ("latency_ratio_measured", "latency meas."))
_LONG = {"latency_ratio": "predicted latency ratio",
         "latency_ratio_measured": "measured latency ratio"}


def _cost_columns(trials: list[Any]) -> list[str]:
    """The cost ratios recorded on any of ``trials`` (FLOPs and params always)."""
    seen = {k for t in trials for k in t.user_attrs}
    return [k for k, _ in COST_RATIOS if k in ("flops_ratio", "params_ratio") or k in seen]


def _pareto_cost(study: Any) -> str:
    """The ratio a Pareto study minimises (its second metric name), e.g. ``latency_ratio``."""
    names = getattr(study, "metric_names", None) or []
    return names[1] if len(names) > 1 and names[1] else "flops_ratio"


def _spread(attrs: dict[str, Any], trials: list[Any]) -> list[dict[str, Any]]:
    """The unpruned baseline, then the best, median and worst evaluated trial by val top-1: how
    much the choice of configuration matters, with every cost ratio side by side."""
    from searchprune.report.study_plot import study_points

    columns = _cost_columns(trials)
    rows = [{"label": "unpruned", "trial": None, "val_top1": attrs.get("baseline_val_top1"),
             **{k: 1.0 for k in columns}}]
    points = study_points(trials)  # best first
    if not points:
        return rows
    by_number = {t.number: t.user_attrs for t in trials}
    for label, p in (("best", points[0]), ("median", points[len(points) // 2]),
                     ("worst", points[-1])):
        rows.append({"label": label, "trial": p.number, "val_top1": p.top1,
                     **{k: by_number[p.number].get(k) for k in columns},
                     "flops_ratio": p.flops_ratio})
    return rows


def _print_summary(summary: dict[str, Any]) -> None:
    attrs, best = summary["user_attrs"], summary["best_trial"]
    counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(summary["counts"].items())) or "none"
    spread = summary.get("spread") or []
    rows = [["trials", counts], ["evaluated", summary["evaluated"]],
            ["rejected proposals", attrs.get("rejected_proposals", 0)]]
    if len(spread) < 2:  # a Pareto study, or nothing evaluated yet (else: the spread table)
        rows += [["baseline val top-1", _pct(attrs.get("baseline_val_top1"))]]
    columns = summary.get("cost_columns") or ["flops_ratio", "params_ratio"]
    labels = {**dict(COST_RATIOS), **_LONG}
    if "front" in summary:
        cost = summary.get("pareto_cost", "flops_ratio")
        ratios = [t["user_attrs"].get(cost) for t in summary["front"]]
        ratios = [r for r in ratios if r is not None]
        rows += [["objectives", f"max val top-1, min {labels.get(cost, cost)} (Pareto front)"],
                 ["front members", len(summary["front"])]]
        if ratios:
            rows += [[f"front {labels.get(cost, cost)}s",
                      f"{min(ratios):.4f} to {max(ratios):.4f}"]]
        if best is not None:
            u = best["user_attrs"]
            rows += [["most accurate member", best["number"]],
                     ["its val top-1", _pct(best["value"])]]
            rows += [[f"its {labels[k]}", _num(u.get(k))] for k in columns]
    latency = attrs.get("latency")
    if isinstance(latency, dict) and latency.get("base_ms_measured") is not None:
        errors = [abs(e) for e in latency.get("holdout_errors") or []]
        rows += [["latency (unpruned)",
                  f"{latency['base_ms_measured']:.2f} ms measured, "
                  f"{latency['base_ms_predicted']:.2f} ms predicted (batch "
                  f"{latency.get('batch_size')}, {latency.get('threads')} threads, "
                  f"{latency.get('dtype')})"
                  + (f"; table error on held-out nets <= {100 * max(errors):.1f}%"
                     if errors else "")]]
    table(f"study {summary['study_name']}", ["", ""], rows)
    labels = dict(COST_RATIOS)
    if len(spread) > 1:
        table("evaluated configurations, ranked by val top-1 (costs as ratios of the unpruned "
              "network's)", ["", "trial", "val top-1", *(labels[k] for k in columns)],
              [[r["label"], r["trial"], _pct(r["val_top1"]), *(_num(r.get(k)) for k in columns)]
               for r in spread])
        pruning = (attrs.get("config") or {}).get("pruning") or {}
        same = ("within the same constraints" if pruning.get("gamma", 0.5) is None
                else "at the same FLOPs budget")
        console.print(f"best - worst: {spread[1]['val_top1'] - spread[-1]['val_top1']:.2f} "
                      f"points of val top-1 {same}")
    if summary.get("confirm"):
        _print_confirm(summary["confirm"], summary["study_name"])


def _print_confirm(confirm: dict[str, Any], name: str) -> None:
    """The confirmed trials, pick first: validation and confirmation top-1 and their costs."""
    labels = dict(COST_RATIOS)
    columns = [k for k, _ in COST_RATIOS if any(k in r for r in confirm["trials"])]
    table(f"confirmation: the top {confirm['top_k']} by val top-1 re-scored on "
          f"{confirm['images']} images ({confirm['source']}), ranked by confirm top-1",
          ["", "trial", "val top-1", "confirm top-1", *(labels[k] for k in columns)],
          [["pick" if i == 0 else "", r["number"], _pct(r["val_top1"]), _pct(r["confirm_top1"]),
            *(_num(r.get(k)) for k in columns)] for i, r in enumerate(confirm["trials"])])
    if confirm["pick"] != confirm["best_on_validation"]:
        console.print(f"the pick is trial {confirm['pick']}, not trial "
                      f"{confirm['best_on_validation']} (the best on validation)")
    if confirm["not_confirmed"]:
        console.print(f"not confirmed yet (top {confirm['top_k']} by val top-1): trials "
                      f"{', '.join(map(str, confirm['not_confirmed']))}; run 'searchprune study "
                      f"confirm --study-name {name}'")


def _print_trials(trials: list[Any], front: set[int] | None = None,
                  confirmed: dict[int, float | None] | None = None) -> None:
    """The trials table with every recorded cost ratio; with ``front`` (a Pareto study) a
    column marks the front members; with ``confirmed`` (trial -> confirmation top-1) a column
    shows it beside validation top-1."""
    columns = _cost_columns(trials)
    labels = dict(COST_RATIOS)
    head = ["#", "state", "val top-1", *(["confirm top-1"] if confirmed else []), "top-5",
            *(labels[k] for k in columns)]
    rows = [[t.number, t.state.name, _pct(t.values[0] if t.values else None),
             *([_pct(confirmed.get(t.number))] if confirmed else []),
             _pct(t.user_attrs.get("top5")), *(_num(t.user_attrs.get(k)) for k in columns)]
            for t in trials]
    if front is not None:
        head.append("front")
        rows = [[*r, "yes" if t.number in front else ""] for r, t in zip(rows, trials)]
    table("trials" if front is None else "trials (Pareto front first, by FLOPs ratio)", head, rows)
    if not trials:
        console.print("no trials yet")


def _pct(v: float | None) -> str | None:
    return None if v is None else f"{v:.2f}%"


def _num(v: float | None) -> str | None:
    return None if v is None else f"{v:.4f}"


def _confirm(args: argparse.Namespace) -> int:
    """``study confirm``: the top-k trials re-scored on the confirmation images (the ones not
    confirmed yet), then the study's confirmation shown."""
    from searchprune.search.confirm import confirm_study
    from searchprune.search.sensitivity import is_scan
    from searchprune.search.trials import is_multi_objective

    for flag, value in (("--top-k", args.top_k), ("--images", args.images)):
        if value is not None and not 1 <= value <= 2**31 - 1:
            raise ConfigError(f"{flag} must be an integer >= 1, got {value}")
    study = load_study(args.storage, args.study_name)
    if is_scan(study.study_name, study.user_attrs) or is_multi_objective(study):
        raise ConfigError(f"'{study.study_name}' is not a single-objective study; confirmation "
                          "re-ranks the best trials of one (not a Pareto front or a scan)")
    cfg = _confirm_config(study, args)
    from searchprune.search import StudyInterrupted, best_trials, resolve_problem
    from searchprune.search._interrupt import InterruptGuard

    if not best_trials(study):
        raise SearchpruneError(f"study '{study.study_name}' has no evaluated trials yet; run "
                               "'searchprune study run' first")
    from searchprune.engine import engine_for
    from searchprune.trust import stored_checkpoint_refusal

    with stored_checkpoint_refusal(cfg, study.study_name):
        engine = engine_for(cfg, progress=not args.json)
    problem = resolve_problem(cfg, engine)
    with InterruptGuard() as guard, guard.deferred():
        try:
            new = confirm_study(study, problem, guard=guard)
        except KeyboardInterrupt as exc:
            raise StudyInterrupted(getattr(exc, "signum", 2)) from None
    summary = _confirm_summary(study)
    if args.json:
        emit_json({"study_name": study.study_name, "confirmed_now": [c.number for c in new],
                   "confirm": summary})
    elif summary is not None:
        console.print(f"confirmed {len(new)} trial(s) now" + (
            "" if new else " (all of the top-k were confirmed already)"))
        _print_confirm(summary, study.study_name)
    return 0


def _confirm_config(study: Any, args: argparse.Namespace) -> Any:
    """The study's stored config with ``search.confirm`` as this command asks (flags over the
    stored ``search.confirm`` over the defaults). With ``data.val_from: train`` the
    confirmation images are training images held out when the study was created: a study
    created without them has none its network was not trained on."""
    import dataclasses

    from searchprune.confirmation import ConfirmSpec, holdout_images, parse_confirm
    from searchprune.search.finishing import load_study_config

    cfg = load_study_config(study, stored_trust(args))
    stored = parse_confirm(cfg.search.confirm)
    base = stored if stored is not None else ConfirmSpec()
    spec = ConfirmSpec(args.top_k if args.top_k is not None else base.top_k,
                       args.images if args.images is not None else base.images)
    if cfg.data.val_from == "train":
        if stored is None:
            raise ConfigError(
                f"study '{study.study_name}' draws validation from the training images and was "
                "created without search.confirm, so its network was trained on every other "
                "training image and none is left to confirm on; create the study with "
                "search.confirm set (the images are held out before training) or with "
                "data.val_from: test")
        held = holdout_images(cfg, stored)
        if args.images is not None and args.images != held:
            raise ConfigError(f"--images: study '{study.study_name}' holds out {held} "
                              "confirmation images (fixed when it was created); leave --images "
                              "out")
    search = dataclasses.replace(cfg.search, confirm=spec.to_dict())
    return dataclasses.replace(cfg, search=search).validate()
