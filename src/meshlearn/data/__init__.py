"""Data sets and their split across nodes.

``load(name, root)`` reads a whole task (scikit-learn digits, MNIST and
Fashion-MNIST IDX files, CIFAR-10 python batches, LEAF JSON) into one
:class:`Dataset` of arrays, from files already on disk: nothing is downloaded,
and a missing file raises ``FileNotFoundError`` saying where it was expected
and how to get it. ``partition`` then gives each node an index subset of the
training part (IID, label shards, Dirichlet, or LEAF's natural users), which is
what makes the learning problem decentralized and, usually, non-IID.
"""

from .base import Dataset, Loader
from .datasets import DATASETS, check_available, load
from .partition import PARTITIONS, label_histogram, partition

__all__ = [
    "Dataset",
    "Loader",
    "DATASETS",
    "load",
    "check_available",
    "PARTITIONS",
    "partition",
    "label_histogram",
]
