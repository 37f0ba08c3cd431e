"""Tests for amc.data.datasets: real (digits) and tiny synthetic fixture data (IDX, CIFAR pickles); a user's own data
(amc.data.factory, amc.data.imagefolder: a dataset factory, an image folder) and the streaming helpers (amc.data.streaming)."""

from __future__ import annotations

import gzip
import multiprocessing
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from amc.data.datasets import (DATASETS, DEFAULT_FASHION_MNIST_DIR, DataSplits, load_cifar10, load_dataset,
                      load_digits, load_idx, read_idx)
from amc.errors import ConfigError, DataError
from amc.data.streaming import StreamedSplit, batches, take
from amc.data.imagefolder import load_imagefolder
from amc.data.splits import default_val_size
from tests.user_data import forget_package, write_digit_pngs, write_user_package

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


# ---------------------------------------------------------------- a user's own data (amc.data.factory, amc.data.imagefolder)

BAD_FACTORIES = '''
import torch
from torch.utils.data import Dataset


class Items(Dataset):
    def __init__(self, item, n=20):
        self.item, self.n = item, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.item == "raise" and i > 0:
            raise KeyError(f"no item {i}")
        return self.item if self.item != "raise" else (torch.zeros(1, 4, 4), 0)


def returns_int(seed=0):
    return 42


def returns_strings(seed=0):
    return "train", "test"


def uint8_images(seed=0):
    return Items((torch.zeros(1, 4, 4, dtype=torch.uint8), 0)), Items((torch.zeros(1, 4, 4), 0))


def float_labels(seed=0):
    return Items((torch.zeros(1, 4, 4), 0.5)), Items((torch.zeros(1, 4, 4), 0))


def not_pairs(seed=0):
    return Items(torch.zeros(1, 4, 4)), Items(torch.zeros(1, 4, 4))


def one_class(seed=0):
    return Items((torch.zeros(1, 4, 4), 0)), Items((torch.zeros(1, 4, 4), 0))


def fails(seed=0):
    raise RuntimeError("the data server is down\\nsecond line")


def empty_test(seed=0):
    return Items((torch.zeros(1, 4, 4), 0)), Items((torch.zeros(1, 4, 4), 0), n=0)


def bad_item_later(seed=0):
    return Items("raise"), Items((torch.zeros(1, 4, 4), 0))
'''

NOT_IMPORTABLE = "import does_not_exist_anywhere\n"


@pytest.fixture(scope="module")
def user_package(tmp_path_factory: pytest.TempPathFactory):
    """The test package (``mydata.factories`` and ``mydata.bad``) on ``sys.path`` for this module."""
    root = write_user_package(tmp_path_factory.mktemp("userpkg"))
    (root / "mydata" / "bad.py").write_text(BAD_FACTORIES)
    (root / "mydata" / "broken.py").write_text(NOT_IMPORTABLE)
    forget_package()  # another module's copy may be imported in this process
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(root))
        yield root
    forget_package()


@pytest.fixture(scope="module")
def factory_digits(user_package) -> DataSplits:
    return load_dataset("mydata.factories:digit_splits", seed=0)


def test_factory_dataset_is_streamed_with_a_stratified_val_carved_from_train(factory_digits: DataSplits) -> None:
    splits = factory_digits
    assert not splits.in_memory
    assert all(isinstance(ds, StreamedSplit) for ds in (splits.train, splits.val, splits.test))
    n_train = int(0.8 * 1797)
    assert len(splits.val) == default_val_size(n_train) == round(0.1 * n_train)
    assert len(splits.train) + len(splits.val) == n_train and len(splits.test) == 1797 - n_train
    assert splits.input_shape == (1, 8, 8) and splits.num_classes == 10
    assert splits.name == "mydata.factories:digit_splits"
    assert set(splits.train.indices).isdisjoint(splits.val.indices)  # both index the factory's train set
    counts = np.bincount(splits.val.labels, minlength=10)
    assert counts.min() >= 13 and counts.max() <= 16  # stratified: ~14 of each digit
    x, y = take(splits.val, range(len(splits.val)))
    assert x.shape == (len(splits.val), 1, 8, 8) and x.dtype == torch.float32
    assert torch.equal(y, torch.from_numpy(splits.val.labels))  # labels read once match the items
    assert splits.example(2).shape == (2, 1, 8, 8)


