"""Inputs as users have them (issue 23, part 5): splits decoded only when read and held as
uint8, ``model.kwargs``, and an image size the model cannot take refused in one line."""

from __future__ import annotations

import datetime
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import cli, one_line_error
from PIL import Image
from torch import nn

import searchprune.data._images as images_mod
from searchprune.config import (
    Config,
    DataConfig,
    ModelConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)
from searchprune.data import load_data
from searchprune.errors import ConfigError, ModelError
from searchprune.evaluate import evaluate
from searchprune.models import build_model

CLASSES = ("ant", "bee", "cat")


def _folder(root: Path, per_class: dict[str, int], size: tuple[int, int] = (12, 10)) -> Path:
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c in CLASSES:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Every image file decoded from now on (its path)."""
    seen: list[str] = []
    real = images_mod._decode

    def counting(path: str, size: int | None) -> np.ndarray:
        seen.append(path)
        return real(path, size)

    monkeypatch.setattr(images_mod, "_decode", counting)
    return seen


# -- splits -----------------------------------------------------------------------------------
def test_no_split_is_decoded_until_it_is_read(tmp_path, decodes):
    root = _folder(tmp_path, {"train": 10, "test": 4})
    bundle = load_data(DataConfig("imagefolder", root=str(root), calib_size=5, val_size=6))
    assert decodes == []  # the shape comes from one image's header
    assert bundle.input_shape == (3, 10, 12)
    assert (len(bundle.calib), len(bundle.val), len(bundle.test)) == (5, 6, 12)
    assert decodes == []
    assert bundle.val.x.shape == (6, 3, 10, 12)
    assert len(decodes) == 6  # val only, once
    bundle.val.x  # noqa: B018
    assert len(decodes) == 6
    assert not bundle.calib.decoded and not bundle.test.decoded
    assert bundle.calib.head(2).shape == (2, 3, 10, 12)
    assert len(decodes) == 8 and not bundle.calib.decoded  # the first two images only
    assert len(bundle.calib[:3].images[0:3]) == 3
    assert len(decodes) == 13 and bundle.calib.decoded  # the whole split, once
    bundle.calib[:4].x  # noqa: B018
    assert len(decodes) == 13


def _old_normalise(stored: torch.Tensor, scale: float, mean, std) -> torch.Tensor:
    """How splits were normalised before: the whole split at once."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (stored.float() / scale - m) / s


@pytest.mark.parametrize("which", ["digits", "imagefolder"])
def test_splits_are_uint8_and_normalised_per_batch_bit_identically(tmp_path, which):
    cfg = (DataConfig() if which == "digits" else
           DataConfig("imagefolder", root=str(_folder(tmp_path, {"train": 10, "test": 4})),
                      calib_size=5, val_size=9, image_size=8))
    bundle = load_data(cfg)
    scale = 16.0 if which == "digits" else 255.0
    for split in (bundle.calib, bundle.val, bundle.test):
        stored = split.stored
        assert stored.dtype == torch.uint8  # a quarter of float32
        x = split.x
        assert x.dtype == torch.float32 and x.nbytes == 4 * stored.nbytes
        assert torch.equal(x, _old_normalise(stored, scale, bundle.mean, bundle.std))
        batches = torch.cat([split.images[i:i + 4] for i in range(0, len(split), 4)])
        assert torch.equal(batches, x)
    # so accuracies are unchanged: evaluating batch by batch = evaluating the float tensor
    torch.manual_seed(0)
    c = bundle.input_shape[0]
    net = nn.Sequential(nn.Conv2d(c, 4, 3), nn.Flatten(), nn.LazyLinear(bundle.num_classes))
    net(bundle.val.x[:1])
    y = bundle.val.y
    assert evaluate(net, bundle.val.images, y, batch_size=3) == evaluate(net, bundle.val.x, y)


def test_inspecting_a_model_decodes_no_image(tmp_path, decodes):
    """What ``model info CONFIG`` does (an engine with the L1 criterion and no proxy) reads no
    split: the trace example is blank, data-free scores do not hash the calibration images."""
    from searchprune.engine import PruningEngine

    root = _folder(tmp_path, {"train": 10, "test": 4})
    cfg = config_from_dict({"model": {"name": "cifar_resnet20"},
                            "data": {"name": "imagefolder", "root": str(root), "calib_size": 5,
                                     "val_size": 6, "image_size": 16},
                            "pruning": {"criterion": "l1", "proxy": "none"}, "device": "cpu"})
    engine = PruningEngine.from_config(cfg)
    assert engine.space.prunable and decodes == []
    engine.evaluate_baseline("val")
    assert len(decodes) == 6 and not engine.data.test.decoded
    # trials decode nothing more: BatchNorm re-estimated on the calibration split, decoded once
    half = engine.widths({g.name: 0.5 for g in engine.groups})
    engine.evaluate(half, proxy="abn")
    assert len(decodes) == 6 + 5
    engine.evaluate(engine.widths({g.name: 0.7 for g in engine.groups}), proxy="abn")
    assert len(decodes) == 6 + 5 and not engine.data.test.decoded


