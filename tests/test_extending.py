"""The examples of docs/how-to/extending.md ("Extend searchprune"), run as written there."""

from __future__ import annotations

import sys
import textwrap

import optuna
import pytest
import torch
from _helpers import GAMMA, TOL, FakeEngine, make_cfg, run
from optuna.trial import TrialState

from searchprune.config import apply_overrides, config_from_dict
from searchprune.criteria import _base as criteria_registry
from searchprune.search import samplers as sampler_registry


@pytest.fixture
def registries(monkeypatch):
    """Registrations made by a test are undone afterwards."""
    monkeypatch.setattr(sampler_registry, "_SAMPLERS", dict(sampler_registry._SAMPLERS))
    monkeypatch.setattr(criteria_registry, "_REGISTRY", dict(criteria_registry._REGISTRY))


def test_add_a_model(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def tiny_cnn(num_classes=10, in_channels=3):
            return nn.Sequential(
                nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from searchprune.engine import engine_for

    cfg = config_from_dict({"model": {"name": "my_nets:tiny_cnn"},
                            "data": {"calib_size": 64, "val_size": 100}})
    engine = engine_for(cfg)
    assert [g.channels for g in engine.groups] == [16, 32]  # both convs are prunable
    widths = engine.widths({g.name: 0.5 for g in engine.groups})
    assert widths == {engine.groups[0].name: 8, engine.groups[1].name: 16}
    pruned = engine.build(widths)
    assert pruned[0].out_channels == 8 and pruned[3].out_channels == 16
    assert sum(p.numel() for p in pruned.parameters()) == engine.cost(widths).params
    sys.modules.pop("my_nets", None)


def test_add_a_criterion(registries):
    from searchprune.criteria import Criterion, compute_scores, register
    from searchprune.models import CifarResNet
    from searchprune.space import SearchSpace

    @register("last-first")
    class LastFirst(Criterion):
        """Keeps the highest-numbered channels (a toy: the score is the channel index)."""

        def scores(self, model, space, data, *, device):
            return {g.name: torch.arange(g.channels, dtype=torch.float32)
                    for g in space.prunable}

    model = CifarResNet(8, 10, "pad").eval()
    space = SearchSpace.from_model(model, torch.randn(1, 3, 16, 16))
    scores = compute_scores("last-first", model, space)
    group = space.prunable[0]
    keep = space.keep_indices({group.name: 4}, scores)[group.name]
    assert sorted(keep.tolist()) == list(range(group.channels - 4, group.channels))


def test_add_a_sampler(tmp_path, registries):
    from searchprune.search import register_sampler

    @register_sampler("plain-random")
    def plain_random(ctx):
        return optuna.samplers.RandomSampler(seed=ctx.resume_seed)

    cfg = apply_overrides(make_cfg(tmp_path, n_trials=3), {"search.sampler": "plain-random"})
    study = run(cfg, engine=FakeEngine())
    # a sampler that knows nothing of the band: its out-of-band proposals are PRUNED unevaluated
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert len(pruned) > 3  # uniform proposals land in a 10%-wide band rarely
    for t in pruned:
        assert t.user_attrs["feasible"] is False and t.user_attrs["band_violation"] > 0
        assert abs(t.user_attrs["flops_ratio"] - GAMMA) > TOL and "top1" not in t.user_attrs
    assert study.user_attrs["rejected_proposals"] == len(pruned)
