"""A worker process of the networked engines: hosts some nodes, talks over the transport.

The worker runs the same ``Algorithm`` and ``Sharing`` code as the simulator on its share
of the nodes (a ``NodeBatch``). Its ``exchange`` sends one wire message per (node,
neighbour) through ZeroMQ, waits for the round's messages from the neighbours (buffering
early ones), goes on without the missing ones after ``engine.timeout_s`` and renormalizes
their mixing weights. The launcher talks to it over a control socket (msgpack maps, plus
raw float64 frames for the parameter sums of evaluation rounds); nothing is pickled.

Run as ``python -m meshlearn.engines.worker --control ADDRESS --index K``.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import socket
import sys
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterator

import numpy as np
import torch
import zmq

from meshlearn import plugins, wire
from meshlearn.byzantine.adversary import received_view
from meshlearn.checkpoint import decode, encode
from meshlearn.dynamics.compute import late_links
from meshlearn.engines.network import renormalized, renormalizing_scale
from meshlearn.engines.control import NODE_METRICS, pack, unpack
from meshlearn.engines.host import NodeHost
from meshlearn.engines.security import AllowList, Credentials, connect_securely
from meshlearn.engines.links import GraphLinks, LinkCache, message_meta
from meshlearn.metrics import peak_rss_bytes
from meshlearn.nodes import NodeBatch
from meshlearn.sharing import Inbox, LinkInbox, Payload
from meshlearn.sharing.base import Received, received_chunks
from meshlearn.engines.views import ViewExchange
from meshlearn.topology.schedule import RoundGraph

__all__ = ["Worker", "MessageInbox", "main"]

log = logging.getLogger("meshlearn.worker")

_WIDE_VALUES = 1 << 22
"""float64 values (32 MiB) a worker widens at a time to sum its models for the launcher."""


class MessageInbox(Inbox):
    """What a worker's nodes received: one payload per sender, weights per (receiver, sender).

    Senders are visited in increasing id, so each receiver accumulates its neighbours in the
    order of the simulator's sparse product, and the results agree to float rounding. A
    payload that passed the wire checks but that the sharing scheme cannot decode (hostile
    indices, say) is dropped like a missing message: its receivers' weights are renormalized
    over the rest, and ``on_reject`` counts it. ``by_receiver`` stacks the decoded messages,
    one per sender, and gathers them per receiver as the simulator does.
    """

    def __init__(self, self_weight: torch.Tensor, weights: dict[int, list[tuple[int, float]]],
                 payloads: dict[int, Payload], template: Payload, on_reject=lambda src, exc: None,
                 device: torch.device = torch.device("cpu")):
        self.self_weight = self_weight
        self.weights = weights        # sender -> [(receiver row, weight)]
        self.payloads = payloads      # sender -> payload with a leading dimension of 1
        self.template = template      # an empty (0-row) payload, for the output shape
        self.on_reject = on_reject
        self.device = device          # where the models are: messages are summed there
        self.rejected: set[int] = set()
        self.kept = torch.ones(len(self_weight), dtype=torch.float64)   # weight left per receiver

    def weighted_sum(self, decode) -> torch.Tensor:
        shape = decode(self.template).shape[1:]
        out = torch.zeros((len(self.self_weight), *shape), dtype=torch.float32, device=self.device)
        for src in sorted(self.payloads):
            if src in self.rejected:
                continue
            try:
                dense = decode(self.payloads[src])[0].to(self.device)
            except wire.MessageError as exc:
                self._reject(src, exc)
                continue
            for row, weight in self.weights[src]:
                out[row].add_(dense, alpha=weight)
        if self.rejected:
            out *= (1.0 / self.kept).float().view(-1, *[1] * len(shape)).to(self.device)
        return out

    def by_receiver(self, decode, chunk_nodes: int | None = None) -> Iterator[Received]:
        decoded = {}   # every sender's payload decoded first: a rejection renormalizes all its receivers
        for src in sorted(self.payloads):
            if src in self.rejected:
                continue
            try:
                decoded[src] = decode(self.payloads[src])[0]
            except wire.MessageError as exc:
                self._reject(src, exc)
        order = {src: k for k, src in enumerate(decoded)}
        links = sorted((row, src, weight) for src in decoded for row, weight in self.weights[src])
        rows = np.array([row for row, _, _ in links], dtype=np.int64)
        senders = np.array([src for _, src, _ in links], dtype=np.int64)
        # the weights weighted_sum applies: w_ij, then 1 / (weight left) where a sender was rejected
        weights = torch.tensor([w for _, _, w in links], dtype=torch.float32) \
            * (1.0 / self.kept).float()[torch.from_numpy(rows)]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(self.self_weight)))])
        source = (torch.stack(list(decoded.values())) if decoded else decode(self.template)).to(self.device)
        yield from received_chunks(indptr, senders, weights.numpy(), self.self_weight, source,
                                   np.array([order[src] for src in senders.tolist()], dtype=np.int64), chunk_nodes)

    def _reject(self, src: int, exc: Exception) -> None:
        self.on_reject(src, exc)
        self.rejected.add(src)
        before = self.kept.clone()
        for row, weight in self.weights[src]:
            self.kept[row] -= weight
        self.self_weight = self.self_weight * (before / self.kept).float()


class FoldingInbox(Inbox):
    """A worker's inbox read as its messages arrive: ``weighted_sum`` adds each message into
    its receivers' rows as soon as their earlier senders are in (senders in increasing id, as
    ``MessageInbox`` sums them) and lets it go once every local receiver has it, so a worker
    holds the sum and the few messages that came early, not every model of the round. A lost
    or undecodable message leaves its receiver's row rescaled at the end, as ``renormalized``
    rescales the weights. ``by_receiver`` (rules that need the messages themselves) first
    waits for all of them. Like any inbox, it is read once."""

    def __init__(self, worker: Worker, links: GraphLinks, payload: Payload, rnd: int):
        self.worker, self.links, self.rnd = worker, links, rnd
        self.template = {name: t[:0] for name, t in payload.items()}   # an empty payload, for the output shape
        self.self_weight = torch.from_numpy(links.graph.self_weight[worker.local_ids].astype(np.float32))
        self.read = False
        self.full: MessageInbox | None = None   # by_receiver's inbox of every message

    def weighted_sum(self, decode) -> torch.Tensor:
        self._take()
        w = self.worker
        rows, srcs, weights, _ = w._incoming({}, self.links)   # every incoming link, receiver-major
        weights32 = weights.astype(np.float32)   # the numbers MessageInbox adds with
        b = len(w.local_ids)
        ends = np.searchsorted(rows, np.arange(b), side="right").tolist()
        nxt = np.searchsorted(rows, np.arange(b)).tolist()   # per receiver row: its next link to fold
        left = Counter(srcs.tolist())   # per sender: local links not yet folded
        received = np.zeros(len(rows), dtype=bool)
        rejected: set[int] = set()
        shape = decode(self.template).shape[1:]
        out = torch.zeros((b, *shape), dtype=torch.float32, device=w.nodes.params.device)

        def fold(row: int, final: bool = False) -> None:
            """Add row's messages in sender order, up to the first not yet in (``final``: to the end)."""
            k, dst = nxt[row], w.local_ids[row]
            while k < ends[row]:
                src = int(srcs[k])
                delivered = w.arrived.get((dst, src))
                if delivered is None and not final:
                    break
                if delivered and src not in rejected:
                    try:
                        dense = decode({name: t.unsqueeze(0) for name, t in w.models[src].items()})[0]
                        out[row].add_(dense.to(out.device), alpha=float(weights32[k]))
                        received[k] = True
                    except wire.MessageError as exc:
                        rejected.add(src)
                        w._reject_payload(src, exc)
                left[src] -= 1
                if not left[src]:
                    w.models.pop(src, None)
                k += 1
            nxt[row] = k

        def on_message() -> None:
            while w.filed:
                fold(w.row_of[w.filed.pop()])

        w.filed.clear()
        for row in range(b):   # what came before the exchange began (early messages, a rushing attacker's wait)
            fold(row)
        w._collect(self.rnd, self.links, on_message=on_message)
        for row in range(b):
            fold(row, final=True)
        self_weight = self.links.graph.self_weight[w.local_ids]
        scale, alone = renormalizing_scale(self_weight, weights, rows, received)
        self.self_weight = torch.from_numpy(np.where(alone, 1.0, self_weight * scale).astype(np.float32))
        rescaled = np.flatnonzero(scale != 1.0)
        if len(rescaled):
            factor = torch.from_numpy(scale[rescaled].astype(np.float32)).to(out.device)
            out[rescaled] *= factor.view(-1, *[1] * len(shape))
        return out

    def by_receiver(self, decode, chunk_nodes: int | None = None) -> Iterator[Received]:
        self._take()
        got, models = self.worker._collect(self.rnd, self.links)
        self.full = self.worker._inbox(got, models, self.template, self.links)
        for chunk in self.full.by_receiver(decode, chunk_nodes):
            self.self_weight = self.full.self_weight   # renormalized over the decodable messages
            yield chunk
        self.self_weight = self.full.self_weight

    def finish(self) -> None:
        """An inbox nobody read: its messages are still awaited and counted."""
        if not self.read:
            self._take()
            self.worker._collect(self.rnd, self.links)

    def _take(self) -> None:
        if self.read:
            raise RuntimeError("this round's inbox was read already: a worker adds the messages up as they arrive "
                               "and keeps none, so read it once (weighted_sum or by_receiver) per exchange")
        self.read = True


