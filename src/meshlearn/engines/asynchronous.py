"""The asynchronous simulator: an event-driven virtual clock, no round barriers.

Every node loops train → communicate → train ... on its own speed: one local training of
node i takes ``compute.mean_s × factor_i`` virtual seconds, the factor drawn once from
(seed, node), and a message takes its link's delay from ``[network]``. A priority queue of
events ordered by (virtual time, node, sequence) decides who acts when, so a run is a pure
function of the config and its seed.

The engine runs the trainings and the network; what nodes communicate is the algorithm's
(an ``AsyncAlgorithm``): the engine calls its ``on_trained`` when a node's training ends,
its ``on_message`` / ``on_request`` / ``on_reply`` when a message arrives, and is the
``AsyncContext`` those handlers use. ``AsyncEvents`` is that machinery for the nodes a host
runs; ``AsyncSimEngine`` plays its events as fast as it can, and the networked workers
(``engines.async_worker``) play them on the real clock with other workers' messages.

A training starts from a snapshot of the node's model and its result is applied as an
update when it ends (x_i += trained − snapshot): models merged into a node while it computes
are kept, and its update is as stale as on a real device (the staleness AD-PSGD analyses).
Since a training depends only on its snapshot and on the node's own optimizer state and
data stream, the engine computes it lazily: when the first result is due, every training
begun since the last such moment runs in one batched ``LocalTrainer.train`` call. A node
trains again once ``on_trained`` returns, or later if it waits (``wait``) or awaits the reply
to a request.

A message is lost with its link's ``[network]`` loss, drawn from (seed, sender, the sender's
number of trainings): the k-th message a node sends after a training takes the k-th draw. A
lost message is counted at its receiver (a lost request or reply releases the requester: it
learns of a lost request at once and waits the request's delay, of a lost reply when the reply
would have arrived). The runner still sees rounds: round r is the window of virtual time
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

from meshlearn import streams, wire
from meshlearn.algorithms.asynchronous import MESSAGE, REPLY, REQUEST, Message
from meshlearn.dynamics import training_times
from meshlearn.engines.host import InProcessEngine, evaluate_if_due
from meshlearn.engines.links import GraphLinks, payload_bytes
from meshlearn.evaluation import RoundReport
from meshlearn.experiment import Experiment
from meshlearn.nodes import NodeBatch
from meshlearn.sharing import Payload
from meshlearn.streams import Stream

__all__ = ["AsyncEvents", "AsyncSimEngine"]

_SLACK = 1e-9        # events due at a window's end up to float rounding belong to that window

_BEGIN, _TRAINED, _ARRIVE = range(3)   # event kinds


def _restored(state: dict) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


class AsyncEvents:
    """The events of the nodes a host runs, and the ``AsyncContext`` of their algorithm.

    Nodes are named by id; per-node arrays hold the hosted nodes' rows (``row_of``). A host
    defines ``_deliver`` (put a message on its way) and drives the queue.
    """

    def _init_events(self, experiment: Experiment) -> None:
        cfg = experiment.config
        n, b = experiment.num_nodes, len(self.local_ids)
        self.graph = experiment.topology.graph(1)      # asynchronous algorithms gossip over a fixed graph
        self.links = GraphLinks(self.graph, cfg.network, cfg.seed)
        self.window = cfg.compute.mean_s
        self.durations = training_times(cfg.compute, cfg.seed, n)   # of every node, by id
        self._peers = [streams.generator(cfg.seed, Stream.PEERS, node) for node in self.local_ids]
        self._lossy = bool(self.links.model.loss.any())
        self._loss_draws: list[tuple[int, np.random.Generator] | None] = [None] * b   # (trainings, stream)
        # a running training's snapshot until it is computed, then the update it produced
        self.pending = torch.zeros_like(self.nodes.params)
        self._uncomputed = np.zeros(b, dtype=bool)
        self._running_loss = torch.full((b,), float("nan"))
        self._ready = np.zeros(b)                            # no training starts before (waits)
        self._asked: dict[int, tuple[int, Payload]] = {}     # node -> (peer, request) awaiting a reply
        self.updates = self.counters["updates"] = np.zeros(b, dtype=np.int64)   # local trainings completed
        self.messages_lost = self.counters["messages_lost"]
        self.events = 0
        self._queue: list[tuple] = [(0.0, node, node, _BEGIN, None) for node in self.local_ids]  # a heap
        self._seq = n
        self._now = 0.0
        self._rnd = 0
        self._headers: dict[tuple, tuple[int, int]] = {}
        self.availability = experiment.availability   # churn: who is online in each window
        self._handlers = {_BEGIN: self._begin, _TRAINED: self._trained, _ARRIVE: self._arrive}

    def _play(self, at: float, node: int, kind: int, data) -> None:
        self._now = at
        self._handlers[kind](at, node, data)
        self.events += 1

    def _deliver(self, at: float, message: Message) -> None:
        """Put ``message`` on its way to arrive at ``at`` (kind 'lost': the news that one was lost)."""
        raise NotImplementedError

    # AsyncContext
    @property
    def now(self) -> float:
        return self._now

    def neighbours(self, node: int) -> np.ndarray:
        return self.graph.receivers_of(node)

    def rng(self, node: int) -> np.random.Generator:
        return self._peers[self.row_of[node]]

    def random_neighbour(self, node: int) -> int | None:
        peers = self.graph.receivers_of(node)
        return int(peers[self.rng(node).integers(len(peers))]) if len(peers) else None

    def send(self, src: int, dst: int, payload: Payload, kind: str = "model") -> None:
        self._transmit(src, dst, payload, kind, MESSAGE)

    def request(self, src: int, dst: int, payload: Payload, kind: str = "model") -> None:
        if src in self._asked:
            raise RuntimeError(f"{type(self.algorithm).__name__}: node {src} requests again before the reply to "
                               "its last request; a node has one request at a time")
        delay, delivered = self._transmit(src, dst, payload, kind, REQUEST)
        if not delivered:   # the requester learns it and goes on once the request would have arrived
            self.wait(src, delay)
        else:
            self._asked[src] = (dst, {name: t.detach().clone() for name, t in payload.items()})

    def wait(self, node: int, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError(f"{type(self.algorithm).__name__}: node {node} waits {seconds!r} s; a wait is >= 0")
        row = self.row_of[node]
        self._ready[row] = max(self._ready[row], self._now + seconds)

    # events
    def _push(self, at: float, node: int, kind: int, data=None) -> None:
        heapq.heappush(self._queue, (at, node, self._seq, kind, data))
        self._seq += 1

    def _online(self, node: int, at: float) -> bool:
        """Whether ``node`` is online at time ``at`` (in the window of round ⌈at / mean_s⌉)."""
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
        row = self.row_of[i]
        self.pending[row] = self.nodes.params[row]
        self._uncomputed[row] = True
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
        (once every wait of node i is over and the reply to its request is in)."""
        row = self.row_of[i]
        if not self._online(i, at):   # it left while training: the work is lost, nothing is sent
            self._uncomputed[row] = False
            self._push(at, i, _BEGIN)
            return
        if self._uncomputed[row]:
            self._compute_trainings()
        self.nodes.params[row] += self.pending[row]
        self.last_loss[row] = self._running_loss[row]
        self.updates[row] += 1
        self.algorithm.on_trained(i, self)
        if i not in self._asked:
            self._push(max(at, float(self._ready[row])), i, _BEGIN)

    def _release(self, i: int) -> None:
        """Node i's request is settled: it trains again (once its waits are over)."""
        if self._asked.pop(i, None) is not None:
            self._push(max(self._now, float(self._ready[self.row_of[i]])), i, _BEGIN)

    def _arrive(self, at: float, j: int, message: Message) -> None:
        row = self.row_of[j]
        if message.kind == "lost" or not self._online(j, at):   # lost on the way, or nobody there to receive it
            self.messages_lost[row] += 1
            if message.call == REPLY:
                self._release(j)
            elif message.call == REQUEST and message.kind != "lost":   # tell the requester, as a lost reply
                self._deliver(at + self._delay(self._link(j, message.src), 0),
                              Message(j, message.src, "lost", {}, at, REPLY))
            return
        if message.call == REQUEST:
            reply = self.algorithm.on_request(j, message, self)
            self._transmit(j, message.src, reply, message.kind, REPLY)
        elif message.call == REPLY:
            message.request = self._asked[j][1]
            self.algorithm.on_reply(j, message, self)
            self._release(j)
        else:
            self.algorithm.on_message(j, message, self)

    # messages
    def _transmit(self, src: int, dst: int, payload: Payload, kind: str, call: int) -> tuple[float, bool]:
        """Charge ``src`` the message, draw whether its link loses it, and deliver it (or the
        news of its loss: at once, or for a reply when it would have arrived); returns its
        delay and whether it is delivered."""
        if kind == "lost":
            raise ValueError(f"{type(self.algorithm).__name__}: kind 'lost' is the engine's own; name it otherwise")
        link = self._link(src, dst)
        delay = self._delay(link, self._charge(src, link, payload, kind, call))
        if self._lost(src, link):
            self._deliver(self._now + delay if call == REPLY else self._now,
                          Message(src, dst, "lost", {}, self._now, call))
            return delay, False
        copy = {name: tensor.detach().clone() for name, tensor in payload.items()}
        self._deliver(self._now + delay, Message(src, dst, kind, copy, self._now, call))
        return delay, True

    def _link(self, src: int, dst: int) -> int:
        """CSR position of the link src → dst of the fixed graph."""
        link = self.links.model.position(dst, src)
        if link is None:
            raise ValueError(f"{type(self.algorithm).__name__}: node {src} sends to node {dst}, which is not its "
                             "neighbour in the topology; send only to ctx.neighbours(node)")
        return link

    def _charge(self, src: int, link: int, payload: Payload, kind: str, call: int) -> int:
        """Charge ``src`` the exact wire size of its message of ``kind`` carrying ``payload`` on
        ``link``; returns that size."""
        if not isinstance(payload, dict) or not all(isinstance(t, torch.Tensor) for t in payload.values()):
            raise TypeError(f"{type(self.algorithm).__name__}: a message carries named tensors, e.g. "
                            f"{{'params': ctx.params[node]}}, got {type(payload).__name__}")
        header, raw_header = self._header(payload, kind, call)
        ids, row = int(self.links.id_bytes[link]), self.row_of[src]
        size = header + ids + int(payload_bytes({name: t[None] for name, t in payload.items()}, self.codec)[0])
        self.header_bytes[row] += header + ids
        self.bytes_sent[row] += size
        if self.codec != "none":
            self.counters["bytes_uncompressed"][row] += raw_header + ids + sum(t.numel() * t.element_size()
                                                                              for t in payload.values())
        if src == self.local_ids[0]:
            self.message_bytes = size
        return size

    def _header(self, payload: Payload, kind: str, call: int) -> tuple[int, int]:
        """Header size, with and without the lossless stage, of a message of this window from
        node 0 to node 0; ``GraphLinks.id_bytes`` adds the ids. Priced once per layout."""
        key = (kind, call, *((name, t.dtype, tuple(t.shape)) for name, t in payload.items()))
        sizes = self._headers.get(key)
        if sizes is None:
            tensors = {name: t.detach() for name, t in payload.items()}
            sizes = self._headers[key] = tuple(
                wire.header_nbytes(wire.Message(self.run_id, 0, self._rnd, kind, tensors, async_meta(0, call)), codec)
                for codec in (self.codec, None))
        return sizes

    def _delay(self, link: int, size: int) -> float:
        return float(self.links.model.delay(link, size)) if self.links.model.enabled else 0.0

    def _lost(self, sender: int, link: int) -> bool:
        """Whether ``link`` loses the next message that ``sender`` sends, drawn from (seed,
        sender, its number of trainings) so every run loses the same ones."""
        if not self._lossy:
            return False
        row = self.row_of[sender]
        trainings = int(self.updates[row])
        draws = self._loss_draws[row]
        if draws is None or draws[0] != trainings:
            draws = self._loss_draws[row] = (
                trainings, streams.generator(self.experiment.config.seed, Stream.MESSAGE_LOSS, sender, trainings))
        return bool(draws[1].random() < self.links.model.loss[link])