def test_factory_fingerprint_covers_the_spec_and_is_stable(user_package, factory_digits: DataSplits) -> None:
    again = load_dataset("mydata.factories:digit_splits", seed=0)
    assert again.fingerprint() == factory_digits.fingerprint()
    labelled = load_dataset("mydata.factories:digit_splits", kwargs={"labelled": True})
    assert labelled.fingerprint() != factory_digits.fingerprint()  # other factory arguments, other key
    assert load_dataset("mydata.factories:digit_splits", seed=1).fingerprint() != factory_digits.fingerprint()


def test_factory_targets_skip_the_label_pass_and_give_the_same_splits(user_package, factory_digits, monkeypatch) -> None:
    from mydata import factories

    reads = []
    original = factories.Digits.__getitem__
    monkeypatch.setattr(factories.Digits, "__getitem__", lambda self, i: reads.append(i) or original(self, i))
    labelled = load_dataset("mydata.factories:digit_splits", kwargs={"labelled": True})
    assert len(reads) < 100  # a few items are checked; the 1,437 labels come from .targets
    assert np.array_equal(labelled.val.indices, factory_digits.val.indices)


def test_factory_own_val_split_and_limits(user_package) -> None:
    splits = load_dataset("mydata.factories:digit_splits", kwargs={"with_val": True}, train_limit=300)
    assert len(splits.val) == 200 and len(splits.train) == 300
    with pytest.raises(ConfigError, match="--val-size 100 .*own val split"):
        load_dataset("mydata.factories:digit_splits", kwargs={"with_val": True}, val_size=100)


@pytest.mark.parametrize(("spec", "kwargs", "root", "error", "names"), [
    ("mydata.nosuch:f", {}, None, DataError, "cannot import module 'mydata.nosuch'"),
    ("mydata.broken:f", {}, None, DataError, "cannot import module 'mydata.broken'"),
    ("mydata.factories:nosuch", {}, None, DataError, "has no callable 'nosuch'"),
    ("mydata.bad:returns_int", {}, None, DataError, "returned an int; return (train, test)"),
    ("mydata.bad:returns_strings", {}, None, DataError, "returned a str as its train split"),
    ("mydata.bad:uint8_images", {}, None, DataError, "torch.uint8 tensor of shape (1, 4, 4); return a float"),
    ("mydata.bad:float_labels", {}, None, DataError, "the label of item 0 is 0.5"),
    ("mydata.bad:not_pairs", {}, None, DataError, "item 0 is a Tensor; a dataset item must be an (image, label)"),
    ("mydata.bad:one_class", {}, None, DataError, "has 1 class(es)"),
    ("mydata.bad:fails", {}, None, DataError, "failed (RuntimeError: the data server is down second line)"),
    ("mydata.bad:empty_test", {}, None, DataError, "empty test split"),
    ("mydata.bad:bad_item_later", {}, None, DataError, "reading item 1 failed (KeyError"),
    ("mydata.factories:digit_splits", {"nope": 1}, None, ConfigError, "does not accept ['nope']"),
    ("mydata.factories:digit_splits", {}, "/tmp", ConfigError, "--data-dir '/tmp' is not used"),
])
def test_bad_factories_are_one_line_naming_the_value(user_package, spec, kwargs, root, error, names) -> None:
    with pytest.raises(error) as info:
        load_dataset(spec, kwargs=kwargs, root=root)
    message = str(info.value)
    assert names in message and "\n" not in message, message


