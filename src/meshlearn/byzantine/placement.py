"""Which nodes are Byzantine: a count (or fraction) placed at random, on the best-connected
nodes, or given by id; fixed for the whole run and drawn from the seed, so every engine
and every worker agrees on it."""

from __future__ import annotations

import networkx as nx
import numpy as np

from meshlearn import streams
from meshlearn.streams import Stream

__all__ = ["byzantine_nodes"]


def byzantine_nodes(cfg, graph: nx.Graph) -> np.ndarray:
    """The sorted ids of the Byzantine nodes of a run (empty without ``[byzantine]``).
    ``highest_degree`` takes the nodes of largest degree in round 1's graph (ties: lower id):
    the placement that reaches the most honest nodes."""
    byz = cfg.byzantine
    if byz is None:
        return np.zeros(0, dtype=np.int64)
    if byz.placement == "given":
        return np.array(sorted(byz.nodes), dtype=np.int64)
    count = byz.count_of(cfg.nodes)
    if byz.placement == "random":
        chosen = streams.generator(cfg.seed, Stream.BYZANTINE).choice(cfg.nodes, count, replace=False)
    else:
        degree = np.array([graph.degree(node) if node in graph else 0 for node in range(cfg.nodes)])
        chosen = np.lexsort((np.arange(cfg.nodes), -degree))[:count]
    return np.sort(np.asarray(chosen, dtype=np.int64))
