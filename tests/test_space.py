"""Channel groups and the analytic cost model against real counts on built pruned nets."""

from __future__ import annotations

import random

import pytest
import torch
import torchvision

from searchprune.models import CifarResNet, CifarVGG
from searchprune.models._layers import IndexShortcut
from searchprune.prune import prune_model
from searchprune.space import SearchSpace, count_cost, round_width


def _family(name: str):
    if name == "resnet20":
        return CifarResNet(20, 10, "pad"), (3, 32, 32)
    if name == "resnet20_projection":
        return CifarResNet(20, 100, "projection"), (3, 32, 32)
    if name == "resnet56":
        return CifarResNet(56, 10, "pad"), (3, 32, 32)
    if name == "cifar_vgg16_bn":
        return CifarVGG(num_classes=10), (3, 32, 32)
    return getattr(torchvision.models, name)(num_classes=10), (3, 64, 64)


FAMILIES = ["resnet20", "resnet20_projection", "resnet56", "cifar_vgg16_bn", "resnet18",
            "resnet50", "mobilenet_v2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_analytic_cost_equals_counted_cost_on_pruned_nets(family):
    model, shape = _family(family)
    model.eval()
    x = torch.randn(1, *shape)
    space = SearchSpace.from_model(model, x)
    assert space.base_cost == count_cost(model, x)
    rng = random.Random(f"cost-{family}")  # str seeds are hashed with SHA-512: stable per run
    for _ in range(3):
        widths = space.widths({g.name: rng.uniform(0.2, 1.0) for g in space.prunable})
        scores = {g.name: torch.rand(g.channels) for g in space.prunable}
        pruned = prune_model(model, space, space.keep_indices(widths, scores))
        assert space.cost(widths) == count_cost(pruned, x)


@pytest.mark.parametrize(
    "model, shape, flops_m, params",
    [
        (lambda: CifarResNet(56, 10, "projection"), (3, 32, 32), 126.8, 855_770),
        (lambda: CifarResNet(20, 100, "projection"), (3, 32, 32), 41.2, 278_324),
        (lambda: CifarVGG(num_classes=10), (3, 32, 32), 313.8, 14_728_266),
    ],
)
def test_paper_baseline_rows(model, shape, flops_m, params):
    space = SearchSpace.from_model(model().eval(), torch.randn(1, *shape))
    assert round(space.base_cost.flops / 1e6, 1) == flops_m
    assert space.base_cost.params == params


@pytest.mark.parametrize(
    "name, gflops, mparams",
    [("resnet18", 1.82, 11.69), ("resnet50", 4.11, 25.56), ("vgg16_bn", 15.50, 138.4),
     ("mobilenet_v2", 0.314, 3.50)],
)
def test_torchvision_baselines_at_224(name, gflops, mparams):
    model = getattr(torchvision.models, name)().eval()
    cost = count_cost(model, torch.randn(1, 3, 224, 224))
    digits = 3 if gflops < 1 else 2
    assert round(cost.flops / 1e9, digits) == gflops
    assert round(cost.params / 1e6, 1 if mparams > 100 else 2) == mparams


def test_option_a_resnet56_literature_values():
    model = CifarResNet(56, 10, "pad").eval()
    cost = count_cost(model, torch.randn(1, 3, 32, 32))
    assert round(cost.macs / 1e6, 2) == 125.49
    assert cost.params == 853_018


def test_resnet_groups_are_stage_streams_and_block_internals():
    space = SearchSpace.from_model(CifarResNet(20, 10, "pad").eval(), torch.randn(1, 3, 32, 32))
    names = [g.name for g in space.groups]
    assert {"layer1.residual", "layer2.residual", "layer3.residual"} <= set(names)
    assert sum(g.kind == "internal" for g in space.groups) == 9
    # the stream feeding the classifier is kept whole by default
    assert not space.group("layer3.residual").prunable
    assert space.group("layer2.residual").prunable
    # the stem belongs to the first stage's residual stream
    stem = [m.module for m in space.group("layer1.residual").members if m.role == "out"]
    assert "conv1" in stem


def test_prune_classifier_input_flag_makes_last_stream_prunable():
    space = SearchSpace.from_model(CifarResNet(20, 10, "pad").eval(), torch.randn(1, 3, 32, 32),
                                   prune_classifier_input=True)
    assert space.group("layer3.residual").prunable


def test_pruned_net_equals_masked_original():
    """Removing channels == zeroing their BN output (gamma = beta = 0) in the original."""
    model = CifarResNet(20, 10, "pad").eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.3, 0.3)
    x = torch.randn(4, 3, 32, 32)
    space = SearchSpace.from_model(model, x)
    widths = space.widths({g.name: 0.5 for g in space.prunable})
    scores = {g.name: torch.rand(g.channels) for g in space.prunable}
    keep = space.keep_indices(widths, scores)
    pruned = prune_model(model, space, keep)
    masked = prune_model(model, space, {})
    with torch.no_grad():
        for name, kept in keep.items():
            drop = torch.ones(space.group(name).channels, dtype=torch.bool)
            drop[kept] = False
            for m in space.group(name).members:
                mod = masked.get_submodule(m.module)
                idx = torch.tensor(m.idxs)[drop[torch.tensor(m.root_idxs)]]
                if m.role == "out" and isinstance(mod, torch.nn.BatchNorm2d):
                    mod.weight[idx] = 0
                    mod.bias[idx] = 0
                elif m.role == "out" and isinstance(mod, IndexShortcut):
                    mod.src[idx] = -1
    torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


def test_round_width():
    assert round_width(0.5, 64) == 32
    assert round_width(0.01, 64) == 1
    assert round_width(0.5, 64, round_to=8) == 32
    assert round_width(0.3, 64, round_to=8) == 16  # 19.2 -> nearest multiple of 8
    assert round_width(0.01, 64, round_to=8) == 8
    assert round_width(1.0, 60, round_to=8) == 60
