"""The links of a round's graph as engines see them, and the exact price of a message.

``GraphLinks`` gathers, once per graph, what every engine needs about its links (the
``[network]`` link model, the header bytes of each link's ids, the order of per-link
payloads); ``payload_bytes`` and ``header_base_bytes`` price a wire message without
building it, so the simulators charge the bytes a real transport sends.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from meshlearn import wire
from meshlearn.engines.network import LinkModel
from meshlearn.sharing import Payload
from meshlearn.topology.schedule import RoundGraph

__all__ = ["GraphLinks", "LinkCache", "payload_bytes", "header_base_bytes", "message_meta"]


class GraphLinks:
    """What an engine needs about one round graph's links, built once per graph: the link
    model of ``[network]``, the extra header bytes of each link's ids, float32 weights, and
    the order that turns per-link payloads (sender-major) into CSR order (receiver-major)."""

    def __init__(self, graph: RoundGraph, network, seed: int, strict: bool = True):
        off = graph.weights
        self.graph = graph
        self.model = LinkModel(network, off, seed, strict=strict)
        extra = wire.uint_nbytes(np.arange(graph.num_nodes)) - 1
        self.id_bytes = extra[off.indices] + extra[graph.receivers]  # header bytes over node 0 → 0
        self.weights32 = off.astype(np.float32)
        self.self_weight32 = torch.from_numpy(graph.self_weight.astype(np.float32))
        self.out_degree = graph.out_degree()
        positions = sp.csr_matrix((np.arange(off.nnz), off.indices, off.indptr), shape=off.shape).T.tocsr()
        positions.sort_indices()
        self.csr_order = np.argsort(positions.data)  # out-link row of every CSR link


class LinkCache:
    """``GraphLinks`` of the graphs in use, kept while a graph is used again (static ones)."""

    def __init__(self, experiment, size: int = 8):
        self.network, self.seed = experiment.config.network, experiment.config.seed
        # rows of network.file must be edges of a static topology (checked once here); other
        # graphs (changing ones, an algorithm's own such as FedAvg's server → sampled clients)
        # take the rows of the links they have
        self.static = experiment.topology.graph(1) if experiment.topology.static else None
        if self.static is not None and self.network.file:
            LinkModel(self.network, self.static.weights, self.seed, strict=True)
        self.size = size
        self._cache: dict[int, GraphLinks] = {}

    def __call__(self, graph: RoundGraph) -> GraphLinks:
        links = self._cache.get(id(graph))
        if links is None or links.graph is not graph:
            if len(self._cache) >= self.size:
                self._cache.clear()
            links = GraphLinks(graph, self.network, self.seed, strict=graph is self.static)
            self._cache[id(graph)] = links
        return links


def payload_bytes(payload: Payload, compression: str | None = None) -> np.ndarray:
    """Bytes of the tensor frames of each node's message (rows of the stacked payload).

    Rows have equal shapes, so raw sizes are equal; with a lossless ``compression`` every
    row's frames are compressed as ``wire.encode`` would (a node sends the same frames to
    all its neighbours, so each is compressed once).
    """
    rows = next(iter(payload.values())).shape[0]
    if compression is None or compression == "none":
        return np.full(rows, sum(t[0].numel() * t.element_size() for t in payload.values()), dtype=np.int64)
    return np.array([sum(wire.tensor_frame_nbytes(t[row], compression) for t in payload.values())
                     for row in range(rows)], dtype=np.int64)


def header_base_bytes(run_id: str, payload: Payload, rnd: int, compression: str | None = None,
                      step: int = 0, kind: str = "model") -> int:
    """Header size of a message of ``kind`` from node 0 to node 0 in exchange ``step`` of this
    round. Headers differ only in the msgpack sizes of the sender and receiver ids, so other ids
    add ``wire.uint_nbytes(id) - 1`` each: one packed header prices every message exactly."""
    return wire.header_nbytes(wire.Message(run_id, 0, rnd, kind,
                                           {name: t[0] for name, t in payload.items()}, message_meta(0, step)),
                              compression)


def message_meta(dst: int, step: int) -> dict:
    """Header meta of a message: its receiver, and which exchange of the round it belongs to
    (left out for the first, so single-exchange algorithms pay nothing for it)."""
    return {"dst": dst, "step": step} if step else {"dst": dst}
