import struct
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from erasediff.data import (DatasetUnavailableError, ForgetSpec, ImageSet, InfiniteBatches, load_dataset, load_digits_set, load_mnist, make_splits, resolve_classes)


@pytest.fixture(scope="module")
def digits():
    return load_digits_set("train"), load_digits_set("test")


def test_digits_shapes_range_and_fixed_split(digits):
    train, test = digits
    assert (len(train), len(test)) == (1437, 360)
    x, y = train.tensors()
    assert x.shape == (1437, 1, 16, 16) and x.min() >= -1 and x.max() <= 1 and x.min() < -0.99 and x.max() > 0.99
    assert set(y.tolist()) == set(range(10))
    assert torch.equal(load_digits_set("train").labels, train.labels)          # deterministic
    assert set(train.ids.tolist()).isdisjoint(set()) and len(set(test.labels.tolist())) == 10


def test_class_splits_partition(digits):
    train, test = digits
    sp = make_splits(train, test, ForgetSpec(classes=(2, 8)))
    assert sp.forget_classes == (2, 8)
    assert set(sp.forget.labels.tolist()) == {2, 8} and set(sp.heldout_forget.labels.tolist()) == {2, 8}
    assert not set(sp.remain.labels.tolist()) & {2, 8} and not set(sp.heldout_remain.labels.tolist()) & {2, 8}
    assert sorted(sp.forget.ids.tolist() + sp.remain.ids.tolist()) == list(range(len(train)))
    xf, yf = sp.forget.tensors()
    xa, _ = train.tensors()
    assert torch.equal(xf, xa[sp.forget.ids])


def test_class_names_resolve():
    assert resolve_classes(["bird", 8], ["airplane", "automobile", "bird", "c", "d", "e", "f", "g", "ship", "t"]) == (2, 8)
    assert resolve_classes(["2", "8"], [str(i) for i in range(10)]) == (2, 8)


@pytest.mark.parametrize("spec, msg", [
    (dict(classes=(12,)), "out of range"),
    (dict(classes=("seven",)), "unknown class"),
    (dict(classes=tuple(range(10))), "every class"),
    (dict(ids=(0, 5000)), "forget ids"),
    (dict(ids=(-1,)), "forget ids"),
    (dict(attribute="Smiling"), "unknown attribute"),
])
def test_bad_forget_specs(digits, spec, msg):
    with pytest.raises(ValueError, match=msg):
        make_splits(*digits, ForgetSpec(**spec))


def test_forget_spec_needs_exactly_one_field():
    with pytest.raises(ValueError, match="exactly one"):
        ForgetSpec()
    with pytest.raises(ValueError, match="exactly one"):
        ForgetSpec(classes=(1,), ids=(3,))
    with pytest.raises(ValueError, match="empty"):
        resolve_classes([], ["a", "b"])


def test_ids_and_everything(digits):
    train, test = digits
    sp = make_splits(train, test, ForgetSpec(ids=(0, 1, 2)))
    assert sp.forget.ids.tolist() == [0, 1, 2] and len(sp.remain) == len(train) - 3
    assert set(sp.heldout_forget.labels.tolist()) == set(train.labels[:3].tolist())
    with pytest.raises(ValueError, match="whole training set"):
        make_splits(train, test, ForgetSpec(ids=tuple(range(len(train)))))


def test_attribute_forgetting():
    n = 20
    attrs = torch.zeros(n, 2, dtype=torch.long); attrs[:5, 1] = 1
    ds = ImageSet(torch.zeros(n, 3, 4, 4), torch.full((n,), -1), [], attributes=attrs, attribute_names=["Smiling", "Eyeglasses"])
    sp = make_splits(ds, ds, ForgetSpec(attribute="Eyeglasses"))
    assert sp.forget.ids.tolist() == [0, 1, 2, 3, 4] and len(sp.remain) == 15
    attrs[:, 0] = 0
    with pytest.raises(ValueError, match="empty"):
        make_splits(ds, ds, ForgetSpec(attribute="Smiling"))
    with pytest.raises(ValueError, match="no class labels"):
        make_splits(ds, ds, ForgetSpec(classes=(1,)))


def test_utkface_folder(tmp_path):
    names = ["25_0_2_20170116.jpg", "31_1_0_20170117.jpg", "40_0_4_20170118.jpg", "8_1_1_20170119.jpg", "readme.jpg"]
    for i, name in enumerate(names):
        Image.fromarray(np.full((30, 30, 3), 50 * i, dtype=np.uint8)).save(tmp_path / name)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = load_dataset("folder", root=tmp_path, image_size=8, test_fraction=0.0)
    assert sorted(ds.labels.tolist()) == [0, 1, 2, 4] and ds.classes[1] == "Black"
    assert any("1 of 5 files" in str(m.message) for m in w)
    x, _ = ds[0]
    assert x.shape == (3, 8, 8) and -1 <= x.min() and x.max() <= 1
    sp = make_splits(ds, ds, ForgetSpec(classes=("Asian",)))
    assert sp.forget.labels.tolist() == [2]
    with pytest.raises(FileNotFoundError):
        load_dataset("folder", root=tmp_path / "missing")
    with pytest.raises(ValueError, match="labels must be"):
        load_dataset("folder", root=tmp_path, labels="age")


def _write_idx(path, arr, magic):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in arr.shape) + arr.astype(np.uint8).tobytes())


def test_mnist_loader_on_a_tiny_idx_file(tmp_path):
    pytest.importorskip("torchvision")
    raw = tmp_path / "MNIST" / "raw"; raw.mkdir(parents=True)
    imgs = np.zeros((6, 28, 28)); imgs[:, 10:18, 10:18] = 255
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", imgs, 2051)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(6), 2049)
    ds = load_mnist(tmp_path, "train", download=False)
    x, y = ds[3]
    assert x.shape == (1, 32, 32) and y == 3 and x.max() == pytest.approx(1.0) and x.min() == pytest.approx(-1.0)


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_dataset("digits", split="val")


def test_infinite_batches_resume_and_epochs(digits):
    train, _ = digits
    it = InfiniteBatches(train, 100, seed=3)
    seen = torch.cat([next(it)[1] for _ in range(14)])       # 14 batches = one epoch of 1400 (drop_last)
    assert len(seen) == 1400
    state = it.state_dict()
    after = [next(it)[0] for _ in range(3)]
    it2 = InfiniteBatches(train, 100, seed=3); it2.load_state_dict(state)
    assert all(torch.equal(a, next(it2)[0]) for a in after)
    with pytest.raises(ValueError, match="empty"):
        InfiniteBatches(train.subset([]), 4)


def test_data_root_reaches_the_loader(tmp_path):
    pytest.importorskip("torchvision")
    from erasediff.train import get_preset
    raw = tmp_path / "MNIST" / "raw"; raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        _write_idx(raw / f"{split}-images-idx3-ubyte", np.zeros((4, 28, 28)), 2051)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(4), 2049)
    preset = get_preset("digits", dataset="mnist").with_data_root(tmp_path)
    assert preset.dataset_kwargs == {"root": str(tmp_path)}
    train, test = preset.load_data()
    assert len(train) == len(test) == 4 and train[1][1] == 1
    with pytest.raises(DatasetUnavailableError, match=r"mnist.*train-images-idx3-ubyte.*--data-root"):
        load_mnist(tmp_path / "empty", "train", download=False)
