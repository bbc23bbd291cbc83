"""The latency lookup table (searchprune/latency.py) and the latency constraints: config,
interpolation, the fitted remainder, the cache shared through the study, the gate, Pareto."""

from __future__ import annotations

import json
import threading

import numpy as np
import optuna
import pytest
import torch
from _nets import tiny_engine
from optuna.trial import TrialState

import searchprune.latency as lat
from searchprune.config import Config, config_from_dict, config_to_dict, upgrade_stored
from searchprune.constraints import LatencySpec, Limit, latency_spec
from searchprune.errors import BandError, ConfigError
from searchprune.search import config_diff, rejected_proposals, run_study
from searchprune.search.band import Gate, project_to_limit
from searchprune.search.budget import study_lock
from searchprune.search.storage import get_storage
from searchprune.space._cost import count_cost


class FakeTimer:
    """Deterministic "milliseconds": proportional to the FLOPs of the timed call plus a fixed
    cost per call (what launching an operator costs), counted per call."""

    def __init__(self, noise: float = 0.0) -> None:
        self.calls = 0
        self.rng = np.random.default_rng(0)
        self.noise = noise

    def __call__(self, module, x, *, repeats: int = 10, warmup: int = 3) -> float:
        self.calls += 1
        ms = count_cost(module, x[:1]).flops * x.shape[0] * 1e-5 + 0.02
        return ms * (1.0 + self.noise * float(self.rng.uniform(-1, 1)))


@pytest.fixture
def timer(monkeypatch) -> FakeTimer:
    fake = FakeTimer()
    monkeypatch.setattr(lat, "time_forward", fake)
    return fake


@pytest.fixture(scope="module")
def engine():
    return tiny_engine("none")


def cfg_of(tmp_path, *, pruning=None, search=None) -> Config:
    """A config like the tests' others (seeded, in a SQLite file) with ``pruning``/``search``
    keys replaced (``None`` values are kept, unlike apply_overrides)."""
    d = config_to_dict(Config())
    d["pruning"].update({"gamma": 0.5, "tolerance": 0.1, "eta": 0.3, "proxy": "none",
                         **(pruning or {})})
    d["search"].update({"sampler": "random", "n_trials": 6, "study_name": "s", **(search or {})})
    d["storage"] = str(tmp_path / "studies.db")
    return config_from_dict(d)


def run(cfg, engine, storage=None) -> optuna.Study:
    return run_study(cfg, engine=engine, progress=False, storage=storage)


# -- config ----------------------------------------------------------------------------------
@pytest.mark.parametrize("latency, message", [
    ({"maxx": 0.5}, "unknown key 'maxx' in pruning.latency.*did you mean 'max'"),
    ({"max": 0.5, "max_ms": 3}, "either max_ms or a ratio"),
    ({"max_ms": -1}, "max_ms must be a positive number"),
    ({"max_ms": "fast"}, "max_ms must be a positive number"),
    ({"max": 1.5}, r"pruning.latency.max must be a number in \(0, 1\]"),
    ({"target": 0.5, "tolerance": 2}, r"tolerance must be a number in \[0, 1\)"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"threads": True}, "threads must be an integer >= 1"),
    ({"dtype": "float16"}, "dtype must be one of float32, bfloat16"),
    ({"measure": "yes"}, "measure must be true or false"),
    ([0.5], r"pruning.latency must be \{max: r\}, .* got \[0.5\]"),
])
def test_malformed_latency_settings_are_one_line_config_errors(latency, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"pruning": {"latency": latency}})


def test_latency_forms():
    assert latency_spec(None) is None
    cap = latency_spec({"max": 0.6})
    assert cap.limit == Limit("latency", 0.6) and cap.batch_size == 64 and cap.threads == 2
    assert cap.dtype == "float32" and cap.measure and cap.capped
    band = latency_spec({"target": 0.5, "tolerance": 0.05, "batch_size": 1, "threads": 4})
    assert band.limit == Limit("latency", 0.55, 0.45) and band.batch_size == 1
    ms = latency_spec({"max_ms": 12.5})
    assert ms.limit is None and ms.limit_for(25.0) == Limit("latency", 0.5)
    assert not latency_spec({"batch_size": 8}).capped  # predict and measure only


