"""MNIST and Fashion-MNIST from their IDX files (gzipped or not).

IDX layout: two zero bytes, a dtype code, the number of dimensions, then one
big-endian uint32 per dimension, then the values in C order (big-endian for
multi-byte types). Files are validated strictly so that a truncated download
fails loudly instead of training on garbage.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from .base import Dataset

__all__ = ["read_idx", "load_mnist", "load_fashion_mnist", "IDX_FILES", "SYSTEM_DIRS"]

# IDX dtype codes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# Where distribution packages put the files; searched after ``data.root``.
SYSTEM_DIRS = {
    "mnist": "/usr/share/datasets/mnist",
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
}

_HINTS = {
    "fashion-mnist": (
        "install Debian's package: sudo apt-get install dataset-fashion-mnist "
        "(files go to /usr/share/datasets/fashion-mnist), or set data.root to a folder "
        "holding {files}"
    ),
    "mnist": (
        "download the four files from http://yann.lecun.com/exdb/mnist/ (or a mirror) "
        "into /usr/share/datasets/mnist, or set data.root to a folder holding {files}"
    ),
}


MAX_IDX_BYTES = 1 << 31
"""Largest array an IDX file may declare (2 GiB; the full EMNIST's largest file holds 0.7 GB):
the header is checked before anything is allocated or decompressed."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (``.gz`` detected by content, not by name). The declared shape is
    checked against ``MAX_IDX_BYTES`` and, for a plain file, against its size before the data
    are read, and a gzipped file is never decompressed past the size its header declares."""
    path = Path(path)
    with open(path, "rb") as plain:
        gzipped = plain.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES:
                raise ValueError(f"{path}: not an IDX file (bad magic number {magic.hex() or 'empty'})")
            dtype, ndim = _IDX_DTYPES[magic[2]], magic[3]
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header ({4 + len(dims)} bytes, {ndim} dimensions)")
            shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
            expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if expected > MAX_IDX_BYTES:
                raise ValueError(f"{path}: the header declares shape {shape} ({expected} bytes), more than the "
                                 f"{MAX_IDX_BYTES} bytes an IDX file may hold here")
            if not gzipped and (actual := path.stat().st_size - 4 - 4 * ndim) != expected:
                raise _size_mismatch(path, shape, expected, actual)
            raw = f.read(expected + 1)   # one byte more tells trailing data, without reading it all
    except (OSError, EOFError, zlib.error) as exc:
        if not gzipped:
            raise
        raise ValueError(f"{path}: corrupt gzip stream ({exc})") from exc
    if len(raw) != expected:   # a gzipped file: read no further than one byte past the declared size
        raise _size_mismatch(path, shape, expected, len(raw) if len(raw) < expected else None)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _size_mismatch(path: Path, shape: tuple[int, ...], expected: int, found: int | None) -> ValueError:
    """A file holding another number of data bytes than its header declares (``found`` None: more,
    not all read)."""
    kind = "truncated" if found is not None and found < expected else "has trailing bytes"
    holds = "more" if found is None else f"{found} bytes"
    return ValueError(f"{path}: IDX file {kind}: header says shape {shape} ({expected} bytes), found {holds}")


def _search_dirs(name: str, root: str | None) -> list[Path]:
    dirs = [Path(root).expanduser()] if root else []
    system = Path(SYSTEM_DIRS[name])
    return dirs if system in dirs else [*dirs, system]


def locate(name: str, root: str | None = None) -> dict[str, Path]:
    """Paths of the four IDX files, all taken from the first folder that has them."""
    missing: list[str] = []
    for folder in _search_dirs(name, root):
        found: dict[str, Path] = {}
        missing = []
        for key, stem in IDX_FILES.items():
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
            else:
                missing.append(stem)
        if not missing:
            return found
    searched = ", ".join(str(d) for d in _search_dirs(name, root))
    files = ", ".join(f"{s}.gz" for s in IDX_FILES.values())
    raise FileNotFoundError(
        f"data.dataset = {name!r}: expected {missing[0]}[.gz] in one of: {searched}. "
        "To get it, " + _HINTS[name].format(files=files) + " (plain or gzipped)."
    )


def check_mnist(root: str | None = None) -> None:
    locate("mnist", root)


def check_fashion_mnist(root: str | None = None) -> None:
    locate("fashion-mnist", root)


def _load(name: str, root: str | None) -> Dataset:
    paths = locate(name, root)
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        img_path, lbl_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3:
            raise ValueError(f"{img_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise ValueError(f"{lbl_path}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(
                f"{img_path} holds {len(images)} images but {lbl_path} holds {len(labels)} labels"
            )
        if labels.size and labels.max() >= 10:
            raise ValueError(f"{lbl_path}: label {int(labels.max())} outside 0..9")

    def images(key: str) -> np.ndarray:
        a = arrays[key]
        return (a.astype(np.float32) / 255.0)[:, None, :, :]

    return Dataset(
        name=name,
        x_train=images("train_images"),
        y_train=arrays["train_labels"].astype(np.int64),
        x_test=images("test_images"),
        y_test=arrays["test_labels"].astype(np.int64),
        num_classes=10,
    )


def load_mnist(root: str | None = None) -> Dataset:
    """MNIST handwritten digits: (N, 1, 28, 28) in [0, 1], 10 classes."""
    return _load("mnist", root)


def load_fashion_mnist(root: str | None = None) -> Dataset:
    """Fashion-MNIST (Zalando): same format and shapes as MNIST."""
    return _load("fashion-mnist", root)
