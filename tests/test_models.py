from __future__ import annotations

import copy
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from searchprune.config import DataConfig, ModelConfig
from searchprune.errors import CheckpointError, ModelError
from searchprune.models import (
    BasicBlock,
    build_model,
    list_models,
    load_checkpoint,
    register_model,
)
from searchprune.models._layers import IndexShortcut


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "shortcut", "classes", "expected"),
    [
        ("cifar_resnet56", "pad", 10, 853_018),
        ("cifar_resnet56", "projection", 10, 855_770),
        ("cifar_resnet20", "projection", 100, 278_324),
        ("cifar_resnet20", "pad", 10, 269_722),
        ("cifar_vgg16_bn", "projection", 10, 14_728_266),
    ],
)
def test_param_counts(name: str, shortcut: str, classes: int, expected: int) -> None:
    model = build_model(ModelConfig(name, shortcut=shortcut), num_classes=classes)
    assert n_params(model) == expected
    assert not model.training


def test_resnet_layout_names() -> None:
    model = build_model(ModelConfig("cifar_resnet20"), num_classes=10)
    names = dict(model.named_modules())
    assert isinstance(names["layer2.0.shortcut.0"], nn.Conv2d)
    assert isinstance(names["layer3.0.shortcut.1"], nn.BatchNorm2d)
    assert isinstance(names["layer1.0.shortcut"], nn.Identity)
    block = names["layer2.1"]
    assert isinstance(block, BasicBlock)
    assert block.last_bn == "bn2" and block.shortcut_name == "shortcut"
    assert block.relu1 is not block.relu2
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_any_6n_plus_2_depth_and_bad_depth() -> None:
    model = build_model(ModelConfig("cifar_resnet14"), num_classes=10)
    assert len(model.layer1) == 2
    with pytest.raises(ModelError, match="6n\\+2"):
        build_model(ModelConfig("cifar_resnet21"), num_classes=10)


def test_digits_resnet8_is_one_channel() -> None:
    model = build_model(ModelConfig("digits_resnet8", shortcut="pad"), num_classes=10)
    assert model.conv1.in_channels == 1
    assert isinstance(model.layer2[0].shortcut, IndexShortcut)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_option_a_matches_fpad_reference() -> None:
    class PadShortcut(nn.Module):
        def __init__(self, planes: int) -> None:
            super().__init__()
            self.pad = planes // 4

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    torch.manual_seed(0)
    model = build_model(ModelConfig("cifar_resnet20", shortcut="pad"), num_classes=10)
    reference = copy.deepcopy(model)
    for stage in (reference.layer2, reference.layer3):
        stage[0].shortcut = PadShortcut(stage[0].conv1.out_channels)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_registry_refuses_duplicates_and_lists() -> None:
    names = list_models()
    assert {"cifar_resnet20", "cifar_resnet56", "cifar_resnet110", "digits_resnet8",
            "cifar_vgg16_bn"} <= set(names)  # fmt: skip
    with pytest.raises(ValueError, match="already registered"):
        register_model("cifar_resnet20")(lambda cfg, n, c: nn.Identity())


def test_unknown_model_suggests_closest() -> None:
    with pytest.raises(ModelError) as info:
        build_model(ModelConfig("cifar_resnt20"), num_classes=10)
    assert str(info.value) == (
        "unknown model 'cifar_resnt20' (did you mean 'cifar_resnet20'?); "
        "run 'searchprune model list'"
    )


def test_torchvision_model_random_init_and_pretrained_guard() -> None:
    model = build_model(ModelConfig("resnet18"), num_classes=7)
    assert model.fc.out_features == 7 and not model.training
    with pytest.raises(ModelError, match="1000 ImageNet classes"):
        build_model(ModelConfig("resnet18", pretrained=True), num_classes=10)
    with pytest.raises(ModelError, match="torchvision models only"):
        build_model(ModelConfig("cifar_resnet20", pretrained=True), num_classes=10)


def test_num_classes_override() -> None:
    model = build_model(ModelConfig("cifar_resnet20", num_classes=100), num_classes=10)
    assert model.linear.out_features == 100