@pytest.mark.parametrize("data, message", [
    ({"pruning": {"gamma": None}}, "pruning.gamma: null switches the FLOPs band off"),
    ({"pruning": {"gamma": None, "latency": {"batch_size": 1}}}, "gamma: null switches"),
    ({"pruning": {"gamma": None, "params": {"max": 0.5}},
      "search": {"warm_start": "sensitivity"}}, "warm_start needs a FLOPs band"),
    ({"search": {"pareto_cost": "latncy"}}, "unknown search.pareto_cost 'latncy'.*'latency'"),
    ({"search": {"pareto_cost": "latency"}}, "pareto_cost is only used with"),
    ({"pruning": {"gamma": 0}}, r"pruning.gamma must be in \(0, 1\], got 0.0 \(or null"),
])
def test_gamma_null_and_pareto_cost_are_checked(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_gamma_null_with_a_limit_is_valid_and_old_stored_configs_load_unchanged():
    assert config_from_dict({"pruning": {"gamma": None, "params": {"max": 0.5}}}).pruning.gamma \
        is None
    assert config_from_dict({"pruning": {"gamma": None, "latency": {"max_ms": 3}}})
    stored = config_to_dict(Config())
    for key in ("latency",):
        del stored["pruning"][key]
    del stored["search"]["pareto_cost"]  # a study stored before these keys existed
    assert config_from_dict(upgrade_stored(stored)) == Config().validate()
    assert config_diff(stored, config_to_dict(Config())) == {}
    assert Config().pruning.gamma == 0.5 and Config().pruning.latency is None


# -- the table -------------------------------------------------------------------------------
def synthetic_table(values) -> lat.LatencyTable:
    """One unit over two groups ``a`` (input) and ``b`` (output) on a 3x3 grid."""
    points = [[2, 4, 8], [2, 4, 8]]
    ms = [[float(values(i, o)) for o in points[1]] for i in points[0]]
    return lat.LatencyTable({
        "version": lat.VERSION, "key": "k", "full": {"a": 8, "b": 8},
        "shapes": [{"spec": {}, "points": points, "ms": ms}],
        "units": [{"module": "conv", "bn": None, "shape": 0, "axes": ["a", "b"]}],
        "fit": {"alpha": 1.0, "beta": 0.0}, "measured_base_ms": 64.0})


def test_interpolation_is_exact_at_grid_points_and_for_bilinear_costs():
    table = synthetic_table(lambda i, o: i * o)
    for i in (2, 4, 8):
        for o in (2, 4, 8):
            assert table.predict_ms({"a": i, "b": o}) == pytest.approx(i * o)
    # MACs are bilinear in the channel counts: bilinear interpolation reproduces them
    assert table.predict_ms({"a": 3, "b": 7}) == pytest.approx(21.0)
    assert table.predict_ms({"a": 1, "b": 1}) == pytest.approx(4.0)  # below the grid: clamped
    assert table.predict_ms({}) == table.base_ms == pytest.approx(64.0)
    assert table.ratio({"a": 4, "b": 4}) == pytest.approx(0.25)


def test_interpolation_is_monotone_in_every_width():
    table = synthetic_table(lambda i, o: np.sqrt(i) * o ** 1.5 + (3 if i >= 4 else 0))
    widths = range(1, 9)
    for o in widths:
        row = [table.predict_ms({"a": i, "b": o}) for i in widths]
        assert all(b >= a for a, b in zip(row, row[1:]))
    for i in widths:
        col = [table.predict_ms({"a": i, "b": o}) for o in widths]
        assert all(b >= a for a, b in zip(col, col[1:]))


def test_a_built_table_is_monotone_json_and_predicts_networks_it_was_not_fitted_on(engine,
                                                                                  monkeypatch):
    noisy = FakeTimer(noise=0.3)  # a noisy timer: the grids are made non-decreasing
    monkeypatch.setattr(lat, "time_forward", noisy)
    spec = LatencySpec(batch_size=4, threads=1)
    table = lat.build_table(engine.model, engine.space, engine.data.input_shape, spec)
    for shape in table.data["shapes"]:
        ms = np.asarray(shape["ms"])
        for axis in range(ms.ndim):
            assert (np.diff(ms, axis=axis) >= 0).all()
    again = lat.LatencyTable(json.loads(json.dumps(table.to_json())))  # plain JSON
    widths = engine.widths({g.name: 0.5 for g in engine.groups})
    assert again.predict_ms(widths) == table.predict_ms(widths)
    assert table.ratio({}) == pytest.approx(1.0)
    exact = FakeTimer()
    monkeypatch.setattr(lat, "time_forward", exact)
    table = lat.build_table(engine.model, engine.space, engine.data.input_shape, spec)
    errors = table.holdout_errors()
    assert len(errors) == lat.HOLDOUT_NETS and max(abs(e) for e in errors) < 0.05
    rng = np.random.default_rng(1)
    for _ in range(5):  # more networks that the fit never saw
        widths = engine.widths({g.name: rng.uniform(0.3, 1.0) for g in engine.groups})
        net = lat.network_of(engine.model, engine.space, widths)
        measured = exact(net, torch.zeros(4, *engine.data.input_shape))
        assert table.predict_ms(widths) == pytest.approx(measured, rel=0.05)


def test_layers_of_one_shape_are_measured_once(timer):
    from searchprune.models import CifarResNet
    from searchprune.space import SearchSpace

    counts = []
    for depth in (20, 56):
        model = CifarResNet(depth, 10, "pad").eval()
        space = SearchSpace.from_model(model, torch.zeros(1, 3, 8, 8))
        before = timer.calls
        table = lat.build_table(model, space, (3, 8, 8), LatencySpec(batch_size=2, threads=1),
                                fit_nets=2, holdout_nets=0)
        counts.append(timer.calls - before)
        assert len(table.data["shapes"]) == 10 and len(table.data["units"]) == depth
    assert counts[0] == counts[1]  # ResNet-56 has the shapes of ResNet-20


def test_measuring_restores_the_thread_count(engine, timer):
    threads = torch.get_num_threads()
    lat.build_table(engine.model, engine.space, engine.data.input_shape,
                    LatencySpec(batch_size=2, threads=threads + 1), fit_nets=2, holdout_nets=0)
    assert torch.get_num_threads() == threads


def test_one_worker_builds_the_table_the_others_wait_and_reuse_it(tmp_path, engine,
                                                                  monkeypatch):
    import time

    calls: list[int] = []

    def slow(module, x, *, repeats=10, warmup=3):
        calls.append(threading.get_ident())
        time.sleep(0.001)
        return 1.0 + x.numel() * 1e-6

    monkeypatch.setattr(lat, "time_forward", slow)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(storage=get_storage(url, heartbeat_interval=None), study_name="w")
    spec = LatencySpec(batch_size=2, threads=1)
    models = []

    def worker() -> None:  # a worker process: its own storage connection and lock
        storage = get_storage(url, heartbeat_interval=None)
        study = optuna.load_study(study_name="w", storage=storage)
        models.append(lat.study_latency(study, study_lock(storage, "w"), engine, spec))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(calls)) == 1  # one thread measured; the other waited for it
    assert models[0].table.to_json() == models[1].table.to_json()
    n = len(calls)
    worker()  # a later worker loads it, measuring nothing
    assert len(calls) == n
    attrs = get_storage(url, heartbeat_interval=None).get_study_system_attrs(
        optuna.load_study(study_name="w", storage=url)._study_id)
    stored = attrs[lat.TABLE_ATTR + models[0].table.key]
    assert json.loads(json.dumps(stored)) == stored


