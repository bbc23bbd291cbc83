"""``searchprune finetune`` and ``searchprune export``: from a finished search to a model."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from searchprune.cli._output import (
    add_stored_trust_flags,
    console,
    emit_json,
    stored_trust,
    table,
)
from searchprune.cli.study import load_study
from searchprune.errors import ConfigError, unknown_choice

if TYPE_CHECKING:
    from searchprune.config import DistillConfig

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    ft = sub.add_parser("finetune", parents=[common],
                        help="fine-tune a study's top trials, then the best one longer")
    ft.add_argument("--study-name", required=True)
    ft.add_argument("--storage", help="storage URL or SQLite file (env SEARCHPRUNE_STORAGE)")
    ft.add_argument("--top", type=int, default=5, metavar="K",
                    help="trials to fine-tune (5); of a Pareto study: front members, most "
                         "accurate first")
    _flops_bounds(ft)
    ft.add_argument("--epochs", type=int, default=5, help="epochs for each of the top K (5)")
    ft.add_argument("--final-epochs", type=int, default=50,
                    help="further epochs for the best on validation (50)")
    ft.add_argument("--lr", type=float, default=0.01, help="initial learning rate (cosine)")
    ft.add_argument("--weight-decay", type=float, default=1e-4)
    ft.add_argument("--batch-size", type=int, default=128)
    ft.add_argument("--out", default=None,
                    help="checkpoint folder (default runs/finetune/<study>); resumable")
    ft.add_argument("--artifact-dir", default=None,
                    help="where the fine-tuned checkpoint is stored as an Optuna artifact "
                         "(default $SEARCHPRUNE_ARTIFACTS, else artifacts/ next to a SQLite "
                         "storage, else ~/.cache/searchprune/artifacts)")
    ft.add_argument("--each", action="store_true",
                    help="fine-tune every candidate with the same recipe (--epochs) and compare "
                    "them side by side, instead of the top-K-then-best protocol")
    ft.add_argument("--trials", default=None, metavar="N,M,...",
                    help="with --each: these trial numbers (default: the --top best)")
    ft.add_argument("--baselines", default=None, metavar="LIST",
                    help="with --each: also fine-tune these no-search baselines "
                    "(uniform, tp-global, sensitivity)")
    ft.add_argument("--seed", type=int, default=0, help="fine-tuning seed (0)")
    ft.add_argument("--distill-alpha", type=float, default=None, metavar="A",
                    help="distil from the unpruned network: weight A in [0, 1] of the "
                         "distillation loss (default: the study's finetune.distill.alpha, 0 = "
                         "labels only)")
    ft.add_argument("--distill-temperature", type=float, default=None, metavar="T",
                    help="softmax temperature of the distillation loss (default: the study's "
                         "finetune.distill.temperature, 4)")
    ft.add_argument("--no-latency", action="store_true",
                    help="with --each: skip the latency measurement")
    add_stored_trust_flags(ft)
    ft.set_defaults(func=_finetune)

    ex = sub.add_parser("export", parents=[common],
                        help="write a pruned model that loads with plain PyTorch")
    ex.add_argument("--study-name", required=True)
    ex.add_argument("--storage")
    ex.add_argument("--trial", type=int, default=None,
                    help="trial number (default: the fine-tuned best, else the best trial)")
    _flops_bounds(ex)
    ex.add_argument("--out", required=True, metavar="DIR")
    ex.add_argument("--format", choices=("torch", "onnx", "all"), default="torch",
                    help="torch: a torch.export program (model.pt2); onnx: model.onnx; all: "
                         "both (default torch)")
    ex.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    ex.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    ex.add_argument("--not-finetuned", action="store_true",
                    help="export the searched weights even when a fine-tuned checkpoint exists")
    add_stored_trust_flags(ex)
    ex.set_defaults(func=_export)


def _check_recipe(args: argparse.Namespace) -> None:
    """The fine-tuning flags' ranges (one-line :class:`ConfigError`)."""
    low_top = 0 if args.each else 1  # --each may fine-tune only --baselines
    bad = [f"{flag} must be >= {low}, got {value}" for flag, value, low in (
        ("--top", args.top, low_top), ("--epochs", args.epochs, 0),
        ("--final-epochs", args.final_epochs, 0), ("--batch-size", args.batch_size, 1),
        ("--seed", args.seed, 0)) if value < low]
    if not (args.lr > 0 and math.isfinite(args.lr)):
        bad.append(f"--lr must be a finite number > 0, got {args.lr}")
    if not (args.weight_decay >= 0 and math.isfinite(args.weight_decay)):
        bad.append(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}")
    if args.seed > 2**32 - 1:
        bad.append(f"--seed must be <= {2**32 - 1}, got {args.seed}")
    if max(args.top, args.epochs, args.final_epochs, args.batch_size) > 2**31 - 1:
        bad.append("--top, --epochs, --final-epochs and --batch-size must be <= 2147483647")
    if bad:
        raise ConfigError("; ".join(bad))


