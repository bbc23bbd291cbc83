"""Proxies: how a pruned candidate's weights are restored before it is scored."""

from __future__ import annotations

import pytest
import torch
from _nets import tiny_engine
from torch import nn

from searchprune.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    upgrade_stored,
)
from searchprune.engine import PruningEngine, proxy_steps
from searchprune.errors import ConfigError
from searchprune.prune import prune_model


def _engine(proxy: str = "ls", **overrides):
    return tiny_engine(proxy, **overrides)


def _half(engine: PruningEngine) -> dict[str, int]:
    return engine.widths({g.name: 0.5 for g in engine.groups})


def _bns(net: nn.Module) -> dict[str, nn.BatchNorm2d]:
    return {n: m for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)}


def _convs(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in net.named_modules()
            if isinstance(m, nn.Conv2d)}


def test_none_keeps_the_sliced_weights_untouched():
    engine = _engine("none")
    widths = _half(engine)
    net = engine.build(widths)
    keep = engine.space.keep_indices(widths, engine.scores)
    sliced = prune_model(engine.model, engine.space, keep)
    got, want = net.state_dict(), sliced.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    # and they are the original's values on the kept channels
    orig = dict(engine.model.named_modules())
    for name, bn in _bns(net).items():
        assert set(bn.running_mean.tolist()) <= set(orig[name].running_mean.tolist())
    assert engine._reconstructor is None  # no features captured for a proxy that needs none


def test_abn_reestimates_bn_statistics_and_leaves_conv_weights():
    engine = _engine("abn")
    widths = _half(engine)
    plain, abn = engine.build(widths, proxy="none"), engine.build(widths)
    plain_bn, abn_bn = _bns(plain), _bns(abn)
    assert all(not torch.allclose(abn_bn[n].running_mean, plain_bn[n].running_mean)
               for n in plain_bn)
    assert all(not torch.allclose(abn_bn[n].running_var, plain_bn[n].running_var)
               for n in plain_bn)
    convs_plain, convs_abn = _convs(plain), _convs(abn)
    assert all(torch.equal(convs_abn[n], convs_plain[n]) for n in convs_plain)
    # the re-estimated statistics are those of the calibration images: the first BN's input
    x = engine.data.calib.x
    first = next(iter(abn_bn))
    feats = abn.get_submodule(first.replace("bn", "conv"))(x)
    assert torch.allclose(abn_bn[first].running_mean, feats.mean((0, 2, 3)), atol=1e-4)


def test_abn_images_limits_the_images_used():
    few = _engine("abn", **{"pruning.abn_images": 8})
    widths = _half(few)
    a = _bns(few.build(widths))
    b = _bns(few.build(widths, proxy="none"))
    first = next(iter(a))
    x = few.data.calib.x[:8]
    feats = few.build(widths).get_submodule(first.replace("bn", "conv"))(x)
    assert torch.allclose(a[first].running_mean, feats.mean((0, 2, 3)), atol=1e-4)
    assert not torch.allclose(a[first].running_mean, b[first].running_mean)


def test_abn_then_ls_differs_from_each_alone_and_times_both_steps():
    engine = _engine("abn+ls")
    widths = _half(engine)
    x = engine.data.val.x
    outs, seconds = {}, {}
    for proxy in ("ls", "abn", "abn+ls"):
        seconds[proxy] = {}
        with torch.no_grad():
            outs[proxy] = engine.build(widths, proxy=proxy, seconds=seconds[proxy])(x)
    assert not torch.allclose(outs["abn+ls"], outs["ls"], atol=1e-4)
    assert not torch.allclose(outs["abn+ls"], outs["abn"], atol=1e-4)
    assert {"abn", "reconstruct"} <= seconds["abn+ls"].keys()
    assert "abn" not in seconds["ls"] and "reconstruct" not in seconds["abn"]


def test_ls_brings_features_closer_than_none():
    engine = _engine("ls")
    widths = _half(engine)
    x = engine.data.calib.x
    with torch.no_grad():
        ref = engine.model(x)
        err = {p: (engine.build(widths, proxy=p)(x) - ref).pow(2).mean().item()
               for p in ("none", "ls")}
    assert err["ls"] < 0.5 * err["none"]


def test_unknown_proxy_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="unknown pruning.proxy 'lss'.*did you mean 'ls'"):
        apply_overrides(Config(), {"pruning.proxy": "lss"})
    with pytest.raises(ConfigError, match="choose one of"):
        proxy_steps("bn")
    with pytest.raises(ConfigError, match="abn_images"):
        apply_overrides(Config(), {"pruning.abn_images": 10_000})


def test_old_reconstruction_switch_in_a_file_points_to_proxy(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("pruning:\n  reconstruction:\n    enabled: false\n")
    with pytest.raises(ConfigError, match="replaced by 'pruning.proxy'.*none"):
        load_config(f)


def test_a_study_stored_before_proxies_existed_keeps_its_restoration():
    from searchprune.search.runner import config_diff

    new = config_to_dict(apply_overrides(Config(), {"pruning.proxy": "ls"}))
    old = config_to_dict(Config())
    del old["pruning"]["proxy"], old["pruning"]["abn_images"]
    old["pruning"]["reconstruction"]["enabled"] = True
    assert config_from_dict(upgrade_stored(old)).pruning.proxy == "ls"
    assert config_diff(old, new) == {}
    old["pruning"]["reconstruction"]["enabled"] = False
    assert config_from_dict(upgrade_stored(old)).pruning.proxy == "none"
    assert set(config_diff(old, new)) == {"pruning.proxy"}
    # a stored proxy is kept as it is
    stored = config_to_dict(apply_overrides(Config(), {"pruning.proxy": "abn"}))
    assert config_from_dict(upgrade_stored(stored)).pruning.proxy == "abn"
