"""``searchprune model eval|info|list``."""

from __future__ import annotations

import argparse
from typing import Any

from searchprune.cli._output import add_trust_flag, emit_json, table

__all__ = ["add_parser", "example_shape"]


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    model = sub.add_parser("model", help="inspect the network to prune")
    cmds = model.add_subparsers(dest="model_command", metavar="{eval,info,list}", required=True)

    ev = cmds.add_parser("eval", parents=[common], help="accuracy of the unpruned network")
    ev.add_argument("config", metavar="CONFIG.yaml")
    ev.add_argument("--split", choices=("val", "test"), default="val")
    add_trust_flag(ev)
    ev.set_defaults(func=_eval)

    info = cmds.add_parser("info", parents=[common], help="cost and channel groups")
    info.add_argument("config", metavar="CONFIG.yaml", nargs="?")
    info.add_argument("--model", help="a model name, built with random weights (no config)")
    info.add_argument("--num-classes", type=int, default=10)
    info.add_argument("--eta", type=float, help="smallest keep-ratio (default: config or 0.3)")
    add_trust_flag(info)
    info.set_defaults(func=_info)

    ls = cmds.add_parser("list", parents=[common], help="registered model names")
    ls.set_defaults(func=_list)


def example_shape(name: str) -> tuple[int, int, int]:
    """The input one image of ``name`` takes when no data is configured."""
    if name.startswith("cifar_"):
        return (3, 32, 32)
    if name.startswith("digits_"):
        return (1, 8, 8)
    return (3, 224, 224)


def _engine(path: str, eta: float | None = None, trust: bool | None = None) -> Any:
    """An engine for inspection only: the baseline does not depend on the criterion or on
    reconstruction, so the cheapest ones are used."""
    from searchprune.config import load_config
    from searchprune.engine import PruningEngine

    cfg = load_config(path, {"pruning.proxy": "none", "pruning.criterion": "l1",
                             "pruning.eta": eta, "model.trust_checkpoint": trust})
    return PruningEngine.from_config(cfg, progress=False)


def _eval(args: argparse.Namespace) -> int:
    engine = _engine(args.config, trust=args.trust_checkpoint)
    top1, top5 = engine.evaluate_baseline(args.split)
    result = {"model": engine.cfg.model.name, "split": args.split, "top1": float(top1),
              "top5": float(top5)}
    if args.json:
        emit_json(result)
    else:
        table(f"{result['model']} on {args.split}", ["top-1", "top-5"],
              [[f"{top1:.2f}%", f"{top5:.2f}%"]])
    return 0


def _info(args: argparse.Namespace) -> int:
    from searchprune.errors import ConfigError

    if (args.config is None) == (args.model is None):
        raise ConfigError("give either CONFIG.yaml or --model NAME")
    if args.config is not None:
        engine = _engine(args.config, args.eta, args.trust_checkpoint)
        space, name, eta = engine.space, engine.cfg.model.name, engine.cfg.pruning.eta
        rules = engine.cfg.pruning.groups
        import torch

        model = engine.model  # the plan needs the input's shape only: no image is decoded
        example = torch.zeros(1, *engine.data.input_shape, device=engine.device)
    else:
        space, name, model, example = _space_for(args.model, args.num_classes)
        eta, rules = (0.3 if args.eta is None else args.eta), None
    info = _describe(space, name, eta, rules)
    info["least_squares"] = _least_squares(model, space, example)
    if args.json:
        emit_json(info)
    else:
        lo, hi = info["ratio_range"]
        table(f"{name}: {info['flops']:,} FLOPs, {info['params']:,} params; FLOPs ratio range "
              f"[{lo:.3f}, {hi:.3f}] at eta={eta}" + (" with pruning.groups" if rules else ""),
              ["group", "channels", "prunable", "keep-ratio", "why fixed"],
              [[g["name"], g["channels"], "yes" if g["prunable"] else "no",
                _bounds_text(info["bounds"].get(g["name"])), info["fixed"].get(g["name"], "")]
               for g in info["groups"]])
        _print_least_squares(info["least_squares"])
    return 0


def _print_least_squares(rows: list[dict[str, Any]]) -> None:
    from searchprune.cli._output import console

    fitted = sum(row["fitted"] for row in rows)
    if not rows:
        console.print("least squares: the search narrows no conv or linear layer")
        return
    table(f"least squares (pruning.proxy ls, abn+ls): {fitted} layers fitted, "
          f"{len(rows) - fitted} not",
          ["layer", "type", "fitted", "how, or why not"],
          [[row["layer"], row["type"], "yes" if row["fitted"] else "no", row["how"]]
           for row in rows])


def _least_squares(model: Any, space: Any, example: Any) -> list[dict[str, Any]]:
    """Every layer the search narrows (and every one fitted anyway): whether least squares
    fits it and how, or why not."""
    from searchprune.reconstruct import plan

    return [{"layer": p.layer, "type": p.kind, "fitted": p.fitted, "how": p.how}
            for p in plan(model, space, example)]


def _bounds_text(bounds: list[float] | None) -> str:
    if bounds is None:
        return "-"
    lo, hi = bounds
    return f"fixed {lo:g}" if lo >= hi else f"[{lo:g}, {hi:g}]"


def _space_for(name: str, num_classes: int) -> tuple[Any, str, Any, Any]:
    import torch

    from searchprune.config import ModelConfig
    from searchprune.models import build_model
    from searchprune.space import SearchSpace

    shape = example_shape(name)
    model = build_model(ModelConfig(name=name), num_classes=num_classes, in_channels=shape[0])
    example = torch.zeros(1, *shape)
    return SearchSpace.from_model(model, example), name, model, example


def _describe(space: Any, name: str, eta: float,
              rules: dict[str, Any] | None = None) -> dict[str, Any]:
    from searchprune.constraints import KeepRanges

    base = space.base_cost
    ranges = KeepRanges.resolve(rules, [g.name for g in space.prunable], eta)
    bounds = ranges.bounds
    low = space.flops_ratio(space.widths(ranges.lowest()))
    high = space.flops_ratio(space.widths(ranges.highest()))
    return {
        "model": name, "flops": int(base.flops), "macs": int(base.macs),
        "params": int(base.params), "eta": eta, "ratio_range": [float(low), float(high)],
        "groups": [{"name": g.name, "channels": int(g.channels), "prunable": bool(g.prunable)}
                   for g in space.groups],
        "fixed": {g.name: g.reason for g in space.fixed},  # not searched: why (module, type)
        "units": {g.name: int(space.unit(g)) for g in space.prunable if space.unit(g) > 1},
        "bounds": {n: [lo, hi] for n, (lo, hi) in bounds.items()},  # prunable groups only
    }


def _list(args: argparse.Namespace) -> int:
    from searchprune.models import list_models, torchvision_names

    names, tv = list_models(), sorted(torchvision_names())
    if args.json:
        emit_json({"models": names, "torchvision": tv,
                   "also": ["cifar_resnet<6n+2>", "timm:<name>", "package.module:factory"]})
    else:
        table("models", ["name"], [[n] for n in names])
        table("torchvision models", ["name"], [[", ".join(tv)]])
    return 0
