"""Split a training set across nodes: IID, label shards, Dirichlet, or LEAF's natural users.

How data is spread decides how hard decentralized learning is: the further the
nodes' label distributions drift apart, the more local models disagree and the
more gossip has to correct. Every scheme here is deterministic given ``seed``
and returns, per node, a sorted ``int64`` index array into the training set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import numpy as np
from pydantic import Field

from meshlearn import plugins, streams
from meshlearn.streams import Stream

__all__ = ["partition", "PARTITIONS", "label_histogram"]

_DIRICHLET_TRIES = 100


def iid(labels: np.ndarray, num_nodes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, then cut into near-equal parts (sizes differ by at most one)."""
    n = len(labels)
    if num_nodes > n:
        raise ValueError(
            f"data.partition = 'iid': {num_nodes} nodes but only {n} training samples; "
            "lower `nodes` or use a larger data set"
        )
    return np.array_split(rng.permutation(n), num_nodes)


def shards(
    labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *,
    shards_per_node: Annotated[int, Field(ge=1, description="label shards dealt to each node")] = 2,
) -> list[np.ndarray]:
    """McMahan et al. (2017): sort by label, cut into equal shards, deal shards_per_node to each node.

    Shuffling before the stable sort makes which samples of a class share a shard
    random, rather than inherited from the file order.
    """
    if shards_per_node < 1:
        raise ValueError(f"data.partition_options.shards_per_node must be >= 1, got {shards_per_node}")
    n = len(labels)
    total = num_nodes * shards_per_node
    if total > n:
        raise ValueError(
            f"data.partition = 'shards': {num_nodes} nodes x data.partition_options.shards_per_node = {shards_per_node} "
            f"needs {total} shards but there are only {n} training samples; "
            "lower data.partition_options.shards_per_node or `nodes`"
        )
    shuffled = rng.permutation(n)
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, total)
    order = rng.permutation(total).reshape(num_nodes, shards_per_node)
    return [np.concatenate([shards[s] for s in row]) for row in order]


def dirichlet(
    labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *,
    alpha: Annotated[float, Field(gt=0, description="Dirichlet concentration: small = more non-IID")] = 0.5,
    min_samples: int = 1, seed: int = 0,
) -> list[np.ndarray]:
    """Hsu et al. (2019): for each class, node shares ~ Dir(alpha); small alpha = few classes per node.

    A draw that leaves some node with fewer than ``min_samples`` is redrawn with a
    seed derived from ``(seed, attempt)``, a bounded number of times.
    """
    if not alpha > 0:
        raise ValueError(f"data.partition_options.alpha must be > 0 for data.partition = 'dirichlet', got {alpha}")
    n = len(labels)
    if num_nodes * min_samples > n:
        raise ValueError(
            f"data.partition = 'dirichlet': {num_nodes} nodes x {min_samples} samples each exceeds the "
            f"{n} training samples; lower `nodes`"
        )
    classes = np.unique(labels)
    for attempt in range(_DIRICHLET_TRIES):
        r = rng if attempt == 0 else streams.generator(seed, Stream.PARTITION, 0, attempt)
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
        f"data.partition = 'dirichlet' with data.partition_options.alpha = {alpha} left some node with fewer than "
        f"{min_samples} samples in {_DIRICHLET_TRIES} draws ({num_nodes} nodes, {n} samples); "
        "use a larger data.partition_options.alpha or fewer `nodes`"
    )


def natural(
    labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *, users: np.ndarray | None = None,
    ranges: bool = False,
) -> list[np.ndarray]:
    """One user (writer, speaker, account, rater) per node: the federated split the data came
    with. ``ranges = true``: every user, in contiguous ranges of users of about equal size, one
    range per node."""
    if users is None:
        raise ValueError(
            "data.partition = 'natural' needs per-sample users, which LEAF data sets and MovieLens provide "
            "(data.dataset = 'leaf-...' or 'movielens'); choose another data.partition for this data set"
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
    if ranges:
        return [np.flatnonzero(np.isin(users, group)) for group in np.array_split(ids, num_nodes)]
    return [np.flatnonzero(users == u) for u in ids[:num_nodes]]


PARTITIONS: dict[str, Callable[..., list[np.ndarray]]] = {
    "iid": iid,
    "shards": shards,
    "dirichlet": dirichlet,
    "natural": natural,
}


def partition(
    labels: np.ndarray,
    num_nodes: int,
    method: str,
    seed: int,
    *,
    users: np.ndarray | None = None,
    min_samples: int = 1,
    **options: object,
) -> list[np.ndarray]:
    """Per-node sorted int64 indices into the training set, by ``method`` (a built-in name of
    ``PARTITIONS`` or an import path) with its ``options``.

    A partitioner is a function ``(labels, num_nodes, rng, **options)`` returning one index
    array per node; it may also take ``users``, ``seed`` and ``min_samples``.

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
    rng = streams.generator(seed, Stream.PARTITION)
    parts = plugins.build("partitioner", method, options, labels=labels, num_nodes=num_nodes, rng=rng, users=users,
                          min_samples=min_samples, seed=seed)
    if not isinstance(parts, (list, tuple)) or len(parts) != num_nodes:
        raise ValueError(f"data.partition = {method!r} returned {type(parts).__name__} "
                         f"{'of length ' + str(len(parts)) if hasattr(parts, '__len__') else ''}; "
                         f"a partitioner returns a list of {num_nodes} index arrays (one per node)")
    parts = [np.asarray(p) for p in parts]
    bad = [node for node, p in enumerate(parts) if p.ndim != 1 or p.dtype.kind not in "iu"
           or (len(p) and (p.min() < 0 or p.max() >= len(labels)))]
    if bad:
        raise ValueError(f"data.partition = {method!r} gave node {bad[0]} something other than integer indices "
                         f"into the {len(labels)} training samples")
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
