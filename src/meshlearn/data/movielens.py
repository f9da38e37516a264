"""MovieLens ratings (GroupLens's ml-latest-small format) as a regression task.

``ratings.csv`` holds ``userId,movieId,rating,timestamp`` with that header, ratings from 0.5
to 5 in half stars. Each sample is a (user, movie) index pair, its target the rating; users and
movies are numbered in order of their ids. Every user's ratings are split into training and test
ratings (a fixed seed, ``test_fraction`` of each user's), and every training sample keeps its
user, so ``data.partition = "natural"`` gives nodes whole users (``ranges = true``: contiguous
ranges of users, all of them used), as the reference framework does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Dataset

__all__ = ["load_movielens", "check_movielens", "ratings_file"]

_URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
_COLUMNS = ["userId", "movieId", "rating", "timestamp"]


def ratings_file(root: str | None) -> Path:
    if not root:
        raise FileNotFoundError(f"data.dataset = 'movielens' needs data.root: the folder holding ratings.csv "
                                f"(unzip {_URL})")
    path = Path(root) / "ratings.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: data.root must hold MovieLens's ratings.csv (unzip {_URL})")
    return path


def check_movielens(root: str | None = None) -> None:
    ratings_file(root)


def load_movielens(root: str | None = None, test_fraction: float = 0.2) -> Dataset:
    """Ratings as (user, movie) → rating; ``test_fraction`` of each user's ratings are held out."""
    import pandas as pd

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"data.options.test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    path = ratings_file(root)
    try:
        table = pd.read_csv(path, dtype={"userId": "int64", "movieId": "int64", "rating": "float64",
                                         "timestamp": "int64"}, engine="c")
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a MovieLens ratings file ({exc})") from None
    if list(table.columns) != _COLUMNS:
        raise ValueError(f"{path}: columns are {list(table.columns)}, expected {','.join(_COLUMNS)}")
    if table.empty:
        raise ValueError(f"{path}: holds no ratings")
    ratings = table["rating"].to_numpy()
    if not np.isfinite(ratings).all() or ratings.min() < 0.5 or ratings.max() > 5.0:
        raise ValueError(f"{path}: ratings must lie between 0.5 and 5 (found {ratings.min()}..{ratings.max()})")
    users, user = np.unique(table["userId"].to_numpy(), return_inverse=True)
    movies, movie = np.unique(table["movieId"].to_numpy(), return_inverse=True)
    # each user's ratings, shuffled with a fixed seed, their first test_fraction held out
    order = np.lexsort((np.random.default_rng(0).random(len(user)), user))
    rank = np.empty(len(user), dtype=np.int64)
    starts = np.searchsorted(user[order], np.arange(len(users)))
    rank[order] = np.arange(len(user)) - np.repeat(starts, np.diff(np.append(starts, len(user))))
    counts = np.bincount(user, minlength=len(users))
    test = rank < np.floor(test_fraction * counts[user])
    x = np.stack([user, movie], axis=1).astype(np.int64)
    y = ratings.astype(np.float32)
    return Dataset("movielens", x[~test], y[~test], x[test], y[test], num_classes=1,
                   users_train=user[~test].astype(np.int64), user_names=[str(u) for u in users],
                   task="regression", cardinalities=(len(users), len(movies)))
