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

from meshlearn.engines.host import NodeHost, evaluate_if_due
from meshlearn.engines.links import GraphLinks, LinkCache, header_base_bytes, payload_bytes
from meshlearn.engines.network import renormalized
from meshlearn.evaluation import RoundReport
from meshlearn.experiment import Experiment
from meshlearn.nodes import NodeBatch
from meshlearn.sharing import Inbox, LinkInbox, Payload
from meshlearn.sharing.base import Received, received_chunks
from meshlearn.topology.schedule import RoundGraph

__all__ = ["SimEngine", "SimInbox"]


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


class SimEngine(NodeHost):
    """Runs an ``Experiment`` with every node in this process (a ``RoundContext``)."""

    name = "sim"

    def __init__(self, experiment: Experiment, run_id: str = "sim"):
        super().__init__(experiment, list(range(experiment.num_nodes)))
        self.run_id = run_id
        self.topology = experiment.topology
        self.links = LinkCache(experiment)
        self.train_time = self.eval_time = 0.0
        self.sim_time = 0.0 if experiment.config.network.enabled else None
        self._comm_time = 0.0
        self._exchange = (0, 0)                             # (round, step) of the last exchange

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
                           evaluation, self.eval_time, self.node_metrics())

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
        np.add.at(self.counters["messages_lost"], links.model.receivers[lost], 1)
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
        codec = self.codec
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
        if codec != "none":  # what the messages would have been without the lossless stage
            raw_body = sum(t[0].numel() * t.element_size() for t in payload.values())
            self.counters["bytes_uncompressed"] += per_sender(header_base_bytes(self.run_id, payload, rnd, step=step)
                                                              + links.id_bytes + raw_body)
        if links.out_degree[0]:
            self.message_bytes = int(header[0] // links.out_degree[0] + link_body[senders == 0][0])
        return sizes
