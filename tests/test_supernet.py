from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from searchprune.config import ModelConfig, config_from_dict
from searchprune.engine import engine_for
from searchprune.errors import CheckpointError
from searchprune.models import build_model
from searchprune.space import SearchSpace
from searchprune.supernet import (
    MaskedSupernet,
    SupernetEngine,
    SupernetLoss,
    WidthChoices,
    allowed_widths,
    bn_layers,
    make_divisible,
    recalibrate_bn,
    sample_configs,
    scratch_subnet,
    soft_cross_entropy,
    train_supernet,
    train_top_k,
)


def _cfg(tmp_path, val_size=1000, **supernet):
    sn = {"epochs": 3, "batch_size": 64, "lr": 0.05, "bn_calib_images": 300,
          "checkpoint": str(tmp_path / "sn" / "supernet.pt"), **supernet}
    return config_from_dict({
        "setting": "scratch", "model": {"name": "digits_resnet8"},
        # val_size 1000 leaves a 497-image training subset, 1300 a 197-image one
        "data": {"name": "digits", "val_size": val_size, "calib_size": 128},
        "pruning": {"gamma": 0.5, "tolerance": 0.05, "eta": 0.4},
        "supernet": sn, "device": "cpu",
    })


def _net(name: str = "digits_resnet8", shortcut: str = "projection", channels: int = 1,
         size: int = 8):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, shortcut=shortcut), num_classes=10,
                        in_channels=channels)
    x = torch.randn(12, channels, size, size)
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        model(x)
        model(2 * x + 1)
    model.eval()
    return model, x, SearchSpace.from_model(model, x[:1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("supernet")
    cfg = _cfg(tmp)
    run = train_supernet(cfg)
    return cfg, run


# -- widths --------------------------------------------------------------------------------------
def test_make_divisible_follows_slimmable_ops() -> None:
    assert [make_divisible(v) for v in (3, 6.4, 12.8, 25.6, 64, 100)] == [8, 8, 16, 24, 64, 104]
    assert make_divisible(13) == 16  # 8 would lose more than 10 %


@pytest.mark.parametrize("channels", [4, 16, 20, 32, 64, 100, 512])
@pytest.mark.parametrize("min_ratio", [0.1, 0.4, 0.9])
def test_allowed_widths_are_multiples_within_min_and_channels(channels, min_ratio) -> None:
    ws = allowed_widths(channels, min_ratio)
    low = min(channels, max(8, make_divisible(min_ratio * channels)))
    assert ws[0] == low and ws[-1] == channels
    assert max(ws) <= channels and list(ws) == sorted(set(ws))
    assert all(w % 8 == 0 for w in ws[:-1]) and (channels % 8 or ws[-1] % 8 == 0)
    assert allowed_widths(20, 0.4) == (8, 16, 20)


def test_choices_nearest_and_sampling_stay_allowed() -> None:
    _, _, space = _net()
    choices = WidthChoices.from_groups(space.prunable, 0.4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        w = choices.sample(gen)
        assert choices.contains(w)
        assert all(w[g.name] <= g.channels for g in space.prunable)
    assert choices.nearest({g.name: 1.0 for g in space.prunable}) == choices.full()
    assert choices.nearest({g.name: 0.0 for g in space.prunable}) == choices.smallest()
    assert choices.nearest({"layer3.0.conv1": 0.5})["layer3.0.conv1"] == 32


@pytest.mark.parametrize("sandwich", [False, True])
def test_sampling_rule_draws_full_plus_num_random(sandwich) -> None:
    _, _, space = _net()
    choices = WidthChoices.from_groups(space.prunable, 0.4)
    configs = sample_configs(choices, 3, sandwich, torch.Generator().manual_seed(0))
    assert len(configs) == 4 and configs[0] == choices.full()
    # the paper's rule draws every sub-network at random; the sandwich rule fixes the smallest
    smallest_drawn = [c == choices.smallest() for c in configs[1:]]
    assert smallest_drawn == ([True, False, False] if sandwich else [False, False, False])
    assert all(choices.contains(c) for c in configs)
    assert sample_configs(choices, 0, sandwich) == [choices.full()]


# -- masking == extraction ---------------------------------------------------------------------
@pytest.mark.parametrize("name,shortcut,channels,size", [
    ("digits_resnet8", "projection", 1, 8), ("digits_resnet8", "pad", 1, 8),
    ("cifar_resnet20", "pad", 3, 16)])
def test_masked_supernet_equals_extracted_network(name, shortcut, channels, size) -> None:
    model, x, space = _net(name, shortcut, channels, size)
    choices = WidthChoices.from_groups(space.prunable, 0.3)
    supernet = MaskedSupernet(model, space)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        full = model(x)
        for widths in [choices.smallest(), *(choices.sample(gen) for _ in range(3))]:
            with supernet.use(widths):
                masked = model(x)
            pruned = supernet.extract(widths)
            torch.testing.assert_close(pruned(x), masked, atol=1e-5, rtol=1e-5)
            assert not torch.allclose(masked, full)
            # the extracted net physically has the widths, and the FLOPs model agrees
            assert space.cost(widths).params == sum(p.numel() for p in pruned.parameters())
        torch.testing.assert_close(model(x), full)  # back to the full network


# -- training loss ----------------------------------------------------------------------------
def test_distillation_target_is_detached_and_losses_are_summed() -> None:
    model, x, space = _net()
    y = torch.arange(len(x)) % 10
    choices = WidthChoices.from_groups(space.prunable, 0.4)
    supernet = MaskedSupernet(model, space)
    loss_fn = SupernetLoss(supernet, choices, num_random=1,
                           generator=torch.Generator().manual_seed(0))
    model.train()
    loss_fn(model, x, y).backward()
    got = [p.grad.clone() for p in model.parameters()]

    def reference(detach: bool):
        model.zero_grad()
        logits = model(x)
        teacher = F.softmax(logits.detach() if detach else logits, dim=1)
        with supernet.use(loss_fn.last_configs[1]):
            sub = model(x)
        (F.cross_entropy(logits, y) + soft_cross_entropy(sub, teacher)).backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(got, reference(detach=True)):
        torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a, b) for a, b in zip(got, reference(detach=False)))
    assert set(loss_fn.parts()) == {"full", "sub"}


def test_sub_networks_leave_running_stats_to_the_full_network() -> None:
    model, x, space = _net()
    y = torch.arange(len(x)) % 10
    supernet = MaskedSupernet(model, space)
    loss_fn = SupernetLoss(supernet, WidthChoices.from_groups(space.prunable, 0.4))
    reference = build_model(ModelConfig(), num_classes=10, in_channels=1)
    reference.load_state_dict(model.state_dict())
    model.train(), reference.train()
    with torch.no_grad():
        loss_fn(model, x, y)
        reference(x)
    for a, b in zip(bn_layers(model), bn_layers(reference)):
        torch.testing.assert_close(a.running_mean, b.running_mean)
        assert a.momentum == b.momentum == 0.1


# -- training, resume, recalibration, engine ------------------------------------------------------
def test_training_decreases_loss_and_writes_checkpoints(trained) -> None:
    cfg, run = trained
    losses = [r["loss"] for r in run.records]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert all("loss_full" in r and "loss_sub" in r for r in run.records)
    assert run.checkpoint.is_file()
    meta = json.loads(run.checkpoint.with_suffix(".json").read_text())
    assert meta["epochs_done"] == 3


def test_resume_continues_from_the_last_epoch(tmp_path) -> None:
    cfg = _cfg(tmp_path, val_size=1300, epochs=2)
    first = train_supernet(cfg, on_epoch=lambda record: True)  # interrupted after epoch 1
    assert [r["epoch"] for r in first.records] == [1]
    resumed = train_supernet(cfg, epochs=2)
    assert [r["epoch"] for r in resumed.records] == [1, 2]
    assert resumed.records[0] == first.records[0]
    straight = train_supernet(cfg, checkpoint=tmp_path / "other.pt")
    for (k, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_bn_recalibration_changes_stats_and_helps(trained) -> None:
    cfg, _ = trained
    engine = SupernetEngine.from_config(cfg)
    widths = engine.choices.smallest()
    sub = engine.supernet.extract(widths)
    before = [bn.running_mean.clone() for bn in bn_layers(sub)]
    plain = engine.evaluate(widths, calibrate=False).top1
    recalibrate_bn(sub, engine.calib_images, batch_size=128)
    assert not sub.training and all(bn.momentum == 0.1 for bn in bn_layers(sub))
    assert any(not torch.allclose(a, bn.running_mean) for a, bn in zip(before, bn_layers(sub)))
    calibrated = engine.evaluate(widths).top1
    assert calibrated > plain + 10.0


def test_engine_interface_matches_the_study_runner(trained) -> None:
    cfg, _ = trained
    engine = engine_for(cfg)
    assert isinstance(engine, SupernetEngine)
    names = [g.name for g in engine.groups]
    widths = engine.widths({n: 0.6 for n in names})
    assert engine.choices.contains(widths)
    low, high = engine.ratio_range()
    assert 0 < low < engine.flops_ratio(widths) < high == 1.0
    result = engine.evaluate(widths, split="val")
    assert result.widths == widths and result.images == 1000
    assert result.top1 == pytest.approx(engine.evaluate(widths, split="val").top1)  # deterministic
    assert result.cost == engine.cost(widths)
    assert set(result.seconds) == {"build", "calibrate", "evaluate"}
    assert engine.evaluate_baseline()[0] > 50.0


def test_engine_for_pretrained_and_missing_checkpoint(tmp_path, monkeypatch) -> None:
    from searchprune.engine import PruningEngine

    monkeypatch.setattr(PruningEngine, "from_config", classmethod(lambda cls, cfg, **kw: "P"))
    assert engine_for(config_from_dict({})) == "P"
    with pytest.raises(CheckpointError, match="searchprune supernet train"):
        SupernetEngine.from_config(_cfg(tmp_path / "missing"))


def test_train_top_k_and_scratch_retraining(trained) -> None:
    cfg, _ = trained
    engine = SupernetEngine.from_config(cfg)
    gen = torch.Generator().manual_seed(0)
    candidates = [engine.choices.sample(gen) for _ in range(2)]
    fresh = scratch_subnet(engine, candidates[0], seed=5)
    assert sum(p.numel() for p in fresh.parameters()) == engine.cost(candidates[0]).params
    result = train_top_k(engine, candidates, k=2, finetune_epochs=1, retrain_epochs=1)
    assert len(result.candidates) == 2 and result.best in candidates
    assert all(c.finetuned_top1 is not None for c in result.candidates)
    assert len(result.retrain_records) == 1
    # the reported test figure is the retrained network's, one epoch from a fresh init
    assert result.retrained_test_top1 > 100.0 / 10 + 5  # digits: above chance (10 classes)
    assert result.retrained_val_top1 == pytest.approx(result.retrain_records[-1]["val_top1"])


def test_cli_train_and_rank_json(trained, capsys) -> None:
    from searchprune.cli import supernet as cli

    cfg, _ = trained
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true")
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"), common)
    path = cfg.supernet.checkpoint
    src = json.dumps({"setting": "scratch", "data": {"val_size": 1000, "calib_size": 128},
                      "pruning": {"gamma": 0.5, "tolerance": 0.05, "eta": 0.4},
                      "supernet": {"epochs": 3, "batch_size": 64, "lr": 0.05,
                                   "bn_calib_images": 300}})
    yaml_file = Path(path).parent / "c.yaml"
    yaml_file.write_text(src)  # JSON is YAML
    args = parser.parse_args(["supernet", "train", str(yaml_file), "--checkpoint", path, "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["epochs_done"] == 3 and out["checkpoint"] == path  # already trained: resumed
    args = parser.parse_args(["supernet", "rank", str(yaml_file), "--n", "3", "--json"])
    args.checkpoint = path
    assert args.func(args) == 0
    ranked = json.loads(capsys.readouterr().out)["ranked"]
    assert len(ranked) == 3 and all(abs(r["flops_ratio"] - 0.5) <= 0.05 for r in ranked)
