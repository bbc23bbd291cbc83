"""Per-group bounds (``pruning.groups``) and limits beyond FLOPs (``pruning.params``)."""

from __future__ import annotations

import pytest
from _helpers import GAMMA, TOL, FakeEngine, make_cfg, run
from optuna.trial import TrialState

from searchprune.config import config_from_dict
from searchprune.constraints import Limit, fixed_ratios, free_names, resolve_bounds
from searchprune.errors import BandError, ConfigError
from searchprune.search import rejected_proposals

NAMES = ["stem.conv", "layer1.residual", "layer1.0.conv1", "layer2.residual", "layer2.0.conv1"]
RULES = {"layer0.*": {"fixed": 1.0}, "layer[45].*": {"min": 0.6}, "layer[1-5].*": {"max": 0.9}}
SAMPLERS = ["random", "tpe", "cmaes", "gp", "qmc", "nsga2"]


def test_bounds_are_the_intersection_of_every_matching_pattern_in_any_order():
    rules = {"layer*": {"min": 0.4}, "layer2.*": {"max": 0.8}, "*residual": {"fixed": 0.7}}
    a = resolve_bounds(rules, NAMES, 0.3)
    b = resolve_bounds(dict(reversed(list(rules.items()))), NAMES, 0.3)
    assert a == b
    assert a == {"stem.conv": (0.3, 1.0), "layer1.residual": (0.7, 0.7),
                 "layer1.0.conv1": (0.4, 1.0), "layer2.residual": (0.7, 0.7),
                 "layer2.0.conv1": (0.4, 0.8)}


def test_star_matches_dots_and_fixed_groups_are_not_free():
    bounds = resolve_bounds({"layer*": {"min": 0.5}, "stem.*": {"fixed": 1.0}}, NAMES, 0.3)
    assert bounds["layer1.0.conv1"] == (0.5, 1.0)  # '*' crossed two dots
    assert fixed_ratios(bounds) == {"stem.conv": 1.0}
    assert free_names(bounds) == NAMES[1:]


def test_empty_intersection_names_the_group_and_patterns():
    with pytest.raises(ConfigError, match=r"group 'layer2.0.conv1' .* 'layer2.\*', "
                                          r"'\*conv1' do not overlap"):
        resolve_bounds({"layer2.*": {"max": 0.5}, "*conv1": {"min": 0.6}}, NAMES, 0.3)
    with pytest.raises(ConfigError, match="group 'stem.conv' .*eta 0.3"):
        resolve_bounds({"stem.conv": {"fixed": 0.2}}, NAMES, 0.3)


def test_a_pattern_matching_no_group_lists_the_groups():
    with pytest.raises(ConfigError, match=r"pattern 'layer9\*' matches no group; the groups are: "
                                          r"stem.conv, layer1.residual"):
        resolve_bounds({"layer9*": {"min": 0.5}}, NAMES, 0.3)


@pytest.mark.parametrize("groups, message", [
    ({"layer*": {"minn": 0.5}}, "unknown key 'minn'.*did you mean 'min'"),
    ({"layer*": {"fixed": 1.0, "min": 0.5}}, "'fixed' excludes"),
    ({"layer*": {"min": 0.8, "max": 0.5}}, "min 0.8 is above max 0.5"),
    ({"layer*": {"max": 1.5}}, r"max must be a number in \(0, 1\]"),
    (["layer*"], "must map group-name patterns"),
])
def test_malformed_group_rules_are_config_errors(groups, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"pruning": {"groups": groups}})


@pytest.mark.parametrize("params, message", [
    ({"max": 0}, r"pruning.params.max must be a number in \(0, 1\]"),
    ({"maxx": 0.5}, "unknown key 'maxx'"),
    ({"max": 0.5, "target": 0.4}, "either max or target"),
    ({"tolerance": 0.1}, "must be {max: r} or"),
])
def test_malformed_params_limits_are_config_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"pruning": {"params": params}})


def test_limit_forms():
    cap = config_from_dict({"pruning": {"params": {"max": 0.6}}}).pruning.params
    assert cap == {"max": 0.6}
    band = Limit("params", 0.55, 0.45)
    assert band.contains(0.5) and not band.contains(0.44) and not band.contains(0.56)
    assert Limit("params", 0.6).distance(0.7) == pytest.approx(0.1)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_respects_group_bounds_and_fixed_groups(tmp_path, sampler):
    cfg = make_cfg(tmp_path, sampler, n_trials=6, **{"pruning.groups": RULES})
    study = run(cfg)
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 6
    engine = FakeEngine()
    for t in done:
        assert "layer0.conv" not in t.params  # fixed: not an Optuna parameter
        w = t.user_attrs["widths"]
        assert w["layer0.conv"] == 16  # ... but it still has a width
        for g in engine.groups[1:]:
            lo = 0.6 if g.name in ("layer4.conv", "layer5.conv") else 0.3
            assert round(lo * g.channels) <= w[g.name] <= round(0.9 * g.channels), (g.name, w)
        assert abs(t.user_attrs["flops_ratio"] - 0.4) <= 0.05


def test_an_unreachable_band_reports_the_reachable_range(tmp_path):
    cfg = make_cfg(tmp_path, **{"pruning.groups": RULES, "pruning.gamma": 0.1})
    with pytest.raises(BandError, match=r"outside the reachable FLOPs ratios \[0\.26\d+, "
                                        r"0\.82\d+\] with pruning.groups"):
        run(cfg)