def async_meta(dst: int, call: int) -> dict:
    """Header meta of an asynchronous message: its receiver, and whether it is a request or a
    reply (left out for a plain message)."""
    return {"dst": dst, "call": call} if call else {"dst": dst}


class AsyncSimEngine(AsyncEvents, InProcessEngine):
    """Runs an asynchronous algorithm (an ``AsyncAlgorithm``) of an ``Experiment`` with every
    node in this process, on a virtual clock; it is the ``AsyncContext`` of the algorithm."""

    name = "sim"

    def __init__(self, experiment: Experiment, run_id: str = "sim"):
        super().__init__(experiment, list(range(experiment.num_nodes)))
        self.run_id = run_id
        self.row_of = range(experiment.num_nodes)   # every node, in its own row
        self._init_events(experiment)
        self.train_time = self.eval_time = 0.0

    # Engine
    def step(self, rnd: int) -> RoundReport:
        """Play the events of round ``rnd``'s window (0: none, only the initial evaluation)."""
        if rnd > 0:
            t0 = time.perf_counter()
            self._rnd, self._headers = rnd, {}   # messages of this window carry its number
            if self.availability is not None:
                self.count_online(rnd)
            end = (rnd + _SLACK) * self.window
            while self._queue and self._queue[0][0] <= end:
                self._play(*self._event())
            self.train_time += time.perf_counter() - t0
        evaluation, seconds = evaluate_if_due(self.evaluator, self.nodes, self.experiment.topology, rnd)
        self.eval_time += seconds
        metrics = self.node_metrics()
        return RoundReport(rnd, np.arange(len(self.updates)), self.last_loss.numpy().copy(),
                           self.bytes_sent.copy(), self.header_bytes.copy(), self.train_time,
                           rnd * self.window, evaluation, self.eval_time, metrics)

    def _event(self) -> tuple:
        at, node, _, kind, data = heapq.heappop(self._queue)
        return at, node, kind, data

    def _deliver(self, at: float, message: Message) -> None:
        self._push(at, message.dst, _ARRIVE, message)

    def close(self) -> dict:
        return {"events": self.events}

    def state_dict(self) -> dict:
        """The nodes, the clock, the queue of events (with the messages in flight), the
        requests awaiting replies and every random stream's position."""
        queue = [[at, node, seq, kind, None if data is None else _message_state(data)]
                 for at, node, seq, kind, data in self._queue]
        return {**super().state_dict(), "pending": self.pending, "uncomputed": self._uncomputed,
                "running_loss": self._running_loss, "ready": self._ready, "events": self.events,
                "seq": self._seq, "now": self._now, "clocks": [self.train_time, self.eval_time], "queue": queue,
                "asked": [[node, peer, request] for node, (peer, request) in self._asked.items()],
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
        self._asked = {int(node): (int(peer), request) for node, peer, request in state["asked"]}
        for rng, saved in zip(self._peers, state["peers"]):
            rng.bit_generator.state = saved
        self._loss_draws = [None if d is None else (d[0], _restored(d[1])) for d in state["loss_draws"]]

    # AsyncContext
    @property
    def params(self) -> torch.Tensor:
        return self.nodes.params


def _message_state(message: Message) -> dict:
    return {"src": message.src, "dst": message.dst, "kind": message.kind, "payload": message.payload,
            "sent_at": message.sent_at, "call": message.call}