# -- studies ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_latency_cap_holds_for_every_trial(tmp_path, engine, timer, sampler):
    cfg = cfg_of(tmp_path, pruning={"latency": {"max": 0.5, "batch_size": 4, "threads": 1}},
                 search={"sampler": sampler, "n_trials": 12})
    study = run(cfg, engine, optuna.storages.InMemoryStorage())
    trials = study.get_trials()
    assert len(trials) == 12 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        u = t.user_attrs
        assert u["latency_ratio"] <= 0.5 and abs(u["flops_ratio"] - 0.5) <= 0.1
        assert u["latency_ms"] == pytest.approx(u["latency_ratio"]
                                                * study.user_attrs["latency"]["base_ms_predicted"])
        assert u["latency_ms_measured"] > 0 and u["latency_ratio_measured"] > 0
        assert u["latency_unreliable"] is False and u["seconds_latency"] >= 0
    assert rejected_proposals(trials) > 0
    summary = study.user_attrs["latency"]
    assert summary["batch_size"] == 4 and summary["threads"] == 1


def test_gamma_null_searches_the_box_under_the_latency_cap(tmp_path, engine, timer):
    cfg = cfg_of(tmp_path, pruning={"gamma": None, "latency": {"max": 0.6, "batch_size": 4,
                                                               "threads": 1, "measure": False}})
    study = run(cfg, engine, optuna.storages.InMemoryStorage())
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 6
    assert all(t.user_attrs["latency_ratio"] <= 0.6 for t in done)
    assert "latency_ms_measured" not in done[0].user_attrs  # measure: false
    constraints = [k.rsplit(":", 1)[-1] for k in done[0].system_attrs if ":" in k]
    assert "latency" in constraints and "flops_band" not in constraints
    flops = [t.user_attrs["flops_ratio"] for t in done]
    assert max(flops) - min(flops) > 0.05  # no FLOPs band: the ratios spread


