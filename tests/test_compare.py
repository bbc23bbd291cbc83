"""Sampler comparison: studies on one shared engine, resume, report numbers, Pareto mode."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import optuna
import pytest
from _helpers import FakeEngine, cli, make_cfg
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from searchprune.config import apply_overrides, config_to_dict
from searchprune.errors import ConfigError
from searchprune.report import (
    Run,
    best_so_far,
    compare_runs,
    evals_to_reach,
    hypervolume_2d,
    pareto_front,
    run_from_study,
    to_markdown,
)
from searchprune.report.studies import load_runs, plan_comparison, run_comparison
from searchprune.search import config_diff, get_storage, run_study

SAMPLERS = ["random", "tpe", "cmaes"]


class CountingFactory(list):
    """An engine factory that records every build and returns a FakeEngine."""

    def __call__(self, cfg):
        self.append(cfg.search.study_name)
        return FakeEngine()


@pytest.fixture
def counting_engine():
    return CountingFactory()


def counts(storage, plan) -> dict[str, int]:
    return {p.name: len(optuna.load_study(study_name=p.name, storage=storage)
                        .get_trials(states=(TrialState.COMPLETE,))) for p in plan}


# -- running a comparison --------------------------------------------------------------------
def test_one_engine_for_all_studies(tmp_path, counting_engine):
    cfg = make_cfg(tmp_path, n_trials=3)
    plan = plan_comparison(cfg, SAMPLERS, [0, 1], "cmp")
    assert [p.name for p in plan] == ["cmp-random-s0", "cmp-tpe-s0", "cmp-cmaes-s0",
                                      "cmp-random-s1", "cmp-tpe-s1", "cmp-cmaes-s1"]
    storage = optuna.storages.InMemoryStorage()
    assert run_comparison(plan, storage=storage, progress=False,
                          engine_factory=counting_engine) == 1
    assert len(counting_engine) == 1
    assert set(counts(storage, plan).values()) == {3}
    for p in plan:  # identical problem: the stored configs differ only in sampler/seed/name
        study = optuna.load_study(study_name=p.name, storage=storage)
        stored = study.user_attrs["config"]
        assert stored["search"]["sampler"] == p.sampler and stored["search"]["seed"] == p.seed
        assert set(config_diff(stored, config_to_dict(cfg))) <= {"search.sampler",
                                                                "search.seed"}
        assert study.user_attrs["comparison"] == {"sampler": p.sampler, "seed": p.seed}


def test_resume_finishes_only_missing_studies(tmp_path, counting_engine):
    cfg = make_cfg(tmp_path, n_trials=3)
    storage = optuna.storages.InMemoryStorage()
    first = plan_comparison(cfg, SAMPLERS, [0], "cmp")
    run_comparison(first, storage=storage, progress=False, engine_factory=counting_engine)
    before = {p.name: [t.params for t in optuna.load_study(study_name=p.name, storage=storage)
                       .get_trials()] for p in first}
    # everything is complete: nothing is built, nothing runs
    assert run_comparison(first, storage=storage, progress=False,
                          engine_factory=counting_engine) == 0
    assert len(counting_engine) == 1
    # a second seed: only its studies run, on one new engine; seed 0 is untouched
    both = plan_comparison(cfg, SAMPLERS, [0, 1], "cmp")
    assert run_comparison(both, storage=storage, progress=False,
                          engine_factory=counting_engine) == 1
    assert len(counting_engine) == 2
    for name, params in before.items():
        assert [t.params for t in optuna.load_study(study_name=name, storage=storage)
                .get_trials()] == params
    assert set(counts(storage, both).values()) == {3}
    # a larger budget extends every study
    more = plan_comparison(apply_overrides(cfg, {"search.n_trials": 4}), SAMPLERS, [0, 1], "cmp")
    run_comparison(more, storage=storage, progress=False, engine=FakeEngine())
    assert set(counts(storage, more).values()) == {4}
    runs, missing = load_runs(more + plan_comparison(cfg, ["gp"], [0], "cmp"), storage, 3)
    assert missing == ["cmp-gp-s0"] and {len(r.points) for r in runs} == {3}


# -- the report's numbers on hand-made studies ------------------------------------------------
T0 = datetime(2025, 1, 1)


def hand_made(storage, name: str, values: list[float | None], *, seconds: float = 10.0,
              rejected_draws: int = 0) -> optuna.Study:
    """COMPLETE trials with ``values`` (None = a PRUNED out-of-band trial), one per ``seconds``."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for i, v in enumerate(values):
        common = {"params": {"x": 0.5}, "distributions": {"x": FloatDistribution(0, 1)}}
        if v is None:
            trial = create_trial(state=TrialState.PRUNED, user_attrs={"feasible": False}, **common)
        else:
            trial = create_trial(value=v, user_attrs={"feasible": True,
                                                      "rejected_draws": rejected_draws}, **common)
        trial.datetime_start = T0 + timedelta(seconds=seconds * i)
        trial.datetime_complete = trial.datetime_start + timedelta(seconds=seconds)
        study.add_trial(trial)
    return study


