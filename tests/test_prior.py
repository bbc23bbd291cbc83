"""The cheap sensitivity prior (``sensitivity.method: taylor``): first-order estimates that rank
groups like the full scan, their cost counted and charged, their own fingerprint, and the warm
start, the baseline and the comparison that read them."""

from __future__ import annotations

import math
from dataclasses import replace

import optuna
import pytest
import torch
from _helpers import FakeEngine, make_cfg
from _nets import randomize_bn
from optuna.trial import TrialState

from searchprune.baselines import solve_baseline
from searchprune.config import DEFAULT_SAMPLER, Config, apply_overrides, resolve_defaults
from searchprune.errors import ConfigError
from searchprune.search import run_study
from searchprune.search.problem import resolve_problem
from searchprune.search.sensitivity import (
    BACKWARD_COST,
    WARM_ATTR,
    allocation_of,
    evaluation_images,
    load_scan,
    measure_prior,
    prior_charge,
    run_first_order,
    run_scan,
    scan_name,
)

HARMLESS = "layer2.0.conv1"  # feeds layer2.0.conv2, whose weights are all zero
N_IMAGES = 64


def _known_engine(**overrides):
    """A real engine on a randomised CIFAR ResNet-8 where one group's removal is harmless
    (its only consumer has zero weights) and every other group's is not; the labels are the
    network's own predictions, so the unpruned network scores 100 % and any damage shows."""
    from searchprune.data._bundle import DataBundle, Split
    from searchprune.engine import PruningEngine
    from searchprune.models import CifarResNet

    torch.manual_seed(0)
    model = randomize_bn(CifarResNet(8, 10, "pad"))
    with torch.no_grad():
        model.layer2[0].conv2.weight.zero_()
        x = torch.randn(N_IMAGES, 3, 16, 16) * 2 + 0.5
        y = model(x).argmax(dim=1)
    data = DataBundle("tiny", 10, (3, 16, 16), (0.0,) * 3, (1.0,) * 3,
                      calib=Split(x, y), val=Split(x, y), test=Split(x, y))
    cfg = apply_overrides(Config(), {
        "pruning.proxy": "none", "data.calib_size": N_IMAGES, "data.batch_size": 16,
        "device": "cpu", "pruning.gamma": 0.6, "pruning.tolerance": 0.05,
        "sensitivity.points": 2, **overrides})
    return PruningEngine(cfg, model, data)


def _taylor(cfg: Config, **more) -> Config:
    return apply_overrides(cfg, {"sensitivity.method": "taylor", **more})


def _record_evaluations(engine) -> list[dict[str, int]]:
    """The widths of every network ``engine`` evaluates from now on."""
    evaluated: list[dict[str, int]] = []
    original = engine.evaluate
    engine.evaluate = lambda widths, **k: evaluated.append(dict(widths)) or original(widths, **k)
    return evaluated


def _at_eta(scan) -> dict[str, float]:
    """Each group's drop at its lowest scanned keep-ratio."""
    out: dict[str, float] = {}
    for p in sorted(scan.points, key=lambda p: p.keep_ratio, reverse=True):
        out[p.group] = p.drop
    return out


@pytest.mark.parametrize("method", ["taylor", "taylor-sq"])
def test_taylor_ranks_groups_like_the_full_scan_where_the_answer_is_known(method):
    engine = _known_engine()
    storage = optuna.storages.InMemoryStorage()
    scan = run_scan(resolve_problem(engine.cfg, engine), storage=storage)
    tcfg = _taylor(engine.cfg, **{"sensitivity.method": method})
    taylor = run_first_order(resolve_problem(tcfg, engine), storage=storage)
    assert taylor.complete and taylor.method == method and taylor.evaluations == 0
    assert [(p.group, p.width) for p in taylor.points] == [(p.group, p.width)
                                                          for p in scan.points]
    for prior in (scan, taylor):
        drops = _at_eta(prior)
        assert set(drops) == {g.name for g in engine.groups}
        # the harmless group costs nothing at any ratio; every other group costs something
        assert all(abs(p.drop) < 1e-9 for p in prior.points if p.group == HARMLESS)
        assert all(d > 0.0 for g, d in drops.items() if g != HARMLESS), drops
        assert min(drops, key=drops.get) == HARMLESS
    # so both allocations prune the harmless group the most
    for prior, cfg in ((scan, engine.cfg), (taylor, tcfg)):
        alloc = allocation_of(resolve_problem(cfg, engine), prior)
        assert alloc.in_band
        assert alloc.ratios[HARMLESS] == pytest.approx(min(alloc.ratios.values()))
        assert alloc.ratios[HARMLESS] == pytest.approx(engine.cfg.pruning.eta)


