from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from searchprune.config import DataConfig
from searchprune.data import DataBundle, draw_splits, list_datasets, load_data
from searchprune.errors import DataError


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_data(DataConfig())


def test_digits_bundle_shapes(digits: DataBundle) -> None:
    assert digits.name == "digits" and digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8)
    assert (len(digits.calib), len(digits.val), len(digits.test)) == (512, 400, 300)
    assert digits.train_size == 1797 - 300 - 400
    for split in (digits.calib, digits.val, digits.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == (1, 8, 8)
    # normalised with the training split's statistics
    x, _ = zip(*(digits.train_set()[i] for i in range(digits.train_size)))
    train = torch.stack(x)
    assert abs(train.mean().item()) < 1e-4 and abs(train.std().item() - 1) < 1e-3


def _keys(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


def test_digits_splits_disjoint(digits: DataBundle) -> None:
    # Some digits images are duplicates of each other, so check the index draw exactly ...
    idx = draw_splits(1497, 300, calib_size=512, val_size=400, seed=0)
    assert not set(idx.val.tolist()) & set(idx.train.tolist())
    assert set(idx.calib.tolist()) <= set(idx.train.tolist())
    assert len(set(idx.train.tolist()) | set(idx.val.tolist())) == 1497
    # ... and the bundle's images loosely: calib and val share (almost) no image.
    assert len(_keys(digits.calib.x) & _keys(digits.val.x)) < 5


def test_same_seed_same_splits_other_seed_differs(digits: DataBundle) -> None:
    again = load_data(DataConfig())
    for a, b in ((digits.calib, again.calib), (digits.val, again.val), (digits.test, again.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    other = load_data(DataConfig(seed=1))
    assert not torch.equal(digits.val.x, other.val.x)


def test_val_from_test_halves_test() -> None:
    bundle = load_data(DataConfig(val_from="test", val_size=400, test_size=100))
    assert (len(bundle.val), len(bundle.test)) == (150, 100)
    assert bundle.train_size == 1497
    idx = draw_splits(1497, 300, calib_size=10, val_size=400, val_from="test", seed=3)
    assert not set(idx.val.tolist()) & set(idx.test.tolist())


def test_train_size_is_a_seeded_subset_holding_calib() -> None:
    full = draw_splits(1497, 300, calib_size=64, val_size=400, seed=3)
    sub = draw_splits(1497, 300, calib_size=64, val_size=400, train_size=200, seed=3)
    assert sub.train.numel() == 200 and torch.equal(sub.val, full.val)
    assert set(sub.calib.tolist()) <= set(sub.train.tolist())
    assert set(sub.train.tolist()) <= set(full.train.tolist())
    assert load_data(DataConfig(train_size=600)).train_size == 600
    with pytest.raises(DataError, match="calib_size 64 exceeds the 50"):
        draw_splits(1497, 300, calib_size=64, val_size=400, train_size=50)


def test_sizes_that_do_not_fit() -> None:
    with pytest.raises(DataError, match="calib_size 5000"):
        load_data(DataConfig(calib_size=5000))
    with pytest.raises(DataError, match="val_size 2000"):
        load_data(DataConfig(val_size=2000))


def test_digits_train_set_not_augmented(digits: DataBundle) -> None:
    ds = digits.train_set(augment=True)
    x1, y1 = ds[5]
    x2, _ = ds[5]
    assert torch.equal(x1, x2) and y1.dtype == torch.int64


def test_unknown_dataset_suggests() -> None:
    assert "digits" in list_datasets()
    with pytest.raises(DataError, match="did you mean 'cifar10'"):
        load_data(DataConfig(name="cifar1O"))


def test_cifar_without_root_or_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="set data.root or data.download: true"):
        load_data(DataConfig(name="cifar10"))
    with pytest.raises(DataError, match="data root not found"):
        load_data(DataConfig(name="cifar100", root=str(tmp_path / "missing")))
    with pytest.raises(DataError, match="not found under"):
        load_data(DataConfig(name="cifar10", root=str(tmp_path)))


def _write_folder(root: Path, split: str, per_class: int, size: tuple[int, int] = (12, 10)) -> None:
    rng = np.random.default_rng(0)
    for c in ("ant", "bee", "cat"):
        folder = root / split / c
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")


def test_imagefolder(tmp_path: Path) -> None:
    _write_folder(tmp_path, "train", 10)
    _write_folder(tmp_path, "val", 4)
    cfg = DataConfig("imagefolder", root=str(tmp_path), calib_size=5, val_size=6, image_size=8)
    bundle = load_data(cfg)
    assert bundle.classes == ("ant", "bee", "cat") and bundle.num_classes == 3
    assert bundle.input_shape == (3, 8, 8)
    sizes = (len(bundle.calib), len(bundle.val), len(bundle.test), bundle.train_size)
    assert sizes == (5, 6, 12, 24)
    x, y = bundle.train_set(augment=True)[0]
    assert x.shape == (3, 8, 8) and 0 <= int(y) < 3
    assert torch.equal(load_data(cfg).val.x, bundle.val.x)
    Image.new("RGB", (9, 9)).save(tmp_path / "val" / "ant" / "odd.png")
    mixed = load_data(DataConfig("imagefolder", root=str(tmp_path), calib_size=5, val_size=6))
    with pytest.raises(DataError, match="different sizes.*set data.image_size"):
        mixed.test.x  # noqa: B018 -- splits are decoded when first read (issue 23)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"data root not found: {tmp_path / 'x'}"):
        load_data(DataConfig("imagefolder", root=str(tmp_path / "x")))
    with pytest.raises(DataError, match="needs train/ and test/"):
        load_data(DataConfig("imagefolder", root=str(tmp_path)))
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
    with pytest.raises(DataError, match="no images in"):
        load_data(DataConfig("imagefolder", root=str(tmp_path)))
