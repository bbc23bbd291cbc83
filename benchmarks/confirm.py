"""Does confirmation lower the test regret of the pick?

On the compare-resnet20 problems (``studies/compare-resnet20.yaml``: every group searched;
``studies/compare-resnet20-fixed-residual.yaml``: the residual streams fixed), ``--seeds`` seeds
x ``--n-trials`` evaluated trials for ``random`` and ``tpe``, every study with ``search.confirm:
{top_k: --top-k, images: --confirm-images}``: the top-k trials by validation top-1 (1,000
images) are re-scored on the validation half's images that ranking did not use (4,000 with the
shipped configs), disjoint from validation, calibration and test. Then every top-k member is
scored once on the test half (5,000 images, never used to choose), and per (problem, sampler):

- test top-1 of the **validation pick** (best on validation) and of the **confirmed pick**
  (best on confirmation), mean ± std over seeds, their paired difference and how often the
  pick changed;
- the **regret** of each pick: the best test top-1 among the top-k minus the pick's;
- how much each pick loses from the score it was chosen on to test (validation -> test for the
  validation pick, confirmation -> test for the confirmed pick; the goal is <= 0.5 points);
- the confirmation's cost: seconds spent on confirmation evaluations against the search's.

Resumable: studies live in ``--storage`` (a finished, confirmed study is only read) and the test
scores in ``--out/confirm.json``. The full measurement:

    python benchmarks/confirm.py --seeds 5 --n-trials 80 --storage runs/confirm.db \
        --out runs/confirm --threads 1

Prints the table and writes ``confirm.json`` and ``report.md`` under ``--out``; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from searchprune.config import load_config  # noqa: E402
from searchprune.engine import engine_for  # noqa: E402
from searchprune.report.studies import plan_comparison, run_comparison  # noqa: E402
from searchprune.search.confirm import confirmations, ranked_trials  # noqa: E402
from searchprune.search.runner import open_storage  # noqa: E402
from searchprune.search.trials import best_trials, top1  # noqa: E402

SPACES = {"free": "studies/compare-resnet20.yaml",
          "fixed": "studies/compare-resnet20-fixed-residual.yaml"}
SAMPLERS = ["random", "tpe"]


class Timed:
    """The engine, with the seconds of its evaluations summed per split."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.seconds: dict[str, float] = {}
        self._evaluate = engine.evaluate
        engine.evaluate = self.evaluate

    def evaluate(self, widths: Any, *, split: str = "val", **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return self._evaluate(widths, split=split, **kwargs)
        finally:
            self.seconds[split] = self.seconds.get(split, 0.0) + time.perf_counter() - t


def _mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.2f} ± {sd:.2f}"


def measure(space: str, args: argparse.Namespace, saved: dict[str, Any], save) -> list[dict]:
    confirm = {"top_k": args.top_k, "images": args.confirm_images}
    cfg = load_config(ROOT / SPACES[space], {
        "search.n_trials": args.n_trials, "storage": str(args.storage), "device": args.device,
        "data.test_size": args.test_size, "search.confirm": confirm})
    plan = plan_comparison(cfg, SAMPLERS, list(range(args.seeds)),
                           f"confirm-{Path(SPACES[space]).stem}")
    storage = open_storage(cfg)
    t = time.perf_counter()
    engine = engine_for(cfg, progress=False)
    timed = Timed(engine)
    d = engine.data
    print(f"[{space}] engine ready in {time.perf_counter() - t:.0f} s: val {len(d.val)}, "
          f"confirmation {d.confirm_size} ({d.confirm_from}), test {len(d.test)} images",
          flush=True)
    import optuna

    rows = []
    for planned in plan:  # one at a time, so each study's evaluation seconds are its own
        timed.seconds.clear()
        run_comparison([planned], storage=storage, engine=engine, progress=False,
                       announce=lambda i, p, s: print(
                           f"  [{space}] {p.name}: {'stored' if s == 'done' else 'running'}",
                           flush=True))
        study = optuna.load_study(study_name=planned.name, storage=storage)
        entry = saved.setdefault(planned.name, {"test": {}})
        if timed.seconds.get("val"):  # searched in this process (else saved by the one that did)
            entry["seconds"] = dict(timed.seconds)
        elif timed.seconds.get("confirm"):
            entry.setdefault("seconds", {})["confirm"] = timed.seconds["confirm"]
        save()
        top = best_trials(study)[: args.top_k]
        confirmed = confirmations(study)
        for trial in top:
            if str(trial.number) not in entry["test"]:
                result = engine.evaluate(trial.user_attrs["widths"], split="test")
                entry["test"][str(trial.number)] = result.top1
                save()
        tests = {int(k): v for k, v in entry["test"].items()}
        val_pick, conf_pick = top[0], ranked_trials(study)[0]
        best_test = max(tests[t.number] for t in top)
        rows.append({
            "space": space, "sampler": planned.sampler, "seed": planned.seed,
            "study": planned.name, "val_pick": val_pick.number, "confirmed_pick": conf_pick.number,
            "val_pick_val": top1(val_pick), "val_pick_test": tests[val_pick.number],
            "confirmed_pick_confirm": confirmed[conf_pick.number].top1
            if conf_pick.number in confirmed else None,
            "confirmed_pick_val": top1(conf_pick), "confirmed_pick_test": tests[conf_pick.number],
            "best_of_top_k_test": best_test, "confirm_images": study.user_attrs.get(
                "confirm", {}).get("images"),
            "seconds": entry.get("seconds", {}),
        })
    return rows


