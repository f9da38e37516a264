"""Topologies that change from round to round: dynamic graphs, Epidemic Learning, phases of a
schedule and a final global average; their config checks, the simulator on them (against the
per-node reference loop), their byte counts and what the round records report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import small_config
from meshlearn import wire
from meshlearn.config import ConfigError, parse_config
from meshlearn.engines.reference import ReferenceDPSGD
from meshlearn.engines.sim import SimEngine
from meshlearn.experiment import Experiment
from meshlearn.results import read_jsonl
from meshlearn.runner import run_experiment
from meshlearn.topology.schedule import TopologySchedule, epidemic


def schedule(**raw) -> TopologySchedule:
    return TopologySchedule(parse_config({"rounds": 20, **raw}))


def edges(graph) -> set[tuple[int, int]]:
    """Directed links (sender, receiver) of a round graph."""
    return {(int(j), int(i)) for i, j in zip(graph.receivers, graph.weights.indices)}


# --------------------------------------------------------------------------- dynamic graphs


@pytest.mark.parametrize("n, d", [(16, 4), (11, 2), (10, 5)])
def test_dynamic_regular_graphs_are_valid_and_change_every_round(n, d):
    topo = schedule(nodes=n, topology={"kind": "regular", "degree": d, "dynamic": True})
    assert not topo.static
    seen = []
    for rnd in range(1, 9):
        g = topo.graph(rnd)
        W = g.mixing().toarray()
        A = (g.weights.toarray() != 0).astype(int)
        assert np.all(np.diag(A) == 0)                       # no self-loops among the links
        assert np.array_equal(A, A.T)                        # undirected: i hears j iff j hears i
        assert (A.sum(0) == d).all() and (A.sum(1) == d).all()
        np.testing.assert_array_equal(g.in_degree(), d)
        np.testing.assert_array_equal(g.out_degree(), d)
        np.testing.assert_allclose(W.sum(1), 1.0, atol=1e-12)  # doubly stochastic
        np.testing.assert_allclose(W.sum(0), 1.0, atol=1e-12)
        assert (W >= 0).all() and np.allclose(W, W.T)
        assert g.describe()["degree_mean"] == d and g.describe()["degree_min"] == g.describe()["degree_max"] == d
        seen.append(frozenset(edges(g)))
    assert len(set(seen)) == len(seen), "a dynamic graph repeated itself"


def test_dynamic_graphs_are_a_function_of_seed_and_round():
    def sequence(seed, rounds=range(1, 7)):
        topo = schedule(seed=seed, nodes=12, topology={"kind": "regular", "degree": 3, "dynamic": True})
        return [edges(topo.graph(r)) for r in rounds]

    a = sequence(5)
    assert sequence(5) == a
    assert sequence(5, rounds=[4, 2, 6, 1, 3, 5]) == [a[3], a[1], a[5], a[0], a[2], a[4]]  # any order
    b = sequence(6)
    assert all(x != y for x, y in zip(a, b))
    # round 0 (the initial evaluation) reports round 1's graph
    topo = schedule(seed=5, nodes=12, topology={"kind": "regular", "degree": 3, "dynamic": True})
    assert edges(topo.graph(0)) == a[0]


def test_static_topology_is_one_graph():
    topo = schedule(nodes=12, topology={"kind": "regular", "degree": 3})
    assert topo.static
    assert topo.graph(1) is topo.graph(2) is topo.graph(17)


# --------------------------------------------------------------------------- Epidemic Learning


@pytest.mark.parametrize("n, s", [(12, 3), (9, 1), (7, 6)])
def test_epidemic_graphs(n, s):
    topo = schedule(nodes=n, topology={"kind": "epidemic", "peers": s})
    assert not topo.static
    in_degrees, seen = [], []
    for rnd in range(1, 7):
        g = topo.graph(rnd)
        assert g.label == f"epidemic(s={s})"
        for j in range(n):
            out = g.receivers_of(j)
            assert len(out) == s and len(set(out.tolist())) == s and j not in out
        np.testing.assert_array_equal(g.out_degree(), s)
        assert g.weights.diagonal().sum() == 0
        k = g.in_degree()
        assert k.sum() == n * s
        W = g.mixing().toarray()
        for i in range(n):
            expect = np.zeros(n)
            expect[g.senders_of(i)] = 1.0 / (k[i] + 1)
            expect[i] = 1.0 / (k[i] + 1)
            np.testing.assert_allclose(W[i], expect, rtol=0, atol=1e-15)
        np.testing.assert_allclose(W.sum(1), 1.0, atol=1e-12)
        assert g.describe()["degree_mean"] == s
        in_degrees.append(k)
        seen.append(frozenset(edges(g)))
    if s < n - 1:   # random peers: a new graph each round, in-degrees vary (s = n - 1: everyone, always)
        assert len(set(seen)) == len(seen)
        assert any(k.min() != k.max() for k in in_degrees)


def test_epidemic_peers_are_uniform_over_the_others():
    n, s, rounds = 12, 3, 300
    counts = np.zeros((n, n))
    for rnd in range(1, rounds + 1):
        g = epidemic(n, s, seed=7, rnd=rnd)
        for j in range(n):
            counts[j, g.receivers_of(j)] += 1
    assert np.diag(counts).sum() == 0
    expected = rounds * s / (n - 1)   # 81.8
    off = counts[~np.eye(n, dtype=bool)]
    assert off.min() > 0.6 * expected and off.max() < 1.4 * expected, (off.min(), off.max())
    # same seed and round: same graph; another seed: another
    assert edges(epidemic(n, s, 7, 5)) == edges(epidemic(n, s, 7, 5)) != edges(epidemic(n, s, 8, 5))


# --------------------------------------------------------------------------- schedules


def test_schedule_phases_switch_at_from_round_and_final_average():
    n = 8
    topo = schedule(nodes=n, rounds=10, topology={
        "kind": "ring", "final_average": True,
        "schedule": [  # listed out of order on purpose
            {"from_round": 7, "kind": "epidemic", "peers": 2},
            {"from_round": 4, "kind": "regular", "degree": 3, "weights": "uniform"},
        ]})
    assert not topo.static
    labels = [topo.graph(r).label for r in range(1, 11)]
    assert labels == ["ring"] * 3 + ["regular"] * 3 + ["epidemic(s=2)"] * 3 + ["global average"]
    ring = topo.graph(1).mixing().toarray()
    for i in range(n):
        assert ring[i, i] == pytest.approx(1 / 3)
        assert ring[i, (i + 1) % n] == ring[i, (i - 1) % n] == pytest.approx(1 / 3)
    assert topo.graph(3) is topo.graph(1)
    regular = topo.graph(4)
    assert topo.graph(6) is regular and not np.allclose(regular.mixing().toarray(), ring)
    np.testing.assert_array_equal(regular.out_degree(), 3)
    np.testing.assert_allclose(regular.mixing().toarray()[regular.mixing().toarray() > 0], 0.25)  # uniform
    assert edges(topo.graph(7)) != edges(topo.graph(8))
    last = topo.graph(10)
    np.testing.assert_allclose(last.mixing().toarray(), np.full((n, n), 1 / n), atol=1e-15)
    assert last.describe()["spectral_gap"] == pytest.approx(1.0)
    assert last.describe()["degree_mean"] == n - 1
    assert topo.graph(1).describe()["spectral_gap"] < 0.5


def test_final_average_alone_makes_a_static_graph_change_in_the_last_round():
    topo = schedule(nodes=6, rounds=4, topology={"kind": "ring", "final_average": True})
    assert not topo.static
    assert topo.graph(1) is topo.graph(3)
    assert topo.graph(4).label == "global average"


# --------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("raw, key, hint", [
    ({"topology": {"kind": "epidemic"}}, "topology.peers", "1..nodes-1"),
    ({"nodes": 8, "topology": {"kind": "epidemic", "peers": 8}}, "topology.peers", "got 8"),
    ({"topology": {"kind": "ring", "peers": 2}}, "topology.peers", "epidemic"),
    ({"topology": {"kind": "file", "path": "/nonexistent.edges", "dynamic": True}}, "topology.dynamic",
     "random generator"),
    ({"topology": {"kind": "ring", "schedule": [{"from_round": 3, "kind": "ring"},
                                                {"from_round": 3, "kind": "fully_connected"}]}},
     "topology.schedule", "own from_round"),
    ({"topology": {"kind": "ring", "schedule": [{"from_round": 1, "kind": "ring"}]}}, "from_round",
     "greater than or equal to 2"),
    ({"nodes": 8, "topology": {"kind": "ring", "schedule": [{"from_round": 3, "kind": "regular", "degree": 9}]}},
     "topology.schedule[0].options.degree", "lower the degree"),
    ({"nodes": 8, "topology": {"kind": "ring", "schedule": [{"from_round": 3, "kind": "epidemic"}]}},
     "topology.schedule[0].peers", "1..nodes-1"),
    ({"sharing": {"name": "choco"}, "topology": {"kind": "regular", "dynamic": True}}, "sharing.name",
     "static topology"),
    ({"sharing": {"name": "choco"}, "topology": {"kind": "epidemic", "peers": 2}}, "sharing.name",
     "static topology"),
    ({"algorithm": {"name": "fedavg"}, "topology": {"kind": "ring"}}, "algorithm.name", "topology.kind = 'star'"),
    ({"algorithm": {"name": "fedavg"}, "topology": {"kind": "star", "final_average": True}}, "algorithm.name",
     "star"),
    ({"algorithm": {"name": "fedavg"}, "topology": {"kind": "star"}, "sharing": {"name": "topk"}},
     "sharing.name", "'full' or 'quantize'"),
    ({"algorithm": {"name": "parameter_server"}, "topology": {"kind": "star"}, "sharing": {"name": "quantize"}},
     "sharing.name", "'full'"),
    ({"algorithm": {"name": "dpsgd", "client_fraction": 0.5}}, "algorithm.options.client_fraction",
     "not an option of algorithm.name = 'dpsgd'; its options: none"),
    ({"algorithm": {"name": "fedavg", "server_lr": 0.5}, "topology": {"kind": "star"}},
     "algorithm.options.server_lr", "its options: client_fraction = 1.0"),
    ({"algorithm": {"name": "gossip"}, "topology": {"kind": "epidemic", "peers": 2}}, "algorithm.name",
     "fixed graph"),
])
def test_topology_config_errors_name_the_key(raw, key, hint):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    message = str(err.value)
    assert key in message and hint.lower() in message.lower(), message


# --------------------------------------------------------------------------- runs on changing graphs


class PerRoundReference(ReferenceDPSGD):
    """The per-node reference loop, mixing with each round's matrix of the schedule."""

    def run_round(self, rnd: int) -> None:
        self.mixing = self.experiment.topology.graph(rnd).mixing().tocsr()
        super().run_round(rnd)


