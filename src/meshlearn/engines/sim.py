"""The vectorized simulator: all nodes in one process, stacked.

Parameters of all N nodes form one (N, P) matrix; local training runs batched over chunks
of nodes (``training.LocalTrainer``), and message delivery is implicit: every payload is
already in memory, so a receiver's weighted sum over its senders is one sparse product
W_offdiag @ X for all receivers at once (scipy CSR, zero-copy through numpy; cuSPARSE when
the models live on a GPU, ``engine.device``). Bytes are still accounted exactly: each node
is charged, per neighbour, the size of the wire message (``wire``) a real transport would send.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from meshlearn.byzantine.adversary import received_view
from meshlearn.dynamics.compute import late_links
from meshlearn.engines.host import InProcessEngine, evaluate_if_due
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
    ``received`` (per CSR entry) marks the messages that arrived (default: all); ``sources``
    (per CSR entry) is the payload row holding that link's message (default: its sender's row;
    further rows hold messages crafted for one receiver)."""

    def __init__(self, weights: sp.csr_matrix, self_weight: torch.Tensor, payload: Payload,
                 received: np.ndarray | None = None, sources: np.ndarray | None = None, rnd: int = 0):
        self.weights = weights
        self.self_weight = self_weight
        self.payload = payload
        self.received = received
        self.sources = sources
        self.rnd = rnd

    def weighted_sum(self, decode: Callable[[Payload], torch.Tensor]) -> torch.Tensor:
        dense = decode(self.payload)
        flat = dense.reshape(dense.shape[0], -1)
        if flat.dtype != torch.float32:
            flat = flat.float()
        w = self.weights
        if self.sources is not None:
            w = sp.csr_matrix((w.data, self.sources, w.indptr), shape=(w.shape[0], flat.shape[0]))
        if flat.device.type == "cpu":
            out = torch.from_numpy(np.ascontiguousarray(w @ flat.detach().numpy()))
        else:   # cuSPARSE: the models never leave the device
            out = torch.sparse_csr_tensor(torch.from_numpy(w.indptr), torch.from_numpy(w.indices),
                                          torch.from_numpy(w.data.astype(np.float32, copy=False)), size=w.shape,
                                          device=flat.device) @ flat.detach()
        return out.reshape(w.shape[0], *dense.shape[1:])

    def by_receiver(self, decode: Callable[[Payload], torch.Tensor],
                    chunk_nodes: int | None = None) -> Iterator[Received]:
        w = self.weights
        indptr, senders, weights = w.indptr, w.indices, w.data.astype(np.float32, copy=False)
        sources = senders if self.sources is None else self.sources
        if self.received is not None and not self.received.all():   # lost messages leave the lists
            keep = self.received
            counts = np.bincount(np.repeat(np.arange(w.shape[0]), np.diff(indptr))[keep], minlength=w.shape[0])
            indptr = np.concatenate([[0], np.cumsum(counts)])
            senders, weights, sources = senders[keep], weights[keep], sources[keep]
        yield from received_chunks(indptr, senders, weights, self.self_weight, decode(self.payload).detach(),
                                   sources, chunk_nodes)


