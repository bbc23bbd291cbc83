from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from searchprune.config import DataConfig, ModelConfig
from searchprune.data import Split, load_data
from searchprune.errors import SearchpruneError
from searchprune.evaluate import evaluate
from searchprune.models.baseline import _cache_file, digits_baseline
from searchprune.train import accuracy, fit


def _toy_data(n: int = 96, seed: int = 0) -> tuple[TensorDataset, Split]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 4, 4, generator=gen)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    return TensorDataset(x, y), Split(x, y)


def _toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))  # fmt: skip


def test_evaluate_top1_top5() -> None:
    logits = torch.tensor([[3.0, 2, 1, 0, -1, -2], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])

    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits[x.long().flatten()]

    y = torch.tensor([0, 0, 5])  # hit, miss (rank 6), miss in top-1 but rank 6 -> miss
    x = torch.arange(3).float().view(3, 1)
    assert evaluate(Fixed(), x, y, batch_size=2) == (100 / 3, 100 / 3)
    top1, top5 = evaluate(Fixed(), x, torch.tensor([1, 4, 1]))
    assert (top1, top5) == (0.0, 100.0)


def test_evaluate_keeps_training_mode() -> None:
    model = _toy_model().train()
    _, split = _toy_data()
    accuracy(model, split)
    assert model.training


def test_fit_learns_and_records() -> None:
    data, split = _toy_data()
    model = _toy_model()
    before = accuracy(model, split)[0]
    records = fit(model, data, epochs=6, lr=0.1, batch_size=16, val=split)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["val_top1"] >= max(before, 80.0)
    assert records[-1]["lr"] < 1e-3  # cosine annealed to ~0
    assert not model.training


def test_fit_is_seeded_and_leaves_global_rng_alone() -> None:
    data, _ = _toy_data()
    state = torch.random.get_rng_state()
    a, b = _toy_model(), _toy_model()
    torch.random.set_rng_state(state)
    fit(a, data, epochs=2, batch_size=16, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    fit(b, data, epochs=2, batch_size=16, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_fit_resumes_from_checkpoint(tmp_path: Path) -> None:
    data, split = _toy_data()
    straight = _toy_model()
    fit(straight, data, epochs=4, batch_size=16, seed=1)
    path = tmp_path / "run" / "ckpt.pt"
    resumed = _toy_model()
    fit(resumed, data, epochs=4, batch_size=16, seed=1, checkpoint_path=path,
        on_epoch=lambda r: r["epoch"] == 2)  # "interrupted" after epoch 2  # fmt: skip
    assert torch.load(path, weights_only=True)["epoch"] == 2
    records = fit(_toy_model(), data, epochs=4, batch_size=16, seed=1, checkpoint_path=path)
    resumed.load_state_dict(torch.load(path, weights_only=True)["model"])
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    for p, q in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-6)


def test_fit_custom_loss_and_divergence() -> None:
    data, _ = _toy_data()
    calls = []

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(len(y))
        return model(x).pow(2).mean()

    fit(_toy_model(), data, epochs=1, batch_size=32, loss_fn=loss_fn)
    assert calls == [32, 32, 32]
    with pytest.raises(SearchpruneError, match="lower the learning rate"):
        fit(_toy_model(), data, epochs=1, loss_fn=lambda m, x, y: m(x).sum() * float("nan"))


def test_digits_baseline_trains_and_caches(tmp_path: Path, monkeypatch) -> None:
    bundle = load_data(DataConfig())
    model = digits_baseline(ModelConfig(), bundle, cache_dir=tmp_path)
    assert accuracy(model, bundle.val)[0] >= 95.0
    assert not model.training
    cached = list((tmp_path / "baselines").glob("digits_resnet8-*.pt"))
    assert len(cached) == 1
    import searchprune.train

    monkeypatch.setattr(searchprune.train, "fit",
                        lambda *a, **k: pytest.fail("retrained despite the cache"))
    again = digits_baseline(ModelConfig(), bundle, cache_dir=tmp_path)
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(),
                                                   again.state_dict().values()))  # fmt: skip
    # another model config or data seed is another cache entry
    key = _cache_file(ModelConfig(), bundle, tmp_path)
    assert key == cached[0]
    assert _cache_file(ModelConfig(shortcut="pad"), bundle, tmp_path) != key
    bundle.seed = 1
    assert _cache_file(ModelConfig(), bundle, tmp_path) != key
