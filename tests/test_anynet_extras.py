"""Any network, continued (issue 23): the latency table's layer shapes are the built network's,
the slimmable supernet honours grouped convs, what least squares does to each layer is said
before the search and recorded per trial."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
import torch
from _anynets import AttnNet, ConcatNet, GroupedNet, NextNet
from _helpers import ROOT, cli, make_cfg
from _nets import randomize_bn, tiny_engine
from torch import nn

import searchprune.latency as lat
from searchprune.config import ReconstructionConfig
from searchprune.constraints import LatencySpec
from searchprune.criteria import compute_scores
from searchprune.prune import prune_model
from searchprune.reconstruct import Reconstructor, plan
from searchprune.search import run_study
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


# -- least squares: where it applies, what a trial did --------------------------------------------
def test_the_plan_names_every_narrowed_layer_fitted_or_why_not():
    model, x, space = _space(ConcatNet)
    rows = {p.layer: p for p in plan(model, space, x[:1])}
    assert rows["dw.0"].fitted and rows["dw.0"].how.startswith("depthwise conv")
    assert rows["grow.0"].fitted and rows["branch_a.0"].fitted
    assert rows["mix"].fitted and rows["mix"].how.startswith("conv without BatchNorm")
    model, x, space = _space(GroupedNet)
    rows = {p.layer: p for p in plan(model, space, x[:1])}
    assert "per conv-group (4)" in rows["grouped.0"].how
    assert not rows["fc"].fitted and "output layer" in rows["fc"].how
    model, x, space = _space(NextNet)
    rows = {p.layer: p for p in plan(model, space, x[:1])}
    assert rows["fc1"].fitted and rows["fc2"].fitted and rows["fc2"].how.startswith("linear")
    assert [n for n, p in rows.items() if not p.fitted] == ["head"]
    assert rows["dw"].how.startswith("depthwise conv without BatchNorm: a scale per channel")
    assert rows["stem"].how.endswith("not to the residual sum it feeds")


def test_least_squares_re_solves_an_mlp_second_linear_from_its_kept_inputs():
    torch.manual_seed(0)
    model = AttnNet().eval()
    x = torch.randn(96, 3, 32, 32)
    space = SearchSpace.from_model(model, x[:1])
    assert [g.name for g in space.prunable] == ["mlp.0"]  # the MLP width; the stream is fixed
    widths = space.widths({"mlp.0": 0.5})
    keep = space.keep_indices(widths, compute_scores("l1", model, space))
    rec = Reconstructor(model, space, x, ReconstructionConfig(positions_per_image=16))
    plain, rebuilt = prune_model(model, space, keep), prune_model(model, space, keep)
    errors = rec.rebuild(rebuilt, keep)
    assert errors["mlp.2"] < 1.0
    assert rec.outcome(errors)["fitted"] >= 1
    assert not torch.equal(rebuilt.mlp[2].weight, plain.mlp[2].weight)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(
        p.numel() for p in plain.parameters())  # merged, not added
    held_out = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        ref = model(held_out)
        before = (plain(held_out) - ref).pow(2).mean()
        after = (rebuilt(held_out) - ref).pow(2).mean()
    assert after < 0.7 * before


def test_a_linear_with_fewer_samples_than_inputs_is_skipped_and_counted():
    torch.manual_seed(0)
    model = AttnNet().eval()
    x = torch.randn(8, 3, 32, 32)  # 8 images x 2 token positions < 16 kept inputs of mlp.2
    space = SearchSpace.from_model(model, x[:1])
    keep = space.keep_indices(space.widths({"mlp.0": 0.5}),
                              compute_scores("l1", model, space))
    rec = Reconstructor(model, space, x, ReconstructionConfig(positions_per_image=2))
    pruned = prune_model(model, space, keep)
    before = pruned.mlp[2].weight.clone()
    errors = rec.rebuild(pruned, keep)
    assert "mlp.2" not in errors and torch.equal(pruned.mlp[2].weight, before)
    assert rec.outcome(errors)["skipped"] == 2  # mlp.0 (17 inputs) and mlp.2


def test_each_trial_records_what_least_squares_did(tmp_path):
    engine = tiny_engine("ls", model=randomize_bn(NextNet()))
    cfg = make_cfg(tmp_path, n_trials=2, **{"pruning.gamma": 0.7, "pruning.tolerance": 0.1})
    study = run_study(cfg, engine=engine, progress=False,
                      storage=optuna.storages.InMemoryStorage())
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 2
    for t in done:  # dw, down (convs without BatchNorm), fc1 and fc2 fitted; stem kept (its
        # input is the image, so its kept outputs are already exact); head (output) not
        assert t.user_attrs["least_squares"] == {"fitted": 4, "kept": 1, "skipped": 0,
                                                 "not_fitted": 1}


def test_model_info_lists_what_least_squares_does_to_each_layer():
    env = {"PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"}
    proc = cli("model", "info", "--model", "_anynets:NextNet", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {r["layer"]: r for r in json.loads(proc.stdout)["least_squares"]}
    assert rows["fc2"]["fitted"] and rows["fc2"]["type"] == "Linear"
    assert rows["down"] == {"layer": "down", "type": "Conv2d", "fitted": True,
                            "how": "conv without BatchNorm: outputs remixed, folded into its "
                                   "weights and bias"}
    assert rows["head"]["fitted"] is False
    proc = cli("model", "info", "--model", "_anynets:NextNet", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "least squares (pruning.proxy ls, abn+ls): 5 layers fitted, 1 not" in proc.stderr


@pytest.mark.parametrize("cls,searched", [(NextNet, {"fc2.residual", "fc1", "down"}),
                                          (AttnNet, {"mlp.0"})])
def test_channels_last_layers_are_searched_when_rows_outnumber_channels(cls, searched):
    """At 64 px a channels-last map (32 x 32 rows, 16 channels) or 65 tokens of 16 channels:
    the flatten inside ``F.linear`` keeps the channels; the cost stays exact."""
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(1, 3, 64, 64)
    space = SearchSpace.from_model(model, x)
    assert {g.name for g in space.prunable} == searched, [g.reason for g in space.fixed]
    rng = np.random.default_rng(0)
    for _ in range(3):
        widths = space.widths({g.name: rng.uniform(0.3, 1.0) for g in space.prunable})
        net = prune_model(model, space, space.first_indices(widths))
        assert count_cost(net, x) == space.cost(widths)
