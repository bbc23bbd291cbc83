"""The search problem: resolved once from (config, engine), every config error raised while it is
built, and every step of a run reading it instead of the config."""

from __future__ import annotations

import optuna
import pytest
from _helpers import GAMMA, TOL, FakeEngine, make_cfg, run

import searchprune.constraints as constraints
import searchprune.search.problem as problem_module
from searchprune.constraints import KeepRange, KeepRanges
from searchprune.errors import BandError, ConfigError
from searchprune.search import resolve_problem, run_study
from searchprune.search.band import Band, Gate

RULES = {"layer0.*": {"fixed": 1.0}, "layer5.*": {"min": 0.6, "max": 0.9}}
NAMES = [g.name for g in FakeEngine().groups]


def test_keep_ranges_carry_their_own_ends():
    ranges = KeepRanges.resolve(RULES, NAMES, 0.3)
    assert ranges.ranges["layer0.conv"] == KeepRange(1.0, 1.0)
    assert ranges.ranges["layer0.conv"].fixed and not ranges.ranges["layer1.conv"].fixed
    assert ranges.ranges["layer5.conv"] == KeepRange(0.6, 0.9)
    assert ranges.ranges["layer5.conv"].clip(0.95) == 0.9
    assert ranges.ranges["layer2.conv"] == KeepRange(0.3, 1.0)
    assert ranges.free == NAMES[1:] and ranges.fixed == {"layer0.conv": 1.0}
    assert ranges.lowest()["layer5.conv"] == 0.6 and ranges.highest()["layer5.conv"] == 0.9
    assert ranges.restricted and ranges.rule_bounds == ranges.bounds
    plain = KeepRanges.resolve(None, NAMES, 0.3)
    assert not plain.restricted and plain.rule_bounds is None
    assert plain.bounds == {n: (0.3, 1.0) for n in NAMES} and plain.free == NAMES


def test_the_problem_holds_what_the_config_asks(tmp_path):
    cfg = make_cfg(tmp_path, "cmaes", **{"pruning.groups": RULES,
                                         "pruning.params": {"max": 0.6}})
    problem = resolve_problem(cfg, FakeEngine())
    assert problem.band == Band(GAMMA, TOL) == problem.goal.flops_band
    assert problem.objective.directions == ("maximize",) and problem.objective.project
    assert problem.goal.params.high == 0.6 and problem.goal.latency is None
    gate = problem.gate
    assert isinstance(gate, Gate) and gate is problem.gate  # built once
    assert [limit.name for limit, _ in gate.limits] == ["params"]
    assert gate.fixed == {"layer0.conv": 1.0}
    ctx = problem.sampler_context(n_existing=3, worker=1, warm={"layer1.conv": 0.5})
    assert ctx.names == NAMES[1:] and ctx.bounds == problem.ranges.bounds
    assert ctx.eta == 0.3 and ctx.seed == cfg.search.seed and ctx.in_band == gate.ratios_ok
    assert (ctx.n_existing, ctx.worker, ctx.warm) == (3, 1, {"layer1.conv": 0.5})


@pytest.mark.parametrize("overrides, error, message", [
    ({"pruning.groups": {"layer9.*": {"min": 0.5}}}, ConfigError,
     "pattern 'layer9.*' matches no group"),
    ({"pruning.gamma": 0.1, "pruning.eta": 0.6}, BandError, "gamma 0.1 is below the FLOPs"),
    ({"pruning.params": {"max": 0.01}}, BandError, r"params ratio <= 0.01 cannot be met"),
])
def test_every_config_error_is_raised_while_the_problem_is_built(tmp_path, overrides, error,
                                                                 message):
    cfg = make_cfg(tmp_path, **overrides)
    with pytest.raises(error, match=message):
        resolve_problem(cfg, FakeEngine())
    storage = optuna.storages.InMemoryStorage()
    engine = FakeEngine()
    with pytest.raises(error, match=message):
        run(cfg, engine, storage)
    assert storage.get_all_studies() == [] and engine.calls == 0  # before any study or trial


def test_a_step_that_needs_a_band_says_so(tmp_path):
    from searchprune.config import config_from_dict, config_to_dict

    d = config_to_dict(make_cfg(tmp_path, **{"pruning.params": {"max": 0.6}}))
    d["pruning"]["gamma"] = None
    problem = resolve_problem(config_from_dict(d), FakeEngine())
    assert problem.band is None and problem.objective.target.startswith("pruning.params")
    with pytest.raises(ConfigError, match="a no-search baseline needs a FLOPs band: set "
                                          r"pruning.gamma \(it is null in this config\)"):
        problem.goal.require_band("a no-search baseline")


def test_a_run_reads_the_config_once(tmp_path, monkeypatch):
    """One run with groups, a params limit and the sensitivity warm start: the goal, the
    ranges and the gate are each derived once, and every step gets the same problem."""
    counts = {"goal": 0, "ranges": 0, "gate": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(problem_module, "describe_goal",
                        counted("goal", problem_module.describe_goal))
    resolve = KeepRanges.resolve.__func__
    monkeypatch.setattr(constraints.KeepRanges, "resolve",
                        classmethod(counted("ranges", resolve)))
    gate_init = Gate.__init__
    monkeypatch.setattr(Gate, "__init__", counted("gate", gate_init))
    cfg = make_cfg(tmp_path, "tpe", n_trials=6, **{
        "pruning.groups": RULES, "pruning.params": {"max": 0.8},
        "search.warm_start": "sensitivity", "sensitivity.perturbations": 1})
    engine = FakeEngine()
    engine.cfg = cfg
    import searchprune.search.runner as runner

    monkeypatch.setattr(runner, "describe_goal", counted("goal", runner.describe_goal))
    study = run_study(cfg, engine=engine, progress=False,
                      storage=optuna.storages.InMemoryStorage())
    assert len(study.get_trials()) == 6 and study.user_attrs["warm_start"]["enqueued"] >= 1
    assert counts == {"goal": 1, "ranges": 1, "gate": 1}