@pytest.mark.parametrize("topology", [
    {"kind": "regular", "degree": 4, "dynamic": True},
    {"kind": "epidemic", "peers": 2},
    {"kind": "ring", "final_average": True, "schedule": [{"from_round": 2, "kind": "epidemic", "peers": 3}]},
], ids=["dynamic-regular", "epidemic", "schedule-final-average"])
def test_sim_on_changing_graphs_matches_the_reference_loop(topology):
    cfg = small_config(topology=topology, rounds=4)
    exp = Experiment.build(cfg)
    sim, ref = SimEngine(exp), PerRoundReference(exp)
    for rnd in range(1, cfg.rounds + 1):
        sim.run_round(rnd)
        ref.run_round(rnd)
        diff = (sim.nodes.params - ref.params()).abs().max().item()
        assert diff <= 1e-5, (rnd, diff)
    start = exp.initial_params(list(range(cfg.nodes)))
    assert (sim.nodes.params - start).abs().max().item() > 1e-3
    if topology.get("final_average"):   # the last round leaves every node with the global average
        assert (sim.nodes.params - sim.nodes.params.mean(0)).abs().max().item() < 1e-5


def run_sim(cfg, rounds=None):
    sim = SimEngine(Experiment.build(cfg), run_id="abcdef012345")
    per_round = []
    for rnd in range(1, (rounds or cfg.rounds) + 1):
        sim.run_round(rnd)
        per_round.append(sim.bytes_sent.copy())
    return sim, per_round


