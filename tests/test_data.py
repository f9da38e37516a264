"""Loaders: each real on-disk format is written in miniature and read back exactly."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct

import numpy as np
import pytest

from meshlearn.data import DATASETS, Dataset, check_available, label_histogram, load, partition
from meshlearn.config import parse_config
from meshlearn.data import cifar, idx, leaf
from meshlearn.runner import run_experiment

FASHION_MNIST_DIR = os.environ.get("MESHLEARN_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def no_system_dirs(tmp_path_factory, monkeypatch):
    """Keep tests independent of /usr/share/datasets on the machine running them."""
    empty = tmp_path_factory.mktemp("no-system-data")
    monkeypatch.setattr(idx, "SYSTEM_DIRS", {k: str(empty / k) for k in idx.SYSTEM_DIRS})


# --- writers for the real formats ---------------------------------------------

def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    dt = {0x08: ">u1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dt).tobytes()


def write_idx(path, array, gz: bool, code: int = 0x08) -> None:
    raw = idx_bytes(array, code)
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def make_mnist_dir(folder, gz: bool, n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train_images"][0, 0, 0], arrays["train_images"][0, 0, 1] = 0, 255
    for key, stem in idx.IDX_FILES.items():
        write_idx(folder / stem, arrays[key], gz)
    return arrays


# --- digits --------------------------------------------------------------------

def test_digits_shapes_split_and_determinism():
    d = load("digits")
    assert isinstance(d, Dataset) and d.name == "digits"
    assert d.x_train.shape[1:] == (1, 8, 8) == d.input_shape
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert len(d.y_train) + len(d.y_test) == 1797
    assert len(d.y_test) == 360  # 20 % of 1797, rounded up by scikit-learn
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    assert np.allclose(d.x_train * 16, np.round(d.x_train * 16))
    assert d.num_classes == 10 and set(np.unique(d.y_test)) == set(range(10))
    share = np.bincount(d.y_test, minlength=10) / np.bincount(d.y_train, minlength=10)
    assert np.all(np.abs(share - 0.25) < 0.03)  # stratified
    again = load("digits")
    assert np.array_equal(d.x_train, again.x_train) and np.array_equal(d.y_test, again.y_test)
    assert len(load("digits", test_fraction=0.5).y_test) == 899
    assert d.users_train is None and "digits" in repr(d)


def test_unknown_dataset_and_option():
    with pytest.raises(ValueError, match="data.dataset.*digits.*fashion-mnist"):
        load("imagenet")
    with pytest.raises(ValueError, match="data.dataset"):
        check_available("imagenet")
    with pytest.raises(ValueError, match="data.options.colour is not an option.*test_fraction = 0.2"):
        load("digits", colour=True)
    with pytest.raises(ValueError, match="data.options.limit_train"):
        load("digits", limit_train=-1)
    check_available("digits")
    assert {"digits", "mnist", "fashion-mnist", "cifar10", "leaf-femnist", "leaf-celeba",
            "leaf-shakespeare", "leaf-sent140"} <= set(DATASETS)


# --- IDX -------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_round_trip(tmp_path, name, gz):
    arrays = make_mnist_dir(tmp_path, gz)
    d = load(name, root=str(tmp_path))
    assert d.name == name and d.num_classes == 10
    assert d.x_train.shape == (12, 1, 28, 28) and d.x_test.shape == (5, 1, 28, 28)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0
    assert np.array_equal(np.round(d.x_train[:, 0] * 255).astype(np.uint8), arrays["train_images"])
    assert np.array_equal(np.round(d.x_test[:, 0] * 255).astype(np.uint8), arrays["test_images"])
    assert np.array_equal(d.y_train, arrays["train_labels"])
    assert np.array_equal(d.y_test, arrays["test_labels"])


def test_idx_limits_and_system_dir_fallback(tmp_path, monkeypatch):
    arrays = make_mnist_dir(tmp_path / "system", gz=True)
    monkeypatch.setitem(idx.SYSTEM_DIRS, "fashion-mnist", str(tmp_path / "system"))
    check_available("fashion-mnist")
    d = load("fashion-mnist", root=str(tmp_path / "empty"), limit_train=4, limit_test=2)
    assert len(d.y_train) == 4 and len(d.x_test) == 2
    assert np.array_equal(d.y_train, arrays["train_labels"][:4])


@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x0B, np.int16), (0x0C, np.int32),
                                        (0x0D, np.float32), (0x0E, np.float64)])
def test_read_idx_dtypes(tmp_path, code, dtype):
    a = (np.arange(24).reshape(2, 3, 4) * 3 - (0 if code == 0x08 else 20)).astype(dtype)
    write_idx(tmp_path / "a-idx3", a, gz=False, code=code)
    out = idx.read_idx(tmp_path / "a-idx3")
    assert out.shape == (2, 3, 4) and np.array_equal(out, a)


def test_idx_declared_sizes_are_checked_before_reading(tmp_path):
    """A header declaring a huge array is refused before anything is allocated, and a gzip
    bomb is not decompressed past the size its header declares."""
    huge = tmp_path / "huge-idx3-ubyte"
    huge.write_bytes(b"\x00\x00\x08\x03" + np.array([60000, 4000, 4000], ">u4").tobytes() + b"\x00" * 16)
    with pytest.raises(ValueError, match="huge-idx3-ubyte: the header declares shape .* more than"):
        idx.read_idx(huge)
    bomb = tmp_path / "bomb-idx1-ubyte.gz"   # declares 10 bytes, decompresses to 1 GB
    with gzip.open(bomb, "wb") as f:
        f.write(b"\x00\x00\x08\x01" + np.array([10], ">u4").tobytes())
        for _ in range(64):
            f.write(bytes(1 << 24))
    assert bomb.stat().st_size < 2_000_000
    with pytest.raises(ValueError, match="bomb-idx1-ubyte.gz: IDX file has trailing bytes"):
        idx.read_idx(bomb)


def test_corrupt_idx_raises_value_error_naming_file(tmp_path):
    make_mnist_dir(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    good = images.read_bytes()

    images.write_bytes(b"\x00\x00\x07\x03" + good[4:])  # unknown dtype code
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*magic"):
        load("mnist", root=str(tmp_path))
    images.write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*magic"):
        idx.read_idx(images)

    images.write_bytes(good[:-10])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated"):
        load("mnist", root=str(tmp_path))
    images.write_bytes(good[:9])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated"):
        idx.read_idx(images)
    images.write_bytes(good + b"\x00")
    with pytest.raises(ValueError, match="trailing"):
        idx.read_idx(images)

    images.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(good)[:-12])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        load("mnist", root=str(tmp_path))

    write_idx(images, np.zeros((11, 28, 28), np.uint8), gz=False)
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(ValueError, match="11 images.*12 labels"):
        load("mnist", root=str(tmp_path))


def test_missing_idx_files_hint(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load("fashion-mnist", root=str(tmp_path))
    msg = str(info.value)
    assert "sudo apt-get install dataset-fashion-mnist" in msg
    assert "/usr/share/datasets/fashion-mnist" in msg and "data.root" in msg
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path) in msg
    make_mnist_dir(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        check_available("mnist", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="data.root"):
        check_available("mnist")


# --- CIFAR-10 --------------------------------------------------------------------

class _Py2StylePickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` opcodes, as in the official CIFAR-10 batches."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def py2_style_dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Py2StylePickler(buf, protocol=2).dump(obj)
    # The official batches come from NumPy 1.x, which names numpy.core.
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def make_cifar(root, style: str, sizes=(3, 2, 4, 1, 2), n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    names = [*cifar.TRAIN_BATCHES, cifar.TEST_BATCH]
    for name, n in zip(names, [*sizes, n_test]):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        obj = {b"batch_label": b"x", b"data": data, b"labels": labels,
               b"filenames": [b"f%d.png" % i for i in range(n)]}
        raw = py2_style_dumps(obj) if style == "py2" else pickle.dumps(obj, protocol=2)
        (folder / name).write_bytes(raw)
        batches[name] = (data, labels)
    return batches


@pytest.mark.parametrize("style", ["py3-protocol2", "py2"])
def test_cifar_round_trip(tmp_path, style):
    batches = make_cifar(tmp_path, style)
    if style == "py2":
        raw = (tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes()
        assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    d = load("cifar10", root=str(tmp_path))
    assert d.x_train.shape == (12, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64 and d.num_classes == 10
    train_data = np.concatenate([batches[n][0] for n in cifar.TRAIN_BATCHES])
    train_labels = sum((batches[n][1] for n in cifar.TRAIN_BATCHES), [])
    assert np.array_equal(np.round(d.x_train * 255).astype(np.uint8).reshape(12, 3072), train_data)
    # channel-major layout: the first 1024 values are the red plane
    assert np.array_equal(np.round(d.x_train[0, 0] * 255).astype(np.uint8).ravel(), train_data[0, :1024])
    assert d.y_train.tolist() == train_labels
    assert d.y_test.tolist() == batches["test_batch"][1]
    # root may also be the batches folder itself
    assert np.array_equal(load("cifar10", root=str(tmp_path / "cifar-10-batches-py")).y_test, d.y_test)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_rejects_code_execution(tmp_path):
    make_cifar(tmp_path, "py3-protocol2")
    marker = tmp_path / "pwned"
    evil = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Evil(marker)]}
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(ValueError, match="data_batch_3.*(posix|os|nt)\\.system"):
        load("cifar10", root=str(tmp_path))
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match=r"(__builtin__|builtins)\.eval"):
        cifar.BatchUnpickler(io.BytesIO(pickle.dumps(eval, protocol=2))).load()
    # a NumPy subclass or a non-latin1 codec are refused too
    path.write_bytes(pickle.dumps({b"data": np.ma.zeros((1, 3072), np.uint8), b"labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match="data_batch_3"):
        cifar.read_batch(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3"):
        cifar.read_batch(path)


def test_cifar_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.root.*cifar-10-python.tar.gz"):
        load("cifar10")
    make_cifar(tmp_path, "py3-protocol2")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch.*kriz/cifar"):
        check_available("cifar10", str(tmp_path))


# --- LEAF ------------------------------------------------------------------------

def write_leaf(folder, split, files: list[dict[str, tuple[list, list]]]):
    """One JSON file per dict of user -> (x, y), in LEAF's layout."""
    (folder / split).mkdir(parents=True, exist_ok=True)
    for i, users in enumerate(files):
        blob = {
            "users": list(users),
            "num_samples": [len(x) for x, _ in users.values()],
            "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()},
        }
        (folder / split / f"all_data_{i}_niid_0_keep_0_{split}_9.json").write_text(json.dumps(blob))