def test_first_order_contribution_is_the_derivative_of_each_images_loss():
    """g[n, c] is -dL_n/ds of scaling channel c by (1 - s): checked by finite differences on a
    block-internal channel (its BN's affine parameters scale it exactly)."""
    import torch.nn.functional as F

    from searchprune.first_order import channel_contributions

    engine = _known_engine()
    model = engine.model.double()
    x, y = engine.data.calib.x.double(), engine.data.calib.y
    fo = channel_contributions(model, engine.space, x, y, batch_size=16,
                               device=torch.device("cpu"))
    assert fo.images == N_IMAGES and set(fo.per_image) == {g.name for g in engine.groups}
    g = fo.per_image["layer1.0.conv1"]
    assert g.shape == (N_IMAGES, 16)
    channel, eps = int(g.abs().sum(0).argmax()), 1e-6
    with torch.no_grad():
        before = F.cross_entropy(model(x), y, reduction="none")
        bn = model.layer1[0].bn1
        bn.weight[channel] *= 1 - eps
        bn.bias[channel] *= 1 - eps
        after = F.cross_entropy(model(x), y, reduction="none")
    assert torch.allclose((after - before) / eps, -g[:, channel], rtol=1e-3, atol=1e-6)
    assert g[:, channel].abs().max() > 1e-3  # a channel that matters


def test_the_two_forms_read_the_same_contributions():
    from searchprune.first_order import removal_drop, removal_drop_squared

    g = torch.tensor([[1.0, -1.0, 2.0], [3.0, 1.0, 0.0]], dtype=torch.float64)
    keep = torch.tensor([2])  # channels 0 and 1 removed
    # taylor: per image |1 - 1| = 0 and |3 + 1| = 4, mean 2 (the removals cancel in image 0)
    assert removal_drop(g, keep) == pytest.approx(2.0)
    # taylor-sq: channel 0 mean(1, 9) = 5, channel 1 mean(1, 1) = 1
    assert removal_drop_squared(g, keep) == pytest.approx(6.0)
    assert removal_drop(g, torch.tensor([0, 1, 2])) == 0.0


def test_taylor_costs_are_counted_and_charged_in_evaluation_equivalents():
    engine = _known_engine()
    storage = optuna.storages.InMemoryStorage()
    problem = resolve_problem(_taylor(engine.cfg, **{"sensitivity.images": 32}), engine)
    calls = []
    original = engine.evaluate
    engine.evaluate = lambda *a, **k: calls.append(1) or original(*a, **k)
    prior = measure_prior(problem, storage=storage)
    assert calls == []  # no network evaluated
    cost = prior.cost
    assert cost.forward_images == cost.backward_images == 32 and cost.seconds > 0.0
    trial = evaluation_images(engine, 16)
    assert trial == N_IMAGES  # proxy none: only the validation images
    charged = math.ceil((32 + BACKWARD_COST * 32) / trial)
    assert prior.charge(trial) == charged == prior_charge(problem) == 2
    # stored: read back, or measured again by another process, the cost is the same
    again = load_scan(problem.cfg, storage)
    assert again.cost == cost and again.charge(trial) == charged
    assert run_first_order(problem, storage=storage).cost == cost