@pytest.fixture()
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        from torch import nn
        def tiny(num_classes=10):
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))
        def fixed():
            return nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
        def not_a_model(num_classes=10):
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_nets"
    sys.modules.pop("my_nets", None)


def test_user_factory(user_module: str) -> None:
    model = build_model(ModelConfig(f"{user_module}:tiny"), num_classes=3)
    assert model[2].out_features == 3
    assert build_model(ModelConfig(f"{user_module}:fixed"), num_classes=3)[1].out_features == 5
    with pytest.raises(ModelError, match="not an nn.Module"):
        build_model(ModelConfig(f"{user_module}:not_a_model"), num_classes=3)
    with pytest.raises(ModelError, match="no callable 'nope'"):
        build_model(ModelConfig(f"{user_module}:nope"), num_classes=3)


def test_user_factory_import_failure_names_module() -> None:
    with pytest.raises(ModelError, match="cannot import module 'no_such_pkg.nets'"):
        build_model(ModelConfig("no_such_pkg.nets:resnet"), num_classes=10)


# --- checkpoints -----------------------------------------------------------------------------


def _resnet20(**kw: object) -> nn.Module:
    return build_model(ModelConfig("cifar_resnet20", shortcut="pad", **kw), num_classes=10)


def test_checkpoint_wrappers_and_prefix(tmp_path: Path) -> None:
    source = _resnet20()
    state = source.state_dict()
    for i, obj in enumerate([
        state,
        {"state_dict": {f"module.{k}": v for k, v in state.items()}},
        {"model": state, "epoch": 3},
    ]):
        path = tmp_path / f"c{i}.pt"
        torch.save(obj, path)
        loaded = _resnet20(checkpoint=str(path))
        assert torch.equal(loaded.linear.weight, source.linear.weight)


def test_checkpoint_missing_and_truncated(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pt"):
        _resnet20(checkpoint=str(tmp_path / "nope.pt"))
    path = tmp_path / "cut.pt"
    torch.save(_resnet20().state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch file"):
        _resnet20(checkpoint=str(path))
    junk = tmp_path / "junk.pt"
    junk.write_text("hello")
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch file"):
        _resnet20(checkpoint=str(junk))


def test_checkpoint_mismatch_names_keys(tmp_path: Path) -> None:
    path = tmp_path / "r20.pt"
    torch.save(_resnet20().state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        build_model(ModelConfig("cifar_resnet20", shortcut="pad", checkpoint=str(path)),
                    num_classes=100)  # fmt: skip
    assert str(info.value) == (
        f"checkpoint {path} does not fit model cifar_resnet20: wrong shapes "
        "linear.weight (10x64 in file, 100x64 in model), linear.bias (10 in file, 100 in model)"
    )
    with pytest.raises(CheckpointError, match="missing keys layer2.0.shortcut.0.weight, "):
        build_model(ModelConfig("cifar_resnet20", checkpoint=str(path)), num_classes=10)
    state = _resnet20().state_dict()
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="unexpected keys extra.weight"):
        load_checkpoint(_resnet20(), path)


@pytest.mark.parametrize("file", ["resnet20-cifar10-public.th", "resnet20-cifar10jpg.pt"])
def test_shared_checkpoints_load(shared: Path, file: str) -> None:
    model = _resnet20(checkpoint=str(shared / "models" / file))
    assert model.bn1.running_var.abs().sum() > 0
    assert not torch.equal(model.linear.weight, _resnet20().linear.weight)


def test_resnet20_accuracy_on_cifar10_jpg_sample(shared: Path) -> None:
    # The full 10k test set gives 87.94%; a seeded random 2000 has a standard error of ~0.7 pt.
    from searchprune.data import load_data
    from searchprune.train import accuracy

    root = shared / "data" / "cifar10-jpg"
    if not root.is_dir():
        pytest.skip(f"shared data absent: {root}")
    bundle = load_data(DataConfig("imagefolder", root=str(root), calib_size=1, val_size=1,
                                  test_size=2000))  # fmt: skip
    model = _resnet20(checkpoint=str(shared / "models" / "resnet20-cifar10jpg.pt"))
    top1, top5 = accuracy(model, bundle.test)
    assert len(bundle.test) == 2000
    assert abs(top1 - 87.94) < 3.0
    assert top5 > 98.0
