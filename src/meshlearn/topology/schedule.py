"""Topologies that change from round to round.

A round's communication is a ``RoundGraph``: a directed, weighted graph whose row i holds
the weights w_ij of the senders j that receiver i hears from, plus i's own weight w_ii.
``TopologySchedule`` hands out the graph of each round from the config:

- a static graph (the same every round);
- a dynamic graph (``topology.dynamic``): the generator is re-run every round with a seed
  derived from (experiment seed, round), e.g. a random d-regular graph re-drawn each round.
  Every node derives the same graph from the shared seed, so no central role is needed;
- Epidemic Learning (``kind = "epidemic"``, de Vos et al., NeurIPS 2023): each node pushes
  its model to ``peers`` nodes it picks at random each round, and a receiver averages
  itself with whatever arrived (equal weights);
- gossip-based peer sampling (``kind = "peer_sampling"``, ``meshlearn.topology.peer_sampling``):
  each node pushes to ``peers`` nodes of its own partial view, which the nodes keep fresh by
  exchanging parts of their views (Jelasity et al. 2007);
- a schedule of phases (``[[topology.schedule]]``), each from a given round, and an
  optional global average in the last round (``topology.final_average``).

Graphs are pure functions of (config, round), so the simulator and every worker of the
networked engines draw exactly the same ones. Peer sampling's graphs are not: they come
from the nodes' views, which a networked worker keeps for its own nodes and updates with the
buffers they exchange (``engines.views``); here the schedule plays the protocol for every
node, which gives the same graphs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import networkx as nx
import numpy as np
import scipy.sparse as sp

from meshlearn import streams
from meshlearn.streams import Stream
from meshlearn.topology import generators, mixing
from meshlearn.topology.peer_sampling import PeerSampling, play_round

__all__ = ["RoundGraph", "TopologySchedule", "epidemic", "pushed", "sampled"]


@dataclass(eq=False)
class RoundGraph:
    """Who hears from whom in one exchange, and with which mixing weights.

    ``weights`` is an N × N CSR matrix (float64, sorted columns) whose row i holds w_ij for
    the senders j of receiver i; ``self_weight[i]`` is w_ii. A graph with no entry in row i
    leaves node i alone (w_ii = 1).
    """

    self_weight: np.ndarray
    weights: sp.csr_matrix
    label: str = ""
    stats: dict = field(default_factory=dict)

    @classmethod
    def from_mixing(cls, W: sp.spmatrix, label: str = "") -> "RoundGraph":
        """Split a mixing matrix into self weights and the neighbours' weights."""
        W = sp.csr_matrix(W, dtype=np.float64)
        self_weight = W.diagonal().copy()
        off = (W - sp.diags(self_weight)).tocsr()
        off.eliminate_zeros()
        off.sort_indices()
        return cls(self_weight, off, label)

    @classmethod
    def from_links(cls, n: int, receivers, senders, weights, self_weight, label: str = "") -> "RoundGraph":
        """A graph from its directed links (sender → receiver) and their weights."""
        off = sp.csr_matrix((np.asarray(weights, dtype=np.float64), (receivers, senders)), shape=(n, n))
        off.sort_indices()
        return cls(np.asarray(self_weight, dtype=np.float64), off, label)

    @property
    def num_nodes(self) -> int:
        return self.weights.shape[0]

    @cached_property
    def receivers(self) -> np.ndarray:
        """Receiver of every link, in CSR order (the senders are ``weights.indices``)."""
        return np.repeat(np.arange(self.num_nodes), np.diff(self.weights.indptr))

    @cached_property
    def _outgoing(self) -> sp.csr_matrix:
        out = self.weights.T.tocsr()
        out.sort_indices()
        return out

    def senders_of(self, node: int) -> np.ndarray:
        w = self.weights
        return w.indices[w.indptr[node]:w.indptr[node + 1]]

    def receivers_of(self, node: int) -> np.ndarray:
        """The nodes that hear from ``node`` (its out-neighbours), in increasing id."""
        out = self._outgoing
        return out.indices[out.indptr[node]:out.indptr[node + 1]]

    def in_degree(self) -> np.ndarray:
        return np.diff(self.weights.indptr)

    def out_degree(self) -> np.ndarray:
        return np.bincount(self.weights.indices, minlength=self.num_nodes)

    def mixing(self) -> sp.csr_matrix:
        return (self.weights + sp.diags(self.self_weight)).tocsr()

    def without(self, absent: np.ndarray, silent: np.ndarray | None = None) -> "RoundGraph":
        """This graph with the ``absent`` nodes (a bool mask) gone and the ``silent`` ones'
        messages dropped: their links removed, and each receiver that lost some rescaling what
        is left of its row (its own weight included) to sum to one, as a receiver does for lost
        messages (``engines.network.renormalized``); an absent node, or one left with no
        weight, keeps only itself (w_ii = 1)."""
        gone = absent if silent is None else absent | silent
        if not gone.any():
            return self
        w, receivers = self.weights, self.receivers
        keep = ~(absent[receivers] | gone[w.indices])
        n = self.num_nodes
        total = self.self_weight + np.bincount(receivers[keep], weights=w.data[keep], minlength=n)
        complete = np.bincount(receivers, weights=~keep, minlength=n) == 0
        alone = absent | (total <= 0)
        scale = np.where(complete | alone, 1.0, 1.0 / np.where(alone, 1.0, total))
        self_weight = np.where(alone, 1.0, self.self_weight * scale)
        kept_receivers = receivers[keep]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(kept_receivers, minlength=n))])
        off = sp.csr_matrix((w.data[keep] * scale[kept_receivers], w.indices[keep], indptr), shape=(n, n))
        return RoundGraph(self_weight, off, self.label)

    def describe(self) -> dict:
        """Degree and spectral-gap figures of this round's graph (computed once)."""
        if not self.stats:
            out = self.out_degree()
            self.stats.update(topology=self.label, degree_mean=float(out.mean()), degree_min=int(out.min()),
                              degree_max=int(out.max()), spectral_gap=mixing.spectral_gap(self.mixing()))
        return self.stats


