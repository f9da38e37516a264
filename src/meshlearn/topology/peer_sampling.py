"""Gossip-based peer sampling (Jelasity et al., ACM TOCS 2007) as a topology source.

Each node keeps a partial *view*: ``view_size`` descriptors (node id, age) of other nodes.
Every round each online node

1. ages its descriptors by one and sends its oldest descriptor's node (*tail* selection) a
   buffer of ``view_size // 2`` descriptors: itself at age 0 and a random part of its view,
   its ``healing`` oldest descriptors held back (*push-pull*);
2. answers one of the requests it received (drawn at random; the others get an empty, *busy*
   answer, so that no descriptor is sent in two buffers at once and copied rather than
   moved) with a buffer of its own, and both sides merge what they received into their
   views (``select``: drop duplicates keeping the youngest, drop up to ``healing`` oldest,
   up to ``swap`` of the head, which is what was just sent, then random ones, back to
   ``view_size``).

A node whose request gets no answer (offline, or its machine is gone) drops that descriptor,
so the overlay heals around departed nodes. As a topology (``topology.kind = "peer_sampling"``)
each node first pushes its model to ``topology.peers`` nodes drawn from its view (Epidemic
Learning, with what the node knows instead of the whole membership; ``push_links``).

Nothing here needs more than a node's own view and the buffers it receives, and every
random draw comes from the node's own stream (seed, node, round), used in a fixed order
(its request, the request it answers, its answer, its merges). So the protocol is
engine-agnostic: ``play_round`` runs the three steps (``requests``, ``answer``, ``finish``) for
every node in one process on the simulator, and for a worker's own nodes on the networked
engines, which carry the buffers over the transport; both reach the same views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meshlearn import streams
from meshlearn.streams import Stream

__all__ = ["PeerSampling", "ViewBuffer", "push_links", "play_round"]

PUSH_BYTES = 16   # a push link announced to the other hosts: sender and receiver (int64)


@dataclass(frozen=True)
class ViewBuffer:
    """Descriptors sent from node ``src`` to node ``dst``: ``ids`` (-1: unused slot), ``ages``."""

    src: int
    dst: int
    ids: np.ndarray
    ages: np.ndarray

    @property
    def nbytes(self) -> int:
        """What the buffer costs on the wire: sender, receiver and each slot's id and age (int64)."""
        return 8 * (2 + 2 * len(self.ids))