def test_best_so_far_and_evals_to_reach():
    assert best_so_far([50, 40, 60, 55, 70]) == [50, 50, 60, 60, 70]
    assert evals_to_reach([50, 50, 60, 60, 70], 60) == 3
    assert evals_to_reach([50, 50], 60) is None


def test_report_numbers_from_hand_made_studies():
    storage = optuna.storages.InMemoryStorage()
    # random: best-so-far [60,60,70] and [65,65,66]: finals 70, 66 -> target 68
    hand_made(storage, "r0", [60, 55, 70], rejected_draws=4)
    hand_made(storage, "r1", [65, 62, 66], rejected_draws=2)
    # tpe: one PRUNED proposal each; [50,69,72] reaches 68 at its 2nd evaluation, [67,67,67] never
    hand_made(storage, "t0", [50, None, 69, 72], seconds=5)
    hand_made(storage, "t1", [67, None, 67, 67], seconds=5)
    runs = [run_from_study(optuna.load_study(study_name=n, storage=storage), s, seed)
            for n, s, seed in [("r0", "random", 0), ("r1", "random", 1),
                               ("t0", "tpe", 0), ("t1", "tpe", 1)]]
    c = compare_runs(runs, budget=3)
    assert c.target == pytest.approx(68.0)
    random, tpe = c.rows
    assert random.finals == [70, 66] and random.final_mean == pytest.approx(68.0)
    assert random.final_std == pytest.approx(2 ** 1.5)  # sample std of (70, 66)
    assert random.reach == [3, None] and random.reach_mean == 3 and random.reached == 1
    assert random.rejected == [12, 6] and random.rejected_mean == 9.0
    assert random.wall_seconds == [30.0, 30.0]
    assert tpe.finals == [72, 67] and tpe.reach == [2, None] and tpe.reached == 1
    assert tpe.rejected == [1, 1] and tpe.evaluated == [3, 3] and tpe.wall_seconds == [20.0, 20.0]
    assert c.curves["random"].mean == [62.5, 62.5, 68.0]
    assert c.curves["random"].min == [60, 60, 66] and c.curves["random"].max == [65, 65, 70]
    assert c.curves["tpe"].mean == [58.5, 68.0, 69.5]
    md = to_markdown(c)
    assert "| random | 2 | 3 | 68.00 ± 2.83 | 70.00, 66.00 | 3.0 (1/2) | 9.0 | 30.0 s |" in md
    assert "| tpe | 2 | 3 | 69.50 ± 3.54 | 72.00, 67.00 | 2.0 (1/2) | 1.0 | 20.0 s |" in md
    json.dumps(c.to_dict())  # plain data


def test_budget_cuts_an_extended_study():
    storage = optuna.storages.InMemoryStorage()
    study = hand_made(storage, "x", [60, None, 61, 90, None, 95])
    run = run_from_study(study, "tpe", 0, budget=2)
    assert run.points == ((60.0,), (61.0,)) and run.rejected == 1 and run.wall_seconds == 30.0
    assert len(run_from_study(study, "tpe", 0).points) == 4


def test_a_sampler_that_never_reaches_the_target():
    runs = [Run("a", "random", 0, ((80.0,),)), Run("b", "qmc", 0, ((70.0,), (75.0,)))]
    c = compare_runs(runs)
    assert c.rows[1].reach == [None] and "not reached (0/1)" in to_markdown(c)