def model_message_bytes(sim, rnd: int) -> int:
    """Wire size of one model message (all ids < 128 pack alike, so every link costs the same)."""
    msg = wire.Message(sim.run_id, 0, rnd, "model", {"params": sim.nodes.params[0]}, {"dst": 1})
    return wire.message_nbytes(msg)


DYNAMIC = {"kind": "regular", "degree": 4, "dynamic": True}


def test_dynamic_run_is_reproducible_and_differs_from_static_and_other_seed():
    cfg = small_config(topology=DYNAMIC, model={"name": "logreg"})
    a, _ = run_sim(cfg)
    b, _ = run_sim(cfg)
    assert torch.equal(a.nodes.params, b.nodes.params)
    c, _ = run_sim(small_config(topology=DYNAMIC, model={"name": "logreg"}, seed=4))
    assert not torch.allclose(a.nodes.params, c.nodes.params)
    static, _ = run_sim(small_config(topology={"kind": "regular", "degree": 4}, model={"name": "logreg"}))
    assert not torch.allclose(a.nodes.params, static.nodes.params)


@pytest.mark.parametrize("topology, per_round", [(DYNAMIC, 4), ({"kind": "epidemic", "peers": 3}, 3)],
                         ids=["dynamic-4-regular", "epidemic-s3"])
