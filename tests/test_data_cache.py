"""The cache of parsed data sets: used while the source files are unchanged, rebuilt when one
changes, never taken for other files, and memory-mapped workers train on the same samples."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from conftest import small_config
from meshlearn.data import cache, datasets, leaf
from meshlearn.results import read_models
from meshlearn.runner import run_experiment
from test_data import make_mnist_dir, write_leaf


@pytest.fixture
def parses(monkeypatch, tmp_path):
    """Each call's count of source parses, with the cache in a folder of the test."""
    monkeypatch.setenv("MESHLEARN_CACHE", str(tmp_path / "cache"))
    count = {"leaf": 0}
    read = leaf.read_leaf_split

    def counting(folder):
        count["leaf"] += 1
        return read(folder)

    monkeypatch.setattr(leaf, "read_leaf_split", counting)
    return count


def femnist(folder, n=6, seed=0, users=("w0", "w1")):
    rng = np.random.default_rng(seed)
    sample = lambda k: ([rng.random(784).round(3).tolist() for _ in range(k)], rng.integers(0, 62, k).tolist())
    write_leaf(folder, "train", [{user: sample(n) for user in users}])
    write_leaf(folder, "test", [{user: sample(2) for user in users}])
    return str(folder)


def test_second_load_is_mapped_from_the_cache(parses, tmp_path):
    root = femnist(tmp_path / "leaf")
    first = datasets.load("leaf-femnist", root)
    second = datasets.load("leaf-femnist", root)
    assert parses["leaf"] == 2   # train and test, once
    assert isinstance(second.x_train, np.memmap) and not isinstance(first.x_train, np.memmap)
    for key in ("x_train", "y_train", "x_test", "y_test", "users_train"):
        assert np.array_equal(getattr(first, key), getattr(second, key))
    assert second.user_names == first.user_names and second.num_classes == first.num_classes == 62
    assert datasets.load("leaf-femnist", root, limit_train=5).x_train.shape[0] == 5   # limits apply after
    assert parses["leaf"] == 2


def test_a_changed_source_file_rebuilds_the_entry(parses, tmp_path):
    root = femnist(tmp_path / "leaf")
    before = datasets.load("leaf-femnist", root)
    femnist(tmp_path / "leaf", seed=1)   # same sizes of lists, other values, rewritten at once
    after = datasets.load("leaf-femnist", root)
    assert parses["leaf"] == 4 and not np.array_equal(before.x_train, after.x_train)
    again = datasets.load("leaf-femnist", root)
    assert parses["leaf"] == 4 and np.array_equal(again.x_train, after.x_train)
    assert len(list((tmp_path / "cache" / "datasets").iterdir())) == 1   # replaced, not piled up


def test_other_files_with_the_same_sizes_and_times_get_their_own_entry(parses, tmp_path):
    root = femnist(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")   # copy2: the same sizes and modification times
    femnist(tmp_path / "b", seed=2)
    for path in (tmp_path / "b").rglob("*.json"):
        twin = tmp_path / "a" / path.relative_to(tmp_path / "b")
        os.utime(path, ns=(twin.stat().st_atime_ns, twin.stat().st_mtime_ns))
    a, b = datasets.load("leaf-femnist", root), datasets.load("leaf-femnist", str(tmp_path / "b"))
    assert parses["leaf"] == 4 and not np.array_equal(a.x_train, b.x_train)


def test_options_are_part_of_the_entry_and_cache_false_parses(parses, tmp_path, monkeypatch):
    make_mnist_dir(tmp_path / "idx", gz=True)
    calls = []
    monkeypatch.setattr(datasets.idx, "read_idx", lambda path, _read=datasets.idx.read_idx: calls.append(path)
                        or _read(path))
    datasets.load("fashion-mnist", str(tmp_path / "idx"))
    datasets.load("fashion-mnist", str(tmp_path / "idx"))
    assert len(calls) == 4
    datasets.load("fashion-mnist", str(tmp_path / "idx"), cache=False)
    assert len(calls) == 8
    assert cache.folder() == tmp_path / "cache"


def test_mapped_workers_train_on_the_same_samples(tmp_path, monkeypatch):
    """A processes run whose workers map the cached arrays ends with the models of a run that
    parses the files in every process."""
    monkeypatch.setenv("MESHLEARN_CACHE", str(tmp_path / "cache"))
    root = femnist(tmp_path / "leaf", n=12, users=[f"w{k}" for k in range(4)])
    options = dict(nodes=4, rounds=2, data={"dataset": "leaf-femnist", "root": root, "partition": "natural"},
                   model={"name": "logreg"}, engine={"name": "processes", "workers": 2, "threads": 1})
    run_experiment(small_config(**options), tmp_path / "mapped")
    assert any((tmp_path / "cache" / "datasets").iterdir())
    run_experiment(small_config(**{**options, "data": {**options["data"], "cache": False}}), tmp_path / "parsed")
    a, b = (read_models(tmp_path / run / "models.safetensors") for run in ("mapped", "parsed"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
