"""Which torchvision (and timm) classification models searchprune prunes, searches and exports
(prints a table; never asserts).

For the smallest member of every torchvision classification family (``--all``: every model;
``--timm``: also one timm model of each of five families), at random init and the smallest
input size it accepts (of 32, 64, 96, 128, 160, 224, 299 px), each in its own process:

- the channel groups: searched / kept whole, and the most common reasons for keeping them whole;
- ``model info``'s work (tracing, groups, cost model, exactness check): seconds and the
  process's peak memory;
- least squares: layers it fits of those the search narrows (``ls``), and the most common
  reasons it does not;
- cost exactness: on 5 random configurations inside the FLOPs band 0.5 +- 0.02 (keep-ratios in
  [0.3, 1]), kept channels by L1, the analytic FLOPs/MACs/params against those counted on the
  built network (``torch.utils.flop_counter`` and parameter counts);
- a study: 2 evaluated trials of ``run_study`` (random sampler, the same band, eta 0.3, L1, the
  default proxy, CPU; a model the band cannot reach is studied in a band of the same width
  halfway between its smallest reachable FLOPs ratio and 1) on a tiny ImageFolder resized to the model's size (64 calibration and
  100 validation images: ``--data-config``'s data section, default
  ``configs/data/cifar10-jpg.yaml``; a synthetic 10-class ImageFolder when its root is
  missing), in-memory storage: trials complete / failed (with the fail reason), and the best
  trial's recorded FLOPs against those counted on ``engine.build(widths)`` (``exact``: equal,
  and so the FLOPs ratios), seconds;
- export: the best trial through ``export_trial(format="all")``, then, in a process that cannot
  import searchprune, ``model.pt2`` (``torch.export.load``) and ``model.onnx`` (onnxruntime) on
  one random batch: their largest logit difference (``maxdiff``; ``rel``: over the largest
  logit, at most 1e-3) and the program's parameter count against the card's;
- a verdict: ``green`` (cost exact 5/5, both trials complete with exact recorded cost, export
  ok; ``green at gamma G (0.5 out of reach)``: no configuration in [0.3, 1] reaches the band, so
  costs were checked on random configurations and the study ran at G), ``red: <the parts that
  failed>`` (``cost`` or ``recorded cost``: a bug), ``refused`` (one line at model info,
  shown), ``nothing to search``, ``TIMEOUT`` or ``CRASH`` (the model's process: the last line
  of its traceback).

    python benchmarks/zoo.py [--models resnet18,timm:convnext_atto] [--all] [--timm]
        [--data-config configs/data/cifar10-jpg.yaml] [--timeout 900] [--json rows.json]

timm models are named ``timm:<name>``; random init only, never downloaded (``HF_HUB_OFFLINE``).
Heavy: every model is built, traced, searched and exported; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {
    "alexnet": "alexnet", "convnext": "convnext_tiny", "densenet": "densenet121",
    "efficientnet": "efficientnet_b0", "efficientnet_v2": "efficientnet_v2_s",
    "googlenet": "googlenet", "inception_v3": "inception_v3", "maxvit": "maxvit_t",
    "mnasnet": "mnasnet0_5", "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3": "mobilenet_v3_small", "regnet_x": "regnet_x_400mf",
    "regnet_y": "regnet_y_400mf", "resnet": "resnet18", "resnext": "resnext50_32x4d",
    "wide_resnet": "wide_resnet50_2", "shufflenet_v2": "shufflenet_v2_x0_5",
    "squeezenet": "squeezenet1_0", "swin": "swin_t", "swin_v2": "swin_v2_t", "vgg": "vgg11_bn",
    "vit": "vit_b_16",
}
TIMM = "timm:"
TIMM_FAMILIES = {
    "resnet": "resnet18", "efficientnet": "efficientnet_b0",
    "mobilenetv3": "mobilenetv3_small_050", "convnext": "convnext_atto",
    "vit": "vit_tiny_patch16_224",
}
SIZES = (32, 64, 96, 128, 160, 224, 299)
GAMMA, TOL, ETA = 0.5, 0.02, 0.3
STUDY_TRIALS, CALIB, VAL = 2, 64, 100
DATA_CONFIG = ROOT / "configs" / "data" / "cifar10-jpg.yaml"
MARK = "ZOO-ROW "  # the child's row lines on stdout (exporters print there too)

# Loads an export the way its user does, with searchprune unimportable: argv = folder, px.
LOADER = r"""
import json, sys
sys.modules["searchprune"] = None
import numpy, onnxruntime, torch
out, px = sys.argv[1], int(sys.argv[2])
net = torch.export.load(f"{out}/model.pt2").module()
session = onnxruntime.InferenceSession(f"{out}/model.onnx", providers=["CPUExecutionProvider"])
x = torch.randn(2, 3, px, px, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    want = net(x)
got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
refilled = []
if not want.abs().max() > 0:  # a zero-initialised head (torchvision's ViT): give both runtimes
    import onnx                 # the same random values for its all-zero weights, then compare
    model = onnx.load(f"{out}/model.onnx")
    inits = {i.name: i for i in model.graph.initializer}
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() >= 2 and not p.abs().max() > 0 and name in inits:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
                inits[name].CopyFrom(onnx.numpy_helper.from_array(p.numpy(), name))
                refilled.append(name)
        want = net(x)
    session = onnxruntime.InferenceSession(model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
print(json.dumps({"maxdiff": float((got - want).abs().max()), "scale": float(want.abs().max()),
                  "params": sum(p.numel() for p in net.parameters()),
                  "shape": list(got.shape), "refilled": refilled}))
"""


def family(name: str) -> str:
    if name.startswith(TIMM):
        keys, prefix, arch = TIMM_FAMILIES, "timm ", name[len(TIMM):]
    else:
        keys, prefix, arch = FAMILIES, "", name
    found = [k for k in keys if arch.startswith(k)]
    return prefix + (max(found, key=len) if found else "-")


def _kwargs(name: str, size: int) -> dict:
    if name in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": True}
    if name.startswith("vit_"):
        return {"image_size": size}
    if name.startswith(TIMM + "vit_"):
        return {"img_size": size}
    return {}


def _construct(name: str, size: int):
    if name.startswith(TIMM):
        import timm

        return timm.create_model(name[len(TIMM):], pretrained=False, num_classes=10,
                                 **_kwargs(name, size))
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=10, **_kwargs(name, size))


def _build(name: str):
    """The model at the smallest input size it runs on, and that size."""
    import torch

    last = None
    for size in SIZES:
        model = _construct(name, size).eval()
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, size, size))
            return model, size
        except Exception as exc:  # noqa: BLE001 -- try the next size
            last = exc
    raise RuntimeError(f"runs at none of {SIZES} px ({type(last).__name__})")


def _in_band(space, rng: random.Random) -> dict[str, int] | None:
    """A random direction, scaled so the FLOPs ratio lands in the band (None if it cannot)."""
    direction = {g.name: rng.random() for g in space.prunable}

    def widths(t: float) -> dict[str, int]:
        return space.widths({n: 1.0 - (1.0 - ETA) * t * u for n, u in direction.items()})

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if space.flops_ratio(widths(mid)) > GAMMA:
            lo = mid
        else:
            hi = mid
    for t in (lo, hi):
        w = widths(t)
        if abs(space.flops_ratio(w) - GAMMA) <= TOL:
            return w
    return None


def _emit(row: dict) -> None:
    print(MARK + json.dumps(row), flush=True)


def _crash(exc: BaseException) -> str:
    return f"crash: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"


# -- the tiny data ------------------------------------------------------------------------------
def _synthetic_imagefolder(root: Path) -> Path:
    """10 classes of random 32-px JPEGs, 8 per class in train/ and 24 in test/ (100 validation
    images fit the seeded half of test)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 24)):
        for c in range(10):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg")
    return root


