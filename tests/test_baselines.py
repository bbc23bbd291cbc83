"""Baselines without search: one keep-ratio everywhere, and Torch-Pruning's global pruning."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from _nets import randomize_bn, tiny_engine
from torch import nn

from searchprune.baselines import (
    _ignored_layers,
    evaluate_baselines,
    solve_baseline,
    tp_global,
    uniform,
)
from searchprune.errors import ConfigError
from searchprune.models import CifarResNet
from searchprune.models._layers import IndexShortcut
from searchprune.space._groups import IndexShortcutPruner

BAND = {"pruning.gamma": 0.5, "pruning.tolerance": 0.03}


@pytest.mark.parametrize("gamma", [0.4, 0.6])
@pytest.mark.parametrize("solve", [uniform, tp_global])
def test_baselines_land_inside_the_band(solve, gamma):
    engine = tiny_engine("none", **{**BAND, "pruning.gamma": gamma})
    b = solve(engine)
    ratio = engine.flops_ratio(b.widths)
    assert abs(ratio - gamma) <= 0.03, (b.name, ratio)
    assert any(w < g.channels for g, w in zip(engine.groups, b.widths.values()))


def test_uniform_is_one_keep_ratio_for_every_group():
    engine = tiny_engine("none", **BAND)
    b = uniform(engine)
    r = b.info["keep_ratio"]
    assert b.widths == engine.widths({g.name: r for g in engine.groups})
    assert b.keep is None  # the study's criterion picks the channels


def test_tp_global_keeps_the_channels_torch_pruning_keeps_on_an_untouched_copy():
    engine = tiny_engine("none", **BAND)
    b = tp_global(engine)
    assert b.keep  # it pruned something
    # Torch-Pruning run directly, with the ratio the baseline settled on
    direct = copy.deepcopy(engine.model)
    pruner = tp.pruner.MetaPruner(
        direct, engine.data.calib.x[:1], importance=tp.importance.GroupMagnitudeImportance(),
        global_pruning=True, pruning_ratio=b.info["tp_pruning_ratio"],
        max_pruning_ratio=1.0 - engine.cfg.pruning.eta,
        ignored_layers=_ignored_layers(engine, direct),
        customized_pruners={IndexShortcut: IndexShortcutPruner()})
    with torch.enable_grad():
        pruner.step()
    ours = engine.build(b.widths, keep=b.keep)  # proxy none: the sliced weights
    theirs = dict(direct.named_modules())
    compared = 0
    for name, mod in ours.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            assert mod.weight.shape == theirs[name].weight.shape, name
            assert torch.equal(mod.weight, theirs[name].weight), name
            compared += 1
    assert compared >= 7
    x = engine.data.val.x
    with torch.no_grad():  # the option-A shortcut was pruned by Torch-Pruning itself, correctly
        assert torch.allclose(ours(x), direct(x), atol=1e-5)


def test_tp_global_chooses_other_channels_than_our_l1_when_they_must_differ():
    """Filters of layer1.0.conv1: channel 0 has by far the largest L1 norm (our criterion keeps
    it), but its BN scale and the next conv's input weights are tiny, so its group magnitude is
    the smallest (Torch-Pruning removes it first)."""
    model = randomize_bn(CifarResNet(8, 10, "pad"))
    block = model.layer1[0]
    with torch.no_grad():
        block.conv1.weight.mul_(0.1)
        block.conv1.weight[0].mul_(100.0)
        block.bn1.weight[0] = 1e-3
        block.conv2.weight.mul_(1000.0)
        block.conv2.weight[:, 0].mul_(1e-6)
    engine = tiny_engine("none", model=model, **BAND)
    b = tp_global(engine)
    name = "layer1.0.conv1"
    assert name in b.keep
    ours = engine.space.keep_indices(b.widths, engine.scores)[name]
    assert 0 in ours.tolist()
    assert 0 not in b.keep[name].tolist()


def test_evaluate_baselines_scores_with_the_study_proxy():
    engine = tiny_engine("abn", **BAND)
    rows = evaluate_baselines(engine, ["uniform", "tp-global"])
    assert [r["name"] for r in rows] == ["uniform", "tp-global"]
    for r in rows:
        assert r["in_band"] and r["proxy"] == "abn"
        kwargs = {} if r["name"] == "uniform" else {"keep": tp_global(engine).keep}
        assert r["top1"] == pytest.approx(engine.evaluate(r["widths"], **kwargs).top1)


def test_unknown_baseline_is_a_config_error():
    engine = tiny_engine("none", **BAND)
    with pytest.raises(ConfigError, match="unknown baseline 'uniformm'.*uniform, tp-global"):
        solve_baseline("uniformm", engine)