def test_leaf_femnist(tmp_path):
    rng = np.random.default_rng(0)

    def samples(n):
        return [[float(v) for v in rng.random(784).round(4)] for _ in range(n)], [int(v) for v in rng.integers(0, 62, n)]

    train = [{"f0001_12": samples(3), "f0002_40": samples(2)}, {"f0003_07": samples(4)}]
    test = [{"f0001_12": samples(1), "f0002_40": samples(2)}, {"f0003_07": samples(1)}]
    write_leaf(tmp_path, "train", train)
    write_leaf(tmp_path, "test", test)
    d = load("leaf-femnist", root=str(tmp_path))
    assert d.num_classes == 62 and d.x_train.shape == (9, 1, 28, 28) and d.x_test.shape == (4, 1, 28, 28)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.user_names == ["f0001_12", "f0002_40", "f0003_07"]
    assert d.users_train.dtype == np.int64 and d.users_train.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    flat_x = [x for f in train for xs, _ in f.values() for x in xs]
    assert np.array_equal(d.x_train.reshape(9, 784), np.asarray(flat_x, np.float32))
    assert d.y_train.tolist() == [y for f in train for _, ys in f.values() for y in ys]
    assert d.y_test.tolist() == [y for f in test for _, ys in f.values() for y in ys]
    parts = partition(d.y_train, 3, "natural", seed=0, users=d.users_train)
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4], [5, 6, 7, 8]]
    limited = load("leaf-femnist", root=str(tmp_path), limit_train=4)
    assert limited.users_train.tolist() == [0, 0, 0, 1] and len(limited.x_train) == 4
    bad = tmp_path / "train" / "all_data_0_niid_0_keep_0_train_9.json"
    blob = json.loads(bad.read_text())
    blob["num_samples"][0] = 99
    bad.write_text(json.dumps(blob))
    with pytest.raises(ValueError, match="all_data_0.*num_samples"):
        load("leaf-femnist", root=str(tmp_path))


