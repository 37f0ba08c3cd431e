"""Tests for amc.data: real (digits) and tiny synthetic fixture data (IDX, CIFAR pickles)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from amc.data import (DATASETS, DEFAULT_FASHION_MNIST_DIR, DataSplits, load_cifar10, load_dataset,
                      load_digits, load_idx, read_idx)
from amc.errors import ConfigError, DataError

IDX_IMAGE_MAGIC, IDX_LABEL_MAGIC = 0x00000803, 0x00000801


# ---------------------------------------------------------------- helpers

def write_idx(path: Path, array: np.ndarray, magic: int, *, gz: bool = False) -> Path:
    """Write a uint8 array as an IDX file with an explicit magic number."""
    raw = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % 10).astype(np.uint8)


def make_idx_dir(root: Path, *, n_train: int = 60, n_test: int = 20, gz: bool = False,
                 seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, IDX_IMAGE_MAGIC, gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", balanced_labels(n, rng), IDX_LABEL_MAGIC, gz=gz)
    return root


def make_cifar_dir(parent: Path, *, per_batch: int = 20, n_test: int = 20) -> Path:
    rng = np.random.default_rng(0)
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        batch = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in balanced_labels(n, rng)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    return folder


def all_tensors(splits: DataSplits) -> list[torch.Tensor]:
    return [t for ds in (splits.train, splits.val, splits.test) for t in ds.tensors]


def assert_common(splits: DataSplits, shape: tuple[int, int, int]) -> None:
    assert splits.input_shape == shape
    assert splits.num_classes == 10
    for ds in (splits.train, splits.val, splits.test):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert tuple(x.shape[1:]) == shape and len(x) == len(y)
        assert int(y.min()) >= 0 and int(y.max()) < 10


# ---------------------------------------------------------------- digits

@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return load_digits(seed=0)


def test_digits_shapes_and_sizes(digits: DataSplits) -> None:
    assert_common(digits, (1, 8, 8))
    assert digits.name == "digits"
    sizes = len(digits.train), len(digits.val), len(digits.test)
    assert sum(sizes) == 1797
    assert sizes[2] == 360  # 20% of 1797, rounded up by sklearn
    assert sizes[1] == round(0.15 * (1797 - 360))


def test_digits_splits_are_disjoint(digits: DataSplits) -> None:
    # All 1797 digits images are distinct and every split goes through the same affine map, so equal
    # rows across splits would mean a sample was reused.
    rows = [{row.tobytes() for row in ds.tensors[0].flatten(1).numpy()}
            for ds in (digits.train, digits.val, digits.test)]
    assert [len(r) for r in rows] == [len(digits.train), len(digits.val), len(digits.test)]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    assert len(rows[0] | rows[1] | rows[2]) == 1797


def test_digits_stratified(digits: DataSplits) -> None:
    for ds in (digits.val, digits.test):
        counts = torch.bincount(ds.tensors[1], minlength=10)
        assert (counts > 0).all()
        share = counts.float() / counts.sum()
        assert float(share.max() - share.min()) < 0.03  # digits classes are ~10% each


def test_digits_standardised_with_train_stats(digits: DataSplits) -> None:
    x = digits.train.tensors[0]
    assert abs(float(x.mean())) < 1e-4
    assert abs(float(x.std()) - 1.0) < 1e-3
    assert abs(float(digits.test.tensors[0].mean())) < 0.1  # same stats applied, not re-fitted


def test_digits_seed_determinism_and_fingerprint(digits: DataSplits) -> None:
    again = load_digits(seed=0)
    for a, b in zip(all_tensors(digits), all_tensors(again)):
        assert torch.equal(a, b)
    assert digits.fingerprint() == again.fingerprint()
    fp = digits.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0

    other = load_digits(seed=1)
    assert not torch.equal(digits.train.tensors[1], other.train.tensors[1])
    assert other.fingerprint() != fp


def test_digits_val_size_count_and_fraction() -> None:
    assert len(load_digits(val_size=100).val) == 100
    assert len(load_digits(val_size=0.5).val) == round(0.5 * 1437)


@pytest.mark.parametrize("bad", [0, -3, 1437, 5000, 0.0, 1.0, 1.5, -0.1, True, "10"])
def test_invalid_val_size(bad: object) -> None:
    with pytest.raises(ConfigError, match="val_size"):
        load_digits(val_size=bad)  # type: ignore[arg-type]


def test_load_dataset_dispatch_and_unknown_name() -> None:
    assert load_dataset("digits", seed=0).fingerprint() == load_digits(seed=0).fingerprint()
    with pytest.raises(ConfigError) as info:
        load_dataset("imagenet")
    message = str(info.value)
    assert "imagenet" in message
    assert all(name in message for name in DATASETS)
    with pytest.raises(ConfigError, match="root"):
        load_dataset("digits", root="/tmp")


# ---------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [False, True])
def test_idx_loads_raw_and_gz(tmp_path: Path, gz: bool) -> None:
    root = make_idx_dir(tmp_path / "fm", gz=gz)
    splits = load_idx(root, val_size=10, seed=0)
    assert_common(splits, (1, 28, 28))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50, 10, 20)
    assert (torch.bincount(splits.val.tensors[1], minlength=10) == 1).all()  # stratified carve
    x = splits.train.tensors[0]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-3


def test_idx_raw_and_gz_give_same_data(tmp_path: Path) -> None:
    raw = load_idx(make_idx_dir(tmp_path / "raw"), val_size=10)
    gz = load_idx(make_idx_dir(tmp_path / "gz", gz=True), val_size=10)
    for a, b in zip(all_tensors(raw), all_tensors(gz)):
        assert torch.equal(a, b)


def test_read_idx_values(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for gz in (False, True):
        path = write_idx(tmp_path / f"a{int(gz)}", array, IDX_IMAGE_MAGIC, gz=gz)
        np.testing.assert_array_equal(read_idx(path), array)


def test_idx_val_carved_from_train_not_test(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "fm")
    splits = load_idx(root, val_size=0.25, seed=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (45, 15, 20)
    # The test split is the whole t10k file, in file order, whatever the seed.
    test_labels = read_idx(root / "t10k-labels-idx1-ubyte").astype(np.int64)
    np.testing.assert_array_equal(splits.test.tensors[1].numpy(), test_labels)


def test_idx_limits(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "fm")
    splits = load_dataset("mnist", root=root, val_size=10, train_limit=20, test_limit=10)
    assert splits.name == "mnist"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 10, 10)
    for ds in (splits.train, splits.test):
        assert (torch.bincount(ds.tensors[1], minlength=10) > 0).all()
    big = load_idx(root, val_size=10, train_limit=1000)
    assert len(big.train) == 50  # a limit is an upper bound
    with pytest.raises(ConfigError, match="train_limit"):
        load_idx(root, val_size=10, train_limit=0)


def test_idx_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", root=missing)
    assert "apt-get install" in str(info.value) and str(missing) in str(info.value)
    with pytest.raises(DataError, match="nowhere"):
        load_dataset("mnist", root=missing)
    assert DEFAULT_FASHION_MNIST_DIR.startswith("/")


def test_mnist_requires_root() -> None:
    with pytest.raises(ConfigError, match="root"):
        load_dataset("mnist")


def test_idx_missing_file(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "fm")
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_idx(root, val_size=10)


def test_idx_bad_magic(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "fm")
    path = root / "train-images-idx3-ubyte"
    raw = bytearray(path.read_bytes())
    raw[0:4] = b"\x12\x34\x56\x78"
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="magic") as info:
        load_idx(root, val_size=10)
    assert "train-images-idx3-ubyte" in str(info.value)


def test_idx_truncated(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "fm", gz=True)
    path = root / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    with pytest.raises(DataError, match="truncated") as info:
        load_idx(root, val_size=10)
    assert "train-images-idx3-ubyte.gz" in str(info.value)


def test_idx_corrupt_gzip(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "fm", gz=True)
    path = root / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_idx(root, val_size=10)


def test_idx_count_mismatch(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "fm")
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(59, np.uint8), IDX_LABEL_MAGIC)
    with pytest.raises(DataError, match="60 images.*59 labels"):
        load_idx(root, val_size=10)


def test_idx_wrong_dims(tmp_path: Path) -> None:
    root = make_idx_dir(tmp_path / "fm")
    write_idx(root / "train-images-idx3-ubyte", np.zeros((60, 784), np.uint8), 0x00000802)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*\(N, H, W\)"):
        load_idx(root, val_size=10)


# ---------------------------------------------------------------- CIFAR-10

def test_cifar_both_root_forms(tmp_path: Path) -> None:
    folder = make_cifar_dir(tmp_path)
    from_parent = load_cifar10(tmp_path, val_size=20, seed=0)
    from_folder = load_dataset("cifar10", root=folder, val_size=20, seed=0)
    assert_common(from_parent, (3, 32, 32))
    assert (len(from_parent.train), len(from_parent.val), len(from_parent.test)) == (80, 20, 20)
    assert from_parent.fingerprint() == from_folder.fingerprint()
    x = from_parent.train.tensors[0]
    per_channel_mean = x.mean(dim=(0, 2, 3))
    per_channel_std = x.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(per_channel_mean, torch.zeros(3), atol=1e-4)
    assert torch.allclose(per_channel_std, torch.ones(3), atol=1e-3)


def test_cifar_pixel_layout(tmp_path: Path) -> None:
    folder = make_cifar_dir(tmp_path)
    with (folder / "test_batch").open("rb") as f:
        raw = pickle.load(f, encoding="bytes")
    splits = load_cifar10(folder, val_size=20)
    # Rows of 3072 are channel-major: the first 1024 values are the red plane.
    x = splits.test.tensors[0]
    red = raw[b"data"][:, :1024].reshape(-1, 32, 32).astype(np.float64)
    corr = np.corrcoef(red.ravel(), x[:, 0].numpy().ravel())[0, 1]
    assert corr > 0.9999


def test_cifar_missing_batch(tmp_path: Path) -> None:
    folder = make_cifar_dir(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(tmp_path, val_size=20)


def test_cifar_malformed_and_unsafe_batch(tmp_path: Path) -> None:
    folder = make_cifar_dir(tmp_path)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"labels": [0, 1]}))
    with pytest.raises(DataError, match="data_batch_2"):
        load_cifar10(folder, val_size=20)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": print, b"labels": []}))
    with pytest.raises(DataError, match="not allowed"):
        load_cifar10(folder, val_size=20)


def test_cifar_requires_root_and_existing_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="root"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="nope"):
        load_cifar10(tmp_path / "nope")
