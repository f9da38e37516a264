"""CIFAR-10 from the official "python version" batches, read without ``pickle.load``.

The batches (``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``) are
Python pickles. Unpickling untrusted bytes with the stock unpickler can run any
importable callable (``os.system`` ...), so :class:`BatchUnpickler` resolves only
the handful of globals that a CIFAR batch needs and refuses everything else.

Why the allowed globals are safe:

* ``numpy.core.multiarray._reconstruct`` (``numpy._core`` under NumPy 2) is
  wrapped so that it only ever builds an empty base-class ``numpy.ndarray``;
  the array is then filled by ``ndarray.__setstate__`` from plain bytes.
* ``numpy.ndarray`` and ``numpy.dtype`` are data types: calling them allocates
  an array or describes a dtype, nothing else.
* ``_codecs.encode`` appears in protocol-2 pickles written by Python 3 to store
  ``bytes``; it is replaced by a function that accepts only ``str`` with the
  ``latin1`` codec, which is a byte-for-byte copy.

Object arrays could only contain objects built by this same unpickler, and the
loader additionally requires a ``uint8`` image array, so nothing else reaches
the caller.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np

from .base import Dataset

__all__ = ["BatchUnpickler", "read_batch", "load_cifar10", "check_cifar10", "batches_folder", "TRAIN_BATCHES",
           "TEST_BATCH"]

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
_FOLDER = "cifar-10-batches-py"
_HINT = (
    "download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
    "extract it (tar xzf cifar-10-python.tar.gz) and set data.root to the folder that "
    "holds cifar-10-batches-py/"
)

_numpy_reconstruct = np.zeros(1).__reduce__()[0]  # wherever this NumPy keeps it


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to reconstruct array subtype {subtype!r}")
    return _numpy_reconstruct(np.ndarray, shape, dtype)


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class BatchUnpickler(pickle.Unpickler):
    """Unpickler that only knows the globals of a NumPy-array-in-a-dict pickle."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"CIFAR batch references global {module}.{name}, which is not allowed "
                "(only NumPy array reconstruction is); the file is not an official batch"
            ) from None


def read_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One batch as ``(uint8 (n, 3072), int64 (n,))``; ValueError naming the file if malformed."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        # every length an opcode declares is checked against the bytes really there, before the
        # unpickler would allocate a buffer of that length
        for _ in pickletools.genops(raw):
            pass
        # encoding="bytes" is the documented way to read the Python 2 batches.
        obj = BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:   # the unpickler runs only NumPy's array rebuilding, which reports a malformed
        # state with any exception type (AttributeError, RuntimeError, even SystemError): all mean a bad file
        raise ValueError(f"{path}: not a valid CIFAR-10 batch ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")

    def field(key: str) -> Any:
        for k in (key.encode(), key):
            if k in obj:
                return obj[k]
        raise ValueError(f"{path}: missing key {key!r}")

    data, labels = field("data"), field("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise ValueError(f"{path}: 'data' must be a uint8 array (n, 3072), got {type(data).__name__} {shape}")
    if not isinstance(labels, (list, np.ndarray)) or not all(isinstance(v, (int, np.integer)) for v in labels):
        raise ValueError(f"{path}: 'labels' must be a list of ints")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(data):
        raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels outside 0..9")
    return data, labels


def batches_folder(root: str | None) -> Path:
    if not root:
        raise FileNotFoundError(
            f"data.dataset = 'cifar10' needs data.root (expected {_FOLDER}/data_batch_1 under it); "
            "to get it, " + _HINT
        )
    base = Path(root).expanduser()
    for folder in (base / _FOLDER, base):
        if (folder / TRAIN_BATCHES[0]).is_file():
            break
    else:
        folder = base / _FOLDER
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"data.dataset = 'cifar10': expected {folder / name} (data.root = {root}); to get it, " + _HINT
            )
    return folder


def check_cifar10(root: str | None = None) -> None:
    batches_folder(root)


def load_cifar10(root: str | None = None) -> Dataset:
    """CIFAR-10: (N, 3, 32, 32) float32 in [0, 1], 10 classes (50000 train / 10000 test)."""
    folder = batches_folder(root)

    def images(raw: np.ndarray) -> np.ndarray:
        # Rows are 1024 red, 1024 green, 1024 blue values, each plane row-major.
        return raw.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0

    train = [read_batch(folder / name) for name in TRAIN_BATCHES]
    x_test, y_test = read_batch(folder / TEST_BATCH)
    return Dataset(
        name="cifar10",
        x_train=images(np.concatenate([d for d, _ in train])),
        y_train=np.concatenate([l for _, l in train]),
        x_test=images(x_test),
        y_test=y_test,
        num_classes=10,
    )