class PeerSampling:
    """The views of an ``n``-node overlay, for the nodes this process runs (made on first use).

    ``healing`` = 1 and ``swap`` = view_size/2 − healing by default: a little healing removes
    dead descriptors fast, and swapping balances how many views hold each node.
    """

    def __init__(self, n: int, seed: int, view_size: int = 10, healing: int = 1, swap: int | None = None):
        if not 2 <= view_size < n:
            raise ValueError(f"topology.options.view_size must be in 2..nodes-1 = {n - 1}, got {view_size}")
        swap = max(0, view_size // 2 - healing) if swap is None else swap
        if healing < 0 or swap < 0 or healing + swap > view_size // 2:
            raise ValueError(f"topology.options.healing + swap must be in 0..view_size/2 = {view_size // 2} "
                             f"(both >= 0), got {healing} + {swap}")
        self.n, self.seed = n, seed
        self.view_size, self.healing, self.swap = view_size, healing, swap
        self.round = 0                                  # the last round played
        self.views: dict[int, list[list[int]]] = {}     # node -> [[id, age], ...], head first
        self.sent_bytes = np.zeros(n, dtype=np.int64)   # cumulative, per node (of this process)
        self._rng: dict[int, np.random.Generator] = {}
        self._asked: dict[int, int] = {}                # requester -> the node it asked this round

    def view(self, node: int) -> list[list[int]]:
        """``node``'s view; a new node's is ``view_size`` random contacts (a tracker's answer)."""
        if node not in self.views:
            picks = streams.generator(self.seed, Stream.PEER_SAMPLING, node, 0).choice(
                self.n - 1, self.view_size, replace=False)
            self.views[node] = [[int(j + (j >= node)), 0] for j in picks]
        return self.views[node]

    # one round, in three steps
    def requests(self, rnd: int, nodes, online: np.ndarray | None = None) -> list[ViewBuffer]:
        """Round ``rnd``'s first step for ``nodes`` (those online in it): their view requests."""
        self.round = rnd
        self._rng, self._asked = {}, {}
        buffers = []
        for i in nodes:
            if online is not None and not online[i]:
                continue
            self._rng[i] = streams.generator(self.seed, Stream.PEER_SAMPLING, i, rnd)
            view = self.view(i)
            if not view:
                continue
            for entry in view:
                entry[1] += 1
            tail = max(range(len(view)), key=lambda k: (view[k][1], -k))   # the oldest (first of equals)
            self._asked[i] = view[tail][0]
            buffers.append(self._buffer(i, view[tail][0]))
        return buffers

    def answer(self, received: list[ViewBuffer]) -> list[ViewBuffer]:
        """The second step: each node online this round takes one of the requests it received
        (drawn at random), answers it from its view and merges it; the others get an empty
        answer (busy: neither side changes). One exchange at a time keeps the exchange a swap:
        a descriptor sent in two buffers at once would be copied rather than moved."""
        by_node: dict[int, list[ViewBuffer]] = {}
        for b in sorted(received, key=lambda b: (b.dst, b.src)):
            if b.dst in self._rng:
                by_node.setdefault(b.dst, []).append(b)
        replies = []
        for node, asking in by_node.items():
            taken = int(self._rng[node].integers(len(asking)))
            for k, b in enumerate(asking):
                if k != taken:
                    replies.append(ViewBuffer(node, b.src, np.full(0, -1, dtype=np.int64), np.zeros(0, dtype=np.int64)))
            replies.append(self._buffer(node, asking[taken].src))
            self._merge(asking[taken])
        return replies

    def finish(self, replies: list[ViewBuffer]) -> None:
        """The last step: requesters merge their answers (a busy one changes nothing); one left
        unanswered drops the node it asked."""
        answered = {b.dst: b for b in replies if b.dst in self._asked and self._asked[b.dst] == b.src}
        for i, asked in self._asked.items():
            if i not in answered:
                self.views[i] = [entry for entry in self.views[i] if entry[0] != asked]
            elif len(answered[i].ids):
                self._merge(answered[i])

    # views
    def _buffer(self, src: int, dst: int) -> ViewBuffer:
        """What ``src`` sends ``dst``: itself (age 0), then the head of its view, which is first
        permuted at random with its ``healing`` oldest descriptors moved to the end (so that
        ``swap`` later drops what was sent)."""
        view = self.views[src]
        order = self._rng[src].permutation(len(view)).tolist()
        oldest = set(sorted(order, key=lambda k: -view[k][1])[:self.healing])   # stable: first of equals
        view[:] = [view[k] for k in order if k not in oldest] + [view[k] for k in order if k in oldest]
        size = self.view_size // 2
        chosen = [(src, 0)] + [tuple(entry) for entry in view[:size - 1]]
        ids = np.full(size, -1, dtype=np.int64)
        ages = np.zeros(size, dtype=np.int64)
        ids[:len(chosen)] = [c[0] for c in chosen]
        ages[:len(chosen)] = [c[1] for c in chosen]
        out = ViewBuffer(src, dst, ids, ages)
        self.sent_bytes[src] += out.nbytes
        return out

    def _merge(self, buffer: ViewBuffer) -> None:
        """``select``: the receiver's view with the buffer appended, back to ``view_size``."""
        me = buffer.dst
        merged = self.views[me] + [[int(i), int(a)] for i, a in zip(buffer.ids.tolist(), buffer.ages.tolist())
                                   if 0 <= i < self.n and i != me]
        youngest: dict[int, int] = {}   # id -> position of its youngest descriptor (the first of equals)
        for k, (node, age) in enumerate(merged):
            if node not in youngest or age < merged[youngest[node]][1]:
                youngest[node] = k
        view = [merged[k] for k in sorted(youngest.values())]
        excess = len(view) - self.view_size
        if excess > 0 and self.healing:   # the oldest go first
            drop = set(sorted(range(len(view)), key=lambda k: (-view[k][1], k))[:min(self.healing, excess)])
            view = [e for k, e in enumerate(view) if k not in drop]
        excess = len(view) - self.view_size
        if excess > 0 and self.swap:      # then those sent away (the head)
            view = view[min(self.swap, excess):]
        excess = len(view) - self.view_size
        if excess > 0:
            drop = set(self._rng[me].choice(len(view), excess, replace=False).tolist())
            view = [e for k, e in enumerate(view) if k not in drop]
        self.views[me] = view

    def in_views(self) -> np.ndarray:
        """How many views (of this process) hold each node (its in-degree in the overlay)."""
        return np.bincount([node for view in self.views.values() for node, _ in view], minlength=self.n)

    def state_dict(self) -> dict:
        return {"round": self.round, "views": {str(i): v for i, v in self.views.items()},
                "sent_bytes": self.sent_bytes}

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])
        self.views = {int(i): [[int(a), int(b)] for a, b in v] for i, v in state["views"].items()}
        self.sent_bytes[:] = state["sent_bytes"]


def push_links(sampling: PeerSampling, nodes, peers: int, rnd: int,
               online: np.ndarray | None = None) -> list[tuple[int, int]]:
    """The (sender, receiver) links of ``nodes`` (those online) in round ``rnd``: each pushes
    to ``peers`` distinct nodes of its view, drawn from its Epidemic Learning stream."""
    out = []
    for i in nodes:
        if online is not None and not online[i]:
            continue
        view = sampling.view(i)
        picks = streams.generator(sampling.seed, Stream.EPIDEMIC_PEERS, i, rnd).choice(
            len(view), min(peers, len(view)), replace=False)
        out += [(i, view[k][0]) for k in sorted(picks.tolist())]
    np.add.at(sampling.sent_bytes, [i for i, _ in out], PUSH_BYTES)
    return out



def play_round(sampling: PeerSampling, nodes, peers: int, rnd: int, online: np.ndarray | None = None,
               swap=None) -> list[tuple[int, int]]:
    """Round ``rnd`` for ``nodes`` (those online): their push links, then the view exchange.
    ``swap(rnd, phase, buffers, pushes)`` carries a phase's buffers and push links to the
    other hosts and returns the buffers for ``nodes`` and every host's push links; without it
    every node is in this process. Returns the round's push links, in order."""
    swap = swap or (lambda rnd, phase, buffers, pushes: (buffers, pushes))
    pushes = push_links(sampling, nodes, peers, rnd, online)   # from the views as the round begins
    requests, pushes = swap(rnd, 0, sampling.requests(rnd, nodes, online), pushes)
    replies, _ = swap(rnd, 1, sampling.answer(requests), [])
    sampling.finish(replies)
    return sorted(pushes)
