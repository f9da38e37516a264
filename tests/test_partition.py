"""Partition schemes: exact covers, the intended label skew, determinism, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from meshlearn.data import PARTITIONS, label_histogram, partition


def balanced_labels(num_classes=10, per_class=60, shuffle_seed=None):
    labels = np.repeat(np.arange(num_classes), per_class).astype(np.int64)
    if shuffle_seed is not None:
        labels = np.random.default_rng(shuffle_seed).permutation(labels)
    return labels


def assert_disjoint_cover(parts, n):
    assert all(p.dtype == np.int64 for p in parts)
    assert all(np.array_equal(p, np.sort(p)) for p in parts)
    allidx = np.concatenate(parts)
    assert len(allidx) == n and np.array_equal(np.sort(allidx), np.arange(n))


def classes_per_node(labels, parts, num_classes):
    return (label_histogram(labels, parts, num_classes) > 0).sum(axis=1)


def test_registry_names():
    assert set(PARTITIONS) == {"iid", "shards", "dirichlet", "natural"}


def test_iid_cover_and_balance():
    labels = balanced_labels()
    parts = partition(labels, 7, "iid", seed=1)
    assert len(parts) == 7
    assert_disjoint_cover(parts, len(labels))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert classes_per_node(labels, parts, 10).min() >= 5  # every node sees most classes


@pytest.mark.parametrize("shuffle_seed", [None, 3])
def test_shards_cover_and_at_most_k_labels(shuffle_seed):
    labels = balanced_labels(10, 60, shuffle_seed)  # 600 samples -> 40 shards of 15, one label each
    for k in (1, 2, 4):
        parts = partition(labels, 40 // k, "shards", seed=0, shards_per_node=k)
        assert_disjoint_cover(parts, len(labels))
        assert classes_per_node(labels, parts, 10).max() <= k
        assert {len(p) for p in parts} == {15 * k}


def test_dirichlet_cover_and_skew():
    labels = balanced_labels(10, 200)
    skewed = partition(labels, 20, "dirichlet", seed=0, alpha=0.05)
    even = partition(labels, 20, "dirichlet", seed=0, alpha=100.0)
    for parts in (skewed, even):
        assert len(parts) == 20 and min(len(p) for p in parts) >= 1
        assert_disjoint_cover(parts, len(labels))
    assert classes_per_node(labels, skewed, 10).mean() < 4
    assert classes_per_node(labels, even, 10).mean() > 9

    def mean_entropy(parts):
        h = label_histogram(labels, parts, 10).astype(float)
        p = h / h.sum(axis=1, keepdims=True)
        return float(-(p * np.log(np.where(p > 0, p, 1))).sum(axis=1).mean())

    assert mean_entropy(skewed) < 1.0 < 2.0 < mean_entropy(even)


def test_dirichlet_min_samples_resampling():
    labels = balanced_labels(10, 30)
    parts = partition(labels, 30, "dirichlet", seed=4, alpha=0.3, min_samples=3)
    assert min(len(p) for p in parts) >= 3
    assert_disjoint_cover(parts, len(labels))


def test_natural_maps_users_to_nodes():
    users = np.array([2, 0, 1, 0, 2, 2, 1, 3], dtype=np.int64)
    labels = np.arange(8) % 3
    parts = partition(labels, 4, "natural", seed=0, users=users)
    assert [p.tolist() for p in parts] == [[1, 3], [2, 6], [0, 4, 5], [7]]
    fewer = partition(labels, 2, "natural", seed=99, users=users)
    assert [p.tolist() for p in fewer] == [[1, 3], [2, 6]]
    with pytest.raises(ValueError, match="only 4 users.*`nodes`"):
        partition(labels, 5, "natural", seed=0, users=users)
    with pytest.raises(ValueError, match="natural.*leaf"):
        partition(labels, 2, "natural", seed=0)


@pytest.mark.parametrize("method", ["iid", "shards", "dirichlet"])
def test_deterministic_given_seed(method):
    labels = balanced_labels(10, 50, shuffle_seed=0)
    a = partition(labels, 10, method, seed=7)
    b = partition(labels, 10, method, seed=7)
    c = partition(labels, 10, method, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_impossible_settings_name_the_key():
    labels = balanced_labels(2, 5)  # 10 samples
    with pytest.raises(ValueError, match="`nodes`"):
        partition(labels, 11, "iid", seed=0)
    with pytest.raises(ValueError, match="data.partition_options.shards_per_node"):
        partition(labels, 4, "shards", seed=0, shards_per_node=3)
    with pytest.raises(ValueError, match="data.partition_options.shards_per_node"):
        partition(labels, 4, "shards", seed=0, shards_per_node=0)
    with pytest.raises(ValueError, match="`nodes`"):
        partition(labels, 11, "dirichlet", seed=0)
    with pytest.raises(ValueError, match="larger data.partition_options.alpha or fewer `nodes`"):
        partition(labels, 5, "dirichlet", seed=0, alpha=0.001, min_samples=2)
    with pytest.raises(ValueError, match="data.partition_options.alpha"):
        partition(labels, 2, "dirichlet", seed=0, alpha=0.0)
    with pytest.raises(ValueError, match="data.min_samples"):
        partition(labels, 2, "iid", seed=0, min_samples=6)
    with pytest.raises(ValueError, match="data.min_samples"):
        partition(labels, 2, "iid", seed=0, min_samples=0)
    with pytest.raises(ValueError, match="data.partition = 'random' is unknown.*dirichlet, iid, natural, shards"):
        partition(labels, 2, "random", seed=0)
    with pytest.raises(ValueError, match="`nodes`"):
        partition(labels, 0, "iid", seed=0)


def test_label_histogram():
    labels = np.array([0, 1, 1, 2, 2, 2])
    hist = label_histogram(labels, [np.array([0, 3]), np.array([1, 2, 4, 5])], 4)
    assert hist.dtype == np.int64
    assert hist.tolist() == [[1, 0, 1, 0], [0, 2, 2, 0]]
    with pytest.raises(ValueError):
        label_histogram(labels, [np.arange(6)], 2)
