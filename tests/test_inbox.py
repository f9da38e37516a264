"""Received messages by receiver (``Inbox.by_receiver``): the simulator's inbox (gathers along
the CSR weights) and a worker's inbox (per-sender messages) give the same senders, weights and
values for the same round, lost and rejected messages left out, consistent with ``weighted_sum``."""

from __future__ import annotations

from types import SimpleNamespace

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from meshlearn import topology, wire
from meshlearn.engines.network import renormalized
from meshlearn.engines.sim import SimInbox
from meshlearn.engines.worker import FoldingInbox, Worker
from meshlearn.sharing import base
from meshlearn.topology.schedule import RoundGraph

P = 7


def graph() -> RoundGraph:
    """Irregular degrees: node 0 hears from 4 nodes, nodes 1 and 4 from one, 2 and 3 from two."""
    g = nx.star_graph(4)
    g.add_edge(2, 3)
    return RoundGraph.from_mixing(topology.mixing_matrix(g, "metropolis_hastings"))


def payload() -> dict[str, torch.Tensor]:
    """float16 messages: ``decode`` widens them, so the test also checks decoding per engine."""
    return {"x": torch.randn(5, P, generator=torch.Generator().manual_seed(0)).half()}


def decode(p):
    return p["x"].float()


def sim_inbox(g: RoundGraph, lost: np.ndarray) -> SimInbox:
    """What ``SimEngine.exchange`` builds for a round with the ``lost`` links (CSR order)."""
    off = g.weights
    self_w, data = renormalized(g.self_weight, off.data, g.receivers, ~lost)
    return SimInbox(sp.csr_matrix((data, off.indices, off.indptr), shape=off.shape), torch.from_numpy(self_w),
                    payload(), received=~lost)


def worker_inbox(g: RoundGraph, lost: np.ndarray, local_ids: list[int], reject=lambda src, exc: None):
    """What a worker hosting ``local_ids`` builds from the messages that reached it."""
    off, sent = g.weights, payload()
    got, models = {}, {}
    for e, (dst, src) in enumerate(zip(g.receivers.tolist(), off.indices.tolist())):
        if dst in local_ids:
            got[(dst, src)] = not lost[e]
            if not lost[e]:
                models[src] = {name: t[src] for name, t in sent.items()}
    worker = SimpleNamespace(local_ids=local_ids, _reject_payload=reject, nodes=SimpleNamespace(params=torch.zeros(0)))
    worker._incoming = lambda got, links: Worker._incoming(worker, got, links)
    return Worker._inbox(worker, got, models, sent, SimpleNamespace(graph=g))


def per_receiver(inbox, ids: list[int], **options) -> dict[int, tuple]:
    """Global receiver id -> (senders, weights, values, self weight), checking the padding."""
    out = {}
    for got in inbox.by_receiver(decode, **options):
        b, k = got.senders.shape
        assert got.weights.shape == got.mask.shape == (b, k) and got.values.shape == (b, k, P)
        assert got.weights.dtype == torch.float32 and got.values.dtype == torch.float32
        for r in range(b):
            m = got.mask[r]
            assert not m[m.sum():].any()                    # messages first, then padding
            assert (got.senders[r][~m] == -1).all() and (got.weights[r][~m] == 0).all()
            assert (got.values[r][~m] == 0).all()
            out[ids[int(got.rows[r])]] = (got.senders[r][m], got.weights[r][m], got.values[r][m],
                                          got.self_weight[r])
    return out


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for node in a:
        for x, y in zip(a[node], b[node]):
            assert torch.equal(x, y), node


