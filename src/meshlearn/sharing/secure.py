"""Full-model gossip under secure aggregation: a receiver learns only Σ_j w_ij x_j.

Each sender j sends every receiver i its own message, ``encode(w_ij x_j) + M_j`` in the
fixed-point ring of ``privacy.secagg``, where the pairwise masks M_j of i's senders cancel
in their sum (``privacy.secagg``). The receiver adds the messages in the ring, decodes the
weighted sum, and adds its own w_ii x_i: the D-PSGD update, exact up to the fixed-point
resolution, without ever holding a neighbour's model in the clear.

Dropouts follow the abort-and-exclude rule: a receiver that misses any of its senders'
messages cannot cancel the masks, so it keeps its own model this round (counted in
``aborts``); nodes known to have left (``ctx.departed``) are excluded from the sender sets
of later rounds. Every message carries a digest of the sender set its mask was built for,
so a receiver never decodes a sum whose senders disagreed on who had left.

Keys: every node has an X25519 key pair; the public keys form a directory that the engine
publishes once (the simulator holds all nodes; the networked launcher collects the
workers' public keys and sends back the directory), so masks work on any graph, also one
that changes every round.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from meshlearn.nodes import NodeBatch
from meshlearn.privacy.secagg import (FixedPoint, PairwiseMasks, aggregate_usable, expected_senders,
                                      generate_keys, public_keys)
from meshlearn.sharing.base import LinkInbox, Payload, Sharing

__all__ = ["SecureAggregation", "SECAGG_METRICS"]

SECAGG_METRICS = ("secagg_aborts", "secagg_clipped")


class SecureAggregation(Sharing):
    name = "secagg"

    def __init__(self, seed: int = 0, ring_bits: int = 32, fraction_bits: int | None = None):
        super().__init__(seed)
        self.ring_bits, self.fraction_bits = ring_bits, fraction_bits
        self.private: dict = {}
        self.directory: dict[int, bytes] = {}
        self.masks: PairwiseMasks | None = None
        self.aborts: dict[int, int] = {}       # node -> rounds its aggregate was discarded
        self.clipped: dict[int, int] = {}      # node -> coordinates clipped in its messages

    def setup(self, nodes: NodeBatch) -> None:
        ids = nodes.ids.tolist()
        self.private = generate_keys(ids)
        self.aborts = dict.fromkeys(ids, 0)
        self.clipped = dict.fromkeys(ids, 0)
        self.add_public_keys(public_keys(self.private))

    def public_keys(self) -> dict[int, bytes]:
        """The local nodes' public keys, for the engine's directory."""
        return public_keys(self.private)

    def add_public_keys(self, directory: dict[int, bytes]) -> None:
        """Learn other nodes' public keys (the directory the engine publishes)."""
        self.directory.update({int(node): bytes(key) for node, key in directory.items()})
        self.masks = PairwiseMasks(self.private, self.directory, ring_bits=self.ring_bits)

    def node_metrics(self, ids: list[int]) -> dict[str, np.ndarray]:
        return {"secagg_aborts": np.array([self.aborts[i] for i in ids], dtype=np.int64),
                "secagg_clipped": np.array([self.clipped[i] for i in ids], dtype=np.int64)}

    def state_dict(self) -> dict:
        """The counters; keys are not saved: fresh pairs give masks that cancel the same way."""
        return {"aborts": self.aborts, "clipped": self.clipped}

    def load_state_dict(self, state: dict) -> None:
        self.aborts.update(state["aborts"])
        self.clipped.update(state["clipped"])

    def encode(self, nodes: NodeBatch, rnd: int) -> Payload:
        raise NotImplementedError("secure aggregation sends a different message per receiver: use share()")

    def aggregate(self, nodes: NodeBatch, inbox) -> None:
        raise NotImplementedError("secure aggregation aggregates per-link messages: use share()")

    def share(self, nodes: NodeBatch, rnd: int, ctx) -> None:
        graph = ctx.graph(rnd)
        fixed = FixedPoint(self.ring_bits, self.fraction_bits, max_terms=max(2, int(graph.in_degree().max())))
        departed = ctx.departed
        payload = self.masked_messages(nodes, graph, rnd, fixed, departed)
        self.unmask(nodes, ctx.exchange(nodes, payload, rnd, per_link=True), fixed, departed)

    def masked_messages(self, nodes: NodeBatch, graph, rnd: int, fixed: FixedPoint, departed=()) -> Payload:
        """One row per outgoing link of the local nodes (senders in order, receivers in
        increasing id): the sender's weighted model in fixed point plus its pairwise mask,
        and the digest of the sender set the mask cancels over."""
        size = nodes.params.shape[1]
        row_of = {int(node): row for row, node in enumerate(nodes.ids.tolist())}
        links = [(j, int(i)) for j in row_of for i in graph.receivers_of(j)]
        out = torch.zeros((len(links), size), dtype=fixed.dtype)
        group = torch.zeros(len(links), dtype=torch.int64)
        position = {link: k for k, link in enumerate(links)}
        for i in sorted({i for _, i in links}):
            weights = dict(zip(graph.senders_of(i).tolist(),
                               graph.weights.data[graph.weights.indptr[i]:graph.weights.indptr[i + 1]]))
            senders = sorted(expected_senders(weights, departed))
            for j, mask in self.masks.receiver_masks(i, senders, rnd, size).items():
                before = fixed.clipped
                encoded = fixed.encode(nodes.params[row_of[j]], float(weights[j]))
                self.clipped[j] += fixed.clipped - before
                out[position[(j, i)]] = fixed.add(encoded, mask)
                group[position[(j, i)]] = _digest(senders)
        return {"masked": out, "group": group}

    def unmask(self, nodes: NodeBatch, inbox: LinkInbox, fixed: FixedPoint, departed=()) -> None:
        """x_i ← w_ii x_i + decode(ring sum of i's messages) where exactly the expected senders
        delivered, all for the same sender set; other receivers keep their model (abort)."""
        masked, group = inbox.payload["masked"], inbox.payload["group"]
        for row, node in enumerate(nodes.ids.tolist()):
            links = np.flatnonzero(inbox.rows == row)
            expected = sorted(expected_senders(inbox.senders[links].tolist(), departed))
            if not expected:
                continue
            links = links[np.isin(inbox.senders[links], expected)]   # departed senders are ignored
            got = links[inbox.received[links]]
            if not aggregate_usable(expected, inbox.senders[got].tolist()) or \
                    bool((group[torch.from_numpy(got)] != _digest(expected)).any()):
                self.aborts[node] += 1
                continue
            total = fixed.decode(fixed.sum(masked[torch.from_numpy(got)]))
            self_weight = float(inbox.self_weight[row])
            mixed = nodes.params[row] * self_weight + total
            if len(expected) < np.count_nonzero(inbox.rows == row):   # weights of departed senders are gone
                mixed /= self_weight + float(inbox.weights[links].sum())
            nodes.params[row] = mixed


def _digest(senders: list[int]) -> int:
    """A 64-bit digest of a sorted sender set (signed, to travel as int64)."""
    raw = hashlib.blake2b(np.asarray(senders, dtype="<i8").tobytes(), digest_size=8).digest()
    return int.from_bytes(raw, "little", signed=True)
