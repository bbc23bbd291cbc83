"""The study layer on a fake engine (analytic cost, deterministic accuracy): fast, no torch."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from _helpers import GAMMA, SAMPLERS, TOL, ChunkedEngine, FakeEngine, configs, make_cfg, run
from optuna.trial import TrialState

from searchprune.config import config_to_dict
from searchprune.errors import BandError, StorageError, StudyConfigMismatch
from searchprune.search import (
    Band,
    BandRandomSampler,
    get_storage,
    project_to_band,
    rejected_proposals,
    run_study,
)
from searchprune.search.callbacks import TrialsFailing
from searchprune.search.storage import ENV_VAR, resolve_storage_url


# -- the band -------------------------------------------------------------------------------
def test_band_distance_is_the_constraint_value():
    band = Band(0.5, 0.02)
    assert band.contains(0.515) and not band.contains(0.53)
    assert band.distance(0.5) == pytest.approx(-0.02)
    assert band.distance(0.6) == pytest.approx(0.08)


@pytest.mark.parametrize("seed", range(5))
def test_projection_lands_in_band(seed):
    import numpy as np

    engine = FakeEngine()
    rng = np.random.default_rng(seed)
    ratios = {g.name: float(rng.uniform(0.3, 1.0)) for g in engine.groups}
    projected = project_to_band(engine, ratios, Band(0.5, 0.02), 0.3)
    assert all(0.3 <= v <= 1.0 for v in projected.values())
    assert Band(0.5, 0.02).contains_ratios(engine, projected)


# -- the band-conditioned random sampler -----------------------------------------------------
def test_band_random_sampler_is_a_function_of_seed_and_trial_number():
    engine = FakeEngine()
    band = Band(0.5, 0.03)
    names = [g.name for g in engine.groups]

    def sampler(seed):
        return BandRandomSampler(names, 0.3, lambda r: band.contains_ratios(engine, r), seed=seed)

    a, b, c = sampler(1), sampler(1), sampler(2)
    assert a.draw(7) == b.draw(7)
    assert a.draw(7) != a.draw(8)
    assert a.draw(7) != c.draw(7)
    ratios, rejected = a.draw(3)
    assert band.contains_ratios(engine, ratios) and rejected >= 0
    assert all(0.3 <= v < 1.0 for v in ratios.values())


def test_band_random_sampler_gives_up_after_max_draws():
    sampler = BandRandomSampler(["a", "b"], 0.3, lambda r: False, seed=0, max_draws=50)
    ratios, rejected = sampler.draw(0)
    assert set(ratios) == {"a", "b"} and rejected == 49


# -- the shared sampler contract -------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("sampler", SAMPLERS)
class TestSamplerContract:
    def test_same_seed_same_sequence(self, tmp_path, sampler, seed):
        runs = []
        for i in range(2):
            cfg = make_cfg(tmp_path / str(i), sampler, seed)
            runs.append(configs(run(cfg))[:5])
        assert runs[0] == runs[1]
        assert len(runs[0]) == 5

    def test_resume_does_not_replay(self, tmp_path, sampler, seed):
        storage = optuna.storages.InMemoryStorage()
        before = configs(run(make_cfg(tmp_path, sampler, seed, n_trials=5), storage=storage))
        study = run(make_cfg(tmp_path, sampler, seed, n_trials=10), storage=storage)
        after = configs(study)
        assert after[: len(before)] == before
        assert len(set(after)) == len(after), "a resumed study replayed a configuration"
        assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 10

    def test_complete_trials_are_inside_the_band(self, tmp_path, sampler, seed):
        study = run(make_cfg(tmp_path, sampler, seed, n_trials=6))
        complete = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(complete) == 6
        for t in complete:
            assert abs(t.user_attrs["flops_ratio"] - GAMMA) <= TOL
            assert t.user_attrs["feasible"] is True and t.user_attrs["band_violation"] == 0.0
            assert t.value == t.user_attrs["top1"]
            assert set(t.user_attrs["widths"]) == set(t.params)
        assert study.get_trials(states=(TrialState.PRUNED,)) == []  # nothing left the band
        assert study.user_attrs["rejected_proposals"] == rejected_proposals(study.get_trials())


@pytest.mark.parametrize("sampler", ["random", "tpe", "cmaes", "qmc", "nsga2"])
def test_shipped_samplers_never_store_an_out_of_band_trial(tmp_path, sampler):
    # 14 trials: TPE's model proposes the last four (10 startup trials)
    study = run(make_cfg(tmp_path, sampler, n_trials=14))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 14
    assert study.user_attrs["rejected_proposals"] == rejected_proposals(trials)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_rejection_happens_inside_the_sampler(tmp_path, sampler):
    study = run(make_cfg(tmp_path, sampler, n_trials=14))
    trials = study.get_trials()
    drawn = sum(t.user_attrs["rejected_draws"] for t in trials)
    assert drawn > 0  # the band is narrow: rejection happened, inside the sampler
    assert study.user_attrs["rejected_proposals"] == drawn
    if sampler == "tpe":  # the model's proposals are not the band-random draws of those numbers
        uniform = BandRandomSampler([g.name for g in FakeEngine().groups], 0.3,
                                    lambda r: Band(GAMMA, TOL).contains_ratios(FakeEngine(), r))
        assert all(t.params != uniform.draw(t.number)[0] for t in trials[10:])
        assert all(t.params == uniform.draw(t.number)[0] for t in trials[:10])


def test_band_tpe_favours_the_better_region(tmp_path):
    # FakeEngine rewards keeping late layers: TPE's proposals should keep more of the last layer
    # than the band-random draws of the same trial numbers
    study = run(make_cfg(tmp_path, "tpe", n_trials=30))
    last = FakeEngine().groups[-1].name
    uniform = BandRandomSampler([g.name for g in FakeEngine().groups], 0.3,
                                lambda r: Band(GAMMA, TOL).contains_ratios(FakeEngine(), r))
    model = [t.params[last] for t in study.get_trials()[10:]]
    drawn = [uniform.draw(t.number)[0][last] for t in study.get_trials()[10:]]
    assert sum(model) / len(model) > sum(drawn) / len(drawn)


def test_cmaes_records_projection_and_keeps_the_proposal(tmp_path):
    study = run(make_cfg(tmp_path, "cmaes", n_trials=4))
    engine, band = FakeEngine(), Band(GAMMA, TOL)
    trials = study.get_trials()
    assert len(trials) == 4
    for t in trials:
        assert t.user_attrs["projected"] is True
        # params hold CMA-ES's proposal; widths hold the projected configuration it was scored on
        projected = engine.widths(project_to_band(engine, t.params, band, 0.3))
        assert t.user_attrs["widths"] == projected
        assert band.contains(engine.flops_ratio(projected))
    # CMA-ES proposes out of band: at least one proposal was moved by the projection
    assert any(t.user_attrs["widths"] != engine.widths(t.params) for t in trials)


@pytest.mark.parametrize("sampler", ["gp", "nsga2"])
def test_other_samplers_run(tmp_path, sampler):
    study = run(make_cfg(tmp_path, sampler, n_trials=3))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3


# -- the runner ------------------------------------------------------------------------------
def test_study_records_config_baseline_and_metric_name(tmp_path):
    cfg = make_cfg(tmp_path, n_trials=2)
    study = run_study(cfg, engine=FakeEngine(), progress=False)
    expected = config_to_dict(cfg)
    del expected["model"]["trust_checkpoint"]  # a permission of one run, never stored (issue 25)
    assert study.user_attrs["config"] == expected
    assert study.user_attrs["baseline_val_top1"] == 90.0
    assert study.metric_names == ["val_top1"]
    best = study.best_trial
    assert best.value == max(t.value for t in study.get_trials(states=(TrialState.COMPLETE,)))


@pytest.mark.parametrize("proxy", ["abn", "none"])
def test_every_trial_and_the_stored_config_record_the_proxy(tmp_path, proxy):
    cfg = make_cfg(tmp_path, n_trials=3, **{"pruning.proxy": proxy})
    study = run_study(cfg, engine=FakeEngine(), progress=False)
    assert study.user_attrs["config"]["pruning"]["proxy"] == proxy
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3
    assert [t.user_attrs["proxy"] for t in complete] == [proxy] * 3


class Exploding:
    def __getattr__(self, name):
        raise AssertionError(f"the engine was used ({name}) although the study was complete")


def test_complete_study_is_not_rerun(tmp_path):
    run_study(make_cfg(tmp_path, n_trials=3), engine=FakeEngine(), progress=False)
    study = run_study(make_cfg(tmp_path, n_trials=3), engine=Exploding(), progress=False)
    assert len(study.get_trials()) == 3


def test_changed_config_is_refused_unless_forced(tmp_path):
    run_study(make_cfg(tmp_path, n_trials=2), engine=FakeEngine(), progress=False)
    changed = make_cfg(tmp_path, n_trials=4, **{"pruning.gamma": 0.6})
    with pytest.raises(StudyConfigMismatch, match="pruning.gamma"):
        run_study(changed, engine=FakeEngine(), progress=False)
    # n_trials, storage and study name are not part of the comparison
    run_study(make_cfg(tmp_path, n_trials=3), engine=FakeEngine(), progress=False)
    study = run_study(changed, engine=FakeEngine(), progress=False, force_config=True)
    assert study.user_attrs["config"]["pruning"]["gamma"] == 0.6


def test_forced_config_is_stored_on_a_complete_study(tmp_path):
    """--force-config on a study that needs no more trials still stores the new config, which
    finetune and export read (e.g. a data.train_size added to fine-tune on fewer images)."""
    run_study(make_cfg(tmp_path, n_trials=2), engine=FakeEngine(), progress=False)
    changed = make_cfg(tmp_path, n_trials=2, **{"data.train_size": 100})
    study = run_study(changed, engine=Exploding(), progress=False, force_config=True)
    assert study.user_attrs["config"]["data"]["train_size"] == 100
    assert len(study.get_trials()) == 2
    run_study(changed, engine=Exploding(), progress=False)  # now the stored config


def test_unreachable_band_fails_fast(tmp_path):
    cfg = make_cfg(tmp_path, **{"pruning.gamma": 0.1, "pruning.eta": 0.6})
    with pytest.raises(BandError, match="gamma 0.1 is below the FLOPs ratio .* lower eta"):
        run(cfg)


def test_nan_evaluation_fails_the_trial_and_the_study_goes_on(tmp_path):
    study = run(make_cfg(tmp_path, n_trials=4), engine=FakeEngine(nan_every=2))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert failed and all("nan" in t.user_attrs["fail_reason"] for t in failed)


def test_an_always_nan_engine_stops(tmp_path):
    # issue 23: the run now stops with an error after search.max_consecutive_failures (5)
    storage = optuna.storages.InMemoryStorage()
    with pytest.raises(TrialsFailing, match=r"after 5 failed trials in a row .* trial 4, "
                                            r"failed with evaluation returned top1=nan"):
        run(make_cfg(tmp_path, n_trials=4), engine=FakeEngine(nan_every=1), storage=storage)
    study = optuna.load_study(study_name="s", storage=storage)
    assert {t.state for t in study.get_trials()} == {TrialState.FAIL}
    assert len(study.get_trials()) == 5


# -- storage ---------------------------------------------------------------------------------
def test_storage_default_env_and_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_storage_url(None) == "sqlite:///studies/searchprune.db"
    assert (tmp_path / "studies").is_dir()
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env.db"))
    assert resolve_storage_url(None) == f"sqlite:///{tmp_path / 'env.db'}"
    assert resolve_storage_url("sqlite:///x.db") == "sqlite:///x.db"
    assert resolve_storage_url("db/y.db") == f"sqlite:///{tmp_path / 'db' / 'y.db'}"
    storage = get_storage("z.db", heartbeat_interval=5, grace_period=10, max_retry=1)
    assert storage.heartbeat_interval == 5 and storage.grace_period == 10


@pytest.mark.parametrize("url", ["foo://bar", "postgresql://postgres@127.0.0.1:1/test"])
def test_bad_storage_url_is_a_storage_error(url):
    with pytest.raises(StorageError, match="cannot open storage URL: .*server is running"):
        get_storage(url, heartbeat_interval=30, grace_period=120, max_retry=2)


@pytest.mark.postgres
def test_postgres_storage_runs_a_study(tmp_path):
    import uuid

    url = "postgresql://postgres@127.0.0.1:5432/test"
    try:
        get_storage(url, heartbeat_interval=30, grace_period=120, max_retry=2)
    except StorageError as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    name = f"test-{uuid.uuid4().hex[:8]}"
    cfg = make_cfg(tmp_path, n_trials=3, storage=url, **{"search.study_name": name})
    try:
        study = run_study(cfg, engine=FakeEngine(), progress=False)
        assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    finally:
        optuna.delete_study(study_name=name, storage=get_storage(url))


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg2"])
def test_postgres_urls_are_used_as_given(scheme):
    url = f"{scheme}://postgres@127.0.0.1:5432/test"
    try:
        storage = get_storage(url, heartbeat_interval=None)
        storage.get_all_studies()
    except StorageError as exc:
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    assert resolve_storage_url(url) == url  # no rewriting
    assert storage.engine.dialect.driver == ("psycopg2" if "psycopg2" in scheme else "psycopg")


def test_a_driver_that_is_not_installed_is_one_line_saying_what_to_install():
    script = ("import sys; sys.modules['psycopg2'] = None\n"
              "from searchprune.search import get_storage\n"
              "get_storage('postgresql+psycopg2://u@127.0.0.1:1/db', heartbeat_interval=None)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert "StorageError: the storage URL asks for the 'postgresql+psycopg2' driver" in last
    assert "pip install 'searchprune[psycopg2]'" in last
    with pytest.raises(StorageError, match="write postgresql://"):
        get_storage("postgres://u@127.0.0.1:1/db", heartbeat_interval=None)


# -- end to end with the real engine ---------------------------------------------------------
@pytest.mark.slow
def test_real_engine_digits_default(tmp_path):
    from searchprune.engine import PruningEngine

    cfg = make_cfg(tmp_path, n_trials=2, **{"pruning.gamma": 0.5})
    engine = PruningEngine.from_config(cfg, progress=False)
    study = run_study(cfg, engine=engine, progress=False)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2
    again = [engine.evaluate(t.user_attrs["widths"]).top1 for t in complete]
    assert [t.value for t in complete] == pytest.approx(again)  # the value is the evaluation
    assert min(t.value for t in complete) > 50.0  # a trained digits net at 50% FLOPs
    assert all(abs(t.user_attrs["flops_ratio"] - 0.5) <= TOL for t in complete)


# -- early stopping ---------------------------------------------------------------------------
def test_median_pruner_stops_weak_candidates_and_they_count_toward_the_budget(tmp_path):
    import statistics

    from searchprune.search import n_evaluated

    study = run(make_cfg(tmp_path, n_trials=16, **{"search.pruner": "median"}),
                engine=ChunkedEngine())
    stopped = [t for t in study.trials if t.user_attrs.get("stopped_early")]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert stopped, "a median pruner over 16 candidates stops some of them"
    assert all(t.state == TrialState.PRUNED and "partial_top1" in t.user_attrs for t in stopped)
    assert n_evaluated(study) == len(complete) + len(stopped) == 16
    # a stopped candidate was below the median of the earlier COMPLETE ones at its step
    for t in stopped:
        step = max(t.intermediate_values)
        earlier = [c.intermediate_values[step] for c in complete if c.number < t.number]
        assert len(earlier) >= 5  # MedianPruner(n_startup_trials=5)
        assert t.intermediate_values[step] < statistics.median(earlier)
    # the progress bar, the budget and the comparison report count the same 16 evaluations
    from searchprune.report.compare import run_from_study

    assert len(run_from_study(study, "random", 0).curve) == 16


# -- multi-objective studies take the same path -----------------------------------------------
PARETO = {"search.objective": "pareto", "search.gamma_range": [0.3, 0.7]}


def test_pareto_study_has_the_single_objective_guarantees(tmp_path):
    from searchprune.search import best_trials
    from searchprune.search.callbacks import best_text

    storage = optuna.storages.InMemoryStorage()
    study = run(make_cfg(tmp_path, n_trials=4, **PARETO), engine=FakeEngine(nan_every=3),
                storage=storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(complete) == 4 and failed  # a NaN fails its trial, the study goes on
    assert all(t.user_attrs["fail_reason"].startswith("evaluation returned top1=nan")
               for t in failed)
    assert study.user_attrs["workers_joined"] == 1
    study = run(make_cfg(tmp_path, n_trials=6, **PARETO), storage=storage)  # resume, extend
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 6
    assert study.user_attrs["workers_joined"] == 2
    front = best_trials(study)
    assert {t.number for t in front} == {t.number for t in study.best_trials}
    assert best_text(study) == f"front of {len(front)}"


def test_single_and_pareto_studies_do_not_mix(tmp_path):
    storage = optuna.storages.InMemoryStorage()
    run(make_cfg(tmp_path, n_trials=2), storage=storage)
    with pytest.raises(StudyConfigMismatch, match="is single-objective, this config is multi"):
        run_study(make_cfg(tmp_path, n_trials=2, **PARETO), engine=FakeEngine(),
                  progress=False, storage=storage, force_config=True)


def test_pareto_range_below_the_reachable_ratios_fails_fast(tmp_path):
    cfg = make_cfg(tmp_path, **{**PARETO, "search.gamma_range": [0.05, 0.1],
                                "pruning.eta": 0.6})
    with pytest.raises(BandError, match=r"search.gamma_range \[0.05, 0.1\] is below the FLOPs "
                                        r"ratio .* raise search.gamma_range"):
        run(cfg)


def test_engines_implement_one_protocol():
    import inspect

    from searchprune.engine import Engine, PruningEngine
    from searchprune.supernet import SupernetEngine

    assert isinstance(FakeEngine(), Engine)
    for cls in (PruningEngine, SupernetEngine, FakeEngine):
        for method in ("build", "evaluate"):
            params = inspect.signature(getattr(cls, method)).parameters
            common = {"seconds"} if method == "build" else {"split", "on_chunk"}
            assert common <= {n for n, p in params.items() if p.kind == p.KEYWORD_ONLY}, (
                cls, method)


def test_best_trials_single_and_pareto_within_flops_bounds(tmp_path):
    from searchprune.search import best_trials

    single = run(make_cfg(tmp_path, n_trials=8))
    ranked = best_trials(single)
    assert [t.value for t in ranked] == sorted((t.value for t in single.trials), reverse=True)
    cap = sorted(t.user_attrs["flops_ratio"] for t in single.trials)[3]
    capped = best_trials(single, flops_max=cap)
    assert [t.number for t in capped] == [t.number for t in ranked
                                          if t.user_attrs["flops_ratio"] <= cap]
    assert len(capped) == 4

    pareto = run(make_cfg(tmp_path, n_trials=10, **PARETO))
    front = best_trials(pareto)
    assert {t.number for t in front} == {t.number for t in pareto.best_trials}
    assert [t.values[0] for t in front] == sorted((t.values[0] for t in front), reverse=True)
    low = min(t.values[1] for t in front)
    # the cheapest front member stays on the front of any range that contains it
    assert best_trials(pareto, flops_max=low)[0].values[1] == low


def test_dashboard_note_describes_the_objective(tmp_path):
    from searchprune.search import resolve_problem
    from searchprune.search.runner import note_lines

    for overrides, goal, band in [
        ({}, "- objective: maximise `val_top1` (%)", f"FLOPs ratio {GAMMA:g} ± {TOL:g} (gamma"),
        (PARETO, "minimise `flops_ratio`; Pareto front over FLOPs ratio 0.3 to 0.7",
         "(search.gamma_range [0.3, 0.7])"),
    ]:
        cfg = make_cfg(tmp_path, **overrides)
        text = "\n".join(note_lines("s", resolve_problem(cfg, FakeEngine())))
        assert goal in text and band in text
        assert text.startswith("# s (Pareto front)" if overrides else "# s\n")
