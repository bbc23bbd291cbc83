"""Baselines at a searched winner's exact cost (``compare --baselines-at winner``): within one
channel's cost of it, in FLOPs, params or predicted latency."""

from __future__ import annotations

import dataclasses
import random

import optuna
import pytest
from _nets import tiny_engine
from optuna.distributions import FloatDistribution
from optuna.trial import create_trial

from searchprune.baselines import (
    evaluate_baselines_at,
    fit_to_cost,
    solve_baseline,
    target_at,
)
from searchprune.search import resolve_problem
from searchprune.space import round_width

BAND = {"pruning.gamma": 0.5, "pruning.tolerance": 0.03}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    db = tmp_path_factory.mktemp("cost") / "scan.db"  # the sensitivity scan's storage
    return tiny_engine("none", **BAND, storage=str(db))


def _winner(engine, seed: int) -> dict[str, int]:
    """A configuration in the upper part of the band, as searched winners sit (not a uniform
    one, and not at gamma)."""
    rng = random.Random(seed)
    while True:
        widths = engine.widths({g.name: rng.uniform(0.3, 1.0) for g in engine.groups})
        if 0.51 <= engine.flops_ratio(widths) <= 0.53:
            return widths


def hand_made_trials(study, values, flops) -> None:
    """COMPLETE trials with validation top-1 ``values`` and FLOPs ratios ``flops``."""
    for v, f in zip(values, flops):
        study.add_trial(create_trial(
            value=v, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
            user_attrs={"top1": v, "flops_ratio": f, "params_ratio": f, "widths": {"a": 1}}))


def _smallest_step(engine, value, widths) -> float:
    """The smallest change of ``value`` one channel (one width unit) of one group makes."""
    base = value(widths)
    steps = []
    for g in engine.groups:
        unit = engine.space.unit(engine.space.group(g.name))
        for w in (widths[g.name] - unit, widths[g.name] + unit):
            if unit <= w <= g.channels:
                steps.append(abs(value({**widths, g.name: w}) - base))
    return min(s for s in steps if s > 0)


class FakeLatency:
    """A latency table stand-in: predicted latency ratio, a pure function of the widths that
    weighs early groups more (not proportional to FLOPs or params)."""

    def __init__(self, engine) -> None:
        self.weights = {g.name: 1.0 / (i + 1) for i, g in enumerate(engine.groups)}
        self.full = {g.name: g.channels for g in engine.groups}
        self.base = self._ms(self.full)

    def _ms(self, widths) -> float:
        return 0.2 + sum(self.weights[n] * w ** 1.5 for n, w in widths.items())

    def ratio(self, widths) -> float:
        return self._ms(widths) / self.base


@pytest.mark.parametrize("name, metric", [
    ("uniform", "flops"), ("uniform", "params"), ("uniform", "latency"),
    ("tp-global", "flops"), ("sensitivity", "flops"), ("sensitivity", "params"),
])
def test_baselines_at_a_given_cost_land_within_one_channel_of_it(engine, name, metric):
    problem = resolve_problem(engine.cfg, engine)
    if metric == "latency":
        problem = dataclasses.replace(problem, latency=FakeLatency(engine))
    winner = _winner(engine, seed=3)
    target = target_at(problem, widths=winner, metric=metric)
    assert target.metric == metric and target.ratio == target.value(winner)
    b = solve_baseline(name, engine, problem=problem, target=target)
    cost = target.value(b.widths)
    assert abs(cost - target.ratio) <= _smallest_step(engine, target.value, b.widths), (
        name, metric, cost, target.ratio)
    if metric == "flops":  # at gamma instead, it would have missed the winner's cost
        on_band = solve_baseline(name, engine, problem=problem)
        assert abs(target.value(on_band.widths) - target.ratio) > abs(cost - target.ratio)
    if b.keep is not None:  # the channels it keeps match its widths
        assert all(b.keep[n].numel() == b.widths[n] for n in b.keep)
        assert all(b.widths[g.name] == g.channels for g in engine.groups if g.name not in b.keep)