def test_a_pattern_matching_no_group_stops_the_study_before_any_trial(tmp_path):
    cfg = make_cfg(tmp_path, **{"pruning.groups": {"block*": {"min": 0.5}}})
    with pytest.raises(ConfigError, match="matches no group; the groups are: layer0.conv"):
        run(cfg)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_params_cap_rejects_inside_the_sampler(tmp_path, sampler):
    cfg = make_cfg(tmp_path, sampler, n_trials=12, **{"pruning.params": {"max": 0.4}})
    study = run(cfg)
    trials = study.get_trials()
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len(trials) == 12
    assert all(t.user_attrs["params_ratio"] <= 0.4 for t in trials)
    assert rejected_proposals(trials) > 0


def test_a_projected_sampler_rejects_params_violations_without_evaluating(tmp_path):
    cfg = make_cfg(tmp_path, "cmaes", n_trials=6, **{"pruning.params": {"max": 0.405}})
    engine = FakeEngine()
    study = run(cfg, engine)
    trials = study.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    bad = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(done) == 6 and engine.calls == 6  # rejected proposals were never evaluated
    assert all(t.user_attrs["params_ratio"] <= 0.405 for t in done)
    assert bad and all(t.user_attrs["violated"] == ["params"] for t in bad)
    assert rejected_proposals(trials) >= len(bad)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_rules_that_only_restate_eta_draw_what_no_rules_draw(tmp_path, sampler):
    a = run(make_cfg(tmp_path, sampler, n_trials=12))
    b = run(make_cfg(tmp_path, sampler, n_trials=12, **{"pruning.groups": {"*": {"min": 0.3}}}))
    assert [t.params for t in a.get_trials()] == [t.params for t in b.get_trials()]


def test_model_info_shows_each_groups_bounds(tmp_path):
    import json

    from _helpers import ROOT, cli

    cfg = tmp_path / "g.yaml"
    cfg.write_text(f"include: {ROOT / 'studies' / 'quickstart.yaml'}\n"
                   "pruning:\n  eta: 0.3\n  gamma: 0.5\n"
                   "  groups:\n    '*residual': {fixed: 1.0}\n"
                   "    'layer2.0.*': {min: 0.5, max: 0.8}\n")
    proc = cli("model", "info", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    bounds = info["bounds"]
    assert bounds["layer1.residual"] == [1.0, 1.0]
    assert bounds["layer2.0.conv1"] == [0.5, 0.8]
    assert bounds["layer1.0.conv1"] == [0.3, 1.0]
    assert "layer3.residual" not in bounds  # not prunable
    assert 0.3 < info["ratio_range"][0] < info["ratio_range"][1] < 1.0


def test_a_worker_gives_up_after_infeasible_proposals_in_a_row(tmp_path, monkeypatch, caplog):
    import searchprune.search.callbacks as cb

    monkeypatch.setattr(cb, "MAX_REJECTIONS_IN_A_ROW", 15)
    engine = FakeEngine()
    cfg = make_cfg(tmp_path, "cmaes", n_trials=5, **{"pruning.params": {"max": 0.2}})
    study = run(cfg, engine)
    trials = study.get_trials()
    assert engine.calls == 0 and len(trials) == 15
    assert all(t.user_attrs["violated"] == ["params"] for t in trials)
    assert "the last 15 proposals violated params" in caplog.text


def test_uniform_baseline_and_draws_honour_group_bounds(tmp_path):
    import numpy as np

    from searchprune.baselines import solve_baseline
    from searchprune.report.criteria import draw_configs

    rules = {"layer0.*": {"fixed": 1.0}, "layer5.*": {"max": 0.5}}
    cfg = make_cfg(tmp_path, **{"pruning.groups": rules})
    engine = FakeEngine()
    engine.cfg = cfg
    b = solve_baseline("uniform", engine)
    assert b.widths["layer0.conv"] == 16 and b.widths["layer5.conv"] <= 32
    assert abs(engine.flops_ratio(b.widths) - GAMMA) <= TOL
    free = [b.widths[f"layer{i}.conv"] / c for i, c in zip((1, 2, 3, 4), (16, 32, 32, 64))]
    assert max(free) - min(free) < 0.1  # one keep-ratio for the groups the rules leave free
    configs = draw_configs(engine, 20, gamma=GAMMA, tolerance=TOL, eta=0.3, seed=0,
                           groups=rules)
    assert len(configs) == 20
    for r in configs:
        assert r["layer0.conv"] == 1.0 and 0.3 <= r["layer5.conv"] <= 0.5
        assert abs(engine.flops_ratio(engine.widths(r)) - GAMMA) <= TOL
    assert np.std([r["layer2.conv"] for r in configs]) > 0.05  # free groups still vary


def test_tp_global_refuses_bounds_other_than_fixed_at_one(tmp_path):
    from searchprune.baselines import solve_baseline

    engine = FakeEngine()
    engine.cfg = make_cfg(tmp_path, **{"pruning.groups": {"layer5.*": {"max": 0.5}}})
    with pytest.raises(ConfigError, match="layer5.conv"):
        solve_baseline("tp-global", engine)