def test_builtin_datasets_refuse_dataset_kwargs() -> None:
    with pytest.raises(ConfigError, match="takes no keyword arguments"):
        load_dataset("digits", kwargs={"size": 8})
    with pytest.raises(ConfigError, match="imagefolder .*package.module:factory"):
        load_dataset("nosuch")


def test_streamed_batches_match_the_tensor_slices_with_and_without_workers(digits: DataSplits) -> None:
    order = torch.randperm(len(digits.val), generator=torch.Generator().manual_seed(3))
    expected = list(batches(digits.val, 50, order=order))
    for workers in (0, 2):
        streamed = StreamedSplit(digits.val, source="digits val", workers=workers)
        got = list(batches(streamed, 50, order=order))
        assert len(got) == len(expected)
        for (x, y), (ex, ey) in zip(got, expected):
            assert torch.equal(x, ex) and torch.equal(y, ey)
    x, y = take(StreamedSplit(digits.val, source="digits val", workers=1), order[:7])
    assert torch.equal(x, digits.val.tensors[0][order[:7]]) and torch.equal(y, digits.val.tensors[1][order[:7]])


def test_training_and_evaluation_on_a_streamed_copy_match_the_in_memory_data(digits: DataSplits) -> None:
    """The same seeded batches in the same order: a streamed dataset trains and scores like the tensors."""
    from amc.evaluation.evaluator import EvalConfig, PolicyEvaluator
    from amc.graph.discover import discover
    from amc.models import build_model
    from amc.train import TrainConfig, train

    streamed = DataSplits(*(StreamedSplit(ds, source=f"digits {name}", workers=w)
                            for ds, name, w in ((digits.train, "train", 1), (digits.val, "val", 0),
                                                (digits.test, "test", 0))),
                          num_classes=10, input_shape=(1, 8, 8), name="digits-streamed", spec="test")
    models = []
    for data in (digits, streamed):
        torch.manual_seed(0)
        model = build_model("cnn", in_channels=1, num_classes=10)
        models.append(train(model, data.train, TrainConfig(epochs=1, batch_size=128), seed=0, progress=False))
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        assert torch.equal(a, b)
    graph = discover(models[0], digits.example(1))
    config = EvalConfig(score="finetune:2", bn_batches=2, val_limit=100)
    policy = [0.5] * len(graph)
    results = [PolicyEvaluator(models[0], graph, data, config).evaluate(policy) for data in (digits, streamed)]
    assert results[0].accuracy == results[1].accuracy and results[0].loss == pytest.approx(results[1].loss, abs=1e-6)


@pytest.fixture(scope="module")
def png_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digit_pngs(tmp_path_factory.mktemp("pngs"))


def test_imagefolder_layout_normalisation_and_splits(png_digits: Path) -> None:
    splits = load_dataset("imagefolder", root=png_digits, kwargs={"size": 8})
    n_test = len(range(0, 1797, 5))
    assert len(splits.test) == n_test and len(splits.train) + len(splits.val) == 1797 - n_test
    assert len(splits.val) == default_val_size(1797 - n_test)
    assert splits.input_shape == (1, 8, 8) and splits.num_classes == 10  # grayscale PNGs: one channel
    x, y = take(splits.train, range(500))
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1  # standardised with train statistics
    # classes are the sorted folder names: digit-0 ... digit-9 are labels 0 ... 9
    assert splits.train.base.files[0].split("/")[-2] == "digit-0" and int(y[0]) == 0
    again = load_dataset("imagefolder", root=png_digits, kwargs={"size": 8})
    assert again.fingerprint() == splits.fingerprint()
    bigger = load_dataset("imagefolder", root=png_digits, kwargs={"size": 12, "channels": 3})
    assert bigger.input_shape == (3, 12, 12) and bigger.fingerprint() != splits.fingerprint()