def test_data_free_scores_keep_their_cache_key_without_the_images():
    from searchprune.criteria import get_criterion, scores_key
    from searchprune.space import SearchSpace

    class Unreadable:
        name, seed, train_size = "x", 0, 10

        @property
        def calib(self):
            raise AssertionError("a data-free criterion read the calibration images")

    torch.manual_seed(0)
    model = build_model(ModelConfig("cifar_resnet20"), num_classes=10)
    space = SearchSpace.from_model(model, torch.zeros(1, 3, 8, 8))
    key = scores_key(get_criterion("l1"), model, space, Unreadable())
    assert key == scores_key(get_criterion("l1"), model, space, Unreadable(), {})
    # constructor arguments can change what a network computes without changing its weights
    assert key != scores_key(get_criterion("l1"), model, space, Unreadable(), {"act": "gelu"})


# -- model.kwargs -----------------------------------------------------------------------------
def test_kwargs_reach_a_torchvision_builder():
    narrow = build_model(ModelConfig("mobilenet_v2", kwargs={"width_mult": 0.25}), num_classes=3)
    assert narrow.features[0][0].out_channels == 8  # 32 * 0.25
    assert build_model(ModelConfig("mobilenet_v2"), num_classes=3).features[0][0].out_channels == 32


def _factory_module(tmp_path: Path, monkeypatch) -> str:
    (tmp_path / "mynets.py").write_text(textwrap.dedent("""
        from torch import nn

        def small(num_classes=10, width=4, act="relu"):
            act_layer = nn.GELU() if act == "gelu" else nn.ReLU()
            return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width),
                                 act_layer, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(width, num_classes))

        def dense(num_classes=10):  # takes 32x32 images only
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))

        def pair(num_classes=10):
            class Two(nn.Module):
                def forward(self, x):
                    return x.mean((2, 3)), x
            return Two()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "mynets"


def test_kwargs_reach_a_factory_and_unknown_ones_are_one_line(tmp_path, monkeypatch):
    mod = _factory_module(tmp_path, monkeypatch)
    model = build_model(ModelConfig(f"{mod}:small", kwargs={"width": 6, "act": "gelu"}),
                        num_classes=3, input_shape=(3, 8, 8))
    assert model[0].out_channels == 6 and isinstance(model[2], nn.GELU)
    with pytest.raises(ModelError) as err:
        build_model(ModelConfig(f"{mod}:small", kwargs={"depth": 3}), num_classes=3)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"cannot build model factory '{mod}:small'")
    assert "unexpected keyword argument 'depth'" in msg and msg.endswith("check model.kwargs")
    with pytest.raises(ModelError, match="unexpected keyword argument 'nonsense'"):
        build_model(ModelConfig("mobilenet_v2", kwargs={"nonsense": 1}), num_classes=3)
    with pytest.raises(ModelError, match="'cifar_resnet20' takes no model.kwargs"):
        build_model(ModelConfig("cifar_resnet20", kwargs={"width": 2}), num_classes=3)


@pytest.mark.parametrize("kwargs, fix", [
    (3, "must be a mapping of constructor arguments"),
    ({"num_classes": 5}, "model.kwargs.num_classes is set by searchprune; use model.num_classes"),
    ({"weights": "DEFAULT"}, "use model.pretrained instead"),
    ({"checkpoint_path": "/tmp/x.pth"}, "use model.checkpoint instead"),  # no unvetted loads
    ({"pretrained_cfg_overlay": {"file": "x.pth"}}, "use model.pretrained or model.checkpoint"),
    ({"when": datetime.date(2024, 1, 1)},  # what YAML makes of 2024-01-01
     "model.kwargs.when must be null, true/false, a number, a string"),
    ({"sizes": [1, {"a": float("nan")}]}, "model.kwargs.sizes must be null"),
    ({"2x": 1}, "'2x' is not an argument name"),
])
def test_bad_kwargs_are_one_config_line(kwargs, fix):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model": {"name": "resnet18", "kwargs": kwargs}})
    assert fix in str(err.value) and "\n" not in str(err.value)


def test_kwargs_are_part_of_what_identifies_a_model(tmp_path):
    """Stored configs and every fingerprint made from them (study identity, sensitivity scan,
    baseline cache) read as before when no kwargs are set, and differ when they are."""
    from searchprune.models.baseline import _cache_file
    from searchprune.search.sensitivity import scan_name

    assert "kwargs" not in config_to_dict(Config())["model"]
    with_kwargs = config_from_dict({"model": {"name": "resnet18", "kwargs": {"dropout": 0.1}}})
    assert config_to_dict(with_kwargs)["model"]["kwargs"] == {"dropout": 0.1}
    plain = config_from_dict({"model": {"name": "resnet18"}})
    empty = config_from_dict({"model": {"name": "resnet18", "kwargs": {}}})
    assert scan_name(plain) == scan_name(empty) != scan_name(with_kwargs)
    bundle = load_data(DataConfig())
    keys = {_cache_file(ModelConfig(kwargs=k), bundle, tmp_path) for k in (None, {})}
    assert len(keys) == 1
    assert _cache_file(ModelConfig(kwargs={"x": 1}), bundle, tmp_path) not in keys


def test_kwargs_can_be_overridden_where_the_config_has_none():
    cfg = apply_overrides(Config(), {"model.name": "resnet18",
                                     "model.kwargs": {"dropout": 0.1}})
    assert cfg.model.kwargs == {"dropout": 0.1}
    assert apply_overrides(cfg, {"model.kwargs": {}}).model.kwargs == {}
    with pytest.raises(ConfigError, match="unknown override 'model.kwarg'"):
        apply_overrides(Config(), {"model.kwarg": {"dropout": 0.1}})
    with pytest.raises(ConfigError, match="unknown override 'model.name.x'"):
        apply_overrides(Config(), {"model.name.x": 1})


def test_kwargs_from_yaml(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("model:\n  name: googlenet\n  kwargs: {aux_logits: false, init_weights: false}"
                    "\n")
    assert load_config(path).model.kwargs == {"aux_logits": False, "init_weights": False}


# -- image sizes ------------------------------------------------------------------------------
def test_an_image_size_the_model_cannot_take_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(ModelError) as err:
        build_model(ModelConfig("squeezenet1_1"), num_classes=3, input_shape=(3, 16, 16))
    msg = str(err.value)
    assert msg.startswith("model 'squeezenet1_1' does not accept 16x16 inputs with 3 channels: ")
    assert "Output size is too small" in msg and "set data.image_size" in msg
    assert "model.kwargs" in msg and "\n" not in msg
    build_model(ModelConfig("squeezenet1_1"), num_classes=3, input_shape=(3, 64, 64))
    mod = _factory_module(tmp_path, monkeypatch)
    build_model(ModelConfig(f"{mod}:dense"), num_classes=3, input_shape=(3, 32, 32))
    with pytest.raises(ModelError, match="does not accept 8x8 inputs.*mat1 and mat2"):
        build_model(ModelConfig(f"{mod}:dense"), num_classes=3, input_shape=(3, 8, 8))
    with pytest.raises(ModelError, match="returns tuple for a batch of one image; .* logits"):
        build_model(ModelConfig(f"{mod}:pair"), num_classes=3, input_shape=(3, 8, 8))


def test_cli_refuses_an_image_size_in_one_line(tmp_path):
    root = _folder(tmp_path, {"train": 4, "test": 2})
    data = (f"data: {{name: imagefolder, root: {root}, calib_size: 2, val_size: 2, "
            "image_size: 16}\ndevice: cpu\n")
    cfg = tmp_path / "s.yaml"
    cfg.write_text("model: {name: squeezenet1_1}\n" + data)
    proc = cli("model", "info", str(cfg))
    assert proc.returncode == 2
    assert "does not accept 16x16 inputs" in one_line_error(proc)
    cfg.write_text("model: {name: mobilenet_v2, kwargs: {width_mult: 0.25}}\n" + data)
    proc = cli("model", "info", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr
    narrow = build_model(ModelConfig("mobilenet_v2", kwargs={"width_mult": 0.25}), num_classes=3)
    assert json.loads(proc.stdout)["params"] == sum(p.numel() for p in narrow.parameters())
    cfg.write_text("model: {name: mobilenet_v2, kwargs: {nonsense: 1}}\n" + data)
    proc = cli("model", "info", str(cfg))
    assert proc.returncode == 2
    assert "unexpected keyword argument 'nonsense'" in one_line_error(proc)
