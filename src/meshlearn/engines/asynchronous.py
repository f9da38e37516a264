"""Asynchronous gossip on the simulator: an event-driven virtual clock, no round barriers.

Every node loops train → communicate → train ... on its own speed: one local training of
node i takes ``compute.mean_s × factor_i`` virtual seconds, the factor drawn once from
(seed, node), and a message takes its link's delay from ``[network]``. A priority queue of
events ordered by (virtual time, node, sequence) decides who acts when, so a run is a pure
function of the config and its seed.

A training starts from a snapshot of the node's model and its result is applied as an
update when it ends (x_i += trained − snapshot): models merged into a node while it computes
are kept, and its update is as stale as on a real device (the staleness AD-PSGD analyses).
Since a training depends only on its snapshot and on the node's own optimizer state and
data stream, the engine computes it lazily: when the first result is due, every training
begun since the last such moment runs in one batched ``LocalTrainer.train`` call.

- ``gossip`` (gossip learning, Ormándi et al. 2013, push): after a training, i sends a copy
  of its model to a neighbour j drawn from i's own stream; on arrival j merges
  x_j ← (x_j + x_i) / 2, and i trains on at once.
- ``adpsgd`` (AD-PSGD, Lian et al., ICML 2018): after a training, i and a random neighbour
  j atomically average x_i, x_j ← (x_i + x_j) / 2 (a message each way); i trains again once
  the reply is back (after the round trip; 0 without network emulation).

A lost message (``[network]`` loss, drawn from (seed, sender, its message sequence)) is
dropped and counted at its receiver; a lost AD-PSGD request or reply cancels the averaging,
so that both models stay as they were. The runner still sees rounds: round r is the window
of virtual time ((r − 1) × mean_s, r × mean_s], and ``step(r)`` plays its events.
"""

from __future__ import annotations

import heapq
import time

import numpy as np
import torch

from meshlearn.config import ComputeConfig
from meshlearn.engines.sim import GraphLinks, evaluate_if_due, header_base_bytes, payload_bytes
from meshlearn.evaluation import Evaluator, RoundReport
from meshlearn.experiment import Experiment
from meshlearn.nodes import NodeBatch
from meshlearn.training import node_rng

__all__ = ["AsyncSimEngine", "speed_factors"]

_SPEED_STREAM = 0x5EED
_PEER_STREAM = 0x9055
_LOSS_STREAM = 0xA105
_MIN_FACTOR = 0.01   # a node at most 100× faster than the mean: a freak draw cannot flood the queue
_SLACK = 1e-9        # events due at a window's end up to float rounding belong to that window

_BEGIN, _TRAINED, _ARRIVE = range(3)   # event kinds


def speed_factors(cfg: ComputeConfig, seed: int, num_nodes: int) -> np.ndarray:
    """Each node's training time relative to ``cfg.mean_s`` (mean 1), drawn once from
    (seed, node) so it does not depend on the number of nodes or on anything else drawn."""
    def draw(node: int) -> float:
        rng = node_rng(seed, node, _SPEED_STREAM)
        if cfg.distribution == "uniform":
            return rng.uniform(1 - cfg.spread, 1 + cfg.spread)
        if cfg.distribution == "lognormal":
            return rng.lognormal(-cfg.spread ** 2 / 2, cfg.spread)   # E = exp(μ + σ²/2) = 1
        if cfg.distribution == "exponential":
            return rng.exponential(1.0)
        return 1.0

    return np.maximum([draw(node) for node in range(num_nodes)], _MIN_FACTOR)


