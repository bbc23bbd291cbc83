"""The CIFAR MobileNetV2 and the recipe searchprune trains it by (issue 24's second family)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import searchprune.models.baseline as baseline
import searchprune.train
from searchprune.config import DataConfig, ModelConfig, config_from_dict
from searchprune.confirmation import confirm_spec, trained_here
from searchprune.data import load_data
from searchprune.errors import ConfigError, ModelError
from searchprune.models import build_model
from searchprune.prune import prune_model
from searchprune.space import SearchSpace, count_cost

MBV2 = ModelConfig("cifar_mobilenet_v2", kwargs={"width_mult": 0.5})


def test_stride_one_stem_keeps_cifar_images_at_two_by_two():
    model = build_model(MBV2, num_classes=10)
    assert model.features[0][0].stride == (1, 1)
    assert model.features[0][0].out_channels == 16  # 32 x 0.5
    assert model.classifier[1].out_features == 10
    with torch.no_grad():
        feats = model.features(torch.randn(2, 3, 32, 32))
    assert feats.shape == (2, 1280, 2, 2)  # torchvision's strides would give 1 x 1
    gray = build_model(ModelConfig("cifar_mobilenet_v2"), num_classes=3, in_channels=1)
    assert gray.features[0][0].in_channels == 1
    assert gray(torch.randn(1, 1, 32, 32)).shape == (1, 3)


def test_width_is_the_only_kwarg():
    with pytest.raises(ModelError, match="only model.kwargs width_mult, not dropout"):
        build_model(ModelConfig("cifar_mobilenet_v2", kwargs={"dropout": 0.1}), num_classes=10)
    with pytest.raises(ModelError, match="width_mult must be a number > 0"):
        build_model(ModelConfig("cifar_mobilenet_v2", kwargs={"width_mult": 0}), num_classes=10)
    with pytest.raises(ModelError, match="takes no model.kwargs"):  # other built-ins still refuse
        build_model(ModelConfig("cifar_vgg16_bn", kwargs={"width_mult": 0.5}), num_classes=10)


def test_every_block_is_a_group_and_costs_are_exact():
    torch.manual_seed(0)
    model = build_model(MBV2, num_classes=10)
    space = SearchSpace.from_model(model, torch.randn(1, 3, 32, 32))
    # stem, first block's output, 16 expansions, 5 residual streams (the stages of more than
    # one block), the 320-wide output and the last 1x1 conv
    assert len(space.prunable) == 25
    assert sum(g.name.endswith(".residual") for g in space.prunable) == 5
    rng = random.Random(0)
    widths = space.widths({g.name: rng.uniform(0.3, 1.0) for g in space.prunable})
    scores = {g.name: torch.rand(g.channels) for g in space.prunable}
    pruned = prune_model(model, space, space.keep_indices(widths, scores))
    assert space.cost(widths) == count_cost(pruned, torch.randn(1, 3, 32, 32))


def _folder(root: Path, n: int, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_recipe_trains_once_and_caches_for_any_val_size(tmp_path, monkeypatch):
    monkeypatch.setattr(baseline, "MOBILENET_RECIPE",
                        {**baseline.MOBILENET_RECIPE, "epochs": 1, "batch_size": 8})
    root = _folder(tmp_path / "data", 6)
    calls = []
    real_fit = searchprune.train.fit

    def fit(model, train_set, **kw):
        calls.append((len(train_set), getattr(train_set, "augment", None), kw["epochs"]))
        return real_fit(model, train_set, **kw)

    monkeypatch.setattr(searchprune.train, "fit", fit)
    tiny = ModelConfig("cifar_mobilenet_v2", kwargs={"width_mult": 0.25})

    def bundle(val_size):
        return load_data(DataConfig("imagefolder", root=str(root), calib_size=2,
                                    val_size=val_size, val_from="test"))

    model = baseline.trained_baseline(tiny, bundle(2), cache_dir=tmp_path / "cache")
    assert calls == [(12, True, 1)]  # all 12 training images, augmented, the recipe's epochs
    assert not model.training
    again = baseline.trained_baseline(tiny, bundle(3), cache_dir=tmp_path / "cache")
    assert len(calls) == 1  # another val_size: same training images, the cache serves it
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(),
                                                   again.state_dict().values()))  # fmt: skip
    key = baseline._cache_file(tiny, bundle(2), tmp_path)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "train" / "a" / "0.png")
    assert baseline._cache_file(tiny, bundle(2), tmp_path) != key  # a changed training image
    monkeypatch.setattr(baseline, "MOBILENET_RECIPE", {**baseline.MOBILENET_RECIPE, "lr": 0.2})
    assert baseline._cache_file(tiny, bundle(2), tmp_path) != key


def test_recipe_refuses_other_data_and_skips_with_a_checkpoint(tmp_path):
    digits = load_data(DataConfig())
    with pytest.raises(ModelError, match="trains its baseline on cifar10 or imagefolder data, "
                                         "not 'digits'"):
        baseline.trained_baseline(MBV2, digits, cache_dir=tmp_path)
    assert baseline.has_recipe(MBV2)
    assert not baseline.has_recipe(ModelConfig("cifar_mobilenet_v2", checkpoint="w.pt"))


def test_confirmation_may_hold_out_training_images_of_a_network_trained_here():
    raw = {"model": {"name": "cifar_mobilenet_v2"}, "data": {"name": "cifar10", "val_from": "train"},
           "search": {"confirm": {"top_k": 3}}}
    cfg = config_from_dict(raw)
    assert trained_here(cfg)
    assert confirm_spec(cfg).top_k == 3
    with pytest.raises(ConfigError, match="never trained on"):  # its training set is unknown
        config_from_dict({**raw, "model": {"name": "cifar_mobilenet_v2", "checkpoint": "w.pt"}})
    assert not trained_here(config_from_dict({"model": {"name": "cifar_mobilenet_v2",
                                                        "checkpoint": "w.pt"}}))
