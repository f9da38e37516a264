"""The dataset registry and :func:`load`.

Every loader reads a real on-disk format and never downloads: missing files raise
``FileNotFoundError`` saying where the file was expected and how to obtain it.
"""

from __future__ import annotations

import numpy as np

from . import cifar, idx, leaf, movielens
from .base import Dataset, Loader
from .cache import cached

__all__ = ["Dataset", "Loader", "DATASETS", "load", "check_available", "load_digits", "load_synthetic"]


def load_digits(root: str | None = None, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 samples): needs no files, ideal for smoke runs.

    The stratified train/test split uses a fixed seed so that every run sees the same test set.
    """
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    bunch = sk_digits()
    x = (bunch.data.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=0
    )
    return Dataset("digits", x_train, y_train, x_test, y_test, num_classes=10)


def load_synthetic(root: str | None = None, shape: tuple[int, ...] | list[int] = (1, 28, 28),
                   num_classes: int = 10, train_samples: int = 6400, test_samples: int = 1000,
                   seed: int = 0) -> Dataset:
    """Gaussian class clusters of any input shape: a learnable task of any size, for
    benchmarks and scaling studies where only the shapes matter."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in shape)
    centers = rng.normal(0.0, 1.0, size=(num_classes, *shape)).astype(np.float32)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, num_classes, size=n).astype(np.int64)
        x = centers[y] + rng.normal(0.0, 2.0, size=(n, *shape)).astype(np.float32)
        return x, y

    x_train, y_train = split(train_samples)
    x_test, y_test = split(test_samples)
    return Dataset("synthetic", x_train, y_train, x_test, y_test, num_classes=num_classes)


def _no_files(root: str | None = None) -> None:
    return None


DATASETS: dict[str, Loader] = {}


def _get(name: str) -> Loader:
    """The loader of a built-in name, or of a user's function given by import path (a
    callable ``(root=None, **options) -> Dataset``, with an optional ``check(root)``)."""
    from meshlearn import plugins

    entry = plugins.resolve("dataset", name)
    if isinstance(entry, Loader):
        return entry
    return Loader(entry, getattr(entry, "check", _no_files), plugins.summary(entry), getattr(entry, "sources", None))


def check_available(name: str, root: str | None = None) -> None:
    """Raise ``FileNotFoundError`` (with where/how-to-get) unless ``name`` can be loaded from ``root``."""
    _get(name).check(root)


LIMITS = ("limit_train", "limit_test")   # options of every dataset: keep the first k samples of a split


def check_options(name: str, options: dict, loader: Loader | None = None) -> dict:
    """The loader's options checked against its signature (defaults filled in), plus the
    ``limit_train`` / ``limit_test`` every dataset takes; errors name ``data.options.KEY``."""
    from meshlearn import plugins

    limits = {key: options[key] for key in LIMITS if key in options}
    for key, value in limits.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0):
            raise ValueError(f"data.options.{key} must be a non-negative integer or unset, got {value!r}")
    rest = {key: value for key, value in options.items() if key not in LIMITS}
    return {**plugins.check_options("dataset", name, rest, "data.options", obj=loader or _get(name)), **limits}


def load(name: str, root: str | None = None, cache: bool = True, **options) -> Dataset:
    """Load ``data.dataset = name`` from ``data.root = root``.

    ``limit_train`` / ``limit_test`` keep the first k samples of each split (for
    quick runs); other options go to the dataset's loader (e.g. ``test_fraction``
    for digits, ``vocab_size``/``seq_len`` for leaf-sent140). With ``cache``, a loader
    that lists its source files is read from the cache of parsed data sets (see
    ``meshlearn.data.cache``) while those files are unchanged.
    """
    loader = _get(name)
    options = check_options(name, options, loader)
    limit_train = options.pop("limit_train", None)
    limit_test = options.pop("limit_test", None)

    def parsed() -> Dataset:
        data = loader.load(root, **options)
        if not isinstance(data, Dataset):
            raise ValueError(f"data.dataset = {name!r} returned {type(data).__name__}, not a meshlearn.data.Dataset")
        return data

    data = cached(name, options, loader.sources(root), parsed) if cache and loader.sources else parsed()
    if limit_train is not None:
        data.x_train, data.y_train = data.x_train[:limit_train], data.y_train[:limit_train]
        if data.users_train is not None:
            data.users_train = data.users_train[:limit_train]
    if limit_test is not None:
        data.x_test, data.y_test = data.x_test[:limit_test], data.y_test[:limit_test]
    return data


DATASETS.update(
    {
        "digits": Loader(load_digits, _no_files, "scikit-learn 8x8 digits, bundled, 10 classes"),
        "synthetic": Loader(load_synthetic, _no_files, "Gaussian class clusters of any shape, generated"),
        "mnist": Loader(idx.load_mnist, idx.check_mnist, "MNIST IDX files, 10 classes",
                        lambda root=None: list(idx.locate("mnist", root).values())),
        "fashion-mnist": Loader(idx.load_fashion_mnist, idx.check_fashion_mnist, "Fashion-MNIST IDX files, 10 classes",
                                lambda root=None: list(idx.locate("fashion-mnist", root).values())),
        "cifar10": Loader(cifar.load_cifar10, cifar.check_cifar10, "CIFAR-10 python batches, 10 classes",
                          lambda root=None: [cifar.batches_folder(root) / name
                                             for name in (*cifar.TRAIN_BATCHES, cifar.TEST_BATCH)]),
        "leaf-femnist": Loader(leaf.load_femnist, lambda root=None: leaf.check_leaf("femnist", root),
                               "LEAF FEMNIST JSON, 62 classes, per-writer users",
                               lambda root=None: leaf.leaf_sources("femnist", root)),
        "leaf-celeba": Loader(leaf.load_celeba, lambda root=None: leaf.check_leaf("celeba", root),
                              "LEAF CelebA JSON + img_align_celeba, 2 classes"),
        "leaf-shakespeare": Loader(leaf.load_shakespeare, lambda root=None: leaf.check_leaf("shakespeare", root),
                                   "LEAF Shakespeare JSON, next character over 80 symbols",
                                   lambda root=None: leaf.leaf_sources("shakespeare", root)),
        "leaf-sent140": Loader(leaf.load_sent140, lambda root=None: leaf.check_leaf("sent140", root),
                               "LEAF Sent140 JSON, 2 classes", lambda root=None: leaf.leaf_sources("sent140", root)),
        "leaf-reddit": Loader(leaf.load_reddit, lambda root=None: leaf.check_leaf("reddit", root),
                              "LEAF Reddit JSON, next word over a vocabulary built from the training tokens",
                              lambda root=None: leaf.leaf_sources("reddit", root)),
        "movielens": Loader(movielens.load_movielens, movielens.check_movielens,
                            "MovieLens ratings.csv (ml-latest-small format), ratings to predict (regression)",
                            lambda root=None: [movielens.ratings_file(root)]),
    }
)
