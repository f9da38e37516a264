"""Split a training set across nodes: IID, label shards, Dirichlet, or LEAF's natural users.

How data is spread decides how hard decentralized learning is: the further the
nodes' label distributions drift apart, the more local models disagree and the
more gossip has to correct. Every scheme here is deterministic given ``seed``
and returns, per node, a sorted ``int64`` index array into the training set.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["partition", "PARTITIONS", "label_histogram"]

_DIRICHLET_TRIES = 100


def _iid(labels: np.ndarray, num_nodes: int, rng: np.random.Generator, **_: object) -> list[np.ndarray]:
    """Shuffle, then cut into near-equal parts (sizes differ by at most one)."""
    n = len(labels)
    if num_nodes > n:
        raise ValueError(
            f"data.partition = 'iid': {num_nodes} nodes but only {n} training samples; "
            "lower `nodes` or use a larger data set"
        )
    return np.array_split(rng.permutation(n), num_nodes)


def _shards(
    labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *, shards_per_node: int, **_: object
) -> list[np.ndarray]:
    """McMahan et al. (2017): sort by label, cut into equal shards, deal shards_per_node to each node.

    Shuffling before the stable sort makes which samples of a class share a shard
    random, rather than inherited from the file order.
    """
    if shards_per_node < 1:
        raise ValueError(f"data.shards_per_node must be >= 1, got {shards_per_node}")
    n = len(labels)
    total = num_nodes * shards_per_node
    if total > n:
        raise ValueError(
            f"data.partition = 'shards': {num_nodes} nodes x data.shards_per_node = {shards_per_node} "
            f"needs {total} shards but there are only {n} training samples; "
            "lower data.shards_per_node or `nodes`"
        )
    shuffled = rng.permutation(n)
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, total)
    order = rng.permutation(total).reshape(num_nodes, shards_per_node)
    return [np.concatenate([shards[s] for s in row]) for row in order]


def _dirichlet(
    labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *, alpha: float, min_samples: int,
    seed: int, **_: object
) -> list[np.ndarray]:
    """Hsu et al. (2019): for each class, node shares ~ Dir(alpha); small alpha = few classes per node.

    A draw that leaves some node with fewer than ``min_samples`` is redrawn with a
    seed derived from ``(seed, attempt)``, a bounded number of times.
    """
    if not alpha > 0:
        raise ValueError(f"data.alpha must be > 0 for data.partition = 'dirichlet', got {alpha}")
    n = len(labels)
    if num_nodes * min_samples > n:
        raise ValueError(
            f"data.partition = 'dirichlet': {num_nodes} nodes x {min_samples} samples each exceeds the "
            f"{n} training samples; lower `nodes`"
        )
    classes = np.unique(labels)
    for attempt in range(_DIRICHLET_TRIES):
        r = rng if attempt == 0 else np.random.default_rng([seed, attempt])
        parts: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
        for c in classes:
            members = r.permutation(np.flatnonzero(labels == c))
            shares = r.dirichlet(np.full(num_nodes, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for node, chunk in enumerate(np.split(members, cuts)):
                parts[node].append(chunk)
        result = [np.concatenate(p) for p in parts]
        if min(len(p) for p in result) >= min_samples:
            return result
    raise ValueError(
        f"data.partition = 'dirichlet' with data.alpha = {alpha} left some node with fewer than "
        f"{min_samples} samples in {_DIRICHLET_TRIES} draws ({num_nodes} nodes, {n} samples); "
        "use a larger data.alpha or fewer `nodes`"
    )


def _natural(
    labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *, users: np.ndarray | None, **_: object
) -> list[np.ndarray]:
    """One LEAF user (writer, speaker, account) per node: the federated split the data came with."""
    if users is None:
        raise ValueError(
            "data.partition = 'natural' needs per-sample users, which only LEAF data sets provide "
            "(data.dataset = 'leaf-...'); choose another data.partition for this data set"
        )
    users = np.asarray(users)
    if users.shape != labels.shape:
        raise ValueError(f"users has shape {users.shape}, labels {labels.shape}; they must match")
    ids = np.unique(users)
    if num_nodes > len(ids):
        raise ValueError(
            f"data.partition = 'natural': {num_nodes} nodes but the data has only {len(ids)} users; "
            "lower `nodes` to at most the number of users or choose another data.partition"
        )
    return [np.flatnonzero(users == u) for u in ids[:num_nodes]]


PARTITIONS: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": _iid,
    "shards": _shards,
    "dirichlet": _dirichlet,
    "natural": _natural,
}


def partition(
    labels: np.ndarray,
    num_nodes: int,
    method: str,
    seed: int,
    *,
    alpha: float = 0.5,
    shards_per_node: int = 2,
    users: np.ndarray | None = None,
    min_samples: int = 1,
) -> list[np.ndarray]:
    """Per-node sorted int64 indices into the training set, by ``method`` (see ``PARTITIONS``).

    ``natural`` with fewer nodes than users keeps the first ``num_nodes`` users, so
    the node set does not depend on ``seed``. Raises ``ValueError`` naming the
    config key to change whenever a node would get fewer than ``min_samples``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if num_nodes < 1:
        raise ValueError(f"`nodes` must be >= 1, got {num_nodes}")
    if min_samples < 1:
        raise ValueError(f"data.min_samples must be >= 1 (no node may be left without data), got {min_samples}")
    try:
        scheme = PARTITIONS[method]
    except KeyError:
        raise ValueError(
            f"unknown data.partition {method!r}; valid names: {', '.join(PARTITIONS)}"
        ) from None
    rng = np.random.default_rng(seed)
    parts = scheme(
        labels, num_nodes, rng, alpha=alpha, shards_per_node=shards_per_node, users=users,
        min_samples=min_samples, seed=seed,
    )
    parts = [np.sort(p).astype(np.int64) for p in parts]
    smallest = min(len(p) for p in parts)
    if smallest < min_samples:
        raise ValueError(
            f"data.partition = {method!r} leaves a node with {smallest} samples (< data.min_samples = "
            f"{min_samples}); lower `nodes` or data.min_samples"
        )
    return parts


def label_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Samples per (node, class): the usual picture of how non-IID a split is."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    out = np.zeros((len(parts), num_classes), dtype=np.int64)
    for node, p in enumerate(parts):
        out[node] = np.bincount(labels[p], minlength=num_classes)
    return out