@pytest.mark.parametrize("lose", [None, (3, 0)], ids=["all-arrive", "lost-3-to-0"])
def test_sim_and_worker_inboxes_give_the_same_messages(lose):
    g = graph()
    lost = np.zeros(g.weights.nnz, dtype=bool)
    if lose is not None:
        src, dst = lose
        lost[g.weights.indptr[dst] + list(g.senders_of(dst)).index(src)] = True
    sim = per_receiver(sim_inbox(g, lost), list(range(5)))
    workers = {}
    for local in ([0, 1, 2], [3, 4]):   # two workers
        workers.update(per_receiver(worker_inbox(g, lost, local), local))
    assert_same(sim, workers)
    x = decode(payload())
    for node, (senders, weights, values, self_weight) in sim.items():
        expect = [s for s in g.senders_of(node).tolist() if (s, node) != lose]
        assert senders.tolist() == expect                      # increasing ids, the lost one left out
        assert torch.equal(values, x[senders])
        assert float(weights.double().sum() + self_weight) == pytest.approx(1.0, abs=1e-6)
    if lose is not None:   # the receiver of the lost message renormalized over the rest
        assert len(sim[0][0]) == 3 and sim[0][1].sum() > g.weights[0, [1, 2, 4]].sum() + 1e-3
    # chunks of any size hold the same messages
    assert_same(sim, per_receiver(sim_inbox(g, lost), list(range(5)), chunk_nodes=2))
    assert_same(sim, per_receiver(sim_inbox(g, lost), list(range(5)), chunk_nodes=1))


@pytest.mark.parametrize("engine", ["sim", "worker"])
def test_messages_weigh_up_to_weighted_sum(engine):
    g = graph()
    lost = np.zeros(g.weights.nnz, dtype=bool)
    lost[g.weights.indptr[2]] = True   # node 2's first sender
    inbox = sim_inbox(g, lost) if engine == "sim" else worker_inbox(g, lost, list(range(5)))
    total = inbox.weighted_sum(decode)
    for got in inbox.by_receiver(decode):
        torch.testing.assert_close((got.weights.unsqueeze(2) * got.values).sum(1), total[got.rows],
                                   rtol=1e-6, atol=1e-6)


def test_rejected_payload_is_left_out_and_weights_renormalized():
    """A sender whose payload the scheme cannot decode counts as lost: the same messages as a
    simulator round that lost its links, weights renormalized as ``weighted_sum`` does."""
    g = graph()
    rejected = []

    def strict(p):
        if (p["x"][:, 0] == payload()["x"][3, 0]).any():
            raise wire.MessageError("bad payload")
        return decode(p)

    inbox = worker_inbox(g, np.zeros(g.weights.nnz, dtype=bool), list(range(5)),
                         reject=lambda src, exc: rejected.append(src))
    groups = list(inbox.by_receiver(strict))
    assert rejected == [3]
    lost = g.weights.indices == 3
    sim = per_receiver(sim_inbox(g, lost), list(range(5)))
    got = {int(r): (s[m], w[m], v[m], sw) for grp in groups
           for r, s, w, m, v, sw in zip(grp.rows, grp.senders, grp.weights, grp.mask, grp.values, grp.self_weight)}
    assert sorted(got) == sorted(sim)
    for node in got:
        assert torch.equal(got[node][0], sim[node][0]) and torch.equal(got[node][2], sim[node][2])
        torch.testing.assert_close(got[node][1], sim[node][1], rtol=1e-6, atol=0)   # float32 rounding
        torch.testing.assert_close(got[node][3], sim[node][3], rtol=1e-6, atol=0)
    # weighted_sum on the same inbox agrees, with no second rejection
    total = inbox.weighted_sum(strict)
    assert rejected == [3]
    for grp in groups:
        torch.testing.assert_close((grp.weights.unsqueeze(2) * grp.values).sum(1), total[grp.rows])


