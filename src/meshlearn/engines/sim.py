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
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

from meshlearn import metrics, wire
from meshlearn.engines.network import LinkModel, renormalized
from meshlearn.evaluation import Evaluator, RoundReport
from meshlearn.experiment import Experiment
from meshlearn.nodes import NodeBatch
from meshlearn.sharing import Inbox, Payload

__all__ = ["SimEngine", "SimInbox"]


class SimInbox(Inbox):
    """Inbox of every node at once: weighted sums are sparse matrix products."""

    def __init__(self, weights: sp.csr_matrix, self_weight: torch.Tensor, payload: Payload):
        self.weights = weights
        self.self_weight = self_weight
        self.payload = payload

    def weighted_sum(self, decode: Callable[[Payload], torch.Tensor]) -> torch.Tensor:
        dense = decode(self.payload)
        flat = dense.reshape(dense.shape[0], -1)
        if flat.dtype != torch.float32:
            flat = flat.float()
        out = self.weights @ flat.detach().numpy()
        return torch.from_numpy(np.ascontiguousarray(out)).reshape(dense.shape)


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
        self.algorithm.setup(self.nodes)
        self.evaluator = Evaluator(experiment)
        self.self_weight64, off = experiment.gossip_weights()
        self.offdiag64 = off
        self.offdiag = off.astype(np.float32)
        self.self_weight = torch.from_numpy(self.self_weight64.astype(np.float32))
        self.degree = np.diff(self.offdiag.indptr)
        self.links = LinkModel(experiment.config.network, off, experiment.config.seed)
        extra = wire.uint_nbytes(np.arange(n)) - 1
        self.link_id_bytes = extra[off.indices] + extra[self.links.receivers]  # header bytes over node 0 → 0
        self.bytes_sent = np.zeros(n, dtype=np.int64)      # cumulative, per node
        self.header_bytes = np.zeros(n, dtype=np.int64)    # the header part of bytes_sent
        self.raw_bytes_sent = np.zeros(n, dtype=np.int64)  # bytes_sent without the lossless stage
        self.messages_lost = np.zeros(n, dtype=np.int64)   # incoming messages lost (emulated)
        self.message_bytes = 0                              # size of one of node 0's last messages
        self.train_time = self.eval_time = 0.0
        self.sim_time = 0.0 if self.links.enabled else None
        self._comm_time = 0.0
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
        evaluation = None
        if self.evaluator.due(rnd):
            t0 = time.perf_counter()
            params = self.nodes.params
            evaluation = self.evaluator.local(self.nodes.ids, params)
            evaluation.consensus_distance = metrics.consensus_distance(params)
            self.evaluator.average(evaluation, params.mean(0))
            self.eval_time += time.perf_counter() - t0
        return RoundReport(rnd, np.arange(len(self.degree)), self.last_loss.numpy().copy(),
                           self.bytes_sent.copy(), self.header_bytes.copy(), self.train_time, self.sim_time,
                           evaluation, self.eval_time, self._node_metrics())

    def _node_metrics(self) -> dict[str, np.ndarray]:
        out = {"messages_lost": self.messages_lost.copy()}
        if self.experiment.config.sharing.compression != "none":
            out["bytes_uncompressed"] = self.raw_bytes_sent.copy()
        return out

    def close(self) -> dict:
        return {}

    def run_round(self, rnd: int) -> torch.Tensor:
        """One synchronous round for every node; returns per-node training loss."""
        return self.algorithm.round(self.nodes, rnd, self)

    # RoundContext
    def train(self, nodes: NodeBatch) -> torch.Tensor:
        return self.trainer.train(nodes)

    def exchange(self, nodes: NodeBatch, payload: Payload, rnd: int) -> Inbox:
        sizes = self._account(payload, rnd)
        lost = self.links.lost(rnd)
        if self.links.enabled:
            delivered = ~lost
            if delivered.any():
                self._comm_time = float(self.links.delay(np.flatnonzero(delivered), sizes[delivered]).max())
        if not lost.any():
            return SimInbox(self.offdiag, self.self_weight, payload)
        np.add.at(self.messages_lost, self.links.receivers[lost], 1)
        off = self.offdiag64
        self_w, data = renormalized(self.self_weight64, off.data, self.links.receivers, ~lost)
        weights = sp.csr_matrix((data, off.indices, off.indptr), shape=off.shape)
        return SimInbox(weights, torch.from_numpy(self_w), payload)

    def _account(self, payload: Payload, rnd: int) -> np.ndarray:
        """Charge each node the exact wire size of the message it sends each neighbour;
        returns the size of every message, per link in CSR order."""
        codec = self.experiment.config.sharing.compression
        per_sender = lambda values: np.bincount(self.offdiag.indices, weights=values,
                                                minlength=len(self.degree)).astype(np.int64)
        headers = header_base_bytes(self.run_id, payload, rnd, codec) + self.link_id_bytes
        body = payload_bytes(payload, codec)
        sizes = headers + body[self.offdiag.indices]
        header = per_sender(headers)
        self.header_bytes += header
        self.bytes_sent += per_sender(sizes)
        if codec == "none":
            self.raw_bytes_sent += per_sender(sizes)
        else:  # what the messages would have been without the lossless stage
            raw_body = sum(t[0].numel() * t.element_size() for t in payload.values())
            self.raw_bytes_sent += per_sender(header_base_bytes(self.run_id, payload, rnd)
                                              + self.link_id_bytes + raw_body)
        self.message_bytes = int(header[0] // max(self.degree[0], 1) + body[0])
        return sizes


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


def header_base_bytes(run_id: str, payload: Payload, rnd: int, compression: str | None = None) -> int:
    """Header size of a message from node 0 to node 0 this round. Headers differ only in
    the msgpack sizes of the sender and receiver ids, so other ids add
    ``wire.uint_nbytes(id) - 1`` each: one packed header prices every message exactly."""
    return wire.header_nbytes(wire.Message(run_id, 0, rnd, "model",
                                           {name: t[0] for name, t in payload.items()}, {"dst": 0}),
                              compression)