def test_leaf_root_may_be_task_folder(tmp_path):
    write_leaf(tmp_path / "data", "train", [{"u": ([[0.5] * 784], [61])}])
    write_leaf(tmp_path / "data", "test", [{"u": ([[0.25] * 784], [3])}])
    d = load("leaf-femnist", root=str(tmp_path))
    assert d.y_train.tolist() == [61] and d.x_test[0, 0, 5, 5] == 0.25


def test_leaf_shakespeare(tmp_path):
    letters = leaf.ALL_LETTERS
    assert len(letters) == 80
    x0 = (letters * 2)[:80]
    x1 = "To be, or not to be: that is the question.\nWhether 'tis nobler in the mind to su"
    x2 = ("}" * 79) + "é"  # outside LEAF's set -> space
    write_leaf(tmp_path, "train", [{"HAMLET": ([x0, x1], ["a", "f"]), "OPHELIA": ([x2], ["\n"])}])
    write_leaf(tmp_path, "test", [{"HAMLET": ([x1], ["}"])}])
    d = load("leaf-shakespeare", root=str(tmp_path))
    assert d.num_classes == 80 and d.x_train.shape == (3, 80) and d.x_train.dtype == np.int64
    assert d.x_train[0].tolist() == [i % 80 for i in range(80)]
    assert "".join(letters[i] for i in d.x_train[1]) == x1
    assert d.x_train[2, -1] == letters.index(" ") and d.x_train[2, 0] == 79
    assert d.y_train.tolist() == [letters.index("a"), letters.index("f"), 0]
    assert d.y_test.tolist() == [79] and d.x_test.shape == (1, 80)
    assert d.user_names == ["HAMLET", "OPHELIA"] and d.users_train.tolist() == [0, 0, 1]