def _flops_bounds(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flops-min", type=float, default=None, metavar="R",
                        help="only trials whose FLOPs ratio is at least R")
    parser.add_argument("--flops-max", type=float, default=None, metavar="R",
                        help="only trials whose FLOPs ratio is at most R (e.g. pick from a "
                             "Pareto front)")


def _bounds(args: argparse.Namespace) -> dict[str, float | None]:
    lo, hi = args.flops_min, args.flops_max
    if (lo is not None and not 0.0 <= lo <= 1.0) or (hi is not None and not 0.0 <= hi <= 1.0) \
            or (lo is not None and hi is not None and lo > hi):
        raise ConfigError(f"--flops-min/--flops-max must be FLOPs ratios in [0, 1] with min <= "
                          f"max, got {lo} and {hi}")
    return {"flops_min": lo, "flops_max": hi}


def _finetune(args: argparse.Namespace) -> int:
    from searchprune.config import validate_study_name
    from searchprune.finetune import FinetuneSettings
    from searchprune.search.finishing import (
        default_artifact_dir,
        finetune_study,
        load_study_config,
    )
    from searchprune.train import init_distributed

    validate_study_name(args.study_name)
    _check_recipe(args)
    trials = _ints(args.trials, "--trials") if args.trials else None
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()] if args.baselines \
        else []
    if (trials or baselines) and not args.each:
        raise ConfigError("--trials and --baselines go with --each (one recipe for all)")
    if baselines:
        from searchprune.baselines import BASELINES

        for name in baselines:
            if name not in BASELINES:
                raise ConfigError(unknown_choice("baseline", name, BASELINES) + " (--baselines)")
    bounds = _bounds(args)
    _check_distill_flags(args)
    study = load_study(args.storage, args.study_name)
    cfg = load_study_config(study, stored_trust(args))
    # under torchrun: one process per rank, data parallel; rank 0 writes and reports
    rank, _ = init_distributed(cfg.device)
    settings = FinetuneSettings(epochs=args.epochs, final_epochs=args.final_epochs, lr=args.lr,
                                weight_decay=args.weight_decay, batch_size=args.batch_size,
                                seed=args.seed, distill=_distill(args, cfg.finetune.distill))
    out = args.out or str(Path("runs") / "finetune" / args.study_name)
    if args.each:
        return _finetune_each(args, study, trials, baselines, settings, out, bounds)
    finetune_study(study, top=args.top, settings=settings, out_dir=out,
                   artifact_dir=args.artifact_dir or default_artifact_dir(args.storage),
                   progress=not args.json, trust=stored_trust(args), **bounds)
    if rank != 0:
        return 0
    record = study.user_attrs["finetune"]
    if args.json:
        emit_json(record)
        return 0
    confirmed = record.get("confirm_top1") or {}
    shown = any(v is not None for v in confirmed.values())  # the study was confirmed
    rows = [[k, f"{v['val_top1_before']:.2f}",
             *([_pct(confirmed.get(k))] if shown else []), f"{v['val_top1']:.2f}", v["epochs"]]
            for k, v in record["trials"].items()]
    table(f"fine-tuned top {len(rows)} of '{args.study_name}'"
          + (" (chosen by confirm top-1)" if shown else ""),
          ["trial", "val top-1 before", *(["confirm top-1 before"] if shown else []),
           "val top-1 after", "epochs"], rows)
    console.print(
        f"best: trial {record['best_trial']} +{record['final_epochs']} epochs -> val top-1 "
        f"{record['val_top1']:.2f}%; test top-1 {record['test_top1_before']:.2f}% before "
        f"fine-tuning, {record['test_top1']:.2f}% after{_distill_note(record['distill'])}\n"
        f"checkpoint: {record['checkpoint']}")
    return 0


def _check_distill_flags(args: argparse.Namespace) -> None:
    """The distillation flags given, checked before any study is opened."""
    from searchprune.config import validate_distill

    validate_distill(0.0 if args.distill_alpha is None else args.distill_alpha,
                     1.0 if args.distill_temperature is None else args.distill_temperature,
                     ("--distill-alpha", "--distill-temperature"))


