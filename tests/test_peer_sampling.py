"""Decentralized peer sampling: the overlay the views make stays connected with bounded
degrees, a departed node is forgotten, the round graphs come from the views, and the
networked engine (views exchanged over TCP) gives the simulator's graphs and models."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest

from conftest import small_config
from meshlearn.config import ConfigError
from meshlearn.experiment import Experiment
from meshlearn.results import read_models
from meshlearn.runner import run_experiment
from meshlearn.topology.peer_sampling import PeerSampling, play_round


def overlay(sampling: PeerSampling) -> nx.Graph:
    G = nx.Graph()
    G.add_nodes_from(range(sampling.n))
    G.add_edges_from((i, j) for i, view in sampling.views.items() for j, _ in view)
    return G


def test_views_stay_full_connected_and_balanced():
    """64 nodes, views of 10, 100 rounds: every view holds 10 distinct other nodes, the overlay
    is connected every round, no node is in more than 30 views (3 × view_size) after the
    first 20 rounds, and each node pushes to exactly `peers` nodes of its view."""
    n, view_size, peers = 64, 10, 4
    sampling = PeerSampling(n, seed=1, view_size=view_size)
    most = 0
    for rnd in range(1, 101):
        before = {i: {j for j, _ in sampling.view(i)} for i in range(n)}
        links = play_round(sampling, range(n), peers, rnd)
        for i in range(n):
            targets = [dst for src, dst in links if src == i]
            assert len(targets) == len(set(targets)) == peers
            assert set(targets) <= before[i]
        for i, view in sampling.views.items():
            ids = [j for j, _ in view]
            assert len(ids) == len(set(ids)) == view_size and i not in ids
        assert nx.is_connected(overlay(sampling))
        if rnd > 20:
            most = max(most, int(sampling.in_views().max()))
    assert most <= 3 * view_size
    assert sampling.in_views().std() < 5   # about a random graph's (3.1 at the bootstrap)


def test_a_departed_node_is_forgotten():
    """Node 5 goes offline for good after round 10: within 40 rounds no view holds it (those
    who ask it get no answer and drop it), and it has neither asked nor answered since."""
    n = 32
    sampling = PeerSampling(n, seed=2, view_size=8)
    online = np.ones(n, dtype=bool)
    for rnd in range(1, 11):
        play_round(sampling, range(n), 2, rnd, online)
    assert sampling.in_views()[5] > 0
    online[5] = False
    before = sampling.views[5]
    for rnd in range(11, 51):
        play_round(sampling, range(n), 2, rnd, online)
    assert sampling.in_views()[5] == 0
    assert sampling.views[5] == before
    assert nx.is_connected(overlay(sampling).subgraph(set(range(n)) - {5}))


def test_round_graphs_come_from_the_views():
    """The schedule's round graph is the push graph of the views: each node sends to `peers`
    nodes it had in its view, and a receiver weighs itself and its arrivals equally."""
    cfg = small_config(nodes=16, rounds=5, topology={"kind": "peer_sampling", "peers": 2,
                                                     "options": {"view_size": 6}})
    schedule = Experiment.build(cfg).topology
    shadow = PeerSampling(16, cfg.seed, view_size=6)
    for rnd in range(1, 6):
        views = {i: {j for j, _ in shadow.view(i)} for i in range(16)}
        graph = schedule.graph(rnd)
        play_round(shadow, range(16), 2, rnd)
        for i in range(16):
            assert len(graph.receivers_of(i)) == 2 and set(graph.receivers_of(i).tolist()) <= views[i]
            k = len(graph.senders_of(i))
            assert graph.self_weight[i] == pytest.approx(1 / (k + 1))
            assert np.allclose(graph.weights[i].data, 1 / (k + 1))
    assert schedule.graph(2).label == "peer sampling(s=2)"   # an earlier round again: played from the start


def test_sim_and_processes_agree_with_views_exchanged_over_tcp(tmp_path):
    """Three workers exchange the views over TCP, with nodes leaving and coming back (an
    offline node neither asks, answers nor pushes): the same models (float rounding) as the
    simulator, the same model bytes, and the same bytes of peer sampling per node."""
    path = tmp_path / "trace.csv"
    path.write_text("node,offline_from,online_from\n2,2,4\n6,3,\n")
    cfg = dict(rounds=5, topology={"kind": "peer_sampling", "peers": 2, "options": {"view_size": 4}},
               availability={"model": "trace", "file": str(path)})
    sim = run_experiment(small_config(**cfg), tmp_path / "sim")
    processes = run_experiment(small_config(**cfg, engine={"name": "processes", "workers": 3, "threads": 1}),
                               tmp_path / "p")
    a, b = read_models(tmp_path / "sim" / "models.safetensors"), read_models(tmp_path / "p" / "models.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert sim["bytes_sent_per_node"] == processes["bytes_sent_per_node"]
    view_bytes = [{r["node"]: r["view_bytes"] for r in json.loads((tmp_path / d / "nodes_final.json").read_text())}
                  for d in ("sim", "p")]
    assert view_bytes[0] == view_bytes[1] and min(view_bytes[0].values()) > 0


@pytest.mark.parametrize("topology, message", [
    ({"kind": "peer_sampling"}, "topology.peers in 1..nodes-1"),
    ({"kind": "peer_sampling", "peers": 3, "options": {"view_size": 9}}, "view_size must be in 2..nodes-1"),
    ({"kind": "peer_sampling", "peers": 5, "options": {"view_size": 4}}, "more than a view holds"),
    ({"kind": "peer_sampling", "peers": 2, "options": {"swap": 3, "view_size": 4}}, r"healing \+ swap"),
    ({"kind": "peer_sampling", "peers": 2, "options": {"views": 4}}, "topology.options.views is not an option"),
])
def test_bad_settings_are_refused_naming_the_key(topology, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        small_config(topology=topology)


def test_round_graph_rows_sum_to_one():
    """Every receiver's weights (its own and its arrivals') sum to one."""
    cfg = small_config(nodes=12, topology={"kind": "peer_sampling", "peers": 3, "options": {"view_size": 6}})
    graph = Experiment.build(cfg).topology.graph(1)
    rows = graph.self_weight + np.asarray(graph.weights.sum(axis=1)).ravel()
    assert np.allclose(rows, 1.0)


def test_a_worker_takes_only_views_its_peer_may_send():
    """A bundle travels in the wire format and is kept for its (round, phase); one that speaks
    for a node its sender does not host, names a node outside the run, or comes twice is not."""
    from types import SimpleNamespace

    from meshlearn import wire
    from meshlearn.engines.views import ViewExchange, bundle_tensors
    from meshlearn.topology.peer_sampling import ViewBuffer

    worker = SimpleNamespace(topology=SimpleNamespace(new_sampling=lambda: PeerSampling(8, 1, view_size=4)),
                             owner=np.array([0, 0, 0, 1, 1, 1, 2, 2]), row_of={3: 0, 4: 1, 5: 2})   # worker 1
    views = ViewExchange(worker)

    def bundle(buffers, pushes=(), src=0, rnd=1):
        msg = wire.Message("run", src, rnd, "views", bundle_tensors(buffers, list(pushes), 2), {"phase": 0})
        return wire.decode(wire.encode(msg))

    views.file(bundle([ViewBuffer(1, 3, np.array([1, 6]), np.array([0, 2]))], [(0, 4), (2, 7)]))
    (kept, pushes), = views.bundles[(1, 0)].values()
    assert [(b.src, b.dst, b.ids.tolist(), b.ages.tolist()) for b in kept] == [(1, 3, [1, 6], [0, 2])]
    assert pushes == [(0, 4), (2, 7)]
    for bad, why in [(bundle([ViewBuffer(6, 3, np.array([6, 1]), np.array([0, 0]))], src=0, rnd=2), "does not host"),
                     (bundle([], [(7, 4)], src=0, rnd=2), "does not host"),
                     (bundle([ViewBuffer(1, 6, np.array([1, 2]), np.array([0, 0]))], rnd=2), "outside this worker"),
                     (bundle([ViewBuffer(1, 3, np.array([1, 99]), np.array([0, 0]))], rnd=2), "outside the run")]:
        with pytest.raises(wire.MessageError, match=why):
            views.file(bad)
    views.file(bundle([], [(0, 5)]))   # worker 0 again for round 1: the first one stands
    assert views.bundles[(1, 0)][0][1] == [(0, 4), (2, 7)]


def test_workers_resume_with_their_views(tmp_path):
    """A processes run stopped after round 4 resumes from its workers' checkpoints, views
    included, to the uninterrupted run's models."""
    from meshlearn.runner import resume_run

    cfg = small_config(rounds=6, checkpoint__every=1, topology={"kind": "peer_sampling", "peers": 2,
                                                                "options": {"view_size": 4}},
                       engine={"name": "processes", "workers": 2, "threads": 1})
    run_experiment(cfg, tmp_path / "whole")

    def stop_at_round_4(rnd, record):
        if rnd == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, tmp_path / "cut", on_round=stop_at_round_4)
    assert resume_run(tmp_path / "cut")["status"] == "completed"
    a, b = read_models(tmp_path / "whole" / "models.safetensors"), read_models(tmp_path / "cut" / "models.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