def test_imagefolder_without_test_folder_carves_it_and_fits_other_shapes(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(30):
            Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)).save(tmp_path / "train" / c / f"{i}.jpg")
        (tmp_path / "train" / c / "notes.txt").write_text("ignored: not an image")
    splits = load_imagefolder(tmp_path, settings={"size": [10, 16], "mean": [0.5, 0.5, 0.5], "std": 0.25},
                              val_size=6)
    assert splits.input_shape == (3, 10, 16)  # RGB JPEGs: three channels; 20x40 covered then centre-cropped
    assert (len(splits.train), len(splits.val), len(splits.test)) == (42, 6, 12)  # test: 20% of 60
    x, _ = splits.train[0]
    assert x.shape == (3, 10, 16) and float(x.min()) >= -2.0 - 1e-6 and float(x.max()) <= 2.0 + 1e-6
    assert set(splits.test.indices).isdisjoint(splits.train.indices)


def _bad_folders(root: Path) -> dict[str, tuple[Path, dict, str]]:
    """Broken image folders -> (data dir, settings, what the message must say)."""
    from PIL import Image

    def image(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4), 7, np.uint8)).save(path)

    cases = {}
    (root / "no-train").mkdir()
    cases["no-train"] = (root / "no-train", {}, "has no train/ folder")
    (root / "flat" / "train").mkdir(parents=True)
    image(root / "flat" / "train" / "a.png")
    cases["no-class-folders"] = (root / "flat", {}, "has no class subfolders; put one folder per class")
    image(root / "one" / "train" / "a" / "x.png")
    cases["one-class"] = (root / "one", {}, "one class subfolder ('a')")
    image(root / "empty" / "train" / "a" / "x.png")
    (root / "empty" / "train" / "b").mkdir()
    cases["empty-class"] = (root / "empty", {}, "class folder '" + str(root / "empty" / "train" / "b"))
    for c in "ab":
        image(root / "bad" / "train" / c / "x.png")
    (root / "bad" / "train" / "b" / "y.png").write_text("not a png")
    cases["unreadable"] = (root / "bad", {}, "cannot read image '" + str(root / "bad" / "train" / "b" / "y.png"))
    for c in "ab":
        image(root / "foreign" / "train" / c / "x.png")
    image(root / "foreign" / "test" / "c" / "x.png")
    cases["test-class-not-in-train"] = (root / "foreign", {}, "/test/c' is not a class of")
    cases["bad-size"] = (root / "foreign", {"size": "big"}, "size 'big' must be a positive int")
    cases["bad-setting"] = (root / "foreign", {"resize": 3}, "imagefolder does not take ['resize']")
    cases["missing-dir"] = (root / "nowhere", {}, "does not exist")
    return cases


def test_bad_image_folders_are_one_line_naming_the_value(tmp_path: Path) -> None:
    for case, (root, settings, names) in _bad_folders(tmp_path).items():
        with pytest.raises((DataError, ConfigError)) as info:
            load_dataset("imagefolder", root=root, kwargs=settings)
        assert names in str(info.value) and "\n" not in str(info.value), (case, str(info.value))
    with pytest.raises(ConfigError, match="needs --data-dir"):
        load_dataset("imagefolder")


def test_an_image_that_fails_to_decode_later_is_one_line_from_a_worker(tmp_path: Path, png_digits: Path) -> None:
    """The header is fine (checked up front), the pixels are not: the DataLoader worker's error is one line."""
    from amc.data.imagefolder import ImageFiles

    good = next((png_digits / "train" / "digit-0").iterdir())
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:60])
    base = ImageFiles([str(good), str(broken)], np.zeros(2, np.int64), size=(8, 8), mode="L")
    with pytest.raises(DataError) as info:
        list(batches(StreamedSplit(base, source="test", workers=1), 2))
    assert str(info.value) == f"cannot read image {str(broken)!r} (OSError: image file is truncated); replace or " \
                              "delete the file"
    # The loader's workers are stopped with the error, not left to the garbage collector (which waits 5 s).
    assert multiprocessing.active_children() == []