def test_leaf_sent140(tmp_path):
    def rec(text):
        return ["1467810369", "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY", "user", text]

    train = {
        "alice": ([rec("good good day, good!"), rec("bad day")], [1, 0]),
        "bob": ([rec("Good " * 30)], [1]),
    }
    write_leaf(tmp_path, "train", [train])
    write_leaf(tmp_path, "test", [{"carol": ([rec("good night"), rec("")], [1, 0])}])
    d = load("leaf-sent140", root=str(tmp_path), vocab_size=5, seq_len=6)
    # counts: good 35, day 2, "," 1, "!" 1, bad 1 -> keep 3 words: good, day, ","
    good, day, comma = 2, 3, 4
    assert d.x_train.dtype == np.int64 and d.x_train.shape == (3, 6) and d.num_classes == 2
    assert d.x_train[0].tolist() == [good, good, day, comma, good, 1]
    assert d.x_train[1].tolist() == [1, day, 0, 0, 0, 0]
    assert d.x_train[2].tolist() == [good] * 6
    assert d.x_test.tolist() == [[good, 1, 0, 0, 0, 0], [0] * 6]
    assert d.y_train.tolist() == [1, 0, 1] and d.y_test.tolist() == [1, 0]
    assert d.user_names == ["alice", "bob"] and d.users_train.tolist() == [0, 0, 1]
    assert load("leaf-sent140", root=str(tmp_path)).x_train.shape == (3, 25)


def test_leaf_celeba(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    (tmp_path / "raw" / "img_align_celeba").mkdir(parents=True)
    pixels = {}
    for i in range(3):
        arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        name = f"{i:06d}.png"
        pil.fromarray(arr).save(tmp_path / "raw" / "img_align_celeba" / name)
        pixels[name] = arr
    write_leaf(tmp_path, "train", [{"17": (["000000.png", "000001.png"], [1, 0])}])
    write_leaf(tmp_path, "test", [{"4": (["000002.png"], [1])}])
    d = load("leaf-celeba", root=str(tmp_path), image_size=8)
    assert d.x_train.shape == (2, 3, 8, 8) and d.num_classes == 2 and d.user_names == ["17"]
    assert np.array_equal(np.round(d.x_test[0] * 255).astype(np.uint8), pixels["000002.png"].transpose(2, 0, 1))
    assert load("leaf-celeba", root=str(tmp_path)).x_train.shape == (2, 3, 84, 84)


def test_leaf_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.root.*TalwalkarLab/leaf"):
        load("leaf-femnist")
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match="train.*preprocess.sh"):
        check_available("leaf-shakespeare", str(tmp_path))
    write_leaf(tmp_path, "train", [{"u": (["a.jpg"], [0])}])
    write_leaf(tmp_path, "test", [{"u": (["a.jpg"], [0])}])
    with pytest.raises(FileNotFoundError, match="img_align_celeba"):
        check_available("leaf-celeba", str(tmp_path))


# --- real data ---------------------------------------------------------------------

@pytest.mark.realdata
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.undo()  # let the loader see /usr/share/datasets as in production
    try:
        check_available("fashion-mnist", FASHION_MNIST_DIR)
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            raise  # CI installs Debian's dataset-fashion-mnist, so absence is a failure there
        pytest.skip(f"Fashion-MNIST not installed: {exc}")
    d = load("fashion-mnist", root=FASHION_MNIST_DIR)
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.num_classes == 10 and d.x_train.dtype == np.float32
    assert d.x_train.min() == 0.0 and d.x_train.max() == 1.0 and d.x_test.max() <= 1.0
    assert np.array_equal(np.bincount(d.y_train), [6000] * 10)
    assert np.array_equal(np.bincount(d.y_test), [1000] * 10)
    parts = partition(d.y_train, 64, "dirichlet", seed=0, alpha=0.5)
    assert len(parts) == 64 and min(len(p) for p in parts) >= 1
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(60000))
    hist = label_histogram(d.y_train, parts, 10)
    assert hist.shape == (64, 10) and hist.sum() == 60000
    shares = hist / hist.sum(axis=1, keepdims=True)
    assert 0.5 * np.abs(shares - 0.1).sum(axis=1).mean() > 0.25  # label skew (TV distance): IID gives ≈ 0.04