def test_fit_to_cost_stops_where_no_single_channel_gets_closer(engine):
    problem = resolve_problem(engine.cfg, engine)
    target = target_at(problem, ratio=0.42)
    start = engine.widths({g.name: 0.8 for g in engine.groups})
    allowed = {g.name: tuple(range(1, g.channels + 1)) for g in engine.groups}
    fitted = fit_to_cost(start, target, allowed)
    gap = abs(target.gap(fitted))
    for name, ws in allowed.items():
        for w in (fitted[name] - 1, fitted[name] + 1):
            if w in ws:
                assert abs(target.gap({**fitted, name: w})) >= gap
    # a group held by pruning.groups never moves
    held = fit_to_cost(start, target, {k: v for k, v in allowed.items() if k != "layer1.residual"})
    assert held["layer1.residual"] == start["layer1.residual"]
    assert round_width(0.8, 16) == start["layer1.residual"]


def test_evaluate_baselines_at_each_winner_reports_its_cost_and_the_winner(engine):
    problem = resolve_problem(engine.cfg, engine)
    winners = [{"study": f"w{i}", "sampler": "tpe", "seed": i, "trial": i,
                "widths": _winner(engine, seed=i)} for i in range(2)]
    rows = evaluate_baselines_at(engine, ["uniform"], winners, problem=problem)
    assert [r["at"]["study"] for r in rows] == ["w0", "w1"]
    for row, w in zip(rows, winners):
        assert row["at_metric"] == "flops" and "widths" not in row["at"]
        assert row["at_ratio"] == engine.flops_ratio(w["widths"])
        assert row["flops_ratio"] == engine.flops_ratio(row["widths"])
        assert abs(row["flops_ratio"] - row["at_ratio"]) <= _smallest_step(
            engine, engine.flops_ratio, row["widths"])
    assert rows[0]["at_ratio"] != rows[1]["at_ratio"]


def test_compare_runs_pairs_baselines_with_the_winner_they_were_placed_at(tmp_path):
    from searchprune.report import compare_runs, run_from_study
    from searchprune.report.compare import table_rows, to_markdown

    storage = optuna.storages.InMemoryStorage()
    runs = []
    for seed, (vals, flops) in enumerate((([60, 70], [0.49, 0.515]), ([65, 68], [0.5, 0.51]))):
        study = optuna.create_study(study_name=f"tpe-s{seed}", storage=storage,
                                    direction="maximize")
        hand_made_trials(study, vals, flops)
        runs.append(run_from_study(study, "tpe", seed))
    assert [r.pick["flops_ratio"] for r in runs] == [0.515, 0.51]
    refs = [{"name": "uniform", "top1": top1, "flops_ratio": r.pick["flops_ratio"],
             "params_ratio": 0.5, "seconds_solve": 0.0, "seconds_evaluate": 0.0,
             "at": {"study": r.name, "sampler": "tpe", "seed": r.seed},
             "at_ratio": r.pick["flops_ratio"], "at_metric": "flops"}
            for r, top1 in zip(runs, (66.0, 67.0))]
    c = compare_runs(runs, references=refs, baselines_at="winner")
    cols, rows = table_rows(c)
    assert "FLOPs ratio" in cols and cols[-1] == "vs uniform (paired, same cost)"
    cost = rows[0][cols.index("FLOPs ratio")]
    assert "0.510" in cost and "0.515" in cost  # each row shows its cost
    assert rows[0][-1] == "+2.50 ± 2.12"  # mean and std of 70 - 66 and 68 - 67
    assert rows[1][0] == "uniform at tpe's picks (no search)"
    assert rows[1][cols.index("FLOPs ratio")] == cost  # at the same costs
    assert "same cost" in to_markdown(c)


def test_cli_compare_places_baselines_at_each_pick_and_shows_every_cost(tmp_path):
    import json

    from _helpers import cli

    (tmp_path / "c.yaml").write_text("search:\n  n_trials: 2\npruning:\n  tolerance: 0.05\n")
    db, out = tmp_path / "s.db", tmp_path / "out"
    proc = cli("compare", str(tmp_path / "c.yaml"), "--samplers", "random", "--seeds", "2",
               "--study-name", "base", "--storage", str(db), "--out", str(out),
               "--baselines", "uniform", "--baselines-at", "winner", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    row = report["rows"][0]
    refs = report["references"]
    assert [r["at"]["study"] for r in refs] == ["base-random-s0", "base-random-s1"]
    for ref, pick_cost in zip(refs, row["pick_cost"]):
        assert ref["at_metric"] == "flops" and ref["at_ratio"] == pytest.approx(pick_cost)
        assert abs(ref["flops_ratio"] - ref["at_ratio"]) < 0.01
    assert len(row["paired"]["uniform"]) == 2
    markdown = (out / "report.md").read_text()
    assert "FLOPs ratio" in markdown and "uniform at random's picks (no search)" in markdown
