"""The :class:`Dataset` container and the :class:`Loader` registry entry.

A task is held once, as whole arrays; nodes only ever receive index subsets of
the training part (see :mod:`meshlearn.data.partition`), which keeps hundreds of
simulated nodes cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Dataset", "Loader"]


@dataclass(repr=False)
class Dataset:
    """Arrays for a whole task; nodes get index subsets of the training part."""

    name: str
    x_train: np.ndarray  # float32 (N, C, H, W) in [0, 1] for images; int64 token ids (N, L) for text
    y_train: np.ndarray  # int64 (N,) class labels; float32 targets for regression
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    users_train: np.ndarray | None = None  # int64 (N,): LEAF user index of each training sample
    user_names: list[str] | None = None
    task: str = "classification"   # a name in meshlearn.tasks.TASKS: regression targets are float32
    cardinalities: tuple[int, ...] | None = None  # index inputs: how many values each column takes

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train):
            raise ValueError(f"{self.name}: {len(self.x_train)} training inputs but {len(self.y_train)} labels")
        if len(self.x_test) != len(self.y_test):
            raise ValueError(f"{self.name}: {len(self.x_test)} test inputs but {len(self.y_test)} labels")
        from meshlearn.tasks import TASKS

        if self.task not in TASKS:
            raise ValueError(f"{self.name}: task = {self.task!r}; use one of {', '.join(TASKS)}")
        if self.users_train is not None and len(self.users_train) != len(self.y_train):
            raise ValueError(f"{self.name}: users_train has {len(self.users_train)} entries, expected {len(self.y_train)}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        users = "" if self.user_names is None else f", users={len(self.user_names)}"
        return (
            f"Dataset(name={self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}{users})"
        )


@dataclass(frozen=True)
class Loader:
    """Registry entry: ``load(root, **options)`` builds the task, ``check(root)`` only looks for
    files, and ``sources(root)``, where given, lists the files ``load`` parses, so that its
    result is cached (``meshlearn.data.cache``) until one of them changes."""

    load: Callable[..., Dataset]
    check: Callable[[str | None], None]
    summary: str
    sources: Callable[[str | None], list[Path]] | None = None
