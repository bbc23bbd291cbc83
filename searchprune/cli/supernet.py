"""``searchprune supernet train|rank`` (setting 2: pruning from scratch)."""

from __future__ import annotations

import argparse
from typing import Any

from searchprune.cli._output import console, emit_json, table

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    sn = sub.add_parser("supernet", help="train and query the from-scratch supernet")
    cmds = sn.add_subparsers(dest="supernet_command", metavar="{train,rank}", required=True)

    train = cmds.add_parser("train", parents=[common],
                            help="train the supernet (re-running continues from the last epoch)")
    train.add_argument("config", metavar="CONFIG.yaml")
    train.add_argument("--epochs", type=int, help="total epochs (default: supernet.epochs)")
    train.add_argument("--checkpoint", help="checkpoint file (default: supernet.checkpoint or "
                                            "runs/supernet/<config stem>/supernet.pt)")
    train.set_defaults(func=_train)

    rank = cmds.add_parser("rank", parents=[common],
                           help="rank random in-band sub-networks with the trained supernet")
    rank.add_argument("config", metavar="CONFIG.yaml")
    rank.add_argument("--n", type=int, default=20, help="configurations to sample (default 20)")
    rank.add_argument("--gamma", type=float, help="fraction of FLOPs kept")
    rank.add_argument("--tolerance", type=float, help="band half-width T")
    rank.add_argument("--seed", type=int, default=0)
    rank.add_argument("--top", type=int, default=10, metavar="K", help="rows shown (default 10)")
    rank.add_argument("--train-top-k", action="store_true",
                      help="fine-tune the top supernet.top_k and retrain the best from scratch")
    rank.set_defaults(func=_rank)


def _config(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> Any:
    from searchprune.config import load_config

    overrides = {"supernet.checkpoint": getattr(args, "checkpoint", None), **(extra or {})}
    return load_config(args.config, overrides)


def _train(args: argparse.Namespace) -> int:
    from searchprune.supernet import train_supernet

    cfg = _config(args)
    run = train_supernet(cfg, epochs=args.epochs, progress=not args.json)
    last = run.records[-1] if run.records else {}
    result = {"checkpoint": str(run.checkpoint), "epochs": run.epochs,
              "epochs_done": last.get("epoch", 0), "loss": last.get("loss"),
              "loss_full": last.get("loss_full"), "loss_sub": last.get("loss_sub"),
              "val_top1_full": last.get("val_top1"),
              "seconds": sum(float(r.get("seconds", 0.0)) for r in run.records),
              "groups": {k: list(v) for k, v in run.choices.choices.items()}}
    if args.json:
        emit_json({**result, "records": run.records})
        return 0
    table(f"supernet {cfg.model.name} on {cfg.data.name}", ["", ""], [
        ["checkpoint", result["checkpoint"]],
        ["epochs", f"{result['epochs_done']}/{result['epochs']}"],
        ["loss (full + sampled)", _num(result["loss"])],
        ["loss full / mean sampled", f"{_num(result['loss_full'])} / {_num(result['loss_sub'])}"],
        ["full-net val top-1", _pct(result["val_top1_full"])],
        ["training seconds", f"{result['seconds']:.1f}"],
    ])
    return 0


def _rank(args: argparse.Namespace) -> int:
    from searchprune.supernet import SupernetEngine, rank_candidates, sample_in_band, train_top_k

    cfg = _config(args, {"pruning.gamma": args.gamma, "pruning.tolerance": args.tolerance})
    engine = SupernetEngine.from_config(cfg)
    configs = sample_in_band(engine, args.n, seed=args.seed)
    ranked = rank_candidates(engine, configs)
    rows = [{"widths": c.widths, "flops_ratio": c.flops_ratio, "val_top1": c.top1}
            for c in ranked]
    result: dict[str, Any] = {"gamma": cfg.pruning.gamma, "tolerance": cfg.pruning.tolerance,
                              "sampled": len(configs), "ranked": rows}
    if args.train_top_k and ranked:
        top = train_top_k(engine, ranked, progress=not args.json)
        result["top_k"] = [{"widths": c.widths, "supernet_top1": c.top1,
                            "finetuned_top1": c.finetuned_top1} for c in top.candidates]
        result["best"] = {"widths": top.best, "retrained_val_top1": top.retrained_val_top1,
                          "retrained_test_top1": top.retrained_test_top1}
    if args.json:
        emit_json(result)
        return 0
    names = [g.name for g in engine.groups]
    table(f"{len(configs)} sub-networks at FLOPs {cfg.pruning.gamma} ± {cfg.pruning.tolerance}",
          ["val top-1", "FLOPs ratio", "widths (" + ", ".join(names) + ")"],
          [[_pct(r["val_top1"]), _num(r["flops_ratio"]),
            " ".join(str(r["widths"][n]) for n in names)] for r in rows[: args.top]])
    if "best" in result:
        b = result["best"]
        console.print(f"best after fine-tuning, retrained from scratch: val top-1 "
                      f"{_pct(b['retrained_val_top1'])}, test top-1 "
                      f"{_pct(b['retrained_test_top1'])}")
    return 0


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}%"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