def test_scan_costs_are_counted_and_a_subset_scan_is_charged_less():
    engine = _known_engine()
    storage = optuna.storages.InMemoryStorage()
    full = run_scan(resolve_problem(engine.cfg, engine), storage=storage)
    trial = evaluation_images(engine, 16)
    assert full.cost.forward_images == full.evaluations * trial and full.cost.backward_images == 0
    assert full.cost.seconds > 0.0
    scan_cfg = apply_overrides(engine.cfg, {"sensitivity.method": "scan"})
    assert full.charge(trial) == full.evaluations == prior_charge(resolve_problem(scan_cfg,
                                                                                  engine))
    subset_cfg = apply_overrides(scan_cfg, {"sensitivity.val_images": 16})
    subset = run_scan(resolve_problem(subset_cfg, engine), storage=storage)
    assert subset.evaluations == full.evaluations
    assert subset.cost.forward_images == subset.evaluations * 16
    assert subset.charge(trial) == math.ceil(subset.evaluations * 16 / trial)
    assert subset.charge(trial) < full.charge(trial)
    assert subset.charge(trial) == prior_charge(resolve_problem(subset_cfg, engine))


def test_the_fingerprint_differs_by_method_and_taylor_ignores_what_it_never_sees(tmp_path):
    cfg = make_cfg(tmp_path, **{"sensitivity.method": "scan"})
    taylor = _taylor(cfg)
    assert scan_name(cfg) != scan_name(taylor)
    assert scan_name(taylor) != scan_name(_taylor(cfg, **{"sensitivity.images": 64}))
    assert scan_name(taylor) != scan_name(_taylor(cfg, **{"sensitivity.method": "taylor-sq"}))
    assert scan_name(taylor) != scan_name(_taylor(cfg, **{"pruning.criterion": "l2"}))
    # the estimates see neither the proxy nor the validation images: one prior for all
    assert scan_name(taylor) == scan_name(_taylor(cfg, **{"pruning.proxy": "abn"}))
    assert scan_name(taylor) == scan_name(_taylor(cfg, **{"sensitivity.val_images": 8}))
    assert scan_name(cfg) != scan_name(apply_overrides(cfg, {"pruning.proxy": "abn"}))


def test_a_taylor_prior_is_shared_not_recomputed(tmp_path):
    engine = _known_engine(**{"storage": str(tmp_path / "s.db")})
    cfg = _taylor(engine.cfg)
    first = measure_prior(resolve_problem(cfg, engine))
    other = _known_engine(**{"storage": str(tmp_path / "s.db"), "pruning.proxy": "ls"})

    def recompute(*args, **kwargs):
        raise AssertionError("the stored prior was measured again")

    other.first_order_drops = recompute
    second = measure_prior(resolve_problem(_taylor(other.cfg), other))
    assert second.name == first.name and second.points == first.points


def test_warm_start_from_the_taylor_prior_gives_in_band_trials_first(tmp_path):
    engine = _known_engine(**{"storage": str(tmp_path / "s.db")})
    cfg = _taylor(engine.cfg, **{"search.warm_start": "sensitivity", "search.sampler": "tpe",
                                 "search.n_trials": 6, "search.study_name": "warm",
                                 "sensitivity.perturbations": 2})
    engine.cfg = cfg
    evaluated = _record_evaluations(engine)
    study = run_study(cfg, engine=engine, progress=False)
    info = study.user_attrs[WARM_ATTR]
    assert info["prior"] == "taylor" and info["scan_evaluations"] == 0
    assert info["charged_evaluations"] == prior_charge(resolve_problem(cfg, engine)) == 3
    assert info["prior_cost"]["forward_images"] == N_IMAGES
    assert len(evaluated) == 6  # the study's own trials only: the prior evaluated nothing
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    warm = [t for t in trials if WARM_ATTR in t.user_attrs]
    assert info["enqueued"] == len(warm) >= 2
    assert [t.number for t in warm] == list(range(len(warm)))
    assert warm[0].user_attrs[WARM_ATTR] == "allocation"
    for t in warm:
        assert t.state == TrialState.COMPLETE and t.user_attrs["feasible"]
        assert abs(t.user_attrs["flops_ratio"] - 0.6) <= 0.05
    assert warm[0].params[HARMLESS] == pytest.approx(cfg.pruning.eta)
    # the sensitivity baseline reads the same prior
    b = solve_baseline("sensitivity", engine)
    assert b.widths == warm[0].user_attrs["widths"]
    assert b.info["prior"] == "taylor" and b.info["charged_evaluations"] == 3