def study_config(name: str, size: int, gamma: float, data_config: Path, scratch: Path):
    """The study's config: the data section of ``data_config`` (its root, or a synthetic
    ImageFolder when that is missing), resized to ``size`` px, with the tiny split sizes."""
    from searchprune.config import config_from_dict, config_to_dict, load_config

    data = load_config(data_config).data
    root = Path(data.root) if data.root else None
    synthetic = root is None or not (root / "train").is_dir()
    if synthetic:
        root = _synthetic_imagefolder(scratch / "images")
    cfg = load_config(data_config, {
        "model.name": name,
        "data.name": "imagefolder", "data.root": str(root), "data.image_size": size,
        "data.calib_size": CALIB, "data.val_size": VAL, "data.val_from": "test",
        "data.train_size": CALIB, "data.test_size": VAL, "data.batch_size": 50,
        "pruning.gamma": gamma, "pruning.tolerance": TOL, "pruning.eta": ETA,
        "pruning.criterion": "l1", "search.sampler": "random", "search.seed": 0,
        "search.n_trials": STUDY_TRIALS, "search.study_name": "zoo", "device": "cpu",
    })
    if _kwargs(name, size):  # apply_overrides knows no model.kwargs while it is unset
        raw = config_to_dict(cfg)
        raw["model"]["kwargs"] = _kwargs(name, size)
        cfg = config_from_dict(raw, source=cfg.source)
    return cfg, ("synthetic" if synthetic else str(root))


