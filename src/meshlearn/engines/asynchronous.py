"""The asynchronous simulator: an event-driven virtual clock, no round barriers.

Every node loops train → communicate → train ... on its own speed: one local training of
node i takes ``compute.mean_s × factor_i`` virtual seconds, the factor drawn once from
(seed, node), and a message takes its link's delay from ``[network]``. A priority queue of
events ordered by (virtual time, node, sequence) decides who acts when, so a run is a pure
function of the config and its seed.

The engine runs the trainings and the network; what nodes communicate is the algorithm's
(an ``AsyncAlgorithm``): the engine calls its ``on_trained`` when a node's training ends and
its ``on_message`` when a message arrives, and is the ``AsyncContext`` those handlers use.

A training starts from a snapshot of the node's model and its result is applied as an
update when it ends (x_i += trained − snapshot): models merged into a node while it computes
are kept, and its update is as stale as on a real device (the staleness AD-PSGD analyses).
Since a training depends only on its snapshot and on the node's own optimizer state and
data stream, the engine computes it lazily: when the first result is due, every training
begun since the last such moment runs in one batched ``LocalTrainer.train`` call. A node
trains again once ``on_trained`` returns, or later if it waits (``wait``, ``exchange``).

A message is lost with its link's ``[network]`` loss, drawn from (seed, sender, the sender's
number of trainings): the k-th message a node sends after a training takes the k-th draw, and
the reply of an ``exchange`` the requester's next one. A lost message is counted at its
receiver. The runner still sees rounds: round r is the window of virtual time
((r − 1) × mean_s, r × mean_s], and ``step(r)`` plays its events.

Under churn (``[availability]``, per window) an offline node starts no training until its
next online window, a training that ends after it left is lost, and what reaches it is lost.
"""

from __future__ import annotations

import heapq
import math
import time

import numpy as np
import torch

from meshlearn import streams
from meshlearn.algorithms.asynchronous import Message
from meshlearn.dynamics import training_times
from meshlearn.engines.host import InProcessEngine, evaluate_if_due
from meshlearn.engines.links import GraphLinks, header_base_bytes, payload_bytes
from meshlearn.evaluation import RoundReport
from meshlearn.experiment import Experiment
from meshlearn.nodes import NodeBatch
from meshlearn.sharing import Payload
from meshlearn.streams import Stream

__all__ = ["AsyncSimEngine"]

_SLACK = 1e-9        # events due at a window's end up to float rounding belong to that window

_BEGIN, _TRAINED, _ARRIVE = range(3)   # event kinds


def _restored(state: dict) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


