"""Any network a user brings: every layer kind is pruned with exact costs and the channels the
criterion chose, or its group is kept whole (named in ``model info``), or the model is refused in
one line. Tiny random networks on 16-px inputs; torchvision family representatives at 32 px."""

from __future__ import annotations

import json
import random
import time

import _anynets as nets
import pytest
import torch
import torchvision
from _helpers import ROOT, cli, one_line_error
from _nets import randomize_bn, tiny_engine
from torch import nn

from searchprune.criteria import compute_scores
from searchprune.criteria._common import gate_points
from searchprune.errors import ModelError
from searchprune.prune import prune_model
from searchprune.space import SearchSpace, count_cost

HW = 16


def _build(cls, hw: int = HW):
    torch.manual_seed(0)
    model = randomize_bn(cls())
    x = torch.randn(1, 3, hw, hw)
    return model, x, SearchSpace.from_model(model, x)


def _l1_build(model, space, widths):
    scores = compute_scores("l1", model, space)
    keep = space.keep_indices(widths, scores)
    return prune_model(model, space, keep), keep, scores


def _masked_output(model, space, keep, x):
    """The unpruned network with every removed channel zeroed where it leaves its group."""
    handles = []
    for name, kept in keep.items():
        g = space.group(name)
        removed = torch.ones(g.channels, dtype=torch.bool)
        removed[kept] = False
        for p in gate_points(model, g):
            drop = p.idxs[removed[p.roots]]

            def hook(mod, inp, out, drop=drop):
                out = out.clone()
                out[:, drop] = 0
                return out
            handles.append(model.get_submodule(p.module).register_forward_hook(hook))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()


# -- each layer kind: exact cost, the built net runs --------------------------------------------
@pytest.mark.parametrize("cls, searched", [(nets.ConcatNet, 4), (nets.GroupedNet, 4),
                                           (nets.NextNet, 3), (nets.AttnNet, 1)])
def test_cost_is_exact_and_the_pruned_net_runs(cls, searched):
    model, x, space = _build(cls)
    assert len(space.prunable) == searched
    rng = random.Random(f"anynet-{cls.__name__}")
    configs = [space.widths({g.name: rng.uniform(0.1, 1.0) for g in space.prunable})
               for _ in range(3)]
    configs.append(space.widths({g.name: 0.0 for g in space.prunable}))  # every group at its min
    for widths in configs:
        pruned, _, _ = _l1_build(model, space, widths)
        assert space.cost(widths) == count_cost(pruned, x)
        with torch.no_grad():
            assert pruned(torch.randn(2, 3, HW, HW)).shape == (2, 10)


def test_concat_into_a_depthwise_conv_is_cut_per_branch():
    """The issue's own CNN: the two branches of a concatenation are separate groups, so keeping
    all of one and little of the other costs exactly what the built net counts."""
    model, x, space = _build(nets.ConcatNet)
    names = {g.name for g in space.prunable}
    assert {"branch_a.0", "branch_b.0"} <= names
    assert space.group("branch_a.0").channels == 6 and space.group("branch_b.0").channels == 10
    full = space.widths({})
    for a, b in [(6, 2), (1, 10), (3, 5)]:
        widths = {**full, "branch_a.0": a, "branch_b.0": b}
        pruned, _, _ = _l1_build(model, space, widths)
        assert pruned.dw[0].out_channels == pruned.dw[0].groups == a + b
        assert space.cost(widths) == count_cost(pruned, x)


def test_kept_channels_are_the_l1_top_k_at_their_own_offsets():
    model, x, space = _build(nets.ConcatNet)
    widths = space.widths({"branch_a.0": 0.5, "branch_b.0": 0.4, "grow.0": 0.5,
                           "res.residual": 0.5})
    pruned, keep, scores = _l1_build(model, space, widths)
    for name, w in widths.items():
        top = torch.sort(torch.topk(scores[name], w).indices).values
        assert torch.equal(keep[name], top)
    # each producer keeps the rows of the chosen channels (and the columns of its input's)
    stream = keep["res.residual"]
    for name in ("branch_a.0", "branch_b.0"):
        want = model.get_submodule(name).weight[keep[name]][:, stream]
        assert torch.equal(pruned.get_submodule(name).weight, want)
    # the BN after the DenseNet-style concatenation [dw(a, b), grow] keeps every group's choice
    want = torch.cat([keep["branch_a.0"], 6 + keep["branch_b.0"], 16 + keep["grow.0"]])
    assert torch.equal(pruned.norm.weight, model.norm.weight[want])
    assert torch.equal(pruned.mix.weight, model.mix.weight[:, want])
    # and the whole network is the original with the removed channels zeroed
    xb = torch.randn(4, 3, HW, HW)
    with torch.no_grad():
        assert torch.allclose(pruned(xb), _masked_output(model, space, keep, xb), atol=1e-5)