def run_small_study(name: str, size: int, gamma: float, data_config: Path, scratch: Path
                    ) -> tuple[dict, object]:
    """The study columns, and the study (None when it did not run)."""
    import optuna
    import torch
    from optuna.trial import TrialState

    from searchprune.engine import engine_for
    from searchprune.errors import SearchpruneError
    from searchprune.search import run_study
    from searchprune.search.finishing import top_trials
    from searchprune.space import count_cost

    t = time.perf_counter()
    out: dict = {}
    storage = optuna.storages.InMemoryStorage()
    torch.manual_seed(0)  # the same random init as the export's engine
    try:
        cfg, out["data"] = study_config(name, size, gamma, data_config, scratch)
        engine = engine_for(cfg)
        run_study(cfg, engine=engine, progress=False, storage=storage)
    except SearchpruneError as exc:  # a one-line refusal (band, data, model, failing trials)
        out["study_error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 -- a crash, reported in the row
        out["study_error"] = _crash(exc)
        out["study_traceback"] = traceback.format_exc(limit=-3)
    out["study_s"] = round(time.perf_counter() - t, 1)  # preparing the engine, then the trials
    try:  # the trials run_study left, also when it raised
        study = optuna.load_study(study_name="zoo", storage=storage)
    except KeyError:
        return out, None
    trials = study.get_trials(deepcopy=False)
    done = [tr for tr in trials if tr.state == TrialState.COMPLETE]
    failed = [tr for tr in trials if tr.state == TrialState.FAIL]
    out["complete"], out["failed"] = len(done), len(failed)
    out["fail_reasons"] = dict(Counter(tr.user_attrs.get("fail_reason", "?")
                                       for tr in failed).most_common(2))
    if done:
        best = top_trials(study, 1)[0]
        widths = best.user_attrs["widths"]
        x = torch.randn(1, 3, size, size)
        counted = count_cost(engine.build(widths), x)
        base = count_cost(engine.model, x)
        out["best_trial"] = best.number
        out["recorded"] = {k: best.user_attrs.get(k) for k in ("flops", "flops_ratio", "params")}
        out["counted"] = {"flops": counted.flops, "flops_ratio": counted.flops / base.flops,
                          "params": counted.params}
        out["cost_exact"] = (out["recorded"]["flops"] == counted.flops
                             and out["recorded"]["flops_ratio"] == counted.flops / base.flops
                             and out["recorded"]["params"] == counted.params)
        # every evaluated trial's record, not just the best one's
        out["all_exact"] = all(
            tr.user_attrs.get("flops") == count_cost(engine.build(tr.user_attrs["widths"]),
                                                     x).flops for tr in done)
    return out, study


def export_best(study, size: int, scratch: Path) -> dict:
    """The export columns: ``export_trial(format="all")`` of the best trial, then both files
    loaded without searchprune."""
    import torch

    from searchprune.search.finishing import export_trial, top_trials

    t = time.perf_counter()
    out: dict = {}
    folder = scratch / "export"
    try:
        torch.manual_seed(0)  # rebuild the study's random init
        card = export_trial(study, folder, trial=top_trials(study, 1)[0].number,
                            finetuned=False, latency=False, format="all")
    except Exception as exc:  # noqa: BLE001 -- reported in the row
        return {"export": _crash(exc) if not _is_refusal(exc) else f"refused: {exc}",
                "export_s": round(time.perf_counter() - t, 1)}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", LOADER, str(folder), str(size)], env=env,
                          cwd=scratch, capture_output=True, text=True, timeout=600)
    out["export_s"] = round(time.perf_counter() - t, 1)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        out["export"] = f"loading failed: {last}"
        return out
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    out["export_check"] = {**got, "card_params": card["params"],
                           "card_onnx_maxdiff": card.get("onnx_check", {}).get("max_abs_diff")}
    problems = []
    rel = got["maxdiff"] / got["scale"] if got["scale"] > 0 else None
    if rel is None:
        problems.append("every logit is 0: nothing to compare")
    elif rel > 1e-3:
        problems.append(f"pt2 vs onnx maxdiff {got['maxdiff']:.1e} (logits up to "
                        f"{got['scale']:.1e})")
    if got["params"] != card["params"]:
        problems.append(f"params {got['params']} != card {card['params']}")
    if got["shape"] != [2, 10]:
        problems.append(f"logits of shape {got['shape']}")
    refilled = f", zero head refilled: {', '.join(got['refilled'])}" if got.get("refilled") else ""
    out["export"] = "; ".join(problems) or (f"ok (maxdiff {got['maxdiff']:.0e}, rel {rel:.0e}"
                                            f"{refilled})")
    return out


