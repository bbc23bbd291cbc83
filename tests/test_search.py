"""The study layer on a fake engine (analytic cost, deterministic accuracy): fast, no torch."""

from __future__ import annotations

import dataclasses
import math
from collections import namedtuple
from collections.abc import Mapping
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from searchprune.config import Config, apply_overrides, config_to_dict
from searchprune.errors import BandError, StorageError, StudyConfigMismatch
from searchprune.search import (
    Band,
    BandRandomSampler,
    get_storage,
    project_to_band,
    rejected_proposals,
    run_study,
)
from searchprune.search.storage import ENV_VAR, resolve_storage_url

Cost = namedtuple("Cost", "flops macs params")
Group = namedtuple("Group", "name channels")
SAMPLERS = ["random", "tpe", "cmaes", "qmc"]


@dataclasses.dataclass
class FakeResult:
    top1: float
    top5: float
    cost: Cost
    widths: dict[str, int]
    seconds: dict[str, float]
    stopped_early: bool = False
    images: int = 100


class FakeEngine:
    """Same attributes as PruningEngine: a chain of convs whose FLOPs are bilinear in widths."""

    def __init__(self, channels: tuple[int, ...] = (16, 16, 32, 32, 64, 64), eta: float = 0.3,
                 nan_every: int = 0) -> None:
        self.groups = [Group(f"layer{i}.conv", c) for i, c in enumerate(channels)]
        self.eta = eta
        self.nan_every = nan_every
        self.calls = 0
        self.seconds = {"scores": 0.0, "features": 0.0}
        self.base_cost = self.cost({g.name: g.channels for g in self.groups})

    def widths(self, ratios: Mapping[str, float]) -> dict[str, int]:
        return {g.name: max(1, round(ratios[g.name] * g.channels)) for g in self.groups}

    def cost(self, widths: Mapping[str, int]) -> Cost:
        w = [3] + [widths[g.name] for g in self.groups] + [10]
        macs = sum(9 * 64 * a * b for a, b in zip(w[:-2], w[1:-1])) + w[-2] * w[-1]
        params = sum(9 * a * b + 2 * b for a, b in zip(w[:-2], w[1:-1])) + w[-2] * 11
        return Cost(2 * macs, macs, params)

    def flops_ratio(self, widths: Mapping[str, int]) -> float:
        return self.cost(widths).flops / self.base_cost.flops

    def ratio_range(self, eta: float | None = None) -> tuple[float, float]:
        eta = self.eta if eta is None else eta
        return self.flops_ratio(self.widths({g.name: eta for g in self.groups})), 1.0

    def evaluate(self, widths, split="val", on_chunk=None) -> FakeResult:
        self.calls += 1
        keep = [widths[g.name] / g.channels for g in self.groups]
        top1 = 50.0 + 40.0 * sum(k * (i + 1) for i, k in enumerate(keep)) / 21.0
        if self.nan_every and self.calls % self.nan_every == 0:
            top1 = math.nan
        return FakeResult(top1, min(100.0, top1 + 5), self.cost(widths), dict(widths),
                          {"build": 0.001, "evaluate": 0.002})

    def evaluate_baseline(self, split: str = "val") -> tuple[float, float]:
        return 90.0, 99.0


GAMMA, TOL = 0.4, 0.05


def make_cfg(tmp_path: Path, sampler: str = "random", seed: int = 0, n_trials: int = 5,
             **overrides) -> Config:
    return apply_overrides(Config(), {
        "search.sampler": sampler, "search.seed": seed, "search.n_trials": n_trials,
        "search.study_name": "s", "storage": str(tmp_path / "studies.db"),
        "pruning.gamma": GAMMA, "pruning.tolerance": TOL, "pruning.eta": 0.3, **overrides,
    })


def run(cfg: Config, engine=None, storage=None) -> optuna.Study:
    """run_study on an in-memory storage unless one is given."""
    storage = storage if storage is not None else optuna.storages.InMemoryStorage()
    return run_study(cfg, engine=engine or FakeEngine(), progress=False, storage=storage)


def configs(study: optuna.Study) -> list[tuple[float, ...]]:
    return [tuple(round(v, 12) for v in t.params.values()) for t in study.get_trials()]


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
        for t in study.get_trials(states=(TrialState.PRUNED,)):
            assert t.user_attrs["feasible"] is False and t.user_attrs["band_violation"] > 0
            assert "top1" not in t.user_attrs
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
    engine = FakeEngine()
    for t in study.get_trials():
        assert t.user_attrs["projected"] is True
        # params hold CMA-ES's proposal; widths hold the projected configuration it was scored on
        proposed = engine.widths(t.params)
        in_band = Band(GAMMA, TOL).contains_ratios(engine, t.params)
        assert t.user_attrs["widths"] != proposed or in_band


@pytest.mark.parametrize("sampler", ["gp", "nsga2"])
def test_other_samplers_run(tmp_path, sampler):
    study = run(make_cfg(tmp_path, sampler, n_trials=3))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3


# -- the runner ------------------------------------------------------------------------------
def test_study_records_config_baseline_and_metric_name(tmp_path):
    cfg = make_cfg(tmp_path, n_trials=2)
    study = run_study(cfg, engine=FakeEngine(), progress=False)
    assert study.user_attrs["config"] == config_to_dict(cfg)
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
    study = run(make_cfg(tmp_path, n_trials=4), engine=FakeEngine(nan_every=1))
    assert {t.state for t in study.get_trials()} == {TrialState.FAIL}


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


# -- end to end with the real engine ---------------------------------------------------------
@pytest.mark.slow
def test_real_engine_digits_default(tmp_path):
    from searchprune.engine import PruningEngine

    cfg = make_cfg(tmp_path, n_trials=2, **{"pruning.gamma": 0.5})
    engine = PruningEngine.from_config(cfg, progress=False)
    study = run_study(cfg, engine=engine, progress=False)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2
    assert all(0.0 <= t.value <= 100.0 for t in complete)
    assert all(abs(t.user_attrs["flops_ratio"] - 0.5) <= TOL for t in complete)


# -- early stopping ---------------------------------------------------------------------------
class ChunkedEngine(FakeEngine):
    """Reports accuracy after each of 10 chunks, as the real engine does."""

    def evaluate(self, widths, split="val", on_chunk=None) -> FakeResult:
        result = super().evaluate(widths, split)
        for seen in range(100, 1001, 100):
            if on_chunk is not None and seen < 1000 and on_chunk(seen, result.top1):
                result.stopped_early, result.images = True, seen
                return result
        result.stopped_early, result.images = False, 1000
        return result


def test_median_pruner_stops_weak_candidates_and_they_count_toward_the_budget(tmp_path):
    from searchprune.search.budget import n_evaluated

    study = run(make_cfg(tmp_path, n_trials=16, **{"search.pruner": "median"}),
                engine=ChunkedEngine())
    stopped = [t for t in study.trials if t.user_attrs.get("stopped_early")]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert stopped, "a median pruner over 16 candidates stops some of them"
    assert all(t.state == TrialState.PRUNED and "partial_top1" in t.user_attrs for t in stopped)
    assert n_evaluated(study) == len(complete) + len(stopped) == 16
    # a stopped candidate was worse than the median of the earlier ones at its step
    best = max(t.value for t in complete)
    assert all(t.user_attrs["partial_top1"] < best for t in stopped)