def test_chunks_bound_memory_and_padding(monkeypatch):
    """On a star (a server hearing from 39 clients, each client from the server) the server
    does not pad the clients' chunk to 39 slots: padded slots stay within twice the messages,
    and chunks hold at most RECEIVED_BUDGET values unless one receiver alone needs more."""
    n = 40
    g = RoundGraph.from_mixing(topology.mixing_matrix(nx.star_graph(n - 1), "metropolis_hastings"))
    x = torch.randn(n, P)
    inbox = SimInbox(g.weights.astype(np.float32), torch.from_numpy(g.self_weight.astype(np.float32)), {"x": x})
    slots, server = 0, None
    for grp in inbox.by_receiver(lambda p: p["x"]):   # chunks share memory: read each as it comes
        slots += grp.mask.numel()
        server = grp.values[0].clone() if server is None else server
    assert slots <= 2 * g.weights.nnz < n * (n - 1)
    assert torch.equal(server, x[1:])
    monkeypatch.setattr(base, "RECEIVED_BUDGET", 10 * P)
    groups = list(inbox.by_receiver(lambda p: p["x"]))
    assert [grp.senders.shape for grp in groups][:2] == [(1, n - 1), (10, 1)]
    assert all(grp.values.numel() <= 10 * P for grp in groups[1:])
    assert torch.cat([grp.rows for grp in groups]).tolist() == list(range(n))


class Arrivals(SimpleNamespace):
    """A stand-in worker hosting ``local_ids`` whose round's messages arrive one at a time in
    ``order`` (of senders), as ``FoldingInbox`` reads them; ``held``: the most payloads it kept."""

    def __init__(self, g: RoundGraph, lost: np.ndarray, local_ids: list[int], order: list[int], reject):
        super().__init__(local_ids=local_ids, row_of={node: row for row, node in enumerate(local_ids)},
                         arrived={}, models={}, filed=[], nodes=SimpleNamespace(params=torch.zeros(0)),
                         _reject_payload=reject, held=0)
        off, rank = g.weights, {src: k for k, src in enumerate(order)}
        links = [(dst, src, not lost[e]) for e, (dst, src) in enumerate(zip(g.receivers.tolist(), off.indices.tolist()))
                 if dst in local_ids]
        self.messages = sorted(links, key=lambda link: (rank[link[1]], link[0]))

    def _incoming(self, got, links):
        return Worker._incoming(self, got, links)

    def _collect(self, rnd, links, on_message=lambda: None):
        sent = payload()
        for dst, src, delivered in self.messages:
            self.arrived[(dst, src)] = delivered
            if delivered:
                self.models.setdefault(src, {name: t[src] for name, t in sent.items()})
            self.filed.append(dst)
            self.held = max(self.held, len(self.models))
            on_message()
        return self.arrived, self.models


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 4, 0, 3, 1]])
def test_a_workers_inbox_folds_messages_as_they_arrive(order):
    """Whatever order the messages come in (one lost, one undecodable): the sum of a worker
    that keeps them all, each receiver's senders added in increasing id; in increasing order
    each message is let go before the next one comes; the inbox is read once."""
    g, rejected = graph(), []
    lost = np.zeros(g.weights.nnz, dtype=bool)
    lost[g.weights.indptr[0] + list(g.senders_of(0)).index(3)] = True   # 3 -> 0

    def strict(p):   # sender 1's payload does not decode
        if (p["x"][:, 0] == payload()["x"][1, 0]).any():
            raise wire.MessageError("bad payload")
        return decode(p)

    kept = worker_inbox(g, lost, list(range(5)))
    expected = kept.weighted_sum(strict)
    worker = Arrivals(g, lost, list(range(5)), order, reject=lambda src, exc: rejected.append(src))
    inbox = FoldingInbox(worker, SimpleNamespace(graph=g), payload(), rnd=1)
    total = inbox.weighted_sum(strict)
    torch.testing.assert_close(total, expected, rtol=1e-6, atol=1e-7)   # node 0: rescaled after, not before
    assert torch.equal(total[1:], expected[1:])   # the nodes that lost nothing: the very same numbers
    torch.testing.assert_close(inbox.self_weight, kept.self_weight, rtol=1e-6, atol=0)
    assert rejected == [1]
    assert worker.models == {}   # every message let go
    if order == sorted(order):
        assert worker.held == 1
    with pytest.raises(RuntimeError, match="read already"):
        inbox.weighted_sum(decode)
