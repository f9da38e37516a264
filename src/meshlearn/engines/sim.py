"""The vectorized simulator: all nodes in one process, stacked.

Parameters of all N nodes form one (N, P) matrix; local training runs batched over chunks
of nodes (``training.LocalTrainer``), and message delivery is implicit: every payload is
already in memory, so a receiver's weighted sum over its senders is one sparse product
W_offdiag @ X for all receivers at once (scipy CSR, zero-copy through numpy). Bytes are
still accounted exactly: each node is charged, per neighbour, the size of the wire message
(``wire``) a real transport would send.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from meshlearn import metrics, wire
from meshlearn.engines.network import LinkModel, renormalized
from meshlearn.evaluation import Evaluation, Evaluator, RoundReport
from meshlearn.experiment import Experiment
from meshlearn.nodes import NodeBatch
from meshlearn.sharing import Inbox, LinkInbox, Payload
from meshlearn.sharing.base import Received, received_chunks
from meshlearn.topology.schedule import RoundGraph, TopologySchedule

__all__ = ["SimEngine", "SimInbox", "GraphLinks", "LinkCache", "message_meta"]


class SimInbox(Inbox):
    """Inbox of every node at once: weighted sums are sparse matrix products, and the
    received messages by receiver are gathers along the CSR structure of the weights.
    ``received`` (per CSR entry) marks the messages that arrived (default: all)."""

    def __init__(self, weights: sp.csr_matrix, self_weight: torch.Tensor, payload: Payload,
                 received: np.ndarray | None = None):
        self.weights = weights
        self.self_weight = self_weight
        self.payload = payload
        self.received = received

    def weighted_sum(self, decode: Callable[[Payload], torch.Tensor]) -> torch.Tensor:
        dense = decode(self.payload)
        flat = dense.reshape(dense.shape[0], -1)
        if flat.dtype != torch.float32:
            flat = flat.float()
        out = self.weights @ flat.detach().numpy()
        return torch.from_numpy(np.ascontiguousarray(out)).reshape(dense.shape)

    def by_receiver(self, decode: Callable[[Payload], torch.Tensor],
                    chunk_nodes: int | None = None) -> Iterator[Received]:
        w = self.weights
        indptr, senders, weights = w.indptr, w.indices, w.data.astype(np.float32, copy=False)
        if self.received is not None and not self.received.all():   # lost messages leave the lists
            keep = self.received
            counts = np.bincount(np.repeat(np.arange(w.shape[0]), np.diff(indptr))[keep], minlength=w.shape[0])
            indptr = np.concatenate([[0], np.cumsum(counts)])
            senders, weights = senders[keep], weights[keep]
        yield from received_chunks(indptr, senders, weights, self.self_weight, decode(self.payload).detach(),
                                   senders, chunk_nodes)


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

    def __init__(self, experiment: Experiment, size: int = 8):
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


class SimEngine:
    """Runs an ``Experiment`` with every node in this process (a ``RoundContext``)."""

    name = "sim"

    def __init__(self, experiment: Experiment, run_id: str = "sim"):
        self.experiment = experiment
        self.run_id = run_id
        n = experiment.num_nodes
        ids = list(range(n))
        self.nodes = NodeBatch(torch.arange(n), experiment.initial_params(ids))
        self.trainer = experiment.make_trainer(ids)
        self.trainer.init_state(self.nodes)
        self.algorithm = experiment.make_algorithm()
        self.algorithm.setup(self.nodes, experiment)
        self.evaluator = Evaluator(experiment)
        self.topology = experiment.topology
        self.links = LinkCache(experiment)
        self.bytes_sent = np.zeros(n, dtype=np.int64)      # cumulative, per node
        self.header_bytes = np.zeros(n, dtype=np.int64)    # the header part of bytes_sent
        self.raw_bytes_sent = np.zeros(n, dtype=np.int64)  # bytes_sent without the lossless stage
        self.messages_lost = np.zeros(n, dtype=np.int64)   # incoming messages lost (emulated)
        self.message_bytes = 0                              # size of one of node 0's last messages
        self.train_time = self.eval_time = 0.0
        self.sim_time = 0.0 if experiment.config.network.enabled else None
        self._comm_time = 0.0
        self._exchange = (0, 0)                             # (round, step) of the last exchange
        self.last_loss = torch.full((n,), float("nan"))

    # Engine
    def start(self) -> None:
        """Nothing to launch: every node lives in this process."""

    def step(self, rnd: int) -> RoundReport:
        """Round ``rnd`` (0: only the initial evaluation), with its report."""
        if rnd > 0:
            t0 = time.perf_counter()
            self._comm_time = 0.0
            self.last_loss = self.run_round(rnd)
            elapsed = time.perf_counter() - t0
            self.train_time += elapsed
            if self.sim_time is not None:
                self.sim_time += elapsed + self._comm_time
        evaluation, seconds = evaluate_if_due(self.evaluator, self.nodes, self.topology, rnd)
        self.eval_time += seconds
        return RoundReport(rnd, np.arange(self.experiment.num_nodes), self.last_loss.numpy().copy(),
                           self.bytes_sent.copy(), self.header_bytes.copy(), self.train_time, self.sim_time,
                           evaluation, self.eval_time, self._node_metrics())

    def _node_metrics(self) -> dict[str, np.ndarray]:
        out = {"messages_lost": self.messages_lost.copy()}
        if self.experiment.config.sharing.compression != "none":
            out["bytes_uncompressed"] = self.raw_bytes_sent.copy()
        if self.experiment.config.privacy.dp is not None:
            out["epsilon"] = self.trainer.epsilon(self.nodes.ids.tolist())
        out.update(self.algorithm.sharing.node_metrics(self.nodes.ids.tolist()))
        return out

    def close(self) -> dict:
        return {}

    def run_round(self, rnd: int) -> torch.Tensor:
        """One synchronous round for every node; returns per-node training loss."""
        return self.algorithm.round(self.nodes, rnd, self)

    # RoundContext
    def train(self, nodes: NodeBatch, active: torch.Tensor | None = None) -> torch.Tensor:
        return self.trainer.train(nodes, active)

    def graph(self, rnd: int) -> RoundGraph:
        return self.topology.graph(rnd)

    departed: frozenset[int] = frozenset()   # nodes never leave a simulation

    def exchange(self, nodes: NodeBatch, payload: Payload, rnd: int, graph: RoundGraph | None = None,
                 per_link: bool = False) -> Inbox | LinkInbox:
        links = self.links(graph if graph is not None else self.graph(rnd))
        step = self._exchange[1] + 1 if self._exchange[0] == rnd else 0   # exchanges match by order
        self._exchange = (rnd, step)
        if per_link:  # rows come sender-major; deliver them in the receivers' (CSR) order
            payload = {name: t[links.csr_order] for name, t in payload.items()}
        sizes = self._account(payload, rnd, links, step, per_link)
        lost = links.model.lost(rnd, step)
        if links.model.enabled:
            delivered = ~lost
            if delivered.any():
                self._comm_time += float(links.model.delay(np.flatnonzero(delivered), sizes[delivered]).max())
        np.add.at(self.messages_lost, links.model.receivers[lost], 1)
        off = links.graph.weights
        if per_link:
            received = ~lost
            for t in payload.values():
                t[lost] = 0
            return LinkInbox(links.graph.receivers, off.indices, off.data, received,
                             links.graph.self_weight, payload)
        if not lost.any():
            return SimInbox(links.weights32, links.self_weight32, payload)
        self_w, data = renormalized(links.graph.self_weight, off.data, links.model.receivers, ~lost)
        weights = sp.csr_matrix((data, off.indices, off.indptr), shape=off.shape)
        return SimInbox(weights, torch.from_numpy(self_w), payload, received=~lost)

    def _account(self, payload: Payload, rnd: int, links: GraphLinks, step: int, per_link: bool) -> np.ndarray:
        """Charge each node the exact wire size of the message it sends each receiver;
        returns the size of every message, per link in CSR order. ``payload`` rows are
        senders, or links in CSR order when ``per_link``."""
        codec = self.experiment.config.sharing.compression
        senders = links.graph.weights.indices
        per_sender = lambda values: np.bincount(senders, weights=values,
                                                minlength=self.experiment.num_nodes).astype(np.int64)
        headers = header_base_bytes(self.run_id, payload, rnd, codec, step) + links.id_bytes
        body = payload_bytes(payload, codec)
        link_body = body if per_link else body[senders]
        sizes = headers + link_body
        header = per_sender(headers)
        self.header_bytes += header
        self.bytes_sent += per_sender(sizes)
        if codec == "none":
            self.raw_bytes_sent += per_sender(sizes)
        else:  # what the messages would have been without the lossless stage
            raw_body = sum(t[0].numel() * t.element_size() for t in payload.values())
            self.raw_bytes_sent += per_sender(header_base_bytes(self.run_id, payload, rnd, step=step)
                                              + links.id_bytes + raw_body)
        if links.out_degree[0]:
            self.message_bytes = int(header[0] // links.out_degree[0] + link_body[senders == 0][0])
        return sizes


def evaluate_if_due(evaluator: Evaluator, nodes: NodeBatch, topology: TopologySchedule,
                    rnd: int) -> tuple[Evaluation | None, float]:
    """Round ``rnd``'s evaluation of all ``nodes`` (None when not due) and the seconds it
    took; shared by the synchronous and the asynchronous simulator so both report alike."""
    if not evaluator.due(rnd):
        return None, 0.0
    t0 = time.perf_counter()
    params = nodes.params
    evaluation = evaluator.local(nodes.ids, params)
    evaluation.consensus_distance = metrics.consensus_distance(params)
    evaluator.average(evaluation, params.mean(0))
    evaluation.topology = topology.graph(rnd).describe()
    return evaluation, time.perf_counter() - t0


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
                      step: int = 0) -> int:
    """Header size of a message from node 0 to node 0 in exchange ``step`` of this round.
    Headers differ only in the msgpack sizes of the sender and receiver ids, so other ids
    add ``wire.uint_nbytes(id) - 1`` each: one packed header prices every message exactly."""
    return wire.header_nbytes(wire.Message(run_id, 0, rnd, "model",
                                           {name: t[0] for name, t in payload.items()}, message_meta(0, step)),
                              compression)


def message_meta(dst: int, step: int) -> dict:
    """Header meta of a message: its receiver, and which exchange of the round it belongs to
    (left out for the first, so single-exchange algorithms pay nothing for it)."""
    return {"dst": dst, "step": step} if step else {"dst": dst}