def test_bytes_per_node_are_messages_per_round_times_message_size(topology, per_round):
    cfg = small_config(topology=topology, model={"name": "logreg"}, rounds=3)
    sim, sent = run_sim(cfg)
    total = 0
    for rnd, after in enumerate(sent, start=1):
        total += per_round * model_message_bytes(sim, rnd)
        np.testing.assert_array_equal(after, total)
    assert sim.message_bytes == model_message_bytes(sim, cfg.rounds)


def test_round_records_report_the_round_graph(tmp_path):
    cfg = small_config(topology={"kind": "regular", "degree": 4, "dynamic": True, "final_average": True},
                       rounds=4, model={"name": "logreg"})
    run_experiment(cfg, tmp_path / "dynamic")
    records = read_jsonl(tmp_path / "dynamic" / "rounds.jsonl")
    assert [r["round"] for r in records] == [0, 1, 2, 3, 4]
    for r in records[:-1]:
        assert r["topology"] == "dynamic regular"
        assert (r["degree_mean"], r["degree_min"], r["degree_max"]) == (4.0, 4, 4)
        assert 0 < r["spectral_gap"] < 1
    schedule = Experiment.build(cfg).topology
    graphs = [schedule.graph(rnd) for rnd in (1, 2, 3)]
    assert [r["spectral_gap"] for r in records[1:-1]] == [g.describe()["spectral_gap"] for g in graphs]
    assert all((a.weights != b.weights).nnz for a, b in zip(graphs, graphs[1:]))   # a new graph each round
    assert records[0]["spectral_gap"] == records[1]["spectral_gap"]  # round 0 reports round 1's graph
    last = records[-1]
    assert last["topology"] == "global average" and last["spectral_gap"] == pytest.approx(1.0)
    assert last["degree_mean"] == cfg.nodes - 1
    assert last["consensus_distance"] < 1e-8

    run_experiment(small_config(topology={"kind": "epidemic", "peers": 2}, rounds=2, model={"name": "logreg"}),
                   tmp_path / "el")
    for r in read_jsonl(tmp_path / "el" / "rounds.jsonl"):
        assert r["topology"] == "epidemic(s=2)" and r["degree_mean"] == 2.0 and "spectral_gap" in r


def test_schedule_phase_from_a_file(tmp_path):
    """A later phase read from a graph file is used from its round on; a file whose node count
    is not ``nodes`` fails before training (it used to crash the run when its phase began)."""
    from meshlearn import topology

    good, bad = tmp_path / "full8.edges", tmp_path / "ring6.edges"
    topology.write_edge_list(topology.build("fully_connected", 8), good)
    topology.write_edge_list(topology.build("ring", 6), bad)
    exp = Experiment.build(small_config(topology={"kind": "ring", "schedule": [
        {"from_round": 3, "kind": "file", "path": str(good)}]}))
    assert exp.topology.graph(2).label == "ring" and exp.topology.graph(3).label == "file"
    np.testing.assert_array_equal(exp.topology.graph(3).out_degree(), 7)
    cfg = small_config(topology={"kind": "ring", "schedule": [
        {"from_round": 2, "kind": "regular", "degree": 3}, {"from_round": 3, "kind": "file", "path": str(bad)}]})
    with pytest.raises(ConfigError, match=r"topology\.schedule\[1\]\.path .* declares 6 nodes but nodes = 8"):
        Experiment.build(cfg)