def _is_refusal(exc: BaseException) -> bool:
    from searchprune.errors import SearchpruneError

    return isinstance(exc, SearchpruneError)


def study_cell(row: dict) -> str:
    if "study_error" in row:
        return row["study_error"]
    if "complete" not in row:
        return "-"
    text = f"{row['complete']}/{STUDY_TRIALS} done"
    if row["failed"]:
        text += f", {row['failed']} failed ({'; '.join(row['fail_reasons'])})"
    if "recorded" in row:
        rec, cnt = row["recorded"], row["counted"]
        text += (f", cost exact {rec['flops_ratio']:.4f}" if row["cost_exact"] else
                 f", recorded {rec['flops_ratio']:.6f} != counted {cnt['flops_ratio']:.6f}")
    return text + f", {row['study_s']} s"


def verdict(row: dict) -> str:
    bad = []
    if row["exact"].split("/")[0] != row["exact"].split("/")[1]:
        bad.append(f"cost {row['exact']}")
    if ("study_error" in row or row.get("complete") != STUDY_TRIALS or row.get("failed")):
        bad.append("study")
    if "recorded" in row and not (row["cost_exact"] and row["all_exact"]):
        bad.append("recorded cost")
    if not str(row.get("export", "")).startswith("ok"):
        bad.append("export")
    if bad:
        return "red: " + ", ".join(bad)
    if "band" in row:
        return f"green at gamma {row['study_gamma']} ({GAMMA} out of reach)"
    return "green"


def one(name: str, data_config: Path) -> dict:
    """One row, measured in this process (partial rows are emitted as it goes)."""
    import torch

    from searchprune.criteria import compute_scores
    from searchprune.errors import ModelError
    from searchprune.prune import prune_model
    from searchprune.reconstruct import plan
    from searchprune.space import SearchSpace, count_cost

    torch.manual_seed(0)
    row: dict = {"model": name}
    try:
        model, size = _build(name)
    except RuntimeError as exc:
        return {**row, "verdict": "refused", "why": str(exc)}
    row["size"] = size
    x = torch.randn(1, 3, size, size)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    try:
        space = SearchSpace.from_model(model, x)
    except ModelError as exc:
        return {**row, "verdict": "refused", "why": str(exc),
                "info_s": round(time.perf_counter() - t, 1)}
    row["info_s"] = round(time.perf_counter() - t, 1)
    row["info_peak_mb"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss)
                                / 1024)
    row["searched"], row["fixed"] = len(space.prunable), len(space.fixed)
    row["why_fixed"] = dict(Counter(g.reason for g in space.fixed).most_common(3))
    steps = plan(model, space, x)  # what least squares does to each narrowed layer
    row["ls"] = f"{sum(p.fitted for p in steps)}/{len(steps)}"
    row["ls_not"] = dict(Counter(p.how for p in steps if not p.fitted).most_common(2))
    if not space.prunable:
        return {**row, "verdict": "nothing to search"}
    scores = compute_scores("l1", model, space)
    rng = random.Random(f"zoo-{name}")
    exact = tried = 0
    mismatches = []
    for attempt in range(30):  # 5 in-band configurations (a draw may miss the band by rounding)
        widths = _in_band(space, rng)
        if widths is None and attempt >= 10 and (tried == 0 or "band" in row):  # out of reach:
            row["band"] = "unreachable"  # check random configurations instead
            widths = space.widths({g.name: rng.uniform(ETA, 1.0) for g in space.prunable})
        if widths is None:
            continue
        tried += 1
        pruned = prune_model(model, space, space.keep_indices(widths, scores))
        counted, analytic = count_cost(pruned, x), space.cost(widths)
        exact += counted == analytic
        if counted != analytic:
            mismatches.append({"analytic": analytic.__dict__, "counted": counted.__dict__})
        if tried == 5:
            break
    row.update(exact=f"{exact}/{tried}", mismatches=mismatches[:1])
    gamma = GAMMA
    if "band" in row:  # study halfway between the smallest reachable FLOPs ratio and 1
        lowest = space.flops_ratio(space.widths({g.name: ETA for g in space.prunable}))
        gamma = row["study_gamma"] = round((1.0 + lowest) / 2, 2)
    del model, space, scores
    _emit(row)
    with tempfile.TemporaryDirectory(prefix="zoo-") as scratch:
        found, study = run_small_study(name, size, gamma, data_config, Path(scratch))
        row.update(found)
        _emit(row)
        if study is not None and row.get("complete"):
            row.update(export_best(study, size, Path(scratch)))
    row["verdict"] = verdict(row)
    return row