def test_cli_report_only(tmp_path):
    db = tmp_path / "s.db"
    storage = get_storage(str(db), heartbeat_interval=None)
    for sampler, values in (("random", [60, 70]), ("tpe", [65, 75])):
        hand_made(storage, f"base-{sampler}-s0", values)
    (tmp_path / "c.yaml").write_text("search:\n  n_trials: 2\n")
    proc = cli("compare", str(tmp_path / "c.yaml"), "--report-only", "--samplers", "random,tpe",
               "--seeds", "1", "--study-name", "base", "--storage", str(db), "--out",
               str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [r["final_mean"] for r in data["rows"]] == [70.0, 75.0]
    assert data["rows"][1]["reach"] == [2]
    for name in ("report.md", "report.json", "anytime.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0


# -- Pareto mode ------------------------------------------------------------------------------
def test_hypervolume_of_a_hand_computed_front():
    points = [(80, 0.5), (70, 0.3), (60, 0.6), (90, 0.8), (95, 1.2)]
    assert pareto_front(points) == [(70, 0.3), (80, 0.5), (90, 0.8), (95, 1.2)]
    # staircase: 0.2 * 0.7 + 0.3 * 0.8 + 0.2 * 0.9 (the point beyond ratio 1.0 adds nothing)
    assert hypervolume_2d(points) == pytest.approx(0.56)
    assert hypervolume_2d([]) == 0.0
    # independently: the share of a fine grid over [0, 1]^2 that some point dominates
    import numpy as np

    acc, ratio = np.meshgrid(np.linspace(0, 1, 1001)[:-1] + 5e-4,
                             np.linspace(0, 1, 1001)[:-1] + 5e-4)
    covered = np.zeros_like(acc, dtype=bool)
    for a, r in points:
        covered |= (acc <= a / 100) & (ratio >= r)
    assert covered.mean() == pytest.approx(hypervolume_2d(points), abs=2e-3)


def test_pareto_config_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="gamma_range must be"):
        make_cfg(tmp_path, **{"search.objective": "pareto"})
    with pytest.raises(ConfigError, match="cmaes' is single-objective"):
        make_cfg(tmp_path, "cmaes", **{"search.objective": "pareto",
                                       "search.gamma_range": [0.3, 0.7]})
    with pytest.raises(ConfigError, match="only used with search.objective: pareto"):
        make_cfg(tmp_path, **{"search.gamma_range": [0.3, 0.7]})
    # a study stored before these keys existed still matches
    stored = config_to_dict(make_cfg(tmp_path))
    del stored["search"]["objective"], stored["search"]["gamma_range"]
    assert config_diff(stored, config_to_dict(make_cfg(tmp_path))) == {}


@pytest.mark.parametrize("sampler", ["random", "tpe", "nsga2"])
def test_pareto_study(tmp_path, sampler):
    cfg = make_cfg(tmp_path, sampler, n_trials=6, **{"search.objective": "pareto",
                                                     "search.gamma_range": [0.3, 0.7]})
    study = run_study(cfg, engine=FakeEngine(), progress=False,
                      storage=optuna.storages.InMemoryStorage())
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_top1", "flops_ratio"]
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 6
    for t in complete:
        assert 0.3 <= t.values[1] <= 0.7 and t.values[1] == t.user_attrs["flops_ratio"]
        assert t.values[0] == t.user_attrs["top1"]
    for t in study.get_trials(states=(TrialState.PRUNED,)):
        assert t.user_attrs["feasible"] is False
    run = run_from_study(study, sampler, 0)
    assert run.objective == "pareto" and len(run.points) == 6
    curve = run.curve
    assert curve == sorted(curve) and 0 < curve[-1] < 1
    c = compare_runs([run])
    assert c.metric == "hypervolume" and c.rows[0].final_mean == pytest.approx(curve[-1])


def test_pareto_comparison_plots(tmp_path, counting_engine):
    from searchprune.report.plots import plot_anytime, plot_fronts

    cfg = make_cfg(tmp_path, n_trials=4, **{"search.objective": "pareto",
                                            "search.gamma_range": [0.3, 0.7]})
    plan = plan_comparison(cfg, ["random", "nsga2"], [0, 1], "p")
    storage = optuna.storages.InMemoryStorage()
    assert run_comparison(plan, storage=storage, progress=False,
                          engine_factory=counting_engine) == 1
    runs, missing = load_runs(plan, storage, 4)
    assert not missing and all(r.objective == "pareto" for r in runs)
    c = compare_runs(runs, budget=4)
    assert c.target is not None
    assert plot_anytime(c, tmp_path / "a.png").stat().st_size > 0
    assert plot_fronts(runs, tmp_path / "f.png").stat().st_size > 0
    # a Pareto study over another cost names it in the report and on the fronts' axis
    assert "x FLOPs ratio" in to_markdown(c)
    c_params = compare_runs(runs, budget=4, cost="params")
    assert "x params ratio" in to_markdown(c_params) and "FLOPs" not in to_markdown(
        c_params).split("hypervolume")[1].splitlines()[0]
    import matplotlib.pyplot as plt

    calls = []
    orig = plt.Axes.set_xlabel
    try:
        plt.Axes.set_xlabel = lambda self, text, *a, **k: calls.append(text) or orig(
            self, text, *a, **k)
        plot_fronts(runs, tmp_path / "g.png", cost="latency")
    finally:
        plt.Axes.set_xlabel = orig
    assert calls == ["predicted latency ratio kept (lower is cheaper)"]


# -- baselines without search -----------------------------------------------------------------
REFS = [{"name": "uniform", "top1": 66.5, "flops_ratio": 0.49, "params_ratio": 0.58,
         "seconds_solve": 0.01, "seconds_evaluate": 1.0},
        {"name": "tp-global", "top1": 72.0, "flops_ratio": 0.50, "params_ratio": 0.67,
         "seconds_solve": 1.0, "seconds_evaluate": 1.0}]


def test_baselines_are_reference_rows_in_table_json_and_plot(tmp_path, monkeypatch):
    from searchprune.report import plots
    from searchprune.report.compare import table_rows

    storage = get_storage(str(tmp_path / "s.db"), heartbeat_interval=None)
    runs = [run_from_study(hand_made(storage, f"b-{s}-s0", vals), s, 0)
            for s, vals in (("random", [60, 70]), ("tpe", [65, 75]))]
    c = compare_runs(runs, budget=2, references=REFS)
    assert c.to_dict()["references"] == REFS
    cols, rows = table_rows(c)
    assert cols[-1] == "vs tp-global"
    assert [r[-1] for r in rows[:2]] == ["-2.00", "+3.00"]  # 70 - 72, 75 - 72
    assert [r[0] for r in rows[2:]] == ["uniform (no search)", "tp-global (no search)"]
    assert "(no search)" in to_markdown(c)
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    plots.plot_anytime(c, tmp_path / "a.png")
    ax = figures[0].axes[0]
    flat = {round(line.get_ydata()[0], 2) for line in ax.get_lines()
            if len(set(line.get_ydata())) == 1}
    assert {66.5, 72.0} <= flat
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("tp-global, no search") for t in labels)