def epidemic(n: int, peers: int, seed: int, rnd: int) -> RoundGraph:
    """Epidemic Learning's round graph: node j pushes to ``peers`` distinct others drawn
    from its own stream (seed, j, round)."""
    senders = np.repeat(np.arange(n), peers)
    receivers = np.empty(n * peers, dtype=np.int64)
    for j in range(n):
        picks = streams.generator(seed, Stream.EPIDEMIC_PEERS, j, rnd).choice(n - 1, peers, replace=False)
        receivers[j * peers:(j + 1) * peers] = picks + (picks >= j)  # skip j itself
    return pushed(n, senders, receivers, f"epidemic(s={peers})")


def pushed(n: int, senders, receivers, label: str) -> RoundGraph:
    """The graph of pushed models: receiver i averages itself and its k_i arrivals with
    weight 1 / (k_i + 1) each."""
    receivers = np.asarray(receivers, dtype=np.int64)
    share = 1.0 / (np.bincount(receivers, minlength=n) + 1.0)
    return RoundGraph.from_links(n, receivers, np.asarray(senders, dtype=np.int64), share[receivers], share, label)


def sampled(n: int, links: list[tuple[int, int]], peers: int) -> RoundGraph:
    """The graph of a round's peer-sampling push links (sender, receiver)."""
    return pushed(n, [j for j, _ in links], [i for _, i in links], f"peer sampling(s={peers})")