class AsyncSimEngine:
    """Runs an asynchronous algorithm (``gossip``, ``adpsgd``) of an ``Experiment`` with every
    node in this process, on a virtual clock."""

    name = "sim"

    def __init__(self, experiment: Experiment, run_id: str = "sim"):
        cfg = experiment.config
        self.experiment = experiment
        self.run_id = run_id
        self.gossip = not experiment.make_algorithm().pairwise   # else adpsgd
        self.codec = cfg.sharing.compression
        n = experiment.num_nodes
        ids = list(range(n))
        self.nodes = NodeBatch(torch.arange(n), experiment.initial_params(ids))
        self.trainer = experiment.make_trainer(ids)
        self.trainer.init_state(self.nodes)
        self.evaluator = Evaluator(experiment)
        self.graph = experiment.topology.graph(1)      # asynchronous algorithms gossip over a fixed graph
        self.links = GraphLinks(self.graph, cfg.network, cfg.seed)
        self.window = cfg.compute.mean_s
        self.durations = cfg.compute.mean_s * speed_factors(cfg.compute, cfg.seed, n)
        self._peers = [node_rng(cfg.seed, node, _PEER_STREAM) for node in ids]
        # a running training's snapshot until it is computed, then the update it produced
        self.pending = torch.zeros_like(self.nodes.params)
        self._uncomputed = np.zeros(n, dtype=bool)
        self._running_loss = torch.full((n,), float("nan"))
        self.last_loss = torch.full((n,), float("nan"))
        self.updates = np.zeros(n, dtype=np.int64)          # local trainings completed
        self.bytes_sent = np.zeros(n, dtype=np.int64)       # cumulative, per node
        self.header_bytes = np.zeros(n, dtype=np.int64)     # the header part of bytes_sent
        self.raw_bytes_sent = np.zeros(n, dtype=np.int64)   # bytes_sent without the lossless stage
        self.messages_lost = np.zeros(n, dtype=np.int64)    # incoming messages lost (emulated)
        self.message_bytes = 0                               # size of node 0's last message
        self.events = 0
        self.train_time = self.eval_time = 0.0
        self._queue: list[tuple] = [(0.0, node, node, _BEGIN, None) for node in ids]  # sorted: a heap
        self._seq = n
        self._header = self._raw_header = 0

    # Engine
    def start(self) -> None:
        """Nothing to launch: every node lives in this process."""

    def step(self, rnd: int) -> RoundReport:
        """Play the events of round ``rnd``'s window (0: none, only the initial evaluation)."""
        if rnd > 0:
            t0 = time.perf_counter()
            self._price_headers(rnd)
            handlers = {_BEGIN: self._begin, _TRAINED: self._trained, _ARRIVE: self._arrive}
            end = (rnd + _SLACK) * self.window
            while self._queue and self._queue[0][0] <= end:
                at, node, _, kind, data = heapq.heappop(self._queue)
                handlers[kind](at, node, data)
                self.events += 1
            self.train_time += time.perf_counter() - t0
        evaluation, seconds = evaluate_if_due(self.evaluator, self.nodes, self.experiment.topology, rnd)
        self.eval_time += seconds
        metrics = {"updates": self.updates.copy(), "messages_lost": self.messages_lost.copy()}
        if self.codec != "none":
            metrics["bytes_uncompressed"] = self.raw_bytes_sent.copy()
        return RoundReport(rnd, np.arange(len(self.updates)), self.last_loss.numpy().copy(),
                           self.bytes_sent.copy(), self.header_bytes.copy(), self.train_time,
                           rnd * self.window, evaluation, self.eval_time, metrics)

    def close(self) -> dict:
        return {"events": self.events}

    # events
    def _push(self, at: float, node: int, kind: int, data=None) -> None:
        heapq.heappush(self._queue, (at, node, self._seq, kind, data))
        self._seq += 1

    def _begin(self, at: float, i: int, _=None) -> None:
        """Node i starts a local training on a snapshot of its model; it ends after its duration."""
        self.pending[i] = self.nodes.params[i]
        self._uncomputed[i] = True
        self._push(at + self.durations[i], i, _TRAINED)

    def _compute_trainings(self) -> None:
        """Run every begun, not yet computed training at once, from its snapshot; write back
        the updates, the losses and the optimizer state of those nodes."""
        rows = torch.from_numpy(np.flatnonzero(self._uncomputed))
        snapshots = self.pending[rows]
        batch = NodeBatch(self.nodes.ids[rows], snapshots.clone(),
                          {key: value[rows] for key, value in self.nodes.state.items()})
        self._running_loss[rows] = self.trainer.train(batch)
        self.pending[rows] = batch.params - snapshots
        for key, value in batch.state.items():
            self.nodes.state[key][rows] = value
        self._uncomputed[:] = False

    def _trained(self, at: float, i: int, _=None) -> None:
        """Node i's training ends: apply its update, communicate, then train again."""
        if self._uncomputed[i]:
            self._compute_trainings()
        self.nodes.params[i] += self.pending[i]
        self.last_loss[i] = self._running_loss[i]
        self.updates[i] += 1
        peers = self.graph.receivers_of(i)
        wait = 0.0
        if len(peers):
            j = int(peers[self._peers[i].integers(len(peers))])
            wait = self._push_model(at, i, j) if self.gossip else self._average_pair(i, j)
        self._push(at + wait, i, _BEGIN)

    def _arrive(self, at: float, j: int, model: torch.Tensor) -> None:
        """A pushed model reaches node j, which merges it into its own."""
        self.nodes.params[j] = (self.nodes.params[j] + model) * 0.5

    def _push_model(self, at: float, i: int, j: int) -> float:
        """Gossip learning: send a copy of x_i to j; i does not wait for it."""
        model = self.nodes.params[i].clone()
        link = self.links.model.position(j, i)
        size = self._charge(i, link, model)
        if self._lost(i, [link])[0]:
            self.messages_lost[j] += 1
        else:
            self._push(at + self._delay(link, size), j, _ARRIVE, model)
        return 0.0

    def _average_pair(self, i: int, j: int) -> float:
        """AD-PSGD: i and j exchange models and both take their average; returns the round
        trip that i waits for."""
        links, params = self.links.model, self.nodes.params
        request, reply = links.position(j, i), links.position(i, j)
        lost = self._lost(i, [request, reply])
        wait = self._delay(request, self._charge(i, request, params[i]))
        if lost[0]:
            self.messages_lost[j] += 1
            return wait
        wait += self._delay(reply, self._charge(j, reply, params[j]))
        if lost[1]:
            self.messages_lost[i] += 1
        else:
            params[i] = params[j] = (params[i] + params[j]) * 0.5
        return wait

    # messages
    def _price_headers(self, rnd: int) -> None:
        """Header sizes from node 0 to node 0 of the messages sent in round ``rnd``'s window
        (with and without the lossless stage); ``GraphLinks.id_bytes`` adds the ids."""
        template = {"params": self.nodes.params[:1]}
        self._header = header_base_bytes(self.run_id, template, rnd, self.codec)
        self._raw_header = header_base_bytes(self.run_id, template, rnd)

    def _charge(self, src: int, link: int, model: torch.Tensor) -> int:
        """Charge ``src`` the exact wire size of its message carrying ``model`` on ``link``
        (CSR position); returns that size."""
        ids = int(self.links.id_bytes[link])
        header = self._header + ids
        size = header + int(payload_bytes({"params": model[None]}, self.codec)[0])
        self.header_bytes[src] += header
        self.bytes_sent[src] += size
        self.raw_bytes_sent[src] += self._raw_header + ids + model.numel() * model.element_size()
        if src == 0:
            self.message_bytes = size
        return size

    def _delay(self, link: int, size: int) -> float:
        return float(self.links.model.delay(link, size)) if self.links.model.enabled else 0.0

    def _lost(self, sender: int, links: list[int]) -> np.ndarray:
        """Whether each message of ``sender``'s exchange after its current training is lost,
        drawn from (seed, sender, that training's number) so every run loses the same ones."""
        seq = int(self.updates[sender])
        loss = self.links.model.loss[links]
        if not loss.any():
            return np.zeros(len(links), dtype=bool)
        rng = np.random.default_rng([self.experiment.config.seed, _LOSS_STREAM, sender, seq])
        return rng.random(len(links)) < loss