def summarise(rows: list[dict], args: argparse.Namespace) -> tuple[str, list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["space"], r["sampler"]), []).append(r)
    lines = [
        f"Confirmation: top {args.top_k} by validation top-1 re-scored on "
        f"{rows[0]['confirm_images'] if rows else '?'} images of the validation half that "
        f"ranking did not use; {args.seeds} seeds x {args.n_trials} trials; test top-1 on the "
        "held-out test half", "",
        "| problem | sampler | seeds | test: val pick | test: confirmed pick | confirmed - val "
        "pick | pick changed | regret: val pick | regret: confirmed | val -> test (val pick) | "
        "confirm -> test (confirmed) | confirm s / search s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for (space, sampler), rs in groups.items():
        vt = [r["val_pick_test"] for r in rs]
        ct = [r["confirmed_pick_test"] for r in rs]
        reg_v = [r["best_of_top_k_test"] - r["val_pick_test"] for r in rs]
        reg_c = [r["best_of_top_k_test"] - r["confirmed_pick_test"] for r in rs]
        drop_v = [r["val_pick_val"] - r["val_pick_test"] for r in rs]
        drop_c = [r["confirmed_pick_confirm"] - r["confirmed_pick_test"] for r in rs
                  if r["confirmed_pick_confirm"] is not None]
        changed = sum(r["val_pick"] != r["confirmed_pick"] for r in rs)
        conf_s = sum(r["seconds"].get("confirm", 0.0) for r in rs)
        search_s = sum(r["seconds"].get("val", 0.0) for r in rs)
        cost = f"{conf_s:.0f} / {search_s:.0f}" if search_s else "-"
        item = {"space": space, "sampler": sampler, "seeds": len(rs), "val_pick_test": vt,
                "confirmed_pick_test": ct, "regret_val_pick": reg_v,
                "regret_confirmed_pick": reg_c, "val_to_test_val_pick": drop_v,
                "confirm_to_test_confirmed_pick": drop_c, "pick_changed": changed,
                "confirm_seconds": conf_s, "search_seconds": search_s}
        summary.append(item)
        lines.append(
            f"| {space} | {sampler} | {len(rs)} | {_mean_std(vt)} | {_mean_std(ct)} | "
            f"{_mean_std([c - v for c, v in zip(ct, vt)])} | {changed}/{len(rs)} | "
            f"{_mean_std(reg_v)} | {_mean_std(reg_c)} | {_mean_std(drop_v)} | "
            f"{_mean_std(drop_c)} | {cost} |")
    lines += ["", "regret: the best test top-1 among the top-k minus the pick's (0 = the "
              "pick was the best of them on test); a -> test: the score a pick was chosen on "
              "minus its test top-1 (the winner's curse)"]
    return "\n".join(lines), summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--n-trials", type=int, default=80)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--confirm-images", type=int, default=None,
                    help="confirmation images (default: all the validation half's unused ones)")
    ap.add_argument("--test-size", type=int, default=None,
                    help="cap the test images (default: the whole test half)")
    ap.add_argument("--spaces", default="free,fixed", help="free, fixed or both (default)")
    ap.add_argument("--storage", type=Path, default=ROOT / "runs/confirm.db")
    ap.add_argument("--out", type=Path, default=ROOT / "runs/confirm")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "confirm.json"
    saved = json.loads(path.read_text()).get("studies", {}) if path.is_file() else {}

    def save() -> None:
        path.write_text(json.dumps({"studies": saved}, indent=1))

    rows = []
    for space in [s.strip() for s in args.spaces.split(",") if s.strip()]:
        if space not in SPACES:
            raise SystemExit(f"--spaces: unknown problem '{space}' (free, fixed)")
        rows += measure(space, args, saved, save)
    text, summary = summarise(rows, args)
    print(text)
    (args.out / "report.md").write_text(text + "\n")
    path.write_text(json.dumps({"studies": saved, "rows": rows, "summary": summary,
                                "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))


if __name__ == "__main__":
    main()