@pytest.mark.parametrize("limit", [{"latency": {"max": 0.5, "batch_size": 4, "threads": 1}},
                                   {"params": {"max": 0.5}}])
def test_gamma_null_projects_onto_the_primary_limit(tmp_path, engine, timer, limit):
    cfg = cfg_of(tmp_path, pruning={"gamma": None, **limit}, search={"sampler": "cmaes"})
    study = run(cfg, engine, optuna.storages.InMemoryStorage())
    done = study.get_trials(states=(TrialState.COMPLETE,))
    key = "latency_ratio" if "latency" in limit else "params_ratio"
    assert len(done) == 6 and all(t.user_attrs["projected"] for t in done)
    assert all(t.user_attrs[key] <= 0.5 for t in done)
    assert max(t.user_attrs[key] for t in done) > 0.4  # scaled up to the cap, not far below


def test_a_latency_cap_below_the_smallest_network_stops_before_any_trial(tmp_path, engine,
                                                                         timer):
    cfg = cfg_of(tmp_path, pruning={"gamma": None, "latency": {"max": 0.01, "batch_size": 4,
                                                               "threads": 1}})
    with pytest.raises(BandError, match=r"latency ratio <= 0.01 cannot be met: the smallest "
                                        r"configuration .* latency ratio of 0\.\d+"):
        run(cfg, engine, optuna.storages.InMemoryStorage())


def test_the_table_is_cached_in_the_study_and_reused_by_later_runs(tmp_path, engine, timer):
    pruning = {"latency": {"max_ms": 1e6, "batch_size": 4, "threads": 1, "measure": False}}
    storage = get_storage(str(tmp_path / "s.db"), heartbeat_interval=None)
    run(cfg_of(tmp_path, pruning=pruning, search={"n_trials": 2}), engine, storage)
    built = timer.calls
    assert built > 0
    study = run(cfg_of(tmp_path, pruning=pruning, search={"n_trials": 4}), engine, storage)
    assert timer.calls == built  # the second run (a later worker) measured nothing
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    keys = [k for k in storage.get_study_system_attrs(study._study_id)
            if k.startswith(lat.TABLE_ATTR)]
    assert keys == [lat.TABLE_ATTR + study.user_attrs["latency"]["key"]]


