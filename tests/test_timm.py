"""``model.name: timm:<name>`` (issue 23, part 6): tiny timm test models at random init; no
download ever (conftest sets HF_HUB_OFFLINE)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from _helpers import cli, one_line_error

from searchprune.config import ModelConfig
from searchprune.errors import ModelError
from searchprune.models import build_model

timm = pytest.importorskip("timm", reason="timm is not installed: pip install 'searchprune[timm]'")
if not timm.is_model("test_vit3"):  # the tiny test models came with timm 1.0.x
    pytest.skip("this timm has no test_resnet/test_vit3 models; upgrade timm",
                allow_module_level=True)


def test_timm_model_at_random_init():
    torch.manual_seed(0)
    model = build_model(ModelConfig("timm:test_resnet"), num_classes=3, in_channels=1,
                        input_shape=(1, 32, 32))
    assert isinstance(model, timm.models.ResNet) and not model.training
    assert model.conv1[0].in_channels == 1 and model.fc.out_features == 3
    torch.manual_seed(0)
    again = build_model(ModelConfig("timm:test_resnet"), num_classes=3, in_channels=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values()))


def test_timm_kwargs_and_image_size():
    pooled = build_model(ModelConfig("timm:test_resnet", kwargs={"global_pool": "max"}),
                         num_classes=3)
    assert pooled.global_pool.pool_type == "max"
    with pytest.raises(ModelError) as err:  # a ViT made for 160 px
        build_model(ModelConfig("timm:test_vit3"), num_classes=3, input_shape=(3, 32, 32))
    msg = str(err.value)
    assert msg.startswith("model 'timm:test_vit3' does not accept 32x32 inputs with 3 channels")
    assert "\n" not in msg and "model.kwargs" in msg
    vit = build_model(ModelConfig("timm:test_vit3", kwargs={"img_size": 32}), num_classes=3,
                      input_shape=(3, 32, 32))
    assert vit(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ModelError, match="cannot build model 'timm:test_resnet': .*'depthh'.*"
                                         "check model.kwargs"):
        build_model(ModelConfig("timm:test_resnet", kwargs={"depthh": 3}), num_classes=3)


def test_unknown_timm_model_suggests():
    with pytest.raises(ModelError, match=r"unknown timm model 'test_resnt' \(did you mean "
                                         r"'test_resnet'\?\)"):
        build_model(ModelConfig("timm:test_resnt"), num_classes=3)


def test_without_timm_one_line_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    with pytest.raises(ModelError) as err:
        build_model(ModelConfig("timm:test_resnet"), num_classes=3)
    assert str(err.value) == ("model 'timm:test_resnet' needs timm, which is not installed; run "
                              "pip install 'searchprune[timm]' (or pip install timm)")


def test_pretrained_weights_not_cached_offline_is_one_line(tmp_path: Path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("model: {name: 'timm:test_resnet', pretrained: true}\ndevice: cpu\n"
                   "data: {calib_size: 8, val_size: 8}\n")
    proc = cli("model", "info", str(cfg), env={"HF_HUB_OFFLINE": "1",
                                               "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "cannot fetch pretrained weights for 'timm:test_resnet'" in line
    assert "model.pretrained: false" in line
    assert not any((tmp_path / "hf").rglob("*.safetensors"))


def test_a_stored_timm_model_names_no_code_to_import():
    from searchprune.trust import stored_factories

    assert stored_factories({"model": {"name": "timm:test_resnet"}}) == {}
    assert stored_factories({"model": {"name": "mynets:small"}}) == {"model.name": "mynets:small"}


def test_model_info_on_a_timm_model(tmp_path: Path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("model: {name: 'timm:test_resnet'}\ndevice: cpu\n"
                   "data: {calib_size: 8, val_size: 8, image_size: 32}\n")
    proc = cli("model", "info", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    model = build_model(ModelConfig("timm:test_resnet"), num_classes=10, in_channels=1)
    assert info["model"] == "timm:test_resnet"
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert any(g["prunable"] for g in info["groups"])
