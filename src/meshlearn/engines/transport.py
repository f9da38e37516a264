"""ZeroMQ over TCP between worker processes.

Each worker binds one PULL socket and connects one PUSH socket per worker (itself
included: messages between nodes of the same process also cross the transport, so their
bytes and delays are real). Messages are ``wire`` frames; tensor frames are sent without
copying (tracked, where they alias a model that changes once the exchange is over). With
network emulation on, a sender thread holds every message until its link delay has passed
(ZeroMQ sockets are single-threaded, so then all sends go through it).
With ``keys`` every socket is CURVE-authenticated and encrypted (``security``): the data
socket admits the run's workers only, and ``recv`` says which worker a message came from.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Sequence

import zmq

from meshlearn.engines.security import AllowList, Keys, connect_securely, serve_securely

__all__ = ["Transport"]

Frames = Sequence[bytes | memoryview]

RECEIVE_QUEUE = 8
"""Messages from one peer that ZeroMQ reads ahead of the worker. Beyond them, a busy worker's
messages wait at their senders, which send without copying (and without limit, so a send never
blocks), instead of each receiver holding a round's models while it is still training."""


class Transport:
    """One worker's sockets: ``send(worker, frames, delay_s)`` and ``recv(timeout_s)``."""

    def __init__(self, host: str, port: int = 0, *, max_bytes: int = 1 << 30, delayed: bool = False,
                 context: zmq.Context | None = None, keys: Keys | None = None, allow: AllowList | None = None):
        self.context = context or zmq.Context()
        self._own_context = context is None
        self.keys, self.allow = keys, allow   # CURVE: this worker's key pair, and its process's allow-list
        self.pull = self.context.socket(zmq.PULL)
        if keys is not None:
            serve_securely(self.pull, keys)
        self.pull.setsockopt(zmq.RCVHWM, RECEIVE_QUEUE)
        self.pull.setsockopt(zmq.MAXMSGSIZE, max_bytes)  # larger frames cannot be valid messages
        if port:
            self.pull.bind(f"tcp://{host}:{port}")
        else:
            port = self.pull.bind_to_random_port(f"tcp://{host}")
        self.address = f"tcp://{host}:{port}"
        self.push: dict[int, zmq.Socket] = {}
        self.closed_peers: set[int] = set()
        self.send_failures = 0
        self._delayed = delayed
        self._queue: queue.Queue = queue.Queue()
        self._sender: threading.Thread | None = None
        self._tracked: dict[int, list[zmq.MessageTracker]] = defaultdict(list)   # frames ZeroMQ may still hold

    def connect(self, book: dict[int, str], public_keys: dict[int, bytes] | None = None) -> None:
        """Open a PUSH socket to every worker's address (including our own); with CURVE, as a
        client of each worker's public key."""
        for worker, address in book.items():
            sock = self.context.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.LINGER, 30_000)   # flush what is queued when closing
            if self.keys is not None:
                connect_securely(sock, self.keys, public_keys[worker])
            sock.connect(address)
            self.push[worker] = sock
        if self._delayed:
            self._sender = threading.Thread(target=self._send_loop, name="emulated-links", daemon=True)
            self._sender.start()

    @property
    def delayed(self) -> bool:
        """Whether a sender thread holds messages for their link delays (network emulation)."""
        return self._delayed

    def send(self, worker: int, frames: Frames, delay_s: float = 0.0, track: bool = False) -> None:
        """Send ``frames`` to ``worker``, after ``delay_s`` when emulating the network. With
        ``track`` (not with emulation: give the sender thread copies) the frames alias memory
        that will change, and ``wait_sent`` waits until ZeroMQ has let go of them."""
        if self._delayed:
            self._queue.put((time.monotonic() + delay_s, frames, worker))
        else:
            self._send_now(worker, frames, track)

    def wait_sent(self, timeout_s: float) -> int:
        """Wait until ZeroMQ has let go of every frame sent with ``track`` to a live peer;
        returns how many it still held after ``timeout_s`` (a peer that stopped reading),
        which are not waited for again."""
        deadline, held = time.monotonic() + timeout_s, 0
        for worker, trackers in self._tracked.items():
            for tracker in trackers if worker not in self.closed_peers else ():
                try:
                    tracker.wait(max(0.0, deadline - time.monotonic()))
                except zmq.NotDone:
                    held += 1
        self._tracked.clear()
        return held

    def drop_peer(self, worker: int) -> None:
        """Stop sending to a worker that is known to be gone."""
        self.closed_peers.add(worker)

    def recv(self, timeout_s: float) -> tuple[list[memoryview], int | None] | None:
        """The next message's frames (views of ZeroMQ's buffers, no copy) and the worker that sent
        it (CURVE; None without), or None after ``timeout_s``."""
        if self.pull.poll(max(0, int(timeout_s * 1000))):
            frames = self.pull.recv_multipart(copy=False)
            peer = self.allow.peer_of(frames[0]) if self.allow is not None else None
            return [frame.buffer for frame in frames], peer
        return None

    def close(self, flush: bool = True) -> None:
        """Close the sockets; with ``flush``, first deliver what is queued for live peers (a
        worker that was told to stop does not wait: nobody reads its messages any more)."""
        if self._sender is not None:
            self._queue.put(None)
            self._sender.join()
        for worker, sock in self.push.items():
            # what is queued for a dead worker can never be delivered: do not linger on it
            sock.close(linger=0 if worker in self.closed_peers or not flush else None)
        self.pull.close(linger=0)
        if self._own_context:
            self.context.term()

    def _send_now(self, worker: int, frames: Frames, track: bool = False) -> None:
        if worker in self.closed_peers:
            return
        sock, last = self.push[worker], len(frames) - 1
        try:
            for k, frame in enumerate(frames):
                tracker = sock.send(frame, zmq.SNDMORE if k < last else 0, copy=False, track=track)
                if track and tracker is not None:
                    self._tracked[worker].append(tracker)
        except zmq.ZMQError:
            self.send_failures += 1

    def _send_loop(self) -> None:
        """Deliver queued messages when their time comes, in due order."""
        pending: list = []
        order = itertools.count()  # ties keep sending order
        while True:
            timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = ()
            if item is None:  # closing: send the rest at once
                for _, _, frames, worker in sorted(pending):
                    self._send_now(worker, frames)
                return
            if item:
                due, frames, worker = item
                heapq.heappush(pending, (due, next(order), frames, worker))
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                _, _, frames, worker = heapq.heappop(pending)
                self._send_now(worker, frames)