def test_cifar_lengths_declared_in_the_pickle_are_checked_before_allocating(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(b"\x80\x04\x96" + struct.pack("<Q", 1 << 40) + b"tiny")   # BYTEARRAY8 of 1 TiB
    with pytest.raises(ValueError, match="data_batch_1: not a valid CIFAR-10 batch"):
        cifar.read_batch(path)


@pytest.mark.parametrize("blob, hint", [
    ({"users": "u1", "user_data": {}}, "'users' must be a list"),
    ({"users": ["u1"], "num_samples": {"u1": 1}, "user_data": {"u1": {"x": [1], "y": [0]}}}, "'num_samples'"),
    ({"users": ["u1"], "user_data": {"u1": {"x": 3, "y": [0]}}}, "user 'u1': 'x' and 'y' must be lists"),
])
def test_leaf_files_of_the_wrong_shape_name_the_file(tmp_path, blob, hint):
    (tmp_path / "all_data.json").write_text(json.dumps(blob))
    with pytest.raises(ValueError, match=f"all_data.json: {hint}"):
        leaf.read_leaf_split(tmp_path)


def test_leaf_reddit(tmp_path):
    """Comments of token sequences become one sample per sequence, labelled by the last
    non-padding target token; all-padding targets are dropped; the vocabulary comes from the
    training tokens by frequency (id 0 padding, 1 unknown)."""
    P = "<PAD>"

    def comment(*seqs):   # (x sequence, target sequence) pairs of one comment
        return [list(x) for x, _ in seqs], {"target_tokens": [list(t) for _, t in seqs], "count_tokens": 3}

    a1 = comment((["<BOS>", "i", "like"], ["i", "like", "cats"]), ([P, P, P], [P, P, P]))
    a2 = comment((["<BOS>", "cats", "like"], ["cats", "like", P]))
    b1 = comment((["<BOS>", "i", "i"], ["i", "i", "dogs"]))
    write_leaf(tmp_path, "train", [{"alice": ([a1[0], a2[0]], [a1[1], a2[1]]), "bob": ([b1[0]], [b1[1]])}])
    t1 = comment((["<BOS>", "dogs", "bark"], ["dogs", "bark", "loudly"]))
    write_leaf(tmp_path, "test", [{"carol": ([t1[0]], [t1[1]])}])
    d = load("leaf-reddit", root=str(tmp_path), vocab_size=5, seq_len=4)
    # x tokens of the kept sequences: <BOS> 3, i 3, like 2, cats 1 (ties by first occurrence) -> 3 words fit
    bos, i, like, unk = 2, 3, 4, 1
    assert d.num_classes == 5 and d.user_names == ["alice", "bob"]
    np.testing.assert_array_equal(d.x_train, [[bos, i, like, 0], [bos, unk, like, 0], [bos, i, i, 0]])
    np.testing.assert_array_equal(d.y_train, [unk, like, unk])   # cats, like, dogs
    np.testing.assert_array_equal(d.users_train, [0, 0, 1])
    np.testing.assert_array_equal(d.x_test, [[bos, unk, unk, 0]])
    np.testing.assert_array_equal(d.y_test, [unk])
    with pytest.raises(ValueError, match="vocab_size"):
        load("leaf-reddit", root=str(tmp_path), vocab_size=2)
    write_leaf(tmp_path, "train", [{"eve": ([[["a", "b"]]], [{"target_tokens": [["b"], ["c"]]}])}])
    with pytest.raises(ValueError, match="as many 'target_tokens'"):
        load("leaf-reddit", root=str(tmp_path))
    # a next-word model trains on it, one LEAF user per node
    write_leaf(tmp_path, "train", [{f"u{k}": ([a1[0], b1[0]], [a1[1], b1[1]]) for k in range(4)}])
    cfg = parse_config({"nodes": 4, "rounds": 2, "data": {"dataset": "leaf-reddit", "root": str(tmp_path),
                                                          "partition": "natural", "options": {"vocab_size": 6}},
                        "topology": {"kind": "ring"}, "training": {"batch_size": 2, "local_steps": 2},
                        "model": {"name": "char_lstm", "options": {"embedding_dim": 4, "hidden_size": 8}}})
    assert run_experiment(cfg, tmp_path / "run")["status"] == "completed"