# -- grouped convs ------------------------------------------------------------------------------
def test_grouped_conv_keeps_the_same_channels_in_every_conv_group():
    model, x, space = _build(nets.GroupedNet)
    assert space.unit(space.group("reduce.0")) == 4 and space.unit(space.group("grouped.0")) == 4
    widths = space.widths({g.name: 0.45 for g in space.prunable})
    assert all(w % space.unit(space.group(n)) == 0 for n, w in widths.items())
    pruned, keep, scores = _l1_build(model, space, widths)
    conv = pruned.grouped[0]
    assert conv.groups == 4 and conv.in_channels == widths["reduce.0"]
    assert conv.out_channels == widths["grouped.0"]
    per = widths["reduce.0"] // 4
    for b in range(4):  # each conv-group keeps its own top-scored channels
        block = torch.arange(4 * b, 4 * b + 4)
        top = block[torch.topk(scores["reduce.0"][block], per).indices]
        assert torch.equal(torch.sort(top).values, keep["reduce.0"][b * per:(b + 1) * per])
    xb = torch.randn(3, 3, HW, HW)
    with torch.no_grad():
        assert torch.allclose(pruned(xb), _masked_output(model, space, keep, xb), atol=1e-5)


def test_least_squares_fits_a_grouped_conv_per_conv_group():
    engine = tiny_engine("ls", model=randomize_bn(nets.GroupedNet()))
    widths = engine.widths({g.name: 0.5 for g in engine.groups})
    keep = engine.space.keep_indices(widths, engine.scores)
    pruned = prune_model(engine.model, engine.space, keep)
    errors = engine.reconstructor.rebuild(pruned, keep)
    assert "grouped.1" in errors and errors["grouped.1"] < 1.0
    assert pruned.grouped[0].groups == 4
    with torch.no_grad():
        assert torch.isfinite(pruned(torch.randn(2, 3, HW, HW))).all()


# -- LayerNorm2d, layer scale, attention ----------------------------------------------------------
def test_layernorm_and_layer_scale_are_sliced_with_their_channels():
    model, x, space = _build(nets.NextNet)
    stream = next(g for g in space.prunable if g.params)
    assert [p.name for p in stream.params] == ["layer_scale"]
    widths = space.widths({g.name: 0.5 for g in space.prunable})
    pruned, keep, _ = _l1_build(model, space, widths)
    kept = keep[stream.name]
    assert torch.equal(pruned.layer_scale, model.layer_scale[kept])
    assert pruned.norm.normalized_shape == (widths[stream.name],)
    assert torch.equal(pruned.down_norm.weight, model.down_norm.weight[kept])
    assert space.cost(widths) == count_cost(pruned, x)


def test_attention_is_counted_and_its_stream_is_kept_whole():
    model, x, space = _build(nets.AttnNet)
    fixed = {g.name: g.reason for g in space.fixed}
    assert any("attn (MultiheadAttention)" in r for r in fixed.values())
    assert [g.name for g in space.prunable] == ["mlp.0"]
    # 5 tokens of 16 dims: in-projection, out-projection and both attention matmuls
    tokens, dim = 5, 16
    attention = 3 * tokens * dim * dim + tokens * dim * dim + 2 * tokens * tokens * dim
    assert space._cost.unattributed_macs == attention
    assert space.base_cost == count_cost(model, x)


# -- kept whole or refused ------------------------------------------------------------------------
def test_a_channel_shuffle_keeps_its_group_whole():
    model, x, space = _build(nets.ShuffleNet)
    assert "channel shuffle" in space.group("a.0").reason and not space.group("a.0").prunable
    assert space.group("b.0").prunable