class TopologySchedule:
    """The communication graph of every round, as the ``[topology]`` config describes it."""

    def __init__(self, cfg, base: nx.Graph | None = None, label_counts=None):
        self.cfg = cfg                      # ExperimentConfig
        self.label_counts = label_counts    # nodes × classes, or a function giving them: what knn reads
        self.n = cfg.nodes
        self.phases = sorted([(1, cfg.topology), *((p.from_round, p) for p in cfg.topology.schedule)],
                             key=lambda item: item[0])
        self._static: dict[int, RoundGraph] = {}    # phase index -> its fixed graph
        self._base = base
        self._last: tuple[int, RoundGraph] | None = None
        self.availability = None   # with churn (dynamics.Availability): each round's graph keeps who is online
        self.late: np.ndarray | None = None   # with a round deadline: the nodes whose messages never make it
        self.sampling: PeerSampling | None = None   # kind = 'peer_sampling': every node's view, played here
        self._sampled_graph: tuple[int, RoundGraph] | None = None

    def set_dynamics(self, availability=None, late: np.ndarray | None = None) -> None:
        """From now on, rounds' graphs (and ``restrict``) leave out the nodes offline in them
        and the messages of the ``late`` nodes."""
        self.availability, self.late, self._last = availability, late if late is not None and late.any() else None, None

    def phase(self, rnd: int):
        """(index, settings) of the phase round ``rnd`` belongs to."""
        index = 0
        for k, (start, _) in enumerate(self.phases):
            if rnd >= start:
                index = k
        return index, self.phases[index][1]

    @property
    def static(self) -> bool:
        """True when every round uses the same graph."""
        return len(self.phases) == 1 and not self._changes(self.phases[0][1]) and not self.cfg.topology.final_average \
            and self.availability is None and self.late is None

    @staticmethod
    def _changes(phase) -> bool:
        return bool(phase.dynamic) or phase.kind in ("epidemic", "peer_sampling")

    def samples_peers(self, rnd: int) -> bool:
        """Whether round ``rnd``'s graph comes from the nodes' peer-sampling views."""
        return self.cfg.topology.kind == "peer_sampling" and not (self.cfg.topology.final_average
                                                                  and rnd == self.cfg.rounds)

    def new_sampling(self) -> PeerSampling:
        """Peer-sampling views as ``[topology]`` configures them (none made yet)."""
        return PeerSampling(self.n, self.cfg.seed, **self.cfg.topology.options)

    def graph(self, rnd: int) -> RoundGraph:
        """The graph of round ``rnd`` (rounds count from 1; round 0 gets round 1's)."""
        rnd = max(rnd, 1)
        if self._last is not None and self._last[0] == rnd:
            return self._last[1]
        graph = self.restrict(self._build(rnd), rnd)
        self._last = (rnd, graph)
        return graph

    def restrict(self, graph: RoundGraph, rnd: int) -> RoundGraph:
        """``graph`` (a round's, or an algorithm's own) without the nodes offline in round
        ``rnd`` and the late nodes' messages."""
        if self.availability is None and self.late is None:
            return graph
        absent = ~self.availability.online(rnd) if self.availability is not None else np.zeros(self.n, dtype=bool)
        return graph.without(absent, self.late)

    def _build(self, rnd: int) -> RoundGraph:
        if self.cfg.topology.final_average and rnd == self.cfg.rounds:
            n = self.n
            return RoundGraph.from_mixing(np.full((n, n), 1.0 / n), "global average")
        index, phase = self.phase(rnd)
        if self.samples_peers(rnd):
            return self._sampled(rnd)
        if phase.kind == "epidemic":
            return epidemic(self.n, phase.peers, self.cfg.seed, rnd)
        if phase.dynamic:
            G = generators.build(phase.kind, self.n, seed=streams.seed_of(self.cfg.seed, Stream.GRAPH, 0, rnd),
                                 label_counts=self.label_counts, **phase.options)
            return RoundGraph.from_mixing(mixing.mixing_matrix(G, phase.weights), f"dynamic {phase.kind}")
        if index not in self._static:
            G = self._base if index == 0 and self._base is not None else self.static_graph(phase)
            self._static[index] = RoundGraph.from_mixing(mixing.mixing_matrix(G, phase.weights), phase.kind)
        return self._static[index]

    def _sampled(self, rnd: int) -> RoundGraph:
        """Round ``rnd``'s push graph: the protocol played for every node up to that round
        (from the start again when asked for an earlier one, e.g. after a resume)."""
        if self._sampled_graph is not None and self._sampled_graph[0] == rnd:
            return self._sampled_graph[1]
        if self.sampling is None or self.sampling.round >= rnd:
            self.sampling = self.new_sampling()
        online = (lambda r: self.availability.online(r)) if self.availability is not None else (lambda r: None)
        peers = self.cfg.topology.peers
        while True:
            r = self.sampling.round + 1
            links = play_round(self.sampling, range(self.n), peers, r, online(r))
            if r == rnd:
                self._sampled_graph = (rnd, sampled(self.n, links, peers))
                return self._sampled_graph[1]

    def static_graph(self, phase) -> nx.Graph:
        """A fixed phase's graph (from the experiment seed, or its file)."""
        from meshlearn.topology.io import read_graph

        if phase.kind == "file":
            try:
                return read_graph(phase.path, nodes=self.n)
            except ValueError as exc:
                where = next((f"topology.schedule[{k}]" for k, p in enumerate(self.cfg.topology.schedule)
                              if p is phase), "topology")
                raise ValueError(f"{where}.path = {phase.path!r}: {exc}") from None
        return generators.build(phase.kind, self.n, seed=self.cfg.seed, label_counts=self.label_counts,
                                **phase.options)
