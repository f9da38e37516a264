"""Peer sampling on the networked engines: a worker keeps its nodes' views and trades view
buffers with the other workers.

A round of the protocol (``topology.peer_sampling``) has two phases. In each, a worker sends
every live worker one bundle, a wire message of kind ``views``: in phase 0 its nodes' view
requests to that worker's nodes and all its nodes' push links, in phase 1 the answers to the
requests it received. It then waits for every live worker's bundle of that phase (up to
``engine.timeout_s``); bundles that come early wait for their phase. A bundle is refused when
it speaks for nodes its sender does not host, addresses nodes elsewhere, or names nodes
outside the run. Every worker thus learns the round's push links, so the emulated network
draws each link's delay and loss as the simulator does, while each view changes only with
what its own node sent and received.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import numpy as np
import torch

from meshlearn import wire
from meshlearn.topology.peer_sampling import ViewBuffer, play_round
from meshlearn.topology.schedule import RoundGraph, sampled

__all__ = ["ViewExchange", "bundle_tensors"]

log = logging.getLogger("meshlearn.worker")

NAMES = ("src", "dst", "ids", "ages", "push_src", "push_dst")


class ViewExchange:
    """The views of a worker's nodes and the bundles of the round being played."""

    def __init__(self, worker):
        self.worker = worker
        self.sampling = worker.topology.new_sampling()
        self.sampled: tuple[int, RoundGraph] | None = None   # the last round played and its graph
        self.bundles: dict[tuple[int, int], dict[int, tuple[list[ViewBuffer], list]]] = defaultdict(dict)
        self.done = (0, 1)                                    # the last (round, phase) whose bundles were used

    def graph(self, rnd: int) -> RoundGraph:
        """Round ``rnd``'s push graph, after playing every round up to it (as all workers do)."""
        while self.sampled is None or self.sampled[0] < rnd:
            r = self.sampling.round + 1
            self.sampled = (r, self.worker.topology.restrict(self._play(r), r))
        return self.sampled[1]

    def _play(self, rnd: int) -> RoundGraph:
        worker = self.worker
        availability = worker.experiment.availability
        online = availability.online(rnd) if availability is not None else None
        peers = worker.experiment.config.topology.peers
        links = play_round(self.sampling, worker.local_ids, peers, rnd, online, swap=self._swap)
        return sampled(len(worker.owner), links, peers)

    def _swap(self, rnd: int, phase: int, buffers: list[ViewBuffer], pushes: list) -> tuple[list, list]:
        """Send every live worker its bundle of ``buffers`` (those for its nodes) and all the
        ``pushes``; wait for theirs. Returns the buffers for the local nodes and every
        worker's pushes."""
        worker = self.worker
        size = self.sampling.view_size // 2
        workers = sorted(set(np.unique(worker.owner).tolist()) - worker.down)
        bundles = self.bundles[(rnd, phase)]
        for w in workers:
            mine = [b for b in buffers if int(worker.owner[b.dst]) == w]
            if w == worker.index:
                bundles[w] = (mine, list(pushes))
                continue
            msg = wire.Message(worker.run_id, worker.local_ids[0], rnd, "views", bundle_tensors(mine, pushes, size),
                               {"phase": phase})
            worker.transport.send(w, wire.encode(msg))
        t0, deadline = time.perf_counter(), time.monotonic() + worker.timeout_s
        while not set(workers) - worker.down <= bundles.keys() and time.monotonic() < deadline:
            worker._poll_control()
            received = worker.transport.recv(min(deadline - time.monotonic(), 0.05))
            if received is not None:
                worker._accept(*received)
        worker.times["wait_time_s"] += time.perf_counter() - t0
        missing = set(workers) - worker.down - bundles.keys()
        if missing:
            log.warning("worker %d round %d: no peer-sampling views from worker(s) %s after %.1fs; going on "
                        "without them", worker.index, rnd, sorted(missing), worker.timeout_s)
        del self.bundles[(rnd, phase)]
        self.done = (rnd, phase)
        got = [bundles[w] for w in sorted(bundles)]
        return [b for mine, _ in got for b in mine], [p for _, theirs in got for p in theirs]

    def file(self, msg: wire.Message) -> None:
        """Check a bundle (``bundle_tensors``) and keep it for its (round, phase); raises
        ``wire.MessageError``."""
        owner, row_of = self.worker.owner, self.worker.row_of
        phase, sender = msg.meta.get("phase"), int(owner[msg.src])
        if type(phase) is not int or phase not in (0, 1):
            raise wire.MessageError(f"peer-sampling views of phase {phase!r}; phases are 0 and 1")
        if (msg.rnd, phase) <= self.done or sender in self.bundles[(msg.rnd, phase)]:
            return   # a past round's (or a repeated) bundle
        t, n, size = msg.tensors, len(owner), self.sampling.view_size // 2
        if set(t) != set(NAMES) or any(x.dtype != torch.int64 for x in t.values()):
            raise wire.MessageError(f"a views bundle holds the int64 tensors {', '.join(NAMES)}")
        m = len(t["src"])
        if t["dst"].shape != (m,) or t["ids"].shape != (m, size) or t["ages"].shape != (m, size) \
                or t["push_src"].dim() != 1 or t["push_dst"].shape != t["push_src"].shape:
            raise wire.MessageError(f"a views bundle's shapes do not match (buffers of {size} descriptors)")
        for name in ("src", "push_src"):
            if not ((t[name] >= 0) & (t[name] < n)).all() or (owner[t[name].numpy()] != sender).any():
                raise wire.MessageError(f"worker {sender} sent views for nodes it does not host ({name})")
        if not all(int(d) in row_of for d in t["dst"].tolist()) \
                or not ((t["push_dst"] >= 0) & (t["push_dst"] < n)).all():
            raise wire.MessageError("a views bundle names receivers outside this worker or the run")
        if not ((t["ids"] >= -1) & (t["ids"] < n)).all() or not ((t["ages"] >= 0) & (t["ages"] < 2**31)).all():
            raise wire.MessageError("a views bundle holds node ids outside the run or negative ages")
        buffers = [ViewBuffer(src, dst, ids if ids[0] >= 0 else ids[:0], ages if ids[0] >= 0 else ages[:0])
                   for src, dst, ids, ages in zip(t["src"].tolist(), t["dst"].tolist(), t["ids"].numpy(),
                                                  t["ages"].numpy())]
        self.bundles[(msg.rnd, phase)][sender] = (buffers, list(zip(t["push_src"].tolist(), t["push_dst"].tolist())))


def bundle_tensors(buffers: list[ViewBuffer], pushes: list, size: int) -> dict[str, torch.Tensor]:
    """A worker's bundle for one other worker: view buffers (a busy answer's slots all -1)
    and push links, as int64 tensors."""
    ids = np.full((len(buffers), size), -1, dtype=np.int64)
    ages = np.zeros((len(buffers), size), dtype=np.int64)
    for k, b in enumerate(buffers):
        ids[k, :len(b.ids)], ages[k, :len(b.ages)] = b.ids, b.ages
    pairs = np.array(pushes, dtype=np.int64).reshape(-1, 2)
    return {"src": torch.tensor([b.src for b in buffers], dtype=torch.int64),
            "dst": torch.tensor([b.dst for b in buffers], dtype=torch.int64),
            "ids": torch.from_numpy(ids), "ages": torch.from_numpy(ages),
            "push_src": torch.from_numpy(pairs[:, 0].copy()), "push_dst": torch.from_numpy(pairs[:, 1].copy())}