def test_a_layer_the_cost_model_gets_wrong_is_found_by_the_check():
    model, x, space = _build(nets.CustomNet)
    assert space.group("a.0").reason.startswith("cost check: ")
    assert not space.group("a.0").prunable and space.group("b.0").prunable


def test_a_model_that_does_not_take_the_input_is_one_line():
    model = torchvision.models.vit_b_16(num_classes=10).eval()
    with pytest.raises(ModelError, match=r"does not run on an input of shape \(1, 3, 32, 32\)"):
        SearchSpace.from_model(model, torch.randn(1, 3, 32, 32))


class _Slow(nn.Module):
    def __init__(self, allocate_mb: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.allocate_mb = allocate_mb

    def forward(self, x):
        held = torch.ones(self.allocate_mb << 18) if self.allocate_mb else None
        time.sleep(0.6)
        del held
        return self.conv(x).mean((2, 3))


def test_discovery_time_and_memory_are_bounded():
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(ModelError, match=r"took more than 0.1 s") as exc:
        SearchSpace.from_model(_Slow(), x, seconds=0.1)
    assert "\n" not in str(exc.value)
    with pytest.raises(ModelError, match=r"needed more than 0.05 GB"):
        SearchSpace.from_model(_Slow(allocate_mb=200), x, memory_gb=0.05)


def test_model_info_names_the_fixed_groups_and_refuses_in_one_line():
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    proc = cli("model", "info", "--model", "_anynets:attn_net", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert any("attn (MultiheadAttention)" in r for r in info["fixed"].values())
    proc = cli("model", "info", "--model", "_anynets:attn_net", env=env)
    assert proc.returncode == 0 and "MultiheadAttention" in proc.stderr + proc.stdout
    proc = cli("model", "info", "--model", "shufflenet_v2_x0_5")
    assert proc.returncode != 0
    assert "channel shuffle" in one_line_error(proc)


# -- torchvision family representatives -----------------------------------------------------------
TORCHVISION = {
    "resnet18": {}, "mobilenet_v2": {}, "squeezenet1_0": {}, "densenet121": {},
    "googlenet": {"aux_logits": False, "init_weights": True}, "regnet_x_400mf": {},
}


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_families_have_exact_costs(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10, **TORCHVISION[name]).eval()
    x = torch.randn(1, 3, 32, 32)
    space = SearchSpace.from_model(model, x)  # checks 2 random configurations itself
    assert len(space.prunable) >= len(space.groups) - 1
    assert not any(g.reason.startswith("cost check") for g in space.groups)
    rng = random.Random(f"tv-{name}")
    widths = space.widths({g.name: rng.uniform(0.2, 1.0) for g in space.prunable})
    scores = {g.name: torch.rand(g.channels) for g in space.prunable}
    pruned = prune_model(model, space, space.keep_indices(widths, scores))
    assert space.cost(widths) == count_cost(pruned, x)


def test_torchvision_shufflenet_is_refused_in_one_line():
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    with pytest.raises(ModelError, match="channel shuffle") as exc:
        SearchSpace.from_model(model, torch.randn(1, 3, 32, 32))
    assert "\n" not in str(exc.value)


def test_a_block_diagonal_fit_merges_exactly_into_a_grouped_conv():
    from searchprune.config import ReconstructionConfig
    from searchprune.reconstruct import _solve_blocks, merge_affine

    torch.manual_seed(3)
    conv, bn = nn.Conv2d(8, 12, 3, padding=1, groups=4), randomize_bn(nn.BatchNorm2d(12))
    x = torch.randn(6, 8, 5, 5)
    with torch.no_grad():
        z = bn(conv(x))
    zf = z.permute(1, 0, 2, 3).reshape(12, -1)
    target = torch.randn(12, 12) @ zf + 0.3  # mixes conv-groups: only blocks can be fitted
    X, c, rel = _solve_blocks(zf, target, zf.shape[1], ReconstructionConfig(), 4)
    assert torch.count_nonzero(X.reshape(4, 3, 4, 3).permute(0, 2, 1, 3)[~torch.eye(4, dtype=bool)]) == 0
    assert rel < 1.0
    merge_affine(conv, bn, X, c)
    with torch.no_grad():
        merged = bn(conv(x)).permute(1, 0, 2, 3).reshape(12, -1)
    assert torch.allclose(merged.double(), X @ zf.double() + c[:, None], atol=1e-4)
