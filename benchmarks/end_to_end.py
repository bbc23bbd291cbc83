"""What does the search buy over no search, after fine-tuning?

Every row gets the identical final fine-tune (same recipe, epochs, images and fine-tune seeds)
and is reported as **test** top-1 on the half of the official test split that nothing was ever
selected on. Rows (FLOPs 0.5 +- 0.02 on the ../shared ResNet-20 by default):

- ``random eta=0.3``: the best of 30 evaluated band-random configurations (today's default eta),
- ``random eta=0.5``: the same with the paper's eta (equal to gamma),
- ``tpe``: the best of 30 evaluated band-aware TPE configurations (no warm start),
- ``default``: the best of 30 of the default search (the default sampler, ``gp``, warm-started
  from the ``taylor-sq`` prior),
- ``tpe+taylor-sq``: the same with TPE (the default search before ``gp``),
- ``paper``: the paper's protocol on the ``random eta=0.3`` studies: the top-k by proxy, each
  briefly fine-tuned, the best on validation gets the final fine-tune (its short fine-tunes are
  reported as extra cost),
- ``uniform`` and ``tp-global``: no search (:mod:`searchprune.baselines`).

Searched rows come from ``--search-seeds`` studies each; every configuration is fine-tuned with
each of ``--ft-seeds``. Mean +- std per row over all its (search seed, fine-tune seed) runs, and
paired differences against ``uniform`` and ``tp-global`` (each run against the baseline
fine-tuned with the same seed).

    python benchmarks/end_to_end.py --out runs/end_to_end --threads 1 [--rows tpe,paper]

``--baselines-at winner`` places ``uniform`` and ``tp-global`` at the exact FLOPs ratio of
every searched configuration (each search seed's winner and the paper protocol's pick) instead
of the band (:func:`searchprune.baselines.target_at`: within one channel); the paired
differences then compare each configuration with the baselines at its own cost, and the FLOPs
column lists every row's costs.

``--distill ALPHA`` (``--distill-temperature T``, 4) fine-tunes every row, the paper protocol's
short fine-tunes included, with distillation from the unpruned network
(:mod:`searchprune.distill`); its results are stored beside the label-only ones (same
``--out``), so one folder holds both and the report shows the chosen recipe.

Resumable: searches live in a SQLite file under ``--out``, fine-tune results in
``results.json``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from searchprune.baselines import solve_baseline, target_at  # noqa: E402
from searchprune.config import (  # noqa: E402
    DEFAULT_SAMPLER,
    DistillConfig,
    apply_overrides,
    load_config,
)
from searchprune.distill import Distiller, distill_config, frozen_teacher  # noqa: E402
from searchprune.engine import PruningEngine  # noqa: E402
from searchprune.errors import ConfigError  # noqa: E402
from searchprune.evaluate import evaluate  # noqa: E402
from searchprune.finetune import FinetuneSettings  # noqa: E402
from searchprune.search import run_study  # noqa: E402
from searchprune.search.finishing import top_trials  # noqa: E402
from searchprune.train import fit  # noqa: E402

# row -> (study name stem, config overrides); ``default``: the search a study file that names
# no sampler runs (the default sampler warm-started from the taylor-sq prior, whatever the
# file's method)
_SEEDED = {"pruning.eta": 0.3, "search.warm_start": "sensitivity", "sensitivity.method": "taylor-sq"}
SEARCHES = {
    "random eta=0.3": ("random-eta0.3", {"search.sampler": "random", "pruning.eta": 0.3}),
    "random eta=0.5": ("random-eta0.5", {"search.sampler": "random", "pruning.eta": 0.5}),
    "tpe": ("tpe-eta0.3", {"search.sampler": "tpe", "pruning.eta": 0.3,
                           "search.warm_start": "none"}),
    "default": (f"default-{DEFAULT_SAMPLER}", {"search.sampler": DEFAULT_SAMPLER, **_SEEDED}),
    "tpe+taylor-sq": ("default", {"search.sampler": "tpe", **_SEEDED}),
}


def tune(engine, widths, keep, epochs: float, seed: int, s: FinetuneSettings, train_set,
         device, loss: Distiller | None = None) -> tuple[object, dict]:
    """Fine-tune one configuration from its proxy-restored weights (``loss``: distillation,
    else labels only); val and test top-1."""
    net = engine.build(widths, keep=keep)
    t = time.perf_counter()
    if epochs >= 1:
        fit(net, train_set, epochs=int(epochs), lr=s.lr, momentum=s.momentum,
            weight_decay=s.weight_decay, batch_size=s.batch_size, device=device, seed=seed,
            loss_fn=loss)
    else:  # a fraction of an epoch: a seeded prefix of the training images
        n = max(s.batch_size, int(len(train_set) * epochs))
        part = torch.utils.data.Subset(train_set, range(n))
        fit(net, part, epochs=1, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay,
            batch_size=s.batch_size, device=device, seed=seed, loss_fn=loss)
    d = engine.data
    return net, {"val_top1": evaluate(net, d.val.x, d.val.y, device=device)[0],
                 "test_top1": evaluate(net, d.test.x, d.test.y, device=device)[0],
                 "seconds": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", default=str(ROOT / "studies/compare-resnet20.yaml"))
    ap.add_argument("--n-trials", type=int, default=30)
    ap.add_argument("--search-seeds", default="0,1")
    ap.add_argument("--ft-seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=1, help="final fine-tune epochs (1)")
    ap.add_argument("--train-size", type=int, default=10000, help="fine-tuning images")
    ap.add_argument("--top-k", type=int, default=3, help="paper protocol: candidates (3)")
    ap.add_argument("--short", type=float, default=0.25,
                    help="paper protocol: epochs of each candidate's short fine-tune (0.25)")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--distill", type=float, default=0.0, metavar="ALPHA",
                    help="distil from the unpruned network with weight ALPHA in [0, 1] (0: "
                         "labels only, the default)")
    ap.add_argument("--distill-temperature", type=float, default=4.0, metavar="T")
    ap.add_argument("--baselines-at", choices=("band", "winner"), default="band",
                    help="band: uniform and tp-global solved for the band (default); winner: "
                         "at each searched configuration's exact FLOPs ratio")
    ap.add_argument("--rows", default=",".join([*SEARCHES, "paper"]),
                    help="the searched rows to fine-tune, a comma list of "
                         f"{', '.join([*SEARCHES, 'paper'])} (default all; the baselines "
                         "always)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "runs/end_to_end"))
    args = ap.parse_args()
    rows = args.rows.split(",")
    if unknown := sorted(set(rows) - {*SEARCHES, "paper"}):
        sys.exit(f"error: --rows: unknown {', '.join(unknown)}; choose from "
                 f"{', '.join([*SEARCHES, 'paper'])}")
    if "paper" in rows and "random eta=0.3" not in rows:
        rows.append("random eta=0.3")  # the paper protocol picks among its top-k
    distill = distill_settings(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "results.json"
    res = json.loads(saved.read_text()) if saved.is_file() else {"search": {}, "tune": {}}

    def save() -> None:
        saved.write_text(json.dumps(res, indent=1))

    # the fine-tuning images are a prefix of the (shuffled) training split, the images
    # data.train_size would keep; the config leaves the split whole, so a network searchprune
    # trains itself (cifar_mobilenet_v2) is the one trained on all of it, from the cache
    cfg = load_config(args.config, {"device": args.device,
                                    "search.n_trials": args.n_trials,
                                    "storage": str(out / "searches.db")})
    device = torch.device(args.device)
    t0 = time.perf_counter()
    engine = PruningEngine.from_config(cfg)
    d = engine.data
    s = FinetuneSettings(lr=args.lr)
    whole = d.train_set(augment=True)
    train_set = torch.utils.data.Subset(whole, range(min(args.train_size, len(whole))))
    print(f"engine ready in {time.perf_counter() - t0:.0f} s; proxy {cfg.pruning.proxy}, "
          f"criterion {cfg.pruning.criterion}; val {len(d.val)}, test {len(d.test)}, fine-tune "
          f"images {len(train_set)}", flush=True)
    loss = Distiller(frozen_teacher(engine), distill) if distill is not None else None
    tag = recipe_tag(distill)
    search_seeds = [int(x) for x in args.search_seeds.split(",")]
    ft_seeds = [int(x) for x in args.ft_seeds.split(",")]

    # 1. searches and the configurations each row fine-tunes ----------------------------------
    candidates: dict[str, dict] = {}  # key -> {"row", "widths", "keep", ...}
    for row, (stem, overrides) in SEARCHES.items():
        if row not in rows:
            continue
        for seed in search_seeds:
            key = f"{row} s{seed}"
            name = f"e2e-{stem}-s{seed}"
            rc = apply_overrides(cfg, {**overrides, "search.seed": seed,
                                       "search.study_name": name})
            if key not in res["search"]:
                t = time.perf_counter()
                study = run_study(rc, engine=engine, progress=False)
                trials = top_trials(study, args.top_k)
                res["search"][key] = {
                    "study": name, "seconds": time.perf_counter() - t,
                    "top": [{"number": tr.number, "val_proxy": tr.value,
                             "widths": tr.user_attrs["widths"],
                             "flops_ratio": tr.user_attrs["flops_ratio"]} for tr in trials]}
                save()
                print(f"search {key}: best proxy {trials[0].value:.2f} "
                      f"({res['search'][key]['seconds']:.0f} s)", flush=True)
            top = res["search"][key]["top"]
            candidates[key] = {"row": row, "widths": top[0]["widths"], "keep": None,
                               "val_proxy": top[0]["val_proxy"],
                               "flops_ratio": top[0]["flops_ratio"]}
    if args.baselines_at == "band":
        for name in BASELINES:
            candidates[name] = baseline(engine, name)

    # 2. the paper's protocol: short fine-tunes of the top-k, best on validation --------------
    for seed in search_seeds if "paper" in rows else ():
        key = f"paper s{seed}"
        if key not in res["tune"]:
            res["tune"][key] = {"short": {}}
        short = res["tune"][key]["short"]
        for cand in res["search"][f"random eta=0.3 s{seed}"]["top"]:
            name = f"{cand['number']}{tag}"
            if name not in short:
                _, short[name] = tune(engine, cand["widths"], None, args.short, 0, s, train_set,
                                      device, loss)
                save()
        top = res["search"][f"random eta=0.3 s{seed}"]["top"]
        best = max(top, key=lambda c: short[f"{c['number']}{tag}"]["val_top1"])
        candidates[key] = {"row": "paper", "widths": best["widths"], "keep": None,
                           "val_proxy": best["val_proxy"], "flops_ratio": best["flops_ratio"],
                           "extra_seconds": sum(short[f"{c['number']}{tag}"]["seconds"]
                                                for c in top)}

    if args.baselines_at == "winner":  # each baseline at each searched configuration's cost
        from searchprune.search import resolve_problem

        problem = resolve_problem(cfg, engine)
        for key in [k for k, c in candidates.items() if c["row"] not in BASELINES]:
            at = target_at(problem, widths=candidates[key]["widths"])
            for name in BASELINES:
                candidates[f"{name}@{key}"] = {**baseline(engine, name, problem, at), "at": key}

    # 3. the identical final fine-tune for every configuration ---------------------------------
    for key, cand in candidates.items():
        entry = res["tune"].setdefault(key, {})
        for seed in ft_seeds:
            name = f"ft{seed}{tag}"
            if name in entry:
                continue
            _, entry[name] = tune(engine, cand["widths"], cand["keep"], args.epochs, seed, s,
                                  train_set, device, loss)
            save()
            print(f"fine-tuned {key} seed {seed}{f' ({tag[1:]})' if tag else ''}: test "
                  f"{entry[name]['test_top1']:.2f} "
                  f"({entry[name]['seconds']:.0f} s)", flush=True)
    report(res, candidates, ft_seeds, args, out, distill)


BASELINES = ("uniform", "tp-global")


def baseline(engine, name: str, problem=None, target=None) -> dict:
    """A no-search candidate: at the band, or at the cost ``target``."""
    b = solve_baseline(name, engine, problem=problem, target=target)
    r = engine.evaluate(b.widths, keep=b.keep)
    return {"row": name, "widths": b.widths, "keep": b.keep, "val_proxy": r.top1,
            "flops_ratio": engine.flops_ratio(b.widths)}


def distill_settings(args) -> DistillConfig | None:
    """``--distill``/``--distill-temperature`` checked (one line, exit 2); None: labels only."""
    try:
        return distill_config(args.distill, args.distill_temperature,
                              ("--distill", "--distill-temperature"))
    except ConfigError as exc:
        sys.exit(f"error: {exc}")


def recipe_tag(distill: DistillConfig | None) -> str:
    """The suffix of a fine-tune result's key: empty for labels only (the keys of results
    stored before distillation existed), ``-kd<alpha>-T<temperature>`` with distillation."""
    return "" if distill is None else f"-kd{distill.alpha:g}-T{distill.temperature:g}"


def report(res: dict, candidates: dict, ft_seeds: list[int], args, out: Path,
           distill: DistillConfig | None = None) -> None:
    tag = recipe_tag(distill)
    rows: dict[str, list[tuple[str, int, float]]] = {}
    for key, cand in candidates.items():
        for seed in ft_seeds:
            rows.setdefault(cand["row"], []).append(
                (key, seed, res["tune"][key][f"ft{seed}{tag}"]["test_top1"]))
    order = [r for r in (*SEARCHES, "paper", "uniform", "tp-global") if r in rows]
    how = ("labels only" if distill is None else
           f"distilled from the unpruned network, alpha {distill.alpha:g}, temperature "
           f"{distill.temperature:g}")
    lines = [f"Final fine-tune: {args.epochs} epoch(s) on {args.train_size} training images, "
             f"lr {args.lr} cosine, {how}, fine-tune seeds {ft_seeds}; test top-1 on the "
             "held-out test half; baselines "
             + ("at the band" if getattr(args, "baselines_at", "band") == "band" else
                "at each searched configuration's exact FLOPs ratio (paired with it)"), "",
             "| row | runs | test top-1 mean ± std | per run | proxy top-1 (val) | FLOPs | "
             "vs uniform | vs tp-global |", "|---|---|---|---|---|---|---|---|"]
    summary = {}

    for row in order:
        vals = np.array([v for _, _, v in rows[row]])
        cands = [c for c in candidates.values() if c["row"] == row]
        diffs = {}
        for ref in ("uniform", "tp-global"):
            # at the band: one configuration per baseline, paired by fine-tune seed; at each
            # winner's cost: the baseline placed at that configuration, same seed
            b = {(candidates[key].get("at"), seed): v for key, seed, v in rows[ref]}
            paired = [v - b.get((candidates[key].get("at") or key, seed), b.get((None, seed),
                                                                                 np.nan))
                      for key, seed, v in rows[row]]
            diffs[ref] = (float(np.mean(paired)), float(np.std(paired, ddof=1))
                          if len(paired) > 1 else 0.0)
        summary[row] = {"runs": len(vals), "mean": float(vals.mean()),
                        "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                        "values": vals.tolist(),
                        "proxy_mean": float(np.mean([c["val_proxy"] for c in cands])),
                        "flops": [c["flops_ratio"] for c in cands], "paired": diffs}
        lines.append(
            f"| {row} | {len(vals)} | {vals.mean():.2f} ± {summary[row]['std']:.2f} | "
            + ", ".join(f"{v:.2f}" for v in vals) + f" | {summary[row]['proxy_mean']:.2f} | "
            + ", ".join(f"{f:.3f}" for f in summary[row]["flops"]) + " | "
            + " | ".join(f"{diffs[r][0]:+.2f} ± {diffs[r][1]:.2f}" for r in ("uniform",
                                                                            "tp-global")) + " |")
    searches = res["search"]
    lines += ["", "Search wall times: " + ", ".join(f"{k} {v['seconds']:.0f} s"
                                                    for k, v in searches.items())]
    extra = [c.get("extra_seconds", 0) for c in candidates.values() if c["row"] == "paper"]
    if extra:
        lines.append(f"Paper protocol's short fine-tunes ({args.top_k} x {args.short} epoch "
                     f"per search seed): {np.mean(extra):.0f} s extra per search seed")
    text = "\n".join(lines)
    print(text)
    if getattr(args, "baselines_at", "band") == "winner":
        tag += "-matched"
    (out / f"report{tag}.md").write_text(text + "\n")
    (out / f"report{tag}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