def _child(name: str, args: argparse.Namespace) -> dict:
    """Run one model in its own process; TIMEOUT and CRASH rows keep what it reported."""
    cmd = [sys.executable, __file__, "--one", name, "--data-config", str(args.data_config)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)  # its export loader goes with it
    try:
        stdout, stderr = proc.communicate(timeout=args.timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        code = None
    rows = [json.loads(line[len(MARK):]) for line in stdout.splitlines() if line.startswith(MARK)]
    row = rows[-1] if rows else {"model": name}
    if code is None:
        stage = ("in the export" if "complete" in row else "in the study" if "exact" in row
                 else "at model info or the cost check")
        row.update(verdict="TIMEOUT", why=f"killed after {args.timeout} s, {stage}")
    elif code != 0 or "verdict" not in row:
        last = (stderr.strip().splitlines() or [f"exit status {code}"])[-1]
        row.update(verdict="CRASH", why=last if code >= 0 else f"killed by signal {-code}")
    row["family"] = family(name)
    row["seconds"] = round(time.perf_counter() - t, 1)
    return row


def _cell(value) -> str:
    return "-" if value is None else str(value).replace("|", "/").replace("\n", " ")


def table(rows: list[dict]) -> str:
    cols = ["model", "family", "px", "groups searched/fixed", "info s", "peak MB", "exact",
            "study", "LS", "export", "verdict", "s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        verdict_text = r["verdict"] + (f": {r['why']}" if r.get("why") else "")
        groups = (f"{r['searched']}/{r['fixed']}" if "searched" in r else None)
        cells = [r["model"], r.get("family"), r.get("size"), groups, r.get("info_s"),
                 r.get("info_peak_mb"), r.get("exact"), study_cell(r) if "exact" in r else None,
                 r.get("ls"), r.get("export"), verdict_text, r.get("seconds")]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated torchvision names and timm:<name> "
                                     "(default: one per torchvision family)")
    ap.add_argument("--all", action="store_true", help="every torchvision classification model")
    ap.add_argument("--timm", action="store_true",
                    help="also one timm model per family (" + ", ".join(TIMM_FAMILIES.values())
                    + ")")
    ap.add_argument("--data-config", type=Path, default=DATA_CONFIG,
                    help="a YAML file whose data section (an ImageFolder) the studies use")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per model")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        import optuna

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _emit(one(args.one, args.data_config))
        return 0
    if args.all:
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
    else:
        names = args.models.split(",") if args.models else list(FAMILIES.values())
    if args.timm:
        names += [TIMM + n for n in TIMM_FAMILIES.values() if TIMM + n not in names]
    rows = []
    for name in names:
        row = _child(name, args)
        rows.append(row)
        print(f"{name:26s} {row.get('size', '-'):>4} px  "
              f"{row.get('searched', '-'):>4} searched {row.get('fixed', '-'):>3} fixed  "
              f"info {row.get('info_s', '-')} s {row.get('info_peak_mb', '-')} MB  "
              f"ls {row.get('ls', '-')}  exact {row.get('exact', '-')}  "
              f"study {study_cell(row) if 'exact' in row else '-'}  "
              f"export {row.get('export', '-')}  {row['verdict']}"
              + (f": {row['why']}" if row.get("why") else "") + f"  ({row['seconds']} s)",
              flush=True)
        for reason, count in row.get("why_fixed", {}).items():
            print(f"{'':30s}{count} x {reason}")
        for reason, count in row.get("ls_not", {}).items():
            print(f"{'':30s}least squares not on {count}: {reason}")
    data = sorted({r["data"] for r in rows if "data" in r})
    print(f"\nstudies on: {', '.join(data) or '-'}")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    verdicts = Counter(r["verdict"] for r in rows)
    print("\nverdicts: " + ", ".join(f"{k} {v}" for k, v in verdicts.most_common()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