class SimEngine(InProcessEngine):
    """Runs an ``Experiment`` with every node in this process (a ``RoundContext``)."""

    name = "sim"

    def __init__(self, experiment: Experiment, run_id: str = "sim"):
        super().__init__(experiment, list(range(experiment.num_nodes)))
        self.run_id = run_id
        self.topology = experiment.topology
        self.links = LinkCache(experiment)
        self.train_time = self.eval_time = 0.0
        self.sim_time = 0.0 if experiment.config.network.enabled or experiment.training_times is not None else None
        self._comm_time = 0.0
        self._exchange = (0, 0)                             # (round, step) of the last exchange

    # Engine
    def step(self, rnd: int) -> RoundReport:
        """Round ``rnd`` (0: only the initial evaluation), with its report."""
        if rnd > 0:
            t0 = time.perf_counter()
            self._comm_time = 0.0
            self.last_loss = self.run_round(rnd)
            elapsed = time.perf_counter() - t0
            self.train_time += elapsed
            if self.sim_time is not None:
                self.sim_time += self._compute_time(elapsed) + self._comm_time
        evaluation, seconds = evaluate_if_due(self.evaluator, self.nodes, self.topology, rnd, self.honest)
        self.eval_time += seconds
        return RoundReport(rnd, np.arange(self.experiment.num_nodes), self.last_loss.numpy().copy(),
                           self.bytes_sent.copy(), self.header_bytes.copy(), self.train_time, self.sim_time,
                           evaluation, self.eval_time, self.node_metrics())

    def close(self) -> dict:
        return {}

    def _compute_time(self, elapsed: float) -> float:
        """The training time a round costs on the virtual clock: its slowest participant's
        emulated time (at most the deadline), or with uniform nodes the measured time."""
        times = self.experiment.training_times
        if times is None:
            return elapsed
        present = times[self.online] if self.online is not None else times   # those online this round
        deadline = self.experiment.config.compute.deadline_s
        return float(min(present.max(), deadline or np.inf)) if len(present) else 0.0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "clocks": [self.train_time, self.eval_time, self.sim_time]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.train_time, self.eval_time, self.sim_time = state["clocks"]

    def run_round(self, rnd: int) -> torch.Tensor:
        """One synchronous round for every node; returns per-node training loss."""
        return self.play_round(rnd)

    # RoundContext
    def train(self, nodes: NodeBatch, active: torch.Tensor | None = None, **how) -> torch.Tensor:
        return self.trainer.train(nodes, self.present(nodes, active), **how)

    def graph(self, rnd: int) -> RoundGraph:
        return self.topology.graph(rnd)

    departed: frozenset[int] = frozenset()   # nodes never leave a simulation

    def peer_views(self):
        return self.topology.sampling

    def exchange(self, nodes: NodeBatch, payload: Payload, rnd: int, graph: RoundGraph | None = None,
                 per_link: bool = False) -> Inbox | LinkInbox:
        links = self.links(self.topology.restrict(graph, rnd) if graph is not None else self.graph(rnd))
        step = self._exchange[1] + 1 if self._exchange[0] == rnd else 0   # exchanges match by order
        self._exchange = (rnd, step)
        if per_link:  # rows come sender-major; deliver them in the receivers' (CSR) order
            payload = {name: t[links.csr_order] for name, t in payload.items()}
        lost = links.model.lost(rnd, step)
        sources = None
        if self.adversary and not per_link:
            payload, sources = self._attack(nodes, payload, rnd, links, ~lost)
        sent = payload if sources is None else {name: t[:len(nodes)] for name, t in payload.items()}
        sizes = self._account(sent, rnd, links, step, per_link)
        exp = self.experiment   # a message arriving after the round deadline is dropped like a lost one
        lost = lost | late_links(exp.config.compute, exp.training_times, links, np.arange(len(sizes)), sizes)
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
            return SimInbox(links.weights32, links.self_weight32, payload, sources=sources, rnd=rnd)
        self_w, data = renormalized(links.graph.self_weight, off.data, links.model.receivers, ~lost)
        weights = sp.csr_matrix((data, off.indices, off.indptr), shape=off.shape)
        return SimInbox(weights, torch.from_numpy(self_w), payload, received=~lost, sources=sources, rnd=rnd)

    def _attack(self, nodes: NodeBatch, payload: Payload, rnd: int, links: GraphLinks,
                delivered: np.ndarray) -> tuple[Payload, np.ndarray | None]:
        """The payload with the attackers' messages crafted in, and (for a per-receiver
        attack, whose messages are extra rows) the payload row of every CSR link."""
        adversary, sharing = self.adversary, self.algorithm.sharing
        attack, off, rows = adversary.attack, links.graph.weights, adversary.rows
        position = np.full(len(nodes), -1)   # each node's row among the attackers (-1: honest)
        position[rows] = np.arange(len(rows))
        known = {}
        if attack.rushing:   # what each attacker received from honest senders in this exchange
            receivers = links.graph.receivers
            heard = (position[receivers] >= 0) & self.honest[off.indices] & delivered
            known["received"] = received_view(position[receivers[heard]], off.indices[heard], off.data[heard],
                                              links.self_weight32[torch.from_numpy(rows)],
                                              sharing.decode(payload).detach(), off.indices[heard], len(rows))
        if attack.omniscient:
            known.update(models=nodes.params, byzantine=torch.from_numpy(~self.honest))
        if attack.omniscient or attack.per_receiver:
            known["graph"] = links.graph
        view = adversary.view(nodes, rnd, **known)
        if not attack.per_receiver:
            return adversary.payload_with(sharing, view, payload), None
        # one message per outgoing link of each attacker, receivers increasing: rows appended after the nodes'
        out_start = np.concatenate([[0], np.cumsum(links.out_degree)])
        count = links.out_degree[rows]
        first = np.concatenate([[0], np.cumsum(count)])[:-1]   # row of each attacker's first link in the crafted block
        crafted = adversary.messages(sharing, view, torch.from_numpy(np.repeat(adversary.ids.numpy(), count)))
        sources = off.indices.copy()
        byz = np.flatnonzero(position[off.indices] >= 0)
        sender = off.indices[byz]
        sources[byz] = len(nodes) + first[position[sender]] + links.csr_order[byz] - out_start[sender]
        return {name: torch.cat([t, crafted[name].to(t.dtype)]) for name, t in payload.items()}, sources

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
