"""Any network, continued (issue 23): the latency table's layer shapes are the built network's,
the slimmable supernet honours grouped convs, what least squares does to each layer is said
before the search and recorded per trial."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _anynets import ConcatNet, GroupedNet
from torch import nn

import searchprune.latency as lat
from searchprune.constraints import LatencySpec
from searchprune.space import SearchSpace
from searchprune.space._cost import count_cost
from searchprune.supernet import MaskedSupernet, WidthChoices, first_k_keep

HW = 16


def _space(cls, seed: int = 0):
    torch.manual_seed(seed)
    model = cls().eval()
    x = torch.randn(6, 3, HW, HW)
    return model, x, SearchSpace.from_model(model, x[:1])


def _layer_macs(net: nn.Module) -> dict[str, int]:
    """MACs of every Conv2d and 2-D Linear call of ``net`` on one image, counted on the call."""
    inputs: dict[str, torch.Tensor] = {}
    names = {m: n for n, m in net.named_modules()}

    def hook(mod, args, out):
        if isinstance(mod, nn.Conv2d) or (isinstance(mod, nn.Linear) and args[0].dim() == 2):
            inputs[names[mod]] = args[0]

    handles = [m.register_forward_hook(hook) for m in names]
    with torch.no_grad():
        net(torch.zeros(1, 3, HW, HW))
    for h in handles:
        h.remove()
    return {n: count_cost(net.get_submodule(n), x).macs for n, x in inputs.items()}


def _conv_macs_timer(module, x, *, repeats: int = 10, warmup: int = 3) -> float:
    """"Milliseconds" = MACs of a unit's conv or linear alone (of a whole network: its MACs)."""
    first = module[0] if isinstance(module, nn.Sequential) else module
    return float(count_cost(first, x[:1]).macs)


@pytest.mark.parametrize("cls", [ConcatNet, GroupedNet])
def test_latency_layer_shapes_are_those_of_the_built_network(cls, monkeypatch):
    """A concatenation feeding a depthwise conv or a conv (ConcatNet) and grouped convs
    (GroupedNet): each timed layer's channels come from the cost model's linear forms, so they
    are the built network's, and the interpolated layer time is exact for a cost bilinear in
    the channels."""
    monkeypatch.setattr(lat, "time_forward", _conv_macs_timer)
    model, _, space = _space(cls)
    table = lat.build_table(model, space, (3, HW, HW), LatencySpec(batch_size=1, threads=1),
                            fit_nets=2, holdout_nets=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        widths = space.widths({g.name: rng.uniform(0.3, 1.0) for g in space.prunable})
        net = lat.network_of(model, space, widths)
        built = {}
        for name, mod in net.named_modules():
            if isinstance(mod, nn.Conv2d):
                built[name] = (mod.in_channels, mod.out_channels)
            elif isinstance(mod, nn.Linear):
                built[name] = (mod.in_features, mod.out_features)
        assert table.layer_shapes(widths) == built
        macs = _layer_macs(net)
        assert set(macs) == set(built)
        assert table.layer_ms(widths) == pytest.approx(sum(macs.values()), rel=1e-9)


def test_concat_into_a_depthwise_conv_is_timed_at_both_branches_widths(monkeypatch):
    monkeypatch.setattr(lat, "time_forward", _conv_macs_timer)
    model, _, space = _space(ConcatNet)
    table = lat.build_table(model, space, (3, HW, HW), LatencySpec(batch_size=1, threads=1),
                            fit_nets=2, holdout_nets=0)
    widths = {"branch_a.0": 2, "branch_b.0": 10}
    assert table.layer_shapes(widths)["dw.0"] == (12, 12)
    assert table.layer_shapes(widths)["grow.0"] == (12, 4)


def test_the_supernet_keeps_as_many_channels_in_every_conv_group():
    model, x, space = _space(GroupedNet)
    choices = WidthChoices.from_groups(space.prunable, 0.3, 2)
    for g in space.prunable:  # widths are multiples of the conv-groups too (lcm with 2)
        assert all(w % np.lcm(2, g.unit) == 0 for w in choices.choices[g.name]), g.name
    assert choices.choices["grouped.0"] == (8, 12, 16)  # 4 conv-groups
    supernet = MaskedSupernet(model, space)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        full = model(x)
        for widths in [choices.smallest(), *(choices.sample(gen) for _ in range(4))]:
            keep = first_k_keep(space, widths)
            if "grouped.0" in keep:  # 4 conv-groups of 4: the first w/4 of each
                per = widths["grouped.0"] // 4
                assert keep["grouped.0"].tolist() == [b * 4 + i for b in range(4)
                                                      for i in range(per)]
            with supernet.use(widths):
                masked = model(x)
            pruned = supernet.extract(widths)
            torch.testing.assert_close(pruned(x), masked, atol=1e-5, rtol=1e-5)
            assert space.cost(widths).params == sum(p.numel() for p in pruned.parameters())
        torch.testing.assert_close(model(x), full)
