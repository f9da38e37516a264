"""A dataset read from a CSV file: a header row, one label column (integer classes 0..C-1) and
numeric feature columns.

``path`` is relative to the config file: it is a ``ConfigPath``, made absolute when the config
is parsed, as ``"file.py:Name"`` plug-ins are, so the run works from any working directory
and on every worker. ``data.root`` is not used.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from meshlearn.data import Dataset
from meshlearn.plugins import ConfigPath


def load_csv(root: str | None = None, *,
             path: Annotated[ConfigPath, Field(description="the CSV file, relative to the config file")],
             label_column: Annotated[str, Field(description="header of the label column")] = "label",
             test_fraction: Annotated[float, Field(gt=0, lt=1, description="share of the rows held out")] = 0.2,
             scale: Annotated[float, Field(gt=0, description="factor applied to every feature")] = 1.0) -> Dataset:
    """Rows of a CSV file, split into training and test rows at random (the same split in every process)."""
    try:
        with open(path) as f:
            header = f.readline().strip().split(",")
    except FileNotFoundError:
        raise FileNotFoundError(f"data.options.path = {path!r} does not exist") from None
    if label_column not in header:
        raise ValueError(f"data.options.label_column = {label_column!r} is not a column of {path}; "
                         f"its columns start {header[:5]}")
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32, ndmin=2)
    y = table[:, header.index(label_column)].astype(np.int64)
    x = np.delete(table, header.index(label_column), axis=1) * np.float32(scale)
    order = np.random.default_rng(0).permutation(len(y))
    test, train = order[:round(test_fraction * len(y))], order[round(test_fraction * len(y)):]
    return Dataset("csv", x[train], y[train], x[test], y[test], num_classes=int(y.max()) + 1)