class AsyncSimEngine(InProcessEngine):
    """Runs an asynchronous algorithm (an ``AsyncAlgorithm``) of an ``Experiment`` with every
    node in this process, on a virtual clock; it is the ``AsyncContext`` of the algorithm."""

    name = "sim"

    def __init__(self, experiment: Experiment, run_id: str = "sim"):
        cfg = experiment.config
        n = experiment.num_nodes
        ids = list(range(n))
        super().__init__(experiment, ids)
        self.run_id = run_id
        self.graph = experiment.topology.graph(1)      # asynchronous algorithms gossip over a fixed graph
        self.links = GraphLinks(self.graph, cfg.network, cfg.seed)
        self.window = cfg.compute.mean_s
        self.durations = training_times(cfg.compute, cfg.seed, n)
        self._peers = [streams.generator(cfg.seed, Stream.PEERS, node) for node in ids]
        self._lossy = bool(self.links.model.loss.any())
        self._loss_draws: list[tuple[int, np.random.Generator] | None] = [None] * n  # (trainings, stream)
        # a running training's snapshot until it is computed, then the update it produced
        self.pending = torch.zeros_like(self.nodes.params)
        self._uncomputed = np.zeros(n, dtype=bool)
        self._running_loss = torch.full((n,), float("nan"))
        self._ready = np.zeros(n)                            # no training starts before (waits)
        self.updates = self.counters["updates"] = np.zeros(n, dtype=np.int64)   # local trainings completed
        self.messages_lost = self.counters["messages_lost"]
        self.events = 0
        self.train_time = self.eval_time = 0.0
        self._queue: list[tuple] = [(0.0, node, node, _BEGIN, None) for node in ids]  # sorted: a heap
        self._seq = n
        self._now = 0.0
        self._rnd = 0
        self._headers: dict[tuple, tuple[int, int]] = {}
        self.availability = experiment.availability   # churn: who is online in each window

    # Engine
    def step(self, rnd: int) -> RoundReport:
        """Play the events of round ``rnd``'s window (0: none, only the initial evaluation)."""
        if rnd > 0:
            t0 = time.perf_counter()
            self._rnd, self._headers = rnd, {}   # messages of this window carry its number
            if self.availability is not None:
                self.count_online(rnd)
            handlers = {_BEGIN: self._begin, _TRAINED: self._trained, _ARRIVE: self._arrive}
            end = (rnd + _SLACK) * self.window
            while self._queue and self._queue[0][0] <= end:
                at, node, _, kind, data = heapq.heappop(self._queue)
                self._now = at
                handlers[kind](at, node, data)
                self.events += 1
            self.train_time += time.perf_counter() - t0
        evaluation, seconds = evaluate_if_due(self.evaluator, self.nodes, self.experiment.topology, rnd)
        self.eval_time += seconds
        metrics = self.node_metrics()
        return RoundReport(rnd, np.arange(len(self.updates)), self.last_loss.numpy().copy(),
                           self.bytes_sent.copy(), self.header_bytes.copy(), self.train_time,
                           rnd * self.window, evaluation, self.eval_time, metrics)

    def close(self) -> dict:
        return {"events": self.events}

    def state_dict(self) -> dict:
        """The nodes, the clock, the queue of events (with the messages in flight) and every
        random stream's position."""
        queue = [[at, node, seq, kind, None if data is None else
                  {"src": data.src, "dst": data.dst, "kind": data.kind, "payload": data.payload, "sent_at": data.sent_at}]
                 for at, node, seq, kind, data in self._queue]
        return {**super().state_dict(), "pending": self.pending, "uncomputed": self._uncomputed,
                "running_loss": self._running_loss, "ready": self._ready, "events": self.events,
                "seq": self._seq, "now": self._now, "clocks": [self.train_time, self.eval_time], "queue": queue,
                "peers": [rng.bit_generator.state for rng in self._peers],
                "loss_draws": [None if d is None else [d[0], d[1].bit_generator.state] for d in self._loss_draws]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.pending.copy_(state["pending"])
        self._uncomputed[:] = state["uncomputed"]
        self._running_loss.copy_(state["running_loss"])
        self._ready[:] = state["ready"]
        self.events, self._seq, self._now = int(state["events"]), int(state["seq"]), float(state["now"])
        self.train_time, self.eval_time = state["clocks"]
        self._queue = [(at, node, seq, kind, None if data is None else Message(**data))
                       for at, node, seq, kind, data in state["queue"]]
        heapq.heapify(self._queue)
        for rng, saved in zip(self._peers, state["peers"]):
            rng.bit_generator.state = saved
        self._loss_draws = [None if d is None else (d[0], _restored(d[1])) for d in state["loss_draws"]]

    # AsyncContext
    @property
    def params(self) -> torch.Tensor:
        return self.nodes.params

    @property
    def now(self) -> float:
        return self._now

    def neighbours(self, node: int) -> np.ndarray:
        return self.graph.receivers_of(node)

    def rng(self, node: int) -> np.random.Generator:
        return self._peers[node]

    def random_neighbour(self, node: int) -> int | None:
        peers = self.graph.receivers_of(node)
        return int(peers[self._peers[node].integers(len(peers))]) if len(peers) else None

    def send(self, src: int, dst: int, payload: Payload, kind: str = "model") -> None:
        link = self._link(src, dst)
        size = self._charge(src, link, payload, kind)
        if self._lost(src, link):
            self.messages_lost[dst] += 1
            return
        copy = {name: tensor.detach().clone() for name, tensor in payload.items()}
        self._push(self._now + self._delay(link, size), dst, _ARRIVE, Message(src, dst, kind, copy, self._now))

    def exchange(self, src: int, dst: int, request: Payload, reply: Payload, kind: str = "model") -> bool:
        there, back = self._link(src, dst), self._link(dst, src)
        wait = self._delay(there, self._charge(src, there, request, kind))
        lost = self._lost(src, there)   # drawn even for an offline peer, so churn leaves the loss stream as it is
        if lost or not self._online(dst, self._now):
            self.messages_lost[dst] += 1
            self.wait(src, wait)
            return False
        wait += self._delay(back, self._charge(dst, back, reply, kind))
        self.wait(src, wait)
        if self._lost(src, back):
            self.messages_lost[src] += 1
            return False
        return True

    def wait(self, node: int, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"{type(self.algorithm).__name__}: node {node} waits {seconds!r} s; a wait is >= 0")
        self._ready[node] = max(self._ready[node], self._now + seconds)

    # events
    def _push(self, at: float, node: int, kind: int, data=None) -> None:
        heapq.heappush(self._queue, (at, node, self._seq, kind, data))
        self._seq += 1

    def _online(self, node: int, at: float) -> bool:
        """Whether ``node`` is online at virtual time ``at`` (in the window of round ⌈at / mean_s⌉)."""
        return self.availability is None or bool(self.availability.online(self._window_of(at))[node])

    def _window_of(self, at: float) -> int:
        return max(1, math.ceil(at / self.window - _SLACK))

    def _begin(self, at: float, i: int, _=None) -> None:
        """Node i starts a local training on a snapshot of its model; it ends after its duration.
        An offline node starts its next one when its next online window begins."""
        if not self._online(i, at):
            back = self.availability.next_online(i, self._window_of(at), self.experiment.config.rounds)
            if back is not None:
                self._push((back - 1 + 2 * _SLACK) * self.window, i, _BEGIN)
            return
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
        """Node i's training ends: apply its update, let the algorithm act, then train again
        (once every wait of node i is over)."""
        if not self._online(i, at):   # it left while training: the work is lost, nothing is sent
            self._uncomputed[i] = False
            self._push(at, i, _BEGIN)
            return
        if self._uncomputed[i]:
            self._compute_trainings()
        self.nodes.params[i] += self.pending[i]
        self.last_loss[i] = self._running_loss[i]
        self.updates[i] += 1
        self.algorithm.on_trained(i, self)
        self._push(max(at, float(self._ready[i])), i, _BEGIN)

    def _arrive(self, at: float, j: int, message: Message) -> None:
        if not self._online(j, at):   # nobody there to receive it
            self.messages_lost[j] += 1
            return
        self.algorithm.on_message(j, message, self)

    # messages
    def _link(self, src: int, dst: int) -> int:
        """CSR position of the link src → dst of the fixed graph."""
        link = self.links.model.position(dst, src)
        if link is None:
            raise ValueError(f"{type(self.algorithm).__name__}: node {src} sends to node {dst}, which is not its "
                             "neighbour in the topology; send only to ctx.neighbours(node)")
        return link

    def _charge(self, src: int, link: int, payload: Payload, kind: str) -> int:
        """Charge ``src`` the exact wire size of its message of ``kind`` carrying ``payload`` on
        ``link``; returns that size."""
        if not isinstance(payload, dict) or not all(isinstance(t, torch.Tensor) for t in payload.values()):
            raise TypeError(f"{type(self.algorithm).__name__}: a message carries named tensors, e.g. "
                            f"{{'params': ctx.params[node]}}, got {type(payload).__name__}")
        header, raw_header = self._header(payload, kind)
        ids = int(self.links.id_bytes[link])
        size = header + ids + int(payload_bytes({name: t[None] for name, t in payload.items()}, self.codec)[0])
        self.header_bytes[src] += header + ids
        self.bytes_sent[src] += size
        if self.codec != "none":
            self.counters["bytes_uncompressed"][src] += raw_header + ids + sum(t.numel() * t.element_size()
                                                                              for t in payload.values())
        if src == 0:
            self.message_bytes = size
        return size

    def _header(self, payload: Payload, kind: str) -> tuple[int, int]:
        """Header size, with and without the lossless stage, of a message of this window from
        node 0 to node 0; ``GraphLinks.id_bytes`` adds the ids. Priced once per layout."""
        key = (kind, *((name, t.dtype, tuple(t.shape)) for name, t in payload.items()))
        sizes = self._headers.get(key)
        if sizes is None:
            rows = {name: t[None] for name, t in payload.items()}
            sizes = self._headers[key] = tuple(header_base_bytes(self.run_id, rows, self._rnd, codec, kind=kind)
                                               for codec in (self.codec, None))
        return sizes

    def _delay(self, link: int, size: int) -> float:
        return float(self.links.model.delay(link, size)) if self.links.model.enabled else 0.0

    def _lost(self, sender: int, link: int) -> bool:
        """Whether ``link`` loses the next message that ``sender`` sends (or requests), drawn from
        (seed, sender, its number of trainings) so every run loses the same ones."""
        if not self._lossy:
            return False
        trainings = int(self.updates[sender])
        draws = self._loss_draws[sender]
        if draws is None or draws[0] != trainings:
            draws = self._loss_draws[sender] = (
                trainings, streams.generator(self.experiment.config.seed, Stream.MESSAGE_LOSS, sender, trainings))
        return bool(draws[1].random() < self.links.model.loss[link])
