"""Which proxy predicts accuracy after fine-tuning?

For N band-random configurations of one study (default: the ../shared ResNet-20 at FLOPs
0.5 +- 0.02), every proxy (``none``, ``abn``, ``ls``, ``abn+ls``) scores the pruned network on a
large validation set (half of the official test split); the *truth* is the top-1 on the other,
never-ranked half after the same short fine-tune for all (same recipe, images and seed), from
one fixed start that does not depend on the proxy being judged: the pruned weights with
BatchNorm statistics re-estimated. Reported: Kendall's tau and Spearman's rho of each proxy
against the truth with bootstrap 95% intervals (over configurations), the paired difference in
tau against ``ls``, the regret of each proxy's pick, seconds per evaluation, and the truth's own
ceiling (tau between two fine-tune seeds; between E and 2E epochs and between the re-estimated
and the least-squares start, on a subset).

    python benchmarks/proxy_fidelity.py --n 16 --epochs 1 --train-size 8000 --subset 6 \\
        --threads 1 --out runs/proxy_fidelity

Results are saved per configuration as they come (``results.json`` under ``--out``), so a killed
run resumes where it stopped. Prints figures; asserts nothing.

``--distill ALPHA`` (``--distill-temperature T``, 4): the truth's fine-tunes distil from the
unpruned network (:mod:`searchprune.distill`); results and report then go to
``results-kd<ALPHA>-T<T>.json`` and ``report-kd<ALPHA>-T<T>.*`` in the same ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from searchprune.config import PROXIES, load_config  # noqa: E402
from searchprune.distill import Distiller, distill_config, frozen_teacher  # noqa: E402
from searchprune.engine import PruningEngine  # noqa: E402
from searchprune.errors import ConfigError  # noqa: E402
from searchprune.finetune import FinetuneSettings  # noqa: E402
from searchprune.search._band_random import BandRandomSampler  # noqa: E402
from searchprune.train import fit  # noqa: E402

SHARED = ROOT.parent / "shared"


def score(net, split, device, batch_size=500) -> tuple[float, float]:
    """Top-1 (%) and mean cross-entropy of ``net`` on ``split``."""
    net.eval().to(device)
    correct, loss = 0, 0.0
    with torch.inference_mode():
        for i in range(0, len(split), batch_size):
            x, y = split.x[i:i + batch_size].to(device), split.y[i:i + batch_size].to(device)
            out = net(x)
            loss += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
    return 100.0 * correct / len(split), loss / len(split)


def finetune(engine, widths, start: str, epochs: int, seed: int, s: FinetuneSettings,
             train_set, device, loss: Distiller | None = None) -> float:
    """Test top-1 after ``epochs`` of the shared recipe from the ``start`` proxy's weights
    (``loss``: distillation, else labels only)."""
    net = engine.build(widths, proxy=start)
    fit(net, train_set, epochs=epochs, lr=s.lr, momentum=s.momentum,
        weight_decay=s.weight_decay, batch_size=s.batch_size, device=device, seed=seed,
        loss_fn=loss)
    return score(net, engine.data.test, device)[0]


def bootstrap(values_fn, n: int, reps: int, rng) -> tuple[float, float]:
    out = []
    for _ in range(reps):
        idx = rng.integers(0, n, n)
        v = values_fn(idx)
        if math.isfinite(v):
            out.append(v)
    return (float(np.percentile(out, 2.5)), float(np.percentile(out, 97.5))) if out else (
        math.nan, math.nan)


def tau(a, b) -> float:
    return float(stats.kendalltau(a, b).statistic)


def rho(a, b) -> float:
    return float(stats.spearmanr(a, b).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", nargs="?", default=str(ROOT / "studies/resnet20-cifar10jpg.yaml"))
    ap.add_argument("--n", type=int, default=16, help="configurations (16)")
    ap.add_argument("--val-size", type=int, default=5000, help="ranking images (5000)")
    ap.add_argument("--calib-size", type=int, default=512)
    ap.add_argument("--train-size", type=int, default=10000, help="fine-tuning images (10000)")
    ap.add_argument("--epochs", type=int, default=1, help="E, the truth's fine-tune (1)")
    ap.add_argument("--subset", type=int, default=8,
                    help="configurations that also get 2E epochs and the least-squares start")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--distill", type=float, default=0.0, metavar="ALPHA",
                    help="the truth's fine-tunes distil from the unpruned network with weight "
                         "ALPHA in [0, 1] (0: labels only, the default)")
    ap.add_argument("--distill-temperature", type=float, default=4.0, metavar="T")
    ap.add_argument("--seed", type=int, default=0, help="configuration draws")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (1 is fastest when other jobs share the cores)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--out", default=str(ROOT / "runs/proxy_fidelity"))
    args = ap.parse_args()
    try:
        distill = distill_config(args.distill, args.distill_temperature,
                                 ("--distill", "--distill-temperature"))
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    tag = "" if distill is None else f"-kd{distill.alpha:g}-T{distill.temperature:g}"
    if args.threads:
        torch.set_num_threads(args.threads)
    if not (SHARED / "data/cifar10-jpg").is_dir() and "resnet20-cifar10jpg" in args.config:
        sys.exit(f"needs {SHARED} (CIFAR-10 JPEGs and the ResNet-20 checkpoint)")

    cfg = load_config(args.config, {
        "data.val_from": "test", "data.val_size": args.val_size,
        "data.calib_size": args.calib_size, "data.train_size": args.train_size,
        "pruning.proxy": "ls", "device": args.device})
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / f"results{tag}.json"
    results = json.loads(saved.read_text()) if saved.is_file() else {}
    t0 = time.perf_counter()
    engine = PruningEngine.from_config(cfg)
    p = cfg.pruning
    print(f"engine ready in {time.perf_counter() - t0:.1f} s: val {len(engine.data.val)}, test "
          f"{len(engine.data.test)}, calib {len(engine.data.calib)}, train "
          f"{engine.data.train_size} images; band {p.gamma} +- {p.tolerance}, eta {p.eta}",
          flush=True)
    names = [g.name for g in engine.groups]

    def in_band(r):
        return abs(engine.flops_ratio(engine.widths(r)) - p.gamma) <= p.tolerance

    sampler = BandRandomSampler(names, p.eta, in_band, seed=args.seed)
    s = FinetuneSettings(lr=args.lr)
    train_set = engine.data.train_set(augment=True)
    loss = Distiller(frozen_teacher(engine), distill) if distill is not None else None
    for i in range(args.n):
        key = str(i)
        if key in results:
            continue
        ratios, _ = sampler.draw(i)
        widths = engine.widths(ratios)
        row = {"widths": widths, "flops_ratio": engine.flops_ratio(widths), "proxies": {}}
        for proxy in PROXIES:
            t = time.perf_counter()
            net = engine.build(widths, proxy=proxy)
            top1, loss = score(net, engine.data.val, device)
            row["proxies"][proxy] = {"top1": top1, "loss": loss,
                                     "seconds": time.perf_counter() - t}
        t = time.perf_counter()
        row["truth"] = {f"abn_E_s{sd}": finetune(engine, widths, "abn", args.epochs, sd, s,
                                                 train_set, device, loss) for sd in (0, 1)}
        if i < args.subset:
            row["truth"]["abn_2E_s0"] = finetune(engine, widths, "abn", 2 * args.epochs, 0, s,
                                                 train_set, device, loss)
            row["truth"]["ls_E_s0"] = finetune(engine, widths, "ls", args.epochs, 0, s,
                                               train_set, device, loss)
        row["finetune_seconds"] = time.perf_counter() - t
        results[key] = row
        saved.write_text(json.dumps(results, indent=1))
        print(f"[{i + 1}/{args.n}] FLOPs {row['flops_ratio']:.3f} "
              + " ".join(f"{k} {v['top1']:.2f}" for k, v in row["proxies"].items())
              + " | truth " + " ".join(f"{k} {v:.2f}" for k, v in row["truth"].items())
              + f" ({row['finetune_seconds']:.0f} s)", flush=True)
    report(results, args, out, tag)


def report(results: dict, args, out: Path, tag: str = "") -> None:
    rows = [results[k] for k in sorted(results, key=int)][: args.n]
    n = len(rows)
    truth = np.array([(r["truth"]["abn_E_s0"] + r["truth"]["abn_E_s1"]) / 2 for r in rows])
    rng = np.random.default_rng(0)
    lines = [f"{n} configurations, truth = test top-1 after {args.epochs} epoch(s) from the "
             "BN-re-estimated start"
             + (f", distilled from the unpruned network ({tag[1:]})" if tag else "")
             + ", mean of 2 fine-tune seeds "
             f"(range {truth.min():.2f}-{truth.max():.2f}, best {truth.max():.2f})", "",
             "| proxy | val top-1 (mean) | tau [95% CI] | rho [95% CI] | tau(-loss) | "
             "tau - tau(ls) [95% CI] | regret (points) | s / eval |",
             "|---|---|---|---|---|---|---|---|"]
    summary = {"n": n, "epochs": args.epochs, "truth_mean": float(truth.mean()),
               "truth_best": float(truth.max()), "proxies": {}}
    ls_top1 = np.array([r["proxies"]["ls"]["top1"] for r in rows])
    for proxy in PROXIES:
        top1 = np.array([r["proxies"][proxy]["top1"] for r in rows])
        loss = np.array([r["proxies"][proxy]["loss"] for r in rows])
        secs = np.array([r["proxies"][proxy]["seconds"] for r in rows])
        t, rh = tau(top1, truth), rho(top1, truth)
        t_ci = bootstrap(lambda i, a=top1: tau(a[i], truth[i]), n, args.bootstrap, rng)
        r_ci = bootstrap(lambda i, a=top1: rho(a[i], truth[i]), n, args.bootstrap, rng)
        d = t - tau(ls_top1, truth)
        d_ci = bootstrap(lambda i, a=top1: tau(a[i], truth[i]) - tau(ls_top1[i], truth[i]), n,
                         args.bootstrap, rng)
        regret = float(truth.max() - truth[int(np.argmax(top1))])
        summary["proxies"][proxy] = {
            "val_top1_mean": float(top1.mean()), "tau": t, "tau_ci": t_ci, "rho": rh,
            "rho_ci": r_ci, "tau_neg_loss": tau(-loss, truth), "tau_minus_ls": d,
            "tau_minus_ls_ci": d_ci, "regret": regret, "seconds_per_eval": float(secs.mean())}
        lines.append(f"| {proxy} | {top1.mean():.2f} | {t:.3f} [{t_ci[0]:.2f}, {t_ci[1]:.2f}] "
                     f"| {rh:.3f} [{r_ci[0]:.2f}, {r_ci[1]:.2f}] | {tau(-loss, truth):.3f} | "
                     f"{d:+.3f} [{d_ci[0]:+.2f}, {d_ci[1]:+.2f}] | {regret:.2f} | "
                     f"{secs.mean():.2f} |")
    s0 = np.array([r["truth"]["abn_E_s0"] for r in rows])
    s1 = np.array([r["truth"]["abn_E_s1"] for r in rows])
    ceiling = {"tau_seed0_seed1": tau(s0, s1),
               "tau_seed0_seed1_ci": bootstrap(lambda i: tau(s0[i], s1[i]), n, args.bootstrap,
                                               rng),
               "seed_abs_diff_mean": float(np.abs(s0 - s1).mean())}
    sub = [r for r in rows if "abn_2E_s0" in r["truth"]]
    if len(sub) >= 3:
        e = np.array([r["truth"]["abn_E_s0"] for r in sub])
        e2 = np.array([r["truth"]["abn_2E_s0"] for r in sub])
        ls = np.array([r["truth"]["ls_E_s0"] for r in sub])
        ceiling.update({"subset": len(sub), "tau_E_2E": tau(e, e2), "tau_abnstart_lsstart":
                        tau(e, ls), "mean_E": float(e.mean()), "mean_2E": float(e2.mean()),
                        "mean_ls_start": float(ls.mean())})
    summary["ceiling"] = ceiling
    lines += ["", "Truth's own ceiling: tau between fine-tune seeds "
              f"{ceiling['tau_seed0_seed1']:.3f} [{ceiling['tau_seed0_seed1_ci'][0]:.2f}, "
              f"{ceiling['tau_seed0_seed1_ci'][1]:.2f}], mean |seed0 - seed1| "
              f"{ceiling['seed_abs_diff_mean']:.2f} points"]
    if "tau_E_2E" in ceiling:
        lines.append(f"On {ceiling['subset']} configurations: tau(E, 2E) {ceiling['tau_E_2E']:.3f}"
                     f" (mean {ceiling['mean_E']:.2f} -> {ceiling['mean_2E']:.2f}); tau(start "
                     f"BN-re-estimated, start least squares) {ceiling['tau_abnstart_lsstart']:.3f}"
                     f" (mean from the least-squares start {ceiling['mean_ls_start']:.2f})")
    text = "\n".join(lines)
    print(text)
    (out / f"report{tag}.md").write_text(text + "\n")
    (out / f"report{tag}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