def test_cli_compare_with_baselines_on_the_default_problem(tmp_path):
    db = tmp_path / "s.db"
    storage = get_storage(str(db), heartbeat_interval=None)
    hand_made(storage, "base-random-s0", [60, 70])
    (tmp_path / "c.yaml").write_text("search:\n  n_trials: 2\n")
    proc = cli("compare", str(tmp_path / "c.yaml"), "--report-only", "--samplers", "random",
               "--seeds", "1", "--study-name", "base", "--storage", str(db), "--out",
               str(tmp_path / "out"), "--baselines", "uniform,tp-global", "--json")
    assert proc.returncode == 0, proc.stderr
    refs = json.loads((tmp_path / "out" / "report.json").read_text())["references"]
    assert [r["name"] for r in refs] == ["uniform", "tp-global"]
    assert all(abs(r["flops_ratio"] - 0.5) <= 0.02 for r in refs)
    # the rows are the baselines scored by the study's engine, not placeholders
    from searchprune.baselines import evaluate_baselines
    from searchprune.config import load_config
    from searchprune.engine import engine_for

    engine = engine_for(load_config(tmp_path / "c.yaml"))
    expected = evaluate_baselines(engine, ["uniform", "tp-global"])
    assert [r["top1"] for r in refs] == pytest.approx([r["top1"] for r in expected])
    assert refs[0]["widths"] != refs[1]["widths"]
    bad = cli("compare", str(tmp_path / "c.yaml"), "--report-only", "--baselines", "unifrom",
              "--storage", str(db))
    assert bad.returncode == 2 and "unknown baseline 'unifrom'" in bad.stderr