class Worker(NodeHost):
    """Hosts ``node_ids`` of an experiment; a ``RoundContext`` over the transport."""

    def __init__(self, experiment, run_id: str, index: int, node_ids: list[int], owner: np.ndarray,
                 transport, control=None):
        super().__init__(experiment, node_ids)
        cfg = experiment.config
        self.run_id, self.index = run_id, index
        self.owner, self.transport, self.control = owner, transport, control
        self.timeout_s = cfg.engine.timeout_s
        self.max_bytes = cfg.engine.max_message_bytes
        self.row_of = {node: row for row, node in enumerate(self.local_ids)}
        self.topology = experiment.topology
        self.links = LinkCache(experiment)
        self.down: set[int] = set()                  # workers known to be gone
        # the exchange in progress: its (round, step), links, and what arrived for it
        self.current: tuple[int, int] = (0, 0)
        self.current_links: GraphLinks | None = None
        self.arrived: dict[tuple[int, int], bool] = {}   # (dst, src) -> delivered
        self.models: dict = {}                           # src (or (dst, src) per link) -> tensors
        self.pending: dict[tuple[int, int], list] = defaultdict(list)  # (rnd, step) -> early messages
        self.filed: list[int] = []                       # receivers of the messages filed since last looked
        self.inbox: FoldingInbox | None = None           # the last exchange's inbox
        for name in NODE_METRICS:   # what only a networked engine counts, besides messages_lost
            self.counters.setdefault(name, np.zeros(len(self.local_ids), dtype=np.int64))
        self.spec: dict | None = None                    # names -> (dtype, shape) of a payload row
        self.per_link = False                            # the current exchange sends a message per link
        self.rejected = 0                                # invalid messages received
        self.peer_of_worker: np.ndarray | None = None    # CURVE: the peer (key) each worker sends as
        self.peer_kind = "worker"
        self.times = {"train_time_s": 0.0, "wait_time_s": 0.0, "serialize_time_s": 0.0, "eval_time_s": 0.0}
        self.elapsed = 0.0                               # seconds spent in rounds (the report's wall time)
        self.checkpoint_rounds: set[int] = set()         # rounds after which the launcher asked for the state
        self.views = ViewExchange(self) if cfg.topology.kind == "peer_sampling" else None   # peer sampling

    def neighbours(self, node: int, rnd: int = 1) -> np.ndarray:
        """The nodes that hear from ``node`` in round ``rnd``."""
        return self.graph(rnd).receivers_of(node)

    # RoundContext
    def train(self, nodes: NodeBatch, active: torch.Tensor | None = None, **how) -> torch.Tensor:
        """Local training; with emulated compute the worker then sleeps so that the training
        took as long, relative to a node of mean speed (``compute.mean_s``, taken as the real
        speed), as its slowest node here (faster nodes cannot be sped up)."""
        t0 = time.perf_counter()
        active = self.present(nodes, active)
        loss = self.trainer.train(nodes, active, **how)
        took = time.perf_counter() - t0
        times = self.experiment.training_times
        if times is not None:
            trained = nodes.ids.numpy() if active is None else nodes.ids[active].numpy()
            if len(trained):
                time.sleep(took * max(0.0, times[trained].max() / self.experiment.config.compute.mean_s - 1))
        self.times["train_time_s"] += time.perf_counter() - t0
        return loss

    def graph(self, rnd: int) -> RoundGraph:
        """Round ``rnd``'s graph; with peer sampling, the one the local nodes' views give, after
        the view exchanges of every round up to ``rnd`` (all workers play the same rounds)."""
        if self.views is None or not self.topology.samples_peers(rnd):
            return self.topology.graph(rnd)
        return self.views.graph(rnd)

    def peer_views(self):
        return self.views.sampling if self.views is not None else None

    @property
    def departed(self) -> frozenset[int]:
        return frozenset(np.flatnonzero(np.isin(self.owner, list(self.down))).tolist()) if self.down else frozenset()

    def exchange(self, nodes: NodeBatch, payload: Payload, rnd: int, graph: RoundGraph | None = None,
                 per_link: bool = False) -> Inbox | LinkInbox:
        self.finish_exchange()
        # the graph first: peer sampling's exchanges may file early messages against the last exchange's
        links = self.links(self.topology.restrict(graph, rnd) if graph is not None else self.graph(rnd))
        step = self.current[1] + 1 if self.current[0] == rnd else 0
        self.current, self.current_links = (rnd, step), links
        # what a sender's message must hold: the tensors this run's sharing scheme sends
        self.spec = {name: (t.dtype, tuple(t.shape[1:])) for name, t in payload.items()}
        self.per_link = per_link
        self.arrived, self.models, self.filed = {}, {}, []
        for msg, nbytes in self.pending.pop(self.current, []):   # early messages, checked now
            self._file(msg, nbytes)
        attackers = self.adversary.rows.tolist() if self.adversary and not per_link else []
        self._send_all(payload, rnd, step, links, skip=set(attackers))
        if attackers:
            self._send_all(self._attack(nodes, payload, rnd, links), rnd, step, links, only=attackers)
        if per_link:
            return self._link_inbox(*self._collect(rnd, links), payload, links)
        self.inbox = FoldingInbox(self, links, payload, rnd)
        return self.inbox

    def finish_exchange(self) -> None:
        """Await and count the last exchange's messages if its inbox was not read."""
        if self.inbox is not None:
            self.inbox.finish()
            self.inbox = None

    def _attack(self, nodes: NodeBatch, payload: Payload, rnd: int, links: GraphLinks) -> Payload:
        """The payload with the local attackers' messages crafted in; a rushing attack first
        waits for the honest messages they are sent (attackers never wait for each other)."""
        adversary, sharing = self.adversary, self.algorithm.sharing
        known = {}
        if adversary.attack.rushing:
            attackers = [self.local_ids[row] for row in adversary.rows.tolist()]
            self._collect(rnd, links, receivers=attackers, final=False)
            off, byzantine = links.graph.weights, set(self.experiment.byzantine.tolist())
            rows, senders, weights, values = [], [], [], []
            for k, dst in enumerate(attackers):
                start, end = off.indptr[dst], off.indptr[dst + 1]
                for src, w in zip(off.indices[start:end].tolist(), off.data[start:end].tolist()):
                    if self.arrived.get((dst, src)) and src not in byzantine:
                        try:
                            values.append(sharing.decode({n: t.unsqueeze(0) for n, t in self.models[src].items()})[0])
                        except wire.MessageError as exc:
                            self._reject_payload(src, exc)
                            continue
                        rows.append(k)
                        senders.append(src)
                        weights.append(w)
            decoded = torch.stack(values) if values else sharing.decode({n: t[:0] for n, t in payload.items()})
            known["received"] = received_view(
                np.array(rows, dtype=np.int64), np.array(senders, dtype=np.int64), np.array(weights),
                torch.from_numpy(links.graph.self_weight[attackers].astype(np.float32)), decoded,
                np.arange(len(values)), len(attackers))
        return adversary.payload_with(sharing, adversary.view(nodes, rnd, **known), payload)

    def _send_all(self, payload: Payload, rnd: int, step: int, links: GraphLinks, skip: set[int] = frozenset(),
                  only: list[int] | None = None) -> None:
        """Send the messages of the local nodes (of rows ``only`` if given, but ``skip``)."""
        t0 = time.perf_counter()
        lost = links.model.lost(rnd, step)
        codec = self.codec
        link = 0   # row of the next outgoing link, for per-link payloads
        for row, src in enumerate(self.local_ids):
            receivers = links.graph.receivers_of(src).tolist()
            if not receivers or row in skip or only is not None and row not in only:
                continue
            if self.per_link:
                messages = [({name: t[link + k] for name, t in payload.items()}, dst)
                            for k, dst in enumerate(receivers)]
                link += len(receivers)
            else:
                tensors = {name: t[row] for name, t in payload.items()}
                messages = [(tensors, dst) for dst in receivers]
            body = None
            for tensors, dst in messages:
                if body is None or self.per_link:
                    # a sender's frames, shared by its messages: views of its tensors, which stay as they are
                    # until the exchange's messages are in (_collect waits until they are sent), or a copy for
                    # the emulated links' sender thread, which may hold them for longer
                    body = wire.encode_tensors(tensors, codec)
                    if self.transport.delayed:
                        body = [bytes(f) for f in body]
                    body_bytes = sum(len(f) for f in body)
                    raw_body = sum(t.numel() * t.element_size() for t in tensors.values())
                message = wire.Message(self.run_id, src, rnd, "model", tensors, message_meta(dst, step))
                header = wire.encode_header(message, codec)
                nbytes = len(header) + body_bytes
                self.bytes_sent[row] += nbytes
                self.header_bytes[row] += len(header)
                if codec != "none":
                    self.counters["bytes_uncompressed"][row] += wire.header_nbytes(message) + raw_body
                self.message_bytes = nbytes
                worker = int(self.owner[dst])
                if worker in self.down:
                    continue
                pos = links.model.position(dst, src)
                exp = self.experiment   # emulated loss, or arrival after the round deadline: the receiver is told at once
                if lost[pos] or late_links(exp.config.compute, exp.training_times, links, pos, nbytes):
                    notice = wire.encode(wire.Message(self.run_id, src, rnd, "lost", {}, message_meta(dst, step)))
                    self.transport.send(worker, notice)
                    continue
                delay = float(links.model.delay(pos, nbytes)) if links.model.enabled else 0.0
                self.transport.send(worker, [header, *body], delay, track=True)
        self.times["serialize_time_s"] += time.perf_counter() - t0

    def _expected(self, links: GraphLinks, receivers: list[int] | None = None) -> set[tuple[int, int]]:
        """The (receiver, sender) links of the exchange still to be heard; the honest ones only
        when ``receivers`` (attackers waiting before they send) are given."""
        byzantine = set(self.experiment.byzantine.tolist()) if receivers is not None else set()
        return {(dst, src) for dst in (self.local_ids if receivers is None else receivers)
                for src in links.graph.senders_of(dst).tolist()
                if int(self.owner[src]) not in self.down and src not in byzantine}

    def _collect(self, rnd: int, links: GraphLinks, receivers: list[int] | None = None,
                 final: bool = True, on_message=lambda: None) -> tuple[dict[tuple[int, int], bool], dict]:
        """The current exchange's messages for the local nodes (or for ``receivers`` only),
        until all arrived or the timeout; ``final``: count and report what is missing;
        ``on_message`` is called after each message taken in.

        Returns {(receiver, sender): delivered (False: lost on the emulated link)} and the
        tensors, kept once per sender however many local receivers it has (per link for
        per-link exchanges).
        """
        t0 = time.perf_counter()
        got = self.arrived
        expected = self._expected(links, receivers)
        deadline = time.monotonic() + self.timeout_s
        while True:
            missing = expected - got.keys()
            remaining = deadline - time.monotonic()
            if not missing or remaining <= 0:
                break
            self._poll_control()
            if self.down:
                expected = self._expected(links, receivers)
            received = self.transport.recv(min(remaining, 0.05))
            if received is not None:
                self._accept(*received)
                on_message()
        if not final:
            self.times["wait_time_s"] += time.perf_counter() - t0
            return self.arrived, self.models
        held = self.transport.wait_sent(max(1.0, deadline - time.monotonic()))   # our frames alias the payload
        if held:
            log.warning("worker %d round %d: %d message frame(s) still unsent after %.1fs; the models they show "
                        "may change before they leave", self.index, rnd, held, self.timeout_s)
        for dst, _ in missing:
            self.counters["messages_missing"][self.row_of[dst]] += 1
        if missing:
            links = ", ".join(f"{src}->{dst}" for dst, src in sorted(missing)[:10])
            log.warning("worker %d round %d: after %.1fs no message on %d link(s) (%s%s); going on without them",
                        self.index, rnd, self.timeout_s, len(missing), links, ", ..." if len(missing) > 10 else "")
        self.times["wait_time_s"] += time.perf_counter() - t0
        return self.arrived, self.models

    def _reject(self, reason: str) -> None:
        self.rejected += 1
        if self.rejected <= 50 or self.rejected % 100 == 0:   # a flood of bad messages does not flood the log
            log.warning("worker %d: rejected a message (%d so far): %s", self.index, self.rejected, reason)

    def _decode(self, frames: list, peer: int | None) -> wire.Message:
        """A message of this run from a node of this run that ``peer`` (the key it came in on,
        with CURVE) may speak for; raises ``wire.MessageError``."""
        msg = wire.decode(frames, max_bytes=self.max_bytes, expect_run=self.run_id)
        if not 0 <= msg.src < len(self.owner):
            raise wire.MessageError(f"sender {msg.src} is not a node of this run")
        if peer is not None and int(self.peer_of_worker[self.owner[msg.src]]) != peer:
            raise wire.MessageError(f"the key of {self.peer_kind} {peer} spoke for node {msg.src}, which "
                                    f"worker {int(self.owner[msg.src])} hosts")
        return msg

    def _receiver(self, msg: wire.Message) -> int:
        """The local node ``msg`` is for; raises ``wire.MessageError``."""
        dst = msg.meta.get("dst")
        if type(dst) is not int or dst not in self.row_of:
            raise wire.MessageError(f"receiver {dst!r} is not a node of this worker")
        return dst

    def _accept(self, frames: list, peer: int | None = None) -> None:
        """Decode one message: file it if it belongs to the current exchange, keep it for
        later if it is early (checked against its own exchange's graph then), log bad ones.
        ``peer`` is the worker whose key the message came in on (CURVE): it may speak only
        for the nodes it hosts."""
        try:
            msg = self._decode(frames, peer)
            if msg.kind == "views":
                if self.views is None:
                    raise wire.MessageError("peer-sampling views in a run without peer sampling")
                return self.views.file(msg)
            dst, step = self._receiver(msg), msg.meta.get("step", 0)
            if type(step) is not int or step < 0:
                raise wire.MessageError(f"exchange step {step!r} is not a non-negative integer")
            if msg.kind not in ("model", "lost"):
                raise wire.MessageError(f"unexpected message kind {msg.kind!r}")
        except wire.MessageError as exc:
            self._reject(str(exc))
            return
        nbytes = sum(len(f) for f in frames)
        key = (msg.rnd, step)
        if key > self.current:
            self.pending[key].append((msg, nbytes))
        elif key == self.current:
            self._file(msg, nbytes)
        else:
            self.counters["bytes_received"][self.row_of[dst]] += nbytes if msg.kind == "model" else 0
            log.info("worker %d: message from %d for past round %d arrived late", self.index, msg.src, msg.rnd)

    def _file(self, msg: wire.Message, nbytes: int) -> None:
        """Check a message of the current exchange against its graph and payload, count it, keep it."""
        dst = msg.meta["dst"]
        if self.current_links.model.position(dst, msg.src) is None:
            return self._reject(f"sender {msg.src} does not send to node {dst} in this exchange")
        spec = {name: (t.dtype, tuple(t.shape)) for name, t in msg.tensors.items()}
        if msg.kind == "model" and spec != self.spec:
            return self._reject(f"tensors {spec} are not this run's payload {self.spec}")
        row = self.row_of[dst]
        if msg.kind == "lost":
            self.counters["messages_lost"][row] += 1
        else:
            self.counters["bytes_received"][row] += nbytes
        self.arrived[(dst, msg.src)] = msg.kind == "model"
        self.filed.append(dst)
        if msg.kind == "model":
            if self.per_link:
                self.models[(dst, msg.src)] = msg.tensors
            else:
                self.models.setdefault(msg.src, msg.tensors)

    def _incoming(self, got: dict, links: GraphLinks):
        """Every incoming link of the local nodes (receiver-major, senders increasing):
        receiver rows, senders, weights w_ij, and whether the message arrived."""
        rows, srcs, weights, received = [], [], [], []
        off = links.graph.weights
        for row, dst in enumerate(self.local_ids):
            start, end = off.indptr[dst], off.indptr[dst + 1]
            for src, w in zip(off.indices[start:end].tolist(), off.data[start:end]):
                rows.append(row)
                srcs.append(src)
                weights.append(w)
                received.append(got.get((dst, src), False))
        return (np.array(rows, dtype=np.int64), np.array(srcs, dtype=np.int64),
                np.array(weights, dtype=np.float64), np.array(received, dtype=bool))

    def _link_inbox(self, got: dict, models: dict, payload: Payload, links: GraphLinks) -> LinkInbox:
        rows, srcs, weights, received = self._incoming(got, links)
        out = {name: torch.zeros((len(rows), *t.shape[1:]), dtype=t.dtype) for name, t in payload.items()}
        for k in np.flatnonzero(received).tolist():
            for name, t in models[(self.local_ids[rows[k]], int(srcs[k]))].items():
                out[name][k] = t
        return LinkInbox(rows, srcs, weights, received, links.graph.self_weight[self.local_ids], out)

    def _inbox(self, got: dict, models: dict, payload: Payload, links: GraphLinks) -> MessageInbox:
        rows, srcs, weights, received = self._incoming(got, links)
        self_weight = links.graph.self_weight[self.local_ids]
        self_w, link_w = renormalized(self_weight, weights, rows, received)
        by_src: dict[int, list[tuple[int, float]]] = defaultdict(list)
        for k in np.flatnonzero(received).tolist():
            by_src[int(srcs[k])].append((int(rows[k]), float(link_w[k])))
        payloads = {src: {name: t.unsqueeze(0) for name, t in models[src].items()} for src in by_src}
        template = {name: t[:0] for name, t in payload.items()}
        return MessageInbox(torch.from_numpy(self_w), by_src, payloads, template, self._reject_payload,
                            self.nodes.params.device)

    def _reject_payload(self, src: int, exc: Exception) -> None:
        log.warning("worker %d: rejected the payload of node %d: %s", self.index, src, exc)
        self.rejected += 1

    # control
    def _poll_control(self) -> None:
        _exit_if_orphaned()
        while self.control is not None and self.control.poll(0):
            msg = unpack(self.control.recv())
            if msg["kind"] == "down":
                for worker in msg["workers"]:
                    self.down.add(int(worker))
                    self.transport.drop_peer(int(worker))
            elif msg["kind"] == "stop":
                raise KeyboardInterrupt
            elif msg["kind"] == "checkpoint":
                self.checkpoint_rounds.add(int(msg["round"]))

    def state_dict(self) -> dict:
        out = {**super().state_dict(), "elapsed": self.elapsed, "times": self.times}
        if self.views is not None:
            out["sampling"] = self.views.sampling.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.elapsed = float(state["elapsed"])
        self.times.update(state["times"])
        if self.views is not None:
            self.views.sampling.load_state_dict(state["sampling"])

    # the round loop
    def report(self, rnd: int, loss: torch.Tensor, send_models: bool = False) -> list[bytes]:
        """The round's report for the launcher: header map (with the encoded state when the
        round checkpoints), then (on evaluation rounds) the float64 sum of the local models,
        then (if ``send_models``) the models."""
        msg = {"kind": "round", "worker": self.index, "rnd": rnd, "nodes": self.local_ids,
               "train_loss": loss.tolist(), "bytes_sent": self.bytes_sent.tolist(),
               "header_bytes": self.header_bytes.tolist(), "wall_time_s": self.elapsed,
               **{name: values.tolist() for name, values in self.node_metrics().items()}}
        every = self.experiment.config.checkpoint.every
        if rnd in self.checkpoint_rounds or (every and rnd % every == 0 and 0 < rnd < self.experiment.config.rounds):
            msg["checkpoint"] = encode(self.state_dict())
        models = [self.nodes.params.cpu().numpy().tobytes()] if send_models else []
        if not self.evaluator.due(rnd):
            return [pack(msg), *models]
        t0 = time.perf_counter()
        params = self.nodes.params
        ev = self.evaluator.local(self.nodes.ids, params)
        total = torch.zeros(params.shape[1], dtype=torch.float64, device=params.device)
        sq, honest = 0.0, np.flatnonzero(self.honest)   # consensus is among honest nodes
        step = max(1, _WIDE_VALUES // max(1, params.shape[1]))   # a few float64 rows at a time, not all of them
        for start in range(0, len(honest), step):
            wide = params[torch.from_numpy(honest[start:start + step])].double()
            total += wide.sum(0)
            sq += float(wide.pow_(2).sum())
        self.times["eval_time_s"] += time.perf_counter() - t0
        msg["eval"] = {"nodes": ev.nodes.tolist(), "acc": ev.acc.tolist(), "loss": ev.loss.tolist(),
                       "samples": ev.samples, "sum_sq": sq, "eval_time_s": self.times["eval_time_s"]}
        if ev.val_acc is not None:
            msg["eval"].update(val_acc=ev.val_acc.tolist(), val_loss=ev.val_loss.tolist())
        if ev.local_acc is not None:   # NaN (no local test set) travels as a float
            msg["eval"].update(local_acc=ev.local_acc.tolist(), local_loss=ev.local_loss.tolist())
            if ev.local_nodes is not None:
                msg["eval"]["local_nodes"] = ev.local_nodes.tolist()
        return [pack(msg), total.cpu().numpy().tobytes(), *models]

    def run(self, rounds: int, send_models: bool = False, first: int = 0) -> None:
        """Rounds ``first`` (0: the initial evaluation; later: a resumed run) to ``rounds``;
        ``send_models`` also ships the final models to the launcher."""
        for rnd in range(first, rounds + 1):
            if rnd > 0:
                t0 = time.perf_counter()
                self.last_loss = self.play_round(rnd)
                self.finish_exchange()
                self.elapsed += time.perf_counter() - t0
            self._poll_control()
            if self.control is not None:
                self.control.send_multipart(self.report(rnd, self.last_loss, send_models and rnd == rounds))


def serve(control_address: str, index: int, host: str | None = None,
          credentials: Credentials | None = None) -> int:
    """A worker's whole life: handshake with the launcher, build, run the rounds, report.
    ``credentials`` (by default from the environment, as a launcher hands them to its worker
    processes) secure every socket with CURVE."""
    from meshlearn.config import ConfigError, parse_config
    from meshlearn.engines.transport import Transport
    from meshlearn.experiment import Experiment

    credentials = credentials or Credentials.from_env()
    context = zmq.Context()
    allow = AllowList(context) if credentials else None
    control = context.socket(zmq.DEALER)
    control.setsockopt(zmq.LINGER, 10_000)
    if credentials:
        connect_securely(control, credentials.control, credentials.launcher)
    control.connect(control_address)
    transport = None
    try:
        control.send(pack({"kind": "hello", "worker": index, "pid": os.getpid()}))
        setup = _wait_for(control, "setup")
        torch.set_num_threads(setup["threads"])
        plugins.add_import_paths(setup.get("import_paths", []))
        cfg = parse_config(setup["config"], check_files=False)
        experiment = Experiment.build(cfg)
        if cfg.engine.device == "cuda" and experiment.device.type != "cuda":   # a Ray actor's machine
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all")   # the GPUs Ray gave it
            raise ConfigError(f"engine.device = 'cuda', but worker {index} on {socket.gethostname()} (GPUs {visible}) "
                              f"has no CUDA device its torch ({torch.__version__}) can use: install a CUDA build of "
                              "torch on the cluster's GPU machines, or set engine.device = 'cpu'")
        if experiment.device.type == "cuda" and experiment.device.index is None:   # the machine's GPUs in turn
            experiment.device = torch.device("cuda", index % torch.cuda.device_count())
        peers = setup.get("peers") or []   # worker -> the peer its data key names (itself, or its machine)
        peer_keys = {int(k): key.encode() for k, key in setup.get("peer_keys", {}).items()}
        if allow is not None:
            allow.allow(peer_keys)   # the run's keys, before any other worker can connect
        transport = Transport(host or setup["host"], setup.get("port") or 0,
                              max_bytes=cfg.engine.max_message_bytes, delayed=cfg.network.enabled,
                              context=context, keys=credentials.data if credentials else None, allow=allow)
        if cfg.algorithm.implementation().asynchronous:   # events on the real clock, no rounds
            from meshlearn.engines.async_worker import AsyncWorker as host
        else:
            host = Worker
        worker = host(experiment, setup["run_id"], index, setup["nodes"], None, transport, control)
        worker.peer_of_worker = np.asarray(peers, dtype=np.int64) if credentials else None
        worker.peer_kind = setup.get("peer_kind", "worker")
        if setup.get("resume") is not None:   # the state it checkpointed after round first - 1
            worker.load_state_dict(decode(setup["resume"]))
        sharing = worker.algorithm.sharing
        control.send(pack({"kind": "ready", "worker": index, "address": transport.address,
                           "keys": sharing.public_keys()}))
        start = _wait_for(control, "start")
        transport.connect({int(k): v for k, v in start["book"].items()},
                          {w: peer_keys[int(peer)] for w, peer in enumerate(peers)} if credentials else None)
        worker.owner = np.asarray(start["owner"], dtype=np.int64)
        worker.down.update(int(w) for w in start.get("down", []))
        sharing.add_public_keys(start.get("keys", {}))
        worker.run(cfg.rounds, send_models=setup.get("keep_models", False), first=setup.get("first_round", 0))
        usage = resource.getrusage(resource.RUSAGE_SELF)
        control.send(pack({"kind": "done", "worker": index, "cpu_time_s": usage.ru_utime + usage.ru_stime,
                           "peak_rss_bytes": peak_rss_bytes(), "nodes": len(worker.local_ids),
                           "message_bytes": worker.message_bytes,
                           "messages_rejected": worker.rejected, "send_failures": transport.send_failures,
                           "connections_refused": allow.denied if allow is not None else 0,
                           **worker.times}))
        return 0
    except KeyboardInterrupt:   # stopped (or orphaned): the run is over, nothing queued is still awaited
        if transport is not None:
            transport.close(flush=False)
            transport = None
        return 130
    except ConfigError as exc:   # the config does not load here (a plug-in this machine cannot import...)
        control.send(pack({"kind": "error", "worker": index, "config": True, "message": str(exc)}))
        return 1
    except Exception:
        control.send(pack({"kind": "error", "worker": index, "message": traceback.format_exc(limit=8)}))
        return 1
    finally:
        if transport is not None:
            transport.close()
        control.close()
        if allow is not None:
            allow.stop()
        context.term()


_PARENT: int | None = None   # the launcher's pid, for workers it started as subprocesses


def _exit_if_orphaned() -> None:
    """A worker whose launcher died (killed, crashed) has nobody to report to: stop."""
    if _PARENT is not None and os.getppid() != _PARENT:
        raise KeyboardInterrupt


def _wait_for(control, kind: str) -> dict:
    while True:
        while not control.poll(1000):
            _exit_if_orphaned()
        msg = unpack(control.recv())
        if msg["kind"] == kind:
            return msg
        if msg["kind"] == "stop":
            raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshlearn.engines.worker",
                                     description="a meshlearn worker process (started by a launcher)")
    parser.add_argument("--control", required=True, help="launcher control address, tcp://host:port")
    parser.add_argument("--index", type=int, required=True, help="this worker's global index")
    parser.add_argument("--host", help="address to bind the data socket to (default: from the launcher)")
    parser.add_argument("--parent", type=int, help="exit when this process (the launcher) is gone")
    args = parser.parse_args(argv)
    global _PARENT
    _PARENT = args.parent
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return serve(args.control, args.index, args.host)


if __name__ == "__main__":
    sys.exit(main())