def test_measured_latency_is_flagged_when_workers_share_the_machine(tmp_path, engine, timer,
                                                                    monkeypatch):
    from searchprune.search._liveness import WORKERS_ENV

    monkeypatch.setenv(WORKERS_ENV, "2")
    cfg = cfg_of(tmp_path, pruning={"latency": {"batch_size": 4, "threads": 1}},
                 search={"n_trials": 2})
    study = run(cfg, engine, optuna.storages.InMemoryStorage())
    assert all(t.user_attrs["latency_unreliable"] is True for t in study.get_trials())


@pytest.mark.parametrize("cost", ["latency", "params"])
def test_a_pareto_study_over_latency_or_params(tmp_path, engine, timer, cost):
    from searchprune.cli.study import _summary

    cfg = cfg_of(tmp_path, search={"objective": "pareto", "gamma_range": [0.3, 0.9],
                                   "pareto_cost": cost, "n_trials": 6},
                 pruning={"latency": {"batch_size": 4, "threads": 1, "measure": False}})
    study = run(cfg, engine, optuna.storages.InMemoryStorage())
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 6 and study.metric_names == ["val_top1", f"{cost}_ratio"]
    for t in done:
        assert t.values[1] == t.user_attrs[f"{cost}_ratio"]
        assert 0.3 <= t.user_attrs["flops_ratio"] <= 0.9  # the range still gates on FLOPs
    summary = _summary(study)
    assert summary["pareto_cost"] == f"{cost}_ratio" and summary["front"]
    assert "latency_ratio" in summary["cost_columns"]


def test_project_to_limit_scales_down_onto_a_cap_and_leaves_feasible_proposals(engine):
    base = engine.base_cost.params

    def value(widths):
        return engine.cost(widths).params / base

    cap = Limit("params", 0.4)
    inside = {g.name: 0.5 for g in engine.groups}
    assert project_to_limit(engine, inside, cap, value, 0.3) == inside
    above = {g.name: 0.9 for g in engine.groups}
    got = project_to_limit(engine, above, cap, value, 0.3)
    assert value(engine.widths(got)) <= 0.4 < value(engine.widths(above))
    assert value(engine.widths(got)) > 0.35
    gate = Gate(engine, None, ((cap, value),))
    assert "flops_band" not in gate.distances(engine.widths(got))
    assert gate.ratios_ok(got) and not gate.ratios_ok(above)


def test_export_card_puts_every_cost_ratio_side_by_side(tmp_path, timer):
    from searchprune.search.finishing import export_trial

    d = config_to_dict(Config())
    d["data"].update({"calib_size": 64, "val_size": 100})
    d["pruning"].update({"proxy": "none", "latency": {"batch_size": 4, "threads": 1,
                                                      "measure": False}})
    d["search"].update({"n_trials": 2, "study_name": "card"})
    d["storage"] = str(tmp_path / "s.db")
    study = run_study(config_from_dict(d), progress=False)
    best = study.best_trial
    card = export_trial(study, tmp_path / "out", trial=best.number, finetuned=False)
    ratios = card["ratios"]
    assert set(ratios) == {"flops", "params", "latency_predicted", "latency_measured_batch1",
                           "latency_measured_batch4", "latency_measured_batch64"}
    assert ratios["flops"] == pytest.approx(best.user_attrs["flops_ratio"])
    assert ratios["latency_predicted"] == pytest.approx(best.user_attrs["latency_ratio"])
    assert "1 threads" in card["latency_method"]  # the study's latency.threads
    assert card["latency_table"]["key"] == study.user_attrs["latency"]["key"]
