"""A networked worker for asynchronous algorithms: its nodes' events on the real clock.

The worker runs the simulator's event machinery (``AsyncEvents``) for the nodes it hosts, with
the same training times, peers, message prices and loss draws, but plays each event when the
real clock reaches its time (seconds since the start, less the time spent evaluating and
reporting) instead of as fast as it can. Messages between its own nodes wait in its queue
for their emulated delay; messages to other workers go over the transport, which holds them
for that delay, and are handled when they arrive. Nothing waits at a barrier: every worker
reports each window of ``compute.mean_s`` seconds as a round, and goes on.

So the trainings (their number and times, with the waits for replies) and the messages sent,
their sizes and losses are those of the simulator, while which of two close events comes
first depends on real timing: models match the simulator's in their statistics, not bit for
bit. This needs each training to take less real time than its emulated duration.
"""

from __future__ import annotations

import heapq
import math
import time

import torch

from meshlearn import wire
from meshlearn.algorithms.asynchronous import MESSAGE, REPLY, REQUEST, Message
from meshlearn.engines.asynchronous import _ARRIVE, _SLACK, AsyncEvents, async_meta
from meshlearn.engines.worker import Worker

__all__ = ["AsyncWorker", "HostedRows"]


class HostedRows:
    """``ctx.params`` on a worker: the hosted nodes' models by node id."""

    def __init__(self, params: torch.Tensor, row_of: dict[int, int]):
        self.params, self.row_of = params, row_of

    def _row(self, node: int) -> int:
        row = self.row_of.get(int(node))
        if row is None:
            raise KeyError(f"node {node} is hosted by another worker: a node reads and writes only its own "
                           "model and learns of others' through messages (ctx.send, ctx.request)")
        return row

    def __getitem__(self, node: int) -> torch.Tensor:
        return self.params[self._row(node)]

    def __setitem__(self, node: int, value) -> None:
        self.params[self._row(node)] = value


class AsyncWorker(AsyncEvents, Worker):
    """Hosts ``node_ids`` of an asynchronous experiment; their ``AsyncContext`` over the transport."""

    def __init__(self, experiment, run_id: str, index: int, node_ids: list[int], owner, transport, control=None):
        Worker.__init__(self, experiment, run_id, index, node_ids, owner, transport, control)
        self._init_events(experiment)
        self._params = HostedRows(self.nodes.params, self.row_of)
        self._origin = time.monotonic()   # the clock's zero, moved on by every pause

    @property
    def params(self) -> HostedRows:
        return self._params

    def clock(self) -> float:
        return time.monotonic() - self._origin

    def run(self, rounds: int, send_models: bool = False, first: int = 0) -> None:
        """Each round's window of events on the real clock, then its report (the clock stops
        while it is made, evaluation included)."""
        if first:
            raise ValueError("an asynchronous run on a networked engine keeps no checkpoint to resume from")
        self._origin = time.monotonic()
        for rnd in range(rounds + 1):
            if rnd > 0:
                t0 = time.perf_counter()
                self._play_window(rnd)
                self.elapsed += time.perf_counter() - t0
            paused = time.monotonic()
            self._poll_control()
            if self.control is not None:
                self.control.send_multipart(self.report(rnd, self.last_loss, send_models and rnd == rounds))
            self._origin += time.monotonic() - paused

    def _play_window(self, rnd: int) -> None:
        """The events of round ``rnd``'s window, each when the clock reaches it, and the
        messages from other workers as they arrive."""
        self._rnd, self._headers = rnd, {}
        if self.availability is not None:
            self.count_online(rnd)
        end = (rnd + _SLACK) * self.window
        while True:
            clock = self.clock()
            due = self._queue[0][0] if self._queue else math.inf
            playable = due <= end and due <= clock
            received = self.transport.recv(0.0 if playable else min(max(0.0, min(due, end) - clock), 0.05))
            if received is not None:
                self._accept(*received)
            elif playable:
                at, node, _, kind, data = heapq.heappop(self._queue)
                self._play(at, node, kind, data)
            elif clock >= end and due > end:
                break
            self._poll_control()

    def _deliver(self, at: float, message: Message) -> None:
        dst = message.dst
        if dst in self.row_of:
            self._push(at, dst, _ARRIVE, message)
            return
        worker = int(self.owner[dst])
        if worker in self.down:   # nobody to answer a request: the requester learns it as a lost reply
            if message.call == REQUEST and message.kind != "lost":
                self._push(self._now, message.src, _ARRIVE, Message(dst, message.src, "lost", {}, self._now, REPLY))
            return
        wired = wire.Message(self.run_id, message.src, self._rnd, message.kind, message.payload,
                             async_meta(dst, message.call))
        self.transport.send(worker, wire.encode(wired, self.codec), max(0.0, at - self.clock()))

    def _accept(self, frames: list, peer: int | None = None) -> None:
        """A message from another worker: checked, then handled at the time it arrived."""
        params = self.nodes.params
        try:
            msg = self._decode(frames, peer)
            dst, call = self._receiver(msg), msg.meta.get("call", MESSAGE)
            if type(call) is not int or call not in (MESSAGE, REQUEST, REPLY):
                raise wire.MessageError(f"call {call!r} is not a message (0), request (1) or reply (2)")
            if self.links.model.position(dst, msg.src) is None:
                raise wire.MessageError(f"node {msg.src} is not a neighbour of node {dst}")
            if msg.kind == "lost" and msg.tensors:
                raise wire.MessageError("news of a lost message carries no tensors")
            if any(t.dtype != params.dtype or t.shape != params.shape[1:] for t in msg.tensors.values()):
                raise wire.MessageError(f"an asynchronous message carries model-shaped tensors "
                                        f"({params.dtype}, {tuple(params.shape[1:])})")
            if call == REPLY and self._asked.get(dst, (None,))[0] != msg.src:
                raise wire.MessageError(f"node {msg.src} replied to node {dst}, which awaits no reply from it")
        except wire.MessageError as exc:
            self._reject(str(exc))
            return
        if msg.kind != "lost":
            self.counters["bytes_received"][self.row_of[dst]] += sum(len(f) for f in frames)
        at = max(self.clock(), self._now)
        self._push(at, dst, _ARRIVE, Message(msg.src, dst, msg.kind, msg.tensors, at, call))

    def _poll_control(self) -> None:
        """Control messages; nodes awaiting a reply from a worker found gone learn it as lost."""
        known = len(self.down)
        super()._poll_control()
        if len(self.down) > known:
            for node, (peer, _) in self._asked.items():
                if int(self.owner[peer]) in self.down:
                    self._push(self._now, node, _ARRIVE, Message(peer, node, "lost", {}, self._now, REPLY))
