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
from searchprune.reconstruct import (
    Reconstructor,
    find_residual_blocks,
    merge_affine,
    merge_conv,
    plan,
)
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


# -- convs without BatchNorm ----------------------------------------------------------------------
class PlainNet(nn.Module):
    """conv -> ReLU -> conv (no BatchNorm) -> pool -> linear."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=bias)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 12, 3, padding=1, bias=bias)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.relu(self.conv1(x))).mean((2, 3)))


class SqueezeHead(nn.Module):
    """SqueezeNet's head: a final conv classifier -> ReLU -> global pool -> flatten; before it
    a conv whose output is added to its input (a residual sum without BatchNorm)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.res = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(16, 12, 1)
        self.classifier = nn.Sequential(nn.Dropout(), nn.Conv2d(12, 10, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(x + self.res(x))
        return torch.flatten(self.classifier(torch.relu(self.conv2(x))), 1)


def _halve(model: nn.Module, x: torch.Tensor, *names: str):
    """The space and the keep of ``model`` with the groups of ``names`` at half width."""
    space = SearchSpace.from_model(model, x[:1])
    assert set(names) <= {g.name for g in space.prunable}, [g.name for g in space.prunable]
    widths = space.widths({g.name: 0.5 if g.name in names else 1.0 for g in space.prunable})
    return space, space.keep_indices(widths, compute_scores("l1", model, space))


@pytest.mark.parametrize("bias", [True, False])
def test_a_conv_without_batchnorm_is_fitted_and_folded_into_its_weights(bias):
    torch.manual_seed(0)
    model = PlainNet(bias).eval()
    x, held_out = torch.randn(128, 3, 12, 12), torch.randn(64, 3, 12, 12)
    space, keep = _halve(model, x, "conv1")
    rec = Reconstructor(model, space, x, ReconstructionConfig(positions_per_image=32))
    plain, rebuilt = prune_model(model, space, keep), prune_model(model, space, keep)
    errors = rec.rebuild(rebuilt, keep)
    assert errors["conv2"] < 0.9
    assert rec.outcome(errors)["not_fitted"] == 1  # fc: the output layer
    with torch.no_grad():
        for data in (x, held_out):  # calibration and held-out images
            ref = model(data)
            before = (plain(data) - ref).pow(2).mean()
            after = (rebuilt(data) - ref).pow(2).mean()
            assert after < 0.5 * before
    # folded, not added: the conv keeps its parameters (no bias appears), the bias is refitted
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in plain.parameters())
    assert not torch.allclose(rebuilt.conv2.weight, plain.conv2.weight)
    if bias:
        assert not torch.allclose(rebuilt.conv2.bias, plain.conv2.bias)
    else:
        assert rebuilt.conv2.bias is None and rebuilt.conv1.bias is None


def test_the_plan_fits_convs_without_batchnorm_but_not_a_final_conv_classifier():
    torch.manual_seed(0)
    model = SqueezeHead().eval()
    x = torch.randn(64, 3, 8, 8)
    space, keep = _halve(model, x, "conv2")
    rows = {p.layer: p for p in plan(model, space, x[:1])}
    assert rows["conv2"].fitted
    assert rows["conv2"].how == ("conv without BatchNorm: outputs remixed, folded into its "
                                 "weights and bias")
    assert rows["res"].fitted and rows["res"].how.endswith("not to the residual sum it feeds")
    assert "no bias" in rows["res"].how
    assert not rows["classifier.1"].fitted
    assert rows["classifier.1"].how == "the model's output layer (its targets would be the logits)"
    rec = Reconstructor(model, space, x, ReconstructionConfig(positions_per_image=16))
    pruned = prune_model(model, space, keep)
    before = pruned.classifier[1].weight.clone()
    errors = rec.rebuild(pruned, keep)
    assert "classifier.1" not in errors and torch.equal(pruned.classifier[1].weight, before)
    assert rec.n_not_fitted == 1 and rec.outcome(errors)["not_fitted"] == 1


@pytest.mark.parametrize("groups", [1, 4, 8])
def test_merge_into_a_conv_equals_explicit_channel_mixing(groups):
    """``W' = X W``, ``b' = X b + c``: plain, grouped (X block-diagonal) and depthwise
    (X diagonal) convs."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
    x = torch.randn(3, 8, 6, 6)
    c = torch.randn(8)
    if groups == 8:
        X = torch.rand(8) + 0.5
        mixed = lambda y: y * X.view(1, -1, 1, 1)  # noqa: E731
    else:
        X = torch.block_diag(*torch.randn(groups, 8 // groups, 8 // groups))
        mixed = lambda y: torch.einsum("ij,njhw->nihw", X, y)  # noqa: E731
    with torch.no_grad():
        expected = mixed(conv(x)) + c.view(1, -1, 1, 1)
        merge_conv(conv, X.double(), c.double(), diagonal=groups == 8)
        assert (conv(x) - expected).abs().max() < 1e-4
    with pytest.raises(ValueError, match="without a bias"):
        merge_conv(nn.Conv2d(8, 8, 1, bias=False), torch.eye(8), torch.ones(8))


class StdConv2d(nn.Conv2d):
    """A weight-standardized conv (BiT, NFNet): its forward does not compute with the weight as
    it is, so a fit cannot be folded into it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


def test_a_conv_whose_forward_transforms_its_weight_is_not_fitted():
    torch.manual_seed(0)
    model = PlainNet().eval()
    model.conv2 = StdConv2d(16, 12, 3, padding=1)
    x = torch.randn(32, 3, 8, 8)
    space = SearchSpace.from_model(model, x[:1])
    rows = {p.layer: p for p in plan(model, space, x[:1])}
    assert rows["conv1"].fitted and not rows["conv2"].fitted
    assert rows["conv2"].how.startswith("a fit does not fold into its weights exactly")
