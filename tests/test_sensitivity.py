"""The sensitivity scan, the allocation it yields, the baseline and the warm start."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import optuna
import pytest
from _helpers import GAMMA, ROOT, TOL, WORKER, FakeEngine, make_cfg, one_line_error
from optuna.trial import TrialState

from searchprune.baselines import solve_baseline
from searchprune.config import apply_overrides
from searchprune.errors import ConfigError
from searchprune.search import run_study
from searchprune.search.band import Band
from searchprune.search.problem import resolve_problem
from searchprune.search.sensitivity import WARM_ATTR, load_scan, run_scan, scan_name
from searchprune.sensitivity import allocate, allocate_in_band, grid, min_ratio


class RecordingEngine(FakeEngine):
    """Records the widths of every evaluation; raises KeyboardInterrupt at evaluation
    ``interrupt_at`` (1-based), as Ctrl-C would."""

    def __init__(self, cfg=None, interrupt_at: int = 0, **kw) -> None:
        super().__init__(**kw)
        self.cfg = cfg
        self.seen: list[dict[str, int]] = []
        self.interrupt_at = interrupt_at

    def evaluate(self, widths, *, split="val", on_chunk=None):
        if self.interrupt_at and len(self.seen) + 1 == self.interrupt_at:
            raise KeyboardInterrupt
        self.seen.append(dict(widths))
        return super().evaluate(widths, split=split, on_chunk=on_chunk)


def _pruned_groups(engine, widths):
    return [g.name for g in engine.groups if widths[g.name] < g.channels]


def test_scan_prunes_exactly_one_group_per_evaluation(tmp_path):
    cfg = make_cfg(tmp_path, **{"sensitivity.points": 3})
    engine = RecordingEngine(cfg)
    scan = run_scan(resolve_problem(cfg, engine), storage=optuna.storages.InMemoryStorage())
    assert _pruned_groups(engine, engine.seen[0]) == []  # the unpruned reference, once
    pruned = [_pruned_groups(engine, w) for w in engine.seen[1:]]
    assert all(len(p) == 1 for p in pruned), pruned
    assert {p[0] for p in pruned} == {g.name for g in engine.groups}
    # one evaluation per (group, distinct width), no repeats
    keys = [(p[0], w[p[0]]) for p, w in zip(pruned, engine.seen[1:])]
    assert len(keys) == len(set(keys)) == len(scan.planned) == len(scan.points)
    assert scan.complete and scan.evaluations == len(engine.seen) == scan.new_evaluations
    # the drop is measured against the unpruned network: FakeEngine loses 40*(1-k)*(i+1)/21
    for p in scan.points:
        i = [g.name for g in engine.groups].index(p.group)
        k = p.width / p.channels
        assert p.drop == pytest.approx(40.0 * (1 - k) * (i + 1) / 21.0)


def test_scan_resumes_without_reevaluating(tmp_path):
    cfg = make_cfg(tmp_path)
    storage = optuna.storages.InMemoryStorage()
    first = RecordingEngine(cfg, interrupt_at=6)
    with pytest.raises(KeyboardInterrupt):
        run_scan(resolve_problem(cfg, first), storage=storage)
    partial = load_scan(cfg, storage)
    assert partial is not None and not partial.complete
    assert partial.evaluations == 5  # reference + 4 points
    study = optuna.load_study(study_name=scan_name(cfg), storage=storage)
    assert [t.state for t in study.get_trials()].count(TrialState.FAIL) == 1
    assert not any(t.state == TrialState.RUNNING for t in study.get_trials())

    second = RecordingEngine(cfg)
    scan = run_scan(resolve_problem(cfg, second), storage=storage)
    assert scan.complete
    assert len(second.seen) == scan.new_evaluations == len(scan.planned) - 4  # no reference
    done_first = {tuple(sorted(w.items())) for w in first.seen}
    assert not done_first & {tuple(sorted(w.items())) for w in second.seen}

    third = RecordingEngine(cfg)
    again = run_scan(resolve_problem(cfg, third), storage=storage)
    assert third.seen == [] and again.new_evaluations == 0
    assert again.evaluations == len(scan.planned) + 1


def test_scan_is_shared_across_bands_samplers_and_seeds_but_not_proxies(tmp_path):
    cfg = make_cfg(tmp_path)
    other_band = apply_overrides(cfg, {"pruning.gamma": 0.6, "search.sampler": "tpe",
                                       "search.seed": 3, "search.study_name": "other"})
    assert scan_name(cfg) == scan_name(other_band)
    assert scan_name(cfg) != scan_name(apply_overrides(cfg, {"pruning.proxy": "abn"}))
    assert scan_name(cfg) != scan_name(apply_overrides(cfg, {"sensitivity.points": 6}))


def test_min_ratio_interpolates_the_drop_curve():
    curve = [(0.3, 10.0), (0.5, 4.0), (0.7, 1.0)]
    assert min_ratio(curve, 10.0) == pytest.approx(0.3)
    assert min_ratio(curve, 7.0) == pytest.approx(0.4)  # halfway between 10 and 4
    assert min_ratio(curve, 0.5) == pytest.approx(0.85)  # between (0.7, 1) and (1.0, 0)
    assert min_ratio(curve, -1.0) == 1.0  # nothing within: keep the group whole


CURVES = {  # one group whose curve is not monotone
    "layer0.conv": [(0.3, 8.0), (0.475, 2.0), (0.65, 3.0), (0.825, 0.5)],
    "layer1.conv": [(0.3, 1.0), (0.475, 0.4), (0.65, 0.2), (0.825, 0.1)],
    "layer2.conv": [(0.3, 12.0), (0.475, 6.0), (0.65, 2.0), (0.825, 1.0)],
    "layer3.conv": [(0.3, 3.0), (0.475, 2.5), (0.65, 1.5), (0.825, -0.2)],
    "layer4.conv": [(0.3, 20.0), (0.475, 9.0), (0.65, 4.0), (0.825, 2.0)],
    "layer5.conv": [(0.3, 0.3), (0.475, 0.2), (0.65, 0.1), (0.825, 0.0)],
}


def test_allocation_is_monotone_in_the_threshold():
    engine = FakeEngine()
    thresholds = [-0.5, 0.0, 0.1, 0.3, 0.7, 1.5, 2.5, 3.5, 6.0, 10.0, 25.0]
    allocs = [allocate(CURVES, t) for t in thresholds]
    for g in CURVES:
        ratios = [a[g] for a in allocs]
        assert ratios == sorted(ratios, reverse=True), (g, ratios)
    flops = [engine.flops_ratio(engine.widths(a)) for a in allocs]
    assert flops == sorted(flops, reverse=True)
    assert flops[0] > flops[-1]  # it does move
    assert allocs[-1] == {g: 0.3 for g in CURVES}


@pytest.mark.parametrize("gamma", [0.3, 0.45, 0.6, 0.8])
def test_allocation_lands_in_the_band(gamma):
    engine = FakeEngine()
    band = Band(gamma, 0.02)
    alloc = allocate_in_band(engine, CURVES, band, 0.3)
    assert alloc.in_band
    assert abs(engine.flops_ratio(engine.widths(alloc.ratios)) - gamma) <= 0.02
    assert all(0.3 <= r <= 1.0 for r in alloc.ratios.values())
    if not alloc.projected:  # it is the threshold's allocation itself
        assert alloc.ratios == allocate(CURVES, alloc.threshold)


def test_grid_defaults_to_points_below_one():
    assert grid(0.3, 4) == pytest.approx([0.3, 0.475, 0.65, 0.825])
    assert grid(0.3, 4, [0.9, 0.5, 0.5]) == [0.5, 0.9]


def test_sensitivity_baseline_lands_in_band_and_counts_the_scan(tmp_path):
    cfg = make_cfg(tmp_path)  # a SQLite file storage: the baseline opens it from the config
    engine = RecordingEngine(cfg)
    b = solve_baseline("sensitivity", engine)
    assert abs(engine.flops_ratio(b.widths) - GAMMA) <= TOL
    assert b.info["scan_evaluations"] == len(engine.seen) == b.info["scan_new_evaluations"]
    again = solve_baseline("sensitivity", RecordingEngine(cfg))  # reuses the stored scan
    assert again.info["scan_new_evaluations"] == 0 and again.widths == b.widths
    # the most sensitive group (the last one: FakeEngine rewards late layers) keeps the most
    ratios = {g.name: b.widths[g.name] / g.channels for g in engine.groups}
    assert ratios["layer5.conv"] > ratios["layer0.conv"]


@pytest.mark.parametrize("sampler", ["random", "tpe", "cmaes"])
def test_warm_start_trials_come_first_in_band_and_the_scan_is_counted(tmp_path, sampler):
    cfg = make_cfg(tmp_path, sampler, n_trials=7, **{"search.warm_start": "sensitivity",
                                                     "sensitivity.perturbations": 3})
    engine = RecordingEngine(cfg)
    study = run_study(cfg, engine=engine, progress=False)  # the config's SQLite file
    info = study.user_attrs[WARM_ATTR]
    assert info["enqueued"] == 4 and info["allocation_in_band"]
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    warm = [t for t in trials if WARM_ATTR in t.user_attrs]
    assert [t.number for t in warm] == [0, 1, 2, 3]
    assert warm[0].user_attrs[WARM_ATTR] == "allocation"
    for t in warm:
        assert t.state == TrialState.COMPLETE and t.user_attrs["feasible"]
        assert abs(t.user_attrs["flops_ratio"] - GAMMA) <= TOL
    scan = load_scan(cfg)
    assert info["scan_evaluations"] == scan.evaluations == len(scan.planned) + 1
    # every network evaluated: the scan's and the study's own 7
    assert len(engine.seen) == scan.evaluations + 7
    # the allocation is the sensitivity baseline's configuration
    baseline = solve_baseline("sensitivity", RecordingEngine(cfg))
    assert warm[0].user_attrs["widths"] == baseline.widths
    assert warm[0].params == pytest.approx(info["allocation"])
    if sampler == "cmaes":  # CMA-ES learns only from its own trials: the allocation is its mean
        assert study.sampler._x0 == info["allocation"]


def test_warm_start_is_refused_for_pareto_and_unknown_names(tmp_path):
    with pytest.raises(ConfigError, match="search.warm_start"):
        make_cfg(tmp_path, **{"search.warm_start": "sensitivty"})
    with pytest.raises(ConfigError, match="objective: single"):
        make_cfg(tmp_path, "tpe", **{"search.warm_start": "sensitivity",
                                     "search.objective": "pareto",
                                     "search.gamma_range": [0.3, 0.8]})
    with pytest.raises(ConfigError, match="sensitivity.ratios"):
        make_cfg(tmp_path, **{"sensitivity.ratios": [0.1, 0.5]})
    assert math.isclose(make_cfg(tmp_path).sensitivity.perturb_scale, 0.15)


def _fake_cli(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    """``searchprune ARGS`` with the FakeEngine (tests/_fake_worker.py), no delay."""
    env = {**os.environ, "FAKE_DELAY": "0", "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    env.pop("SEARCHPRUNE_STORAGE", None)
    return subprocess.run([sys.executable, str(WORKER), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_scans_prints_plots_and_resumes(tmp_path):
    (tmp_path / "s.yaml").write_text("pruning: {gamma: 0.4, tolerance: 0.05}\n")
    args = ("sensitivity", "s.yaml", "--storage", "s.db", "--points", "3", "--out", "out")
    proc = _fake_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "top-1 drop" in proc.stderr and "layer5.conv" in proc.stderr
    assert "evaluations: 19 stored (19 new)" in proc.stderr  # 6 groups x 3 ratios + reference
    assert (tmp_path / "out" / "sensitivity.png").stat().st_size > 10_000
    again = _fake_cli(*args, "--json", cwd=tmp_path)
    data = json.loads(again.stdout)
    assert data["evaluations"] == 19 and data["new_evaluations"] == 0 and data["complete"]
    assert len(data["points"]) == 18 and data["allocation"]["in_band"]
    assert abs(data["allocation"]["flops_ratio"] - 0.4) <= 0.05
    bad = _fake_cli("sensitivity", "s.yaml", "--storage", "s.db", "--ratios", "0.1,0.5",
                    cwd=tmp_path)
    assert bad.returncode == 2
    assert one_line_error(bad).startswith("error: sensitivity.ratios must be")
    listed = json.loads(_fake_cli("study", "list", "--storage", "s.db", "--json",
                                  cwd=tmp_path).stdout)["studies"]
    assert [(r["study_name"], r["objective"]) for r in listed] == [(data["study"],
                                                                   "sensitivity scan")]
    show = _fake_cli("study", "show", "--storage", "s.db", "--study-name", data["study"],
                     cwd=tmp_path)
    assert show.returncode == 2 and "is a sensitivity scan" in one_line_error(show)


def test_compare_counts_the_scan_against_a_warm_started_sampler(tmp_path):
    from searchprune.report import compare_runs
    from searchprune.report.compare import table_rows
    from searchprune.report.studies import load_runs, plan_comparison, run_comparison

    cfg = make_cfg(tmp_path, n_trials=30)
    plan = plan_comparison(cfg, ["random", "tpe+warm"], [0], "cmp")
    assert [p.name for p in plan] == ["cmp-random-s0", "cmp-tpe+warm-s0"]
    assert plan[1].cfg.search.sampler == "tpe" and plan[1].cfg.search.warm_start == "sensitivity"
    storage = optuna.storages.InMemoryStorage()
    engine = RecordingEngine(cfg)
    run_comparison(plan, storage=storage, engine=engine, progress=False)
    scan = load_scan(cfg, storage)
    offset = scan.evaluations
    assert offset == 25  # 6 groups x 4 ratios + the reference
    assert len(engine.seen) == 2 * 30  # equal total network evaluations
    runs, missing = load_runs(plan, storage, 30)
    assert not missing and [len(r.points) for r in runs] == [30, 30 - offset]
    assert [r.offset for r in runs] == [0, offset]
    c = compare_runs(runs, budget=30)
    assert c.curves["tpe+warm"].k[0] == offset + 1 and c.curves["tpe+warm"].k[-1] == 30
    warm_row = c.rows[1]
    assert warm_row.reach[0] is None or warm_row.reach[0] > offset
    assert table_rows(c)[1][1][2] == f"{offset} scan + {30 - offset}"
    # re-running finds both studies complete: nothing is evaluated again
    again = RecordingEngine(cfg)
    assert run_comparison(plan, storage=storage, engine_factory=lambda c: again,
                          progress=False) == 0  # no engine built
    assert again.seen == []
    assert [len(r.points) for r in load_runs(plan, storage, 30)[0]] == [30, 30 - offset]


def test_real_engine_scan_scores_the_first_val_images_and_feeds_the_baseline(tmp_path):
    from _nets import tiny_engine

    from searchprune.baselines import evaluate_baselines
    from searchprune.evaluate import evaluate

    engine = tiny_engine("none", **{"pruning.gamma": 0.5, "pruning.tolerance": 0.03,
                                    "storage": str(tmp_path / "s.db"), "data.batch_size": 8,
                                    "sensitivity.val_images": 16, "sensitivity.points": 2,
                                    "sensitivity.method": "scan"})
    scan = run_scan(resolve_problem(engine.cfg, engine))
    x, y = engine.data.val.x, engine.data.val.y
    assert scan.reference_top1 == pytest.approx(evaluate(engine.model, x[:16], y[:16])[0])
    assert scan.reference_top1 != pytest.approx(evaluate(engine.model, x, y)[0])
    assert scan.complete and len(scan.points) == len(scan.planned) > len(engine.groups)
    (row,) = evaluate_baselines(engine, ["sensitivity"])
    assert row["in_band"] and row["scan_new_evaluations"] == 0
    assert row["scan_evaluations"] == scan.evaluations


def test_scan_and_warm_start_honour_per_group_bounds(tmp_path):
    """Fixed groups are never scanned and keep their ratio in every evaluation; a lower bound
    above eta is a scan point of its own; the allocation, the warm start and the sensitivity
    baseline stay inside every group's range."""
    rules = {"layer1.*": {"fixed": 0.5}, "layer5.*": {"fixed": 1.0}, "layer4.*": {"min": 0.6}}
    cfg = make_cfg(tmp_path, "tpe", n_trials=5, **{
        "pruning.groups": rules, "search.warm_start": "sensitivity",
        "sensitivity.perturbations": 2})
    engine = RecordingEngine(cfg)
    study = run_study(cfg, engine=engine, progress=False)
    scan = load_scan(cfg)
    scanned = {g for g, *_ in scan.planned}
    assert scanned == {"layer0.conv", "layer2.conv", "layer3.conv", "layer4.conv"}
    assert min(r for g, r, *_ in scan.planned if g == "layer4.conv") == pytest.approx(0.6)
    assert all(r >= 0.6 for g, r, *_ in scan.planned if g == "layer4.conv")
    for widths in engine.seen:  # scan and study alike
        assert widths["layer1.conv"] == 8 and widths["layer5.conv"] == 64
    # the reference is the least-pruned allowed network, so drops are against it
    assert _pruned_groups(engine, engine.seen[0]) == ["layer1.conv"]
    info = study.user_attrs[WARM_ATTR]
    assert set(info["allocation"]) == {"layer0.conv", "layer2.conv", "layer3.conv",
                                       "layer4.conv"}
    assert info["allocation"]["layer4.conv"] >= 0.6
    warm = [t for t in study.get_trials() if WARM_ATTR in t.user_attrs]
    assert len(warm) == info["enqueued"] >= 2
    for t in warm:
        assert t.params["layer4.conv"] >= 0.6 and "layer1.conv" not in t.params
        assert abs(t.user_attrs["flops_ratio"] - GAMMA) <= TOL
    b = solve_baseline("sensitivity", RecordingEngine(cfg))
    assert b.info["scan_new_evaluations"] == 0
    assert b.widths["layer1.conv"] == 8 and b.widths["layer5.conv"] == 64
    assert b.widths["layer4.conv"] >= round(0.6 * 64)


def test_scan_with_bounds_is_a_separate_scan(tmp_path):
    free = make_cfg(tmp_path)
    fixed = make_cfg(tmp_path, **{"pruning.groups": {"layer5.*": {"fixed": 1.0}}})
    capped = make_cfg(tmp_path, **{"pruning.params": {"max": 0.9}})
    assert scan_name(free) != scan_name(fixed)
    assert scan_name(free) == scan_name(capped)  # a constraint does not change a drop