def test_compare_charges_the_taylor_prior_at_equal_total_cost(tmp_path):
    from searchprune.report import compare_runs
    from searchprune.report.compare import table_rows
    from searchprune.report.studies import load_runs, plan_comparison, run_comparison

    engine = _known_engine(**{"storage": str(tmp_path / "s.db"), "search.n_trials": 16})
    plan = plan_comparison(engine.cfg, ["random", "tpe+taylor", "tpe+scan"], [0], "cmp")
    assert plan[1].cfg.sensitivity.method == "taylor" and plan[1].cfg.search.warm_start == \
        "sensitivity"
    assert plan[2].cfg.sensitivity.method == "scan"
    assert plan[0].cfg.search.warm_start == "none"  # a plain name is the sampler alone
    storage = optuna.storages.InMemoryStorage()
    run_comparison(plan, storage=storage, engine=engine, progress=False)
    runs, missing = load_runs(plan, storage, 16)
    assert not missing
    scan = load_scan(plan[2].cfg, storage)
    assert scan.evaluations == 13  # 6 groups x 2 ratios + the reference
    assert [r.offset for r in runs] == [0, 3, 13]  # taylor: ceil((64 + 2 x 64) / 64)
    assert [len(r.points) for r in runs] == [16, 16 - 3, 16 - 13]
    c = compare_runs(runs, budget=16)
    assert c.curves["tpe+taylor"].k[0] == 4 and c.curves["tpe+taylor"].k[-1] == 16
    assert table_rows(c)[1][1][2] == "3 scan + 13"


def test_taylor_prior_is_refused_where_it_cannot_run(tmp_path):
    with pytest.raises(ConfigError, match="sensitivity.method"):
        make_cfg(tmp_path, **{"sensitivity.method": "tailor"})
    with pytest.raises(ConfigError, match="sensitivity.images is read by method: taylor"):
        make_cfg(tmp_path, **{"sensitivity.method": "scan", "sensitivity.images": 64})
    with pytest.raises(ConfigError, match="sensitivity.images must be >= 1"):
        make_cfg(tmp_path, **{"sensitivity.method": "taylor", "sensitivity.images": 0})
    with pytest.raises(ConfigError, match="setting: pretrained"):
        make_cfg(tmp_path, **{"sensitivity.method": "taylor", "setting": "scratch"})
    cfg = make_cfg(tmp_path, **{"sensitivity.method": "taylor"})
    with pytest.raises(ConfigError, match="needs a pretrained network's engine"):
        measure_prior(resolve_problem(cfg, FakeEngine()),
                      storage=optuna.storages.InMemoryStorage())


def test_the_default_search_is_gp_warm_started_from_the_first_order_prior(tmp_path):
    engine = _known_engine(**{"storage": str(tmp_path / "s.db"), "search.n_trials": 6,
                              "search.study_name": "default", "sensitivity.perturbations": 2})
    cfg = engine.cfg  # no sampler, warm start or prior method given: the defaults
    assert (cfg.search.sampler, cfg.search.warm_start, cfg.sensitivity.method) == (
        DEFAULT_SAMPLER, "auto", "auto") and DEFAULT_SAMPLER == "gp"
    evaluated = _record_evaluations(engine)
    study = run_study(cfg, engine=engine, progress=False)
    info = study.user_attrs[WARM_ATTR]
    assert info["prior"] == "taylor-sq" and info["scan_evaluations"] == 0
    assert len(evaluated) == 6  # the prior evaluated no network
    first = min(study.get_trials(), key=lambda t: t.number)
    assert first.user_attrs[WARM_ATTR] == "allocation"
    assert first.params[HARMLESS] == pytest.approx(cfg.pruning.eta)  # the harmless group goes
    assert type(study.sampler).__name__ == "GPSampler"
    # the paper's random search is one setting away, and it is not seeded
    paper = run_study(apply_overrides(cfg, {"search.sampler": "random",
                                            "search.study_name": "paper"}),
                      engine=engine, progress=False)
    assert WARM_ATTR not in paper.user_attrs
    assert not any(WARM_ATTR in t.user_attrs for t in paper.get_trials())
    assert "Random" in type(paper.sampler).__name__


