"""Heterogeneous compute: how long each node's local training takes, in virtual seconds.

A node's speed is drawn once from (seed, node) and scaled by the classes it is in, so it does
not depend on the number of nodes, the engine or anything else drawn. The asynchronous
simulator orders its events by these times; the round-based engines use them when
``compute.emulated``: ``sim``'s virtual clock charges each round its slowest participant,
``processes`` and ``ray`` make a worker sleep in proportion to its slowest node's time over
``mean_s`` (``Worker.train``), and with a deadline the late nodes' messages are dropped
(``late``), as is, on an emulated network, every message that would arrive after it: its
sender's training time plus the link's latency and transfer time (``late_links``). Epidemic
Learning with a deadline is thus DecentralizePy's timeout-bounded variant: a node averages
whatever reached it in time.
"""

from __future__ import annotations

import numpy as np

from meshlearn import streams
from meshlearn.streams import Stream

__all__ = ["training_times", "late", "late_links"]

_MIN_FACTOR = 0.01   # a node at most 100× faster than the mean: a freak draw cannot flood a queue


def training_times(cfg, seed: int, num_nodes: int) -> np.ndarray:
    """(N,) virtual seconds of one local training of each node: ``cfg.mean_s`` times a factor
    drawn from ``cfg.distribution`` (mean 1), times the largest factor of its classes."""
    def draw(node: int) -> float:
        rng = streams.generator(seed, Stream.SPEED, node)
        if cfg.distribution == "uniform":
            return rng.uniform(1 - cfg.spread, 1 + cfg.spread)
        if cfg.distribution == "lognormal":
            return rng.lognormal(-cfg.spread ** 2 / 2, cfg.spread)   # E = exp(μ + σ²/2) = 1
        if cfg.distribution == "exponential":
            return rng.exponential(1.0)
        return 1.0

    factors = np.maximum([draw(node) for node in range(num_nodes)], _MIN_FACTOR)
    classed = np.ones(num_nodes)
    for cls in cfg.classes.values():
        classed[cls.nodes] = np.maximum(classed[cls.nodes], cls.factor)
    return cfg.mean_s * factors * classed


def late(cfg, times: np.ndarray) -> np.ndarray:
    """(N,) bool: the nodes whose training overruns the round deadline (none without one)."""
    if cfg.deadline_s is None:
        return np.zeros(len(times), dtype=bool)
    return times > cfg.deadline_s


def late_links(cfg, times: np.ndarray | None, links, positions, nbytes) -> np.ndarray:
    """Bool per message (link ``positions`` in CSR order, ``nbytes`` each): it would arrive after
    the round deadline, counting from the round's start its sender's training time and the
    link's delay. None late without a deadline or an emulated network."""
    if cfg.deadline_s is None or times is None or not links.model.enabled:
        return np.zeros(np.shape(positions), dtype=bool)
    senders = links.model.indices[positions]
    return times[senders] + links.model.delay(positions, nbytes) > cfg.deadline_s