def _distill(args: argparse.Namespace, stored: DistillConfig) -> DistillConfig | None:
    """The flags over the study's ``finetune.distill``; None when alpha is 0 (labels only)."""
    from searchprune.config import DistillConfig

    alpha = stored.alpha if args.distill_alpha is None else args.distill_alpha
    temperature = (stored.temperature if args.distill_temperature is None
                   else args.distill_temperature)
    return DistillConfig(alpha=alpha, temperature=temperature) if alpha > 0.0 else None


def _distill_note(distill: dict | None) -> str:
    if not distill:
        return ""
    return (f" (distilled from the unpruned network: alpha {distill['alpha']:g}, temperature "
            f"{distill['temperature']:g})")


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes a comma list of trial numbers, got {text!r}") from None


def _finetune_each(args, study, trials, baselines, settings, out, bounds) -> int:
    from searchprune.finetune import distill_record
    from searchprune.search.finishing import finetune_study_each
    from searchprune.train import is_main_process

    rows = finetune_study_each(study, trials=trials, top=args.top, baselines=baselines,
                               settings=settings, out_dir=out,
                               latency_batch=None if args.no_latency else 64,
                               progress=not args.json, trust=stored_trust(args), **bounds)
    if not is_main_process():  # under torchrun rank 0 reports
        return 0
    if args.json:
        emit_json({"epochs": settings.epochs, "distill": distill_record(settings), "rows": rows})
        return 0
    confirmed = any(r.get("confirm_top1") is not None for r in rows)
    cols = ["candidate", "val before", *(["confirm before"] if confirmed else []), "val after",
            "test after", "FLOPs", "params"]
    predicted = any("latency_ratio_predicted" in r for r in rows)
    if predicted:
        cols.append("latency pred.")
    lat = not args.no_latency
    if lat:
        cols.append(f"latency meas. (batch {rows[0].get('latency_batch', 64)})")
    table(f"'{args.study_name}': every candidate fine-tuned {settings.epochs} epochs, same recipe"
          f"{_distill_note(distill_record(settings))} (costs as ratios of the unpruned network's)",
          cols, [[str(r["key"]), f"{r['val_top1_before']:.2f}",
                  *([_pct(r.get("confirm_top1"))] if confirmed else []), f"{r['val_top1']:.2f}",
                  f"{r['test_top1']:.2f}", f"{r['flops_ratio']:.3f}", f"{r['params_ratio']:.3f}"]
                 + ([f"{r['latency_ratio_predicted']:.3f}"] if predicted else [])
                 + ([f"{r['latency_ratio']:.3f} ({r['latency_ms']:.1f} ms)"] if lat else [])
                 for r in rows])
    return 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _export(args: argparse.Namespace) -> int:
    from searchprune.search.finishing import export_trial

    bounds = _bounds(args)
    study = load_study(args.storage, args.study_name)
    card = export_trial(study, args.out, trial=args.trial, latency=not args.no_latency,
                        finetuned=not args.not_finetuned, force=args.force,
                        format=args.format, trust=stored_trust(args), **bounds)
    if args.json:
        emit_json(card)
        return 0
    console.print(f"exported trial {card['trial']} to {args.out}: FLOPs ratio "
                  f"{card['flops_ratio']:.3f}, params ratio {card['params_ratio']:.3f}; "
                  f"files: {', '.join(card['files'].values())}")
    acc = card.get("accuracy") or {}
    if acc.get("confirm_images"):
        console.print(f"searched weights: val top-1 {_pct(acc.get('val_top1_search'))}%, "
                      f"confirm top-1 {_pct(acc.get('confirm_top1_search'))}% on "
                      f"{acc['confirm_images']} confirmation images")
    names = {"flops": "FLOPs", "params": "params", "latency_predicted": "latency (predicted)"}
    table("ratios to the unpruned network", ["cost", "ratio"],
          [[names.get(k, k.replace("latency_measured_batch", "latency (measured, batch ") + ")"),
            f"{v:.3f}"] for k, v in card["ratios"].items()])
    if "onnx_check" in card:
        console.print(f"ONNX vs PyTorch logits: max abs diff "
                      f"{card['onnx_check']['max_abs_diff']:.2e} ({card['onnx_check']['runtime']})")
    if "latency_ms" in card:
        rows = [[b, f"{v['original']:.2f}", f"{v['pruned']:.2f}",
                 f"{v['pruned'] / v['original']:.2f}"] for b, v in card["latency_ms"].items()]
        table("CPU latency (ms)", ["batch", "original", "pruned", "ratio"], rows)
        console.print(card["latency_method"])
    return 0