def test_a_pareto_study_file_without_a_sampler_runs_tpe(tmp_path):
    from searchprune.config import PARETO_DEFAULT_SAMPLER, load_config

    pareto = "search:\n  objective: pareto\n  gamma_range: [0.3, 0.7]\n"
    path = tmp_path / "p.yaml"
    path.write_text(pareto)
    assert load_config(path).search.sampler == PARETO_DEFAULT_SAMPLER == "tpe"
    path.write_text(pareto + "  sampler: gp\n")  # a sampler the file names is kept
    assert load_config(path).search.sampler == "gp"
    assert load_config(path, {"search.sampler": "nsga2"}).search.sampler == "nsga2"
    path.write_text("search:\n  n_trials: 5\n")
    assert load_config(path).search.sampler == DEFAULT_SAMPLER


@pytest.mark.parametrize(("overrides", "warm", "method"), [
    ({}, "sensitivity", "taylor-sq"),
    ({"search.sampler": "gp"}, "sensitivity", "taylor-sq"),
    ({"search.sampler": "random"}, "none", "taylor-sq"),
    ({"search.sampler": "cmaes"}, "none", "taylor-sq"),
    ({"search.sampler": "qmc"}, "none", "taylor-sq"),
    ({"search.objective": "pareto", "search.gamma_range": [0.3, 0.7]}, "none", "taylor-sq"),
    ({"pruning.gamma": "no band", "pruning.params": {"max": 0.5}}, "none", "taylor-sq"),
    ({"setting": "scratch"}, "none", "scan"),
    ({"search.warm_start": "none"}, "none", "taylor-sq"),
    ({"search.sampler": "random", "search.warm_start": "sensitivity",
      "sensitivity.method": "scan"}, "sensitivity", "scan"),
])
def test_auto_means_the_warm_start_only_where_the_sampler_learns_from_it(overrides, warm,
                                                                         method):
    cfg = apply_overrides(Config(), {**overrides, "pruning.gamma": 0.5})
    if overrides.get("pruning.gamma") == "no band":  # an override of None changes nothing
        cfg = replace(cfg, pruning=replace(cfg.pruning, gamma=None)).validate()
    resolved = resolve_defaults(cfg)
    assert (resolved.search.warm_start, resolved.sensitivity.method) == (warm, method)
    assert resolve_defaults(resolved) == resolved  # nothing left to resolve


def test_auto_starts_no_warm_start_on_an_engine_without_first_order_estimates(tmp_path):
    cfg = make_cfg(tmp_path, "tpe", **{"search.warm_start": "auto", "sensitivity.method": "auto"})
    assert resolve_defaults(cfg, first_order=False).search.warm_start == "none"
    assert resolve_defaults(cfg).search.warm_start == "sensitivity"
    problem = resolve_problem(cfg, FakeEngine())  # an engine without first-order estimates
    assert (problem.cfg.search.warm_start, problem.cfg.sensitivity.method) == ("none", "scan")
    study = run_study(cfg, engine=FakeEngine(), progress=False,
                      storage=optuna.storages.InMemoryStorage())
    assert WARM_ATTR not in study.user_attrs and len(study.trials) == 5


def test_the_documented_default_search_is_the_one_the_code_runs():
    from pathlib import Path

    from searchprune.config import AUTO_METHOD, LEARNING_SAMPLERS

    text = (Path(__file__).resolve().parents[1] / "docs/how-to/compare.md").read_text()
    section = text.split("## The default search")[1].split("\n## ")[0]
    assert f"runs `{DEFAULT_SAMPLER}` with `search.warm_start: auto`" in section
    assert f"allocation of the `{AUTO_METHOD['pretrained']}` prior" in section
    assert DEFAULT_SAMPLER in LEARNING_SAMPLERS  # so the default is warm-started
    assert (Config().search.warm_start, Config().sensitivity.method) == ("auto", "auto")
