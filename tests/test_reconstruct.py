"""Least-squares reconstruction: exact merge, identity when nothing is pruned, lower error."""

from __future__ import annotations

import pytest
import torch
from _nets import randomize_bn
from torch import nn

from searchprune.config import ReconstructionConfig
from searchprune.criteria import compute_scores
from searchprune.models import CifarResNet
from searchprune.prune import prune_model
from searchprune.reconstruct import Reconstructor, find_residual_blocks, merge_affine
from searchprune.space import SearchSpace


def test_merge_equals_explicit_channel_mixing():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(5, 6, 3, padding=1, bias=True), nn.BatchNorm2d(6)
    randomize_bn(nn.Sequential(bn))
    x = torch.randn(3, 5, 8, 8)
    X, c = torch.randn(6, 6), torch.randn(6)
    with torch.no_grad():
        expected = torch.einsum("ij,njhw->nihw", X, bn(conv(x))) + c.view(1, -1, 1, 1)
        merge_affine(conv, bn, X.double(), c.double())
        got = bn(conv(x))
    assert (got - expected).abs().max() < 1e-4


def test_merge_diagonal_for_depthwise():
    conv, bn = nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4)
    randomize_bn(nn.Sequential(bn))
    x = torch.randn(2, 4, 6, 6)
    a, c = torch.rand(4) + 0.5, torch.randn(4)
    with torch.no_grad():
        expected = bn(conv(x)) * a.view(1, -1, 1, 1) + c.view(1, -1, 1, 1)
        merge_affine(conv, bn, a.double(), c.double(), diagonal=True)
        assert (bn(conv(x)) - expected).abs().max() < 1e-5


@pytest.mark.parametrize("shortcut", ["pad", "projection"])
def test_nothing_pruned_leaves_the_network_unchanged(shortcut):
    model = randomize_bn(CifarResNet(8, 10, shortcut))
    x = torch.randn(32, 3, 16, 16)
    space = SearchSpace.from_model(model, x[:1])
    rec = Reconstructor(model, space, x, ReconstructionConfig(positions_per_image=16))
    pruned = prune_model(model, space, {})
    rec.rebuild(pruned, {})
    with torch.no_grad():
        assert (pruned(x) - model(x)).abs().max() < 1e-4


@pytest.mark.parametrize("shortcut", ["pad", "projection"])
def test_reconstruction_brings_pruned_features_closer_to_the_original(shortcut):
    torch.manual_seed(0)
    model = randomize_bn(CifarResNet(14, 10, shortcut))
    x = torch.randn(128, 3, 16, 16)
    space = SearchSpace.from_model(model, x[:1])
    scores = compute_scores("l1", model, space)
    widths = space.widths({g.name: 0.5 for g in space.prunable})
    keep = space.keep_indices(widths, scores)
    rec = Reconstructor(model, space, x, ReconstructionConfig(positions_per_image=32))
    plain = prune_model(model, space, keep)
    rebuilt = prune_model(model, space, keep)
    errors = rec.rebuild(rebuilt, keep)
    assert min(errors.values()) < 1.0  # at least some layers improved on identity
    held_out = torch.randn(64, 3, 16, 16)
    with torch.no_grad():
        ref = model(held_out)
        before = (plain(held_out) - ref).pow(2).mean()
        after = (rebuilt(held_out) - ref).pow(2).mean()
    assert after < 0.7 * before
    # merged, not added: same parameter count as the plainly pruned net
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in plain.parameters())


def test_residual_blocks_found_with_their_shortcut_kind():
    kinds = {b.name: b.kind for b in find_residual_blocks(CifarResNet(20, 10, "pad"))}
    assert kinds["layer1.0"] == "identity" and kinds["layer2.0"] == "map"
    kinds = {b.name: b.kind for b in find_residual_blocks(CifarResNet(20, 10, "projection"))}
    assert kinds["layer3.0"] == "projection" and kinds["layer3.1"] == "identity"


def test_nan_features_fail_with_a_reason():
    model = randomize_bn(CifarResNet(8, 10, "pad"))
    x = torch.randn(16, 3, 16, 16)
    space = SearchSpace.from_model(model, x[:1])
    rec = Reconstructor(model, space, x, ReconstructionConfig(positions_per_image=8))
    pruned = prune_model(model, space, {})
    with torch.no_grad():
        pruned.layer1[0].conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        rec.rebuild(pruned, {})



def test_dead_channels_of_a_projection_block_keep_the_original_sum():
    """bn2 channels with scale below 1e-6 and a shortcut BN channel with scale exactly 0: those
    output channels keep identity rows in the branch and in the shortcut map (no mix, no 0/0)."""
    torch.manual_seed(0)
    model = randomize_bn(CifarResNet(8, 10, "projection"))
    block = model.layer2[0]
    with torch.no_grad():
        block.bn2.weight[:3] = 1e-9  # dead branch channels 0-2
        block.shortcut[1].weight[5] = 0.0  # shortcut channel 5: scale exactly 0
    x = torch.randn(64, 3, 16, 16)
    space = SearchSpace.from_model(model, x[:1])
    widths = space.widths({g.name: 1.0 if g.name.endswith("residual") else 0.5
                           for g in space.prunable})
    keep = space.keep_indices(widths, compute_scores("l1", model, space))
    rec = Reconstructor(model, space, x, ReconstructionConfig(positions_per_image=16, guard=False))
    plain, rebuilt = prune_model(model, space, keep), prune_model(model, space, keep)
    rec.rebuild(rebuilt, keep)
    assert all(torch.isfinite(p).all() for p in rebuilt.parameters())
    assert all(torch.isfinite(b).all() for b in rebuilt.buffers())
    before, after = plain.layer2[0], rebuilt.layer2[0]
    for i in (0, 1, 2):  # dead in the branch: the shortcut row is the original one
        assert torch.allclose(after.shortcut[0].weight[i], before.shortcut[0].weight[i],
                              atol=1e-6)
        assert after.shortcut[1].bias[i].item() == pytest.approx(
            before.shortcut[1].bias[i].item(), abs=1e-6)
        assert after.bn2.bias[i].item() == pytest.approx(before.bn2.bias[i].item(), abs=1e-6)
    # dead in the shortcut: the branch row is the original one, the shortcut's shift stays
    assert torch.allclose(after.conv2.weight[5], before.conv2.weight[5], atol=1e-6)
    assert after.shortcut[1].bias[5].item() == pytest.approx(before.shortcut[1].bias[5].item(),
                                                             abs=1e-6)
    # the live channels were fitted (the test would not notice a no-op rebuild otherwise)
    assert not torch.allclose(after.shortcut[0].weight[8], before.shortcut[0].weight[8])
    with torch.no_grad():
        assert torch.isfinite(rebuilt(x)).all()
