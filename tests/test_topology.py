"""Graph generators, parameter checks, graph files, mixing matrices and the topology CLI."""

from __future__ import annotations

import argparse
import json
import math

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp

from meshlearn import topology
from meshlearn.commands import topology as topology_cmd


def degrees(G: nx.Graph) -> list[int]:
    return [d for _, d in sorted(G.degree())]


# --------------------------------------------------------------------------- generators


@pytest.mark.parametrize("n", [3, 5, 16])
def test_ring(n):
    G = topology.ring(n)
    assert sorted(G.nodes) == list(range(n))
    assert degrees(G) == [2] * n
    assert G.has_edge(0, n - 1) and G.has_edge(0, 1)
    assert nx.is_connected(G)


def test_small_graphs_have_no_self_loops():
    for kind in ("ring", "torus", "grid", "star", "exponential", "fully_connected"):
        G = topology.build(kind, 1)
        assert G.number_of_nodes() == 1 and G.number_of_edges() == 0, kind
    assert topology.ring(2).number_of_edges() == 1


def test_torus_default_rows_and_degree():
    G = topology.torus(12)  # 3 × 4: largest divisor of 12 not above sqrt(12)
    assert G.number_of_nodes() == 12
    assert degrees(G) == [4] * 12
    # node r*cols + c: 0 = (0, 0) wraps to (0, 3) = 3 and (2, 0) = 8
    assert set(G.adj[0]) == {1, 3, 4, 8}
    assert nx.is_connected(G)


def test_torus_explicit_rows():
    G = topology.torus(12, rows=2)  # 2 × 6: up and down neighbour coincide
    assert set(G.adj[0]) == {1, 5, 6}
    assert degrees(G) == [3] * 12


def test_grid_is_not_periodic():
    G = topology.grid(12, rows=3)  # 3 × 4
    assert G.number_of_edges() == 3 * 3 + 2 * 4
    assert set(G.adj[0]) == {1, 4}  # corner
    assert set(G.adj[5]) == {1, 4, 6, 9}  # interior
    assert nx.is_connected(G)


@pytest.mark.parametrize("n,d", [(16, 3), (20, 4), (10, 2), (9, 6), (8, 7)])
def test_regular_is_d_regular_and_connected(n, d):
    G = topology.regular(n, d, seed=3)
    assert sorted(G.nodes) == list(range(n))
    assert degrees(G) == [d] * n
    assert nx.is_connected(G)


def test_regular_seed_reproducible_and_varies():
    a = topology.regular(32, 3, seed=7)
    b = topology.regular(32, 3, seed=7)
    c = topology.regular(32, 3, seed=8)
    assert set(map(frozenset, a.edges())) == set(map(frozenset, b.edges()))
    assert set(map(frozenset, a.edges())) != set(map(frozenset, c.edges()))
    ring_a, ring_b = topology.regular(30, 2, seed=1), topology.regular(30, 2, seed=2)
    assert set(map(frozenset, ring_a.edges())) != set(map(frozenset, ring_b.edges()))


def test_fully_connected_and_star():
    K = topology.fully_connected(6)
    assert K.number_of_edges() == 15 and degrees(K) == [5] * 6
    S = topology.star(6)
    assert degrees(S) == [5, 1, 1, 1, 1, 1]
    assert set(S.adj[0]) == {1, 2, 3, 4, 5}


def test_erdos_renyi_connected_and_reproducible():
    a = topology.erdos_renyi(40, 0.15, seed=1)
    b = topology.erdos_renyi(40, 0.15, seed=1)
    assert a.number_of_nodes() == 40 and nx.is_connected(a)
    assert set(a.edges()) == set(b.edges())
    assert topology.erdos_renyi(5, 1.0, seed=0).number_of_edges() == 10


def test_erdos_renyi_too_sparse_says_raise_p():
    with pytest.raises(ValueError, match=r"topology\.options\.p"):
        topology.erdos_renyi(60, 0.005, seed=0)


def test_watts_strogatz():
    G = topology.watts_strogatz(30, 4, 0.2, seed=2)
    assert G.number_of_nodes() == 30 and G.number_of_edges() == 60  # rewiring keeps the count
    assert nx.is_connected(G)
    lattice = topology.watts_strogatz(10, 4, 0.0, seed=0)
    assert degrees(lattice) == [4] * 10 and set(lattice.adj[0]) == {1, 2, 8, 9}


def test_exponential_neighbours_n8():
    G = topology.exponential(8)
    # hops 1, 2, 4: ±1, ±2 and 4 (= -4 mod 8)
    assert set(G.adj[0]) == {1, 7, 2, 6, 4}
    assert set(G.adj[3]) == {2, 4, 1, 5, 7}
    assert degrees(G) == [5] * 8


def test_exponential_n10():
    G = topology.exponential(10)  # hops 1, 2, 4, 8
    assert set(G.adj[0]) == {1, 9, 2, 8, 4, 6}


def test_dumbbell_is_two_cliques_joined_by_bridges():
    G = topology.dumbbell(7, bridges=2)   # cliques {0..3} and {4, 5, 6}
    assert G.number_of_edges() == 6 + 3 + 2
    assert set(G.adj[0]) == {1, 2, 3, 4} and set(G.adj[1]) == {0, 2, 3, 5} and set(G.adj[6]) == {4, 5}
    assert nx.node_connectivity(topology.build("dumbbell", 10)) == 1   # one bridge: a bottleneck
    with pytest.raises(ValueError, match="topology.options.bridges in 1..5"):
        topology.check_params("dumbbell", 10, bridges=6)


def test_knn_links_each_node_to_its_least_or_most_similar_label_distributions():
    # nodes 0-2 hold class 0, nodes 3-5 class 1, node 6 both (|cosine| 0.707 to everyone)
    counts = np.array([[9, 0], [5, 0], [7, 0], [0, 4], [0, 8], [0, 6], [3, 3]])
    least = topology.build("knn", 7, seed=1, label_counts=counts, degree=2)
    for i in range(6):   # a one-class node picks two of the other class (cosine 0), never its own class
        assert sum(counts[j].argmax() != counts[i].argmax() and counts[j].min() == 0 for j in least.adj[i]) >= 2
        assert not [j for j in least.adj[i] if counts[j].argmax() == counts[i].argmax() and counts[j].min() == 0]
    assert least.number_of_nodes() == 7 and nx.is_connected(least)
    most = topology.build("knn", 7, seed=1, label_counts=counts, degree=3, pick="most")
    assert set(most.adj[0]) >= {1, 2} and set(most.adj[3]) >= {4, 5}   # its own class first (cosine 1)
    again = topology.build("knn", 7, seed=1, label_counts=counts, degree=3, pick="most")
    assert set(most.edges()) == set(again.edges())
    with pytest.raises(ValueError, match="splits the nodes into 2 groups; raise the degree"):
        topology.build("knn", 6, seed=1, label_counts=counts[:6], degree=1, pick="most")
    with pytest.raises(ValueError, match="needs a run's data partition"):
        topology.build("knn", 7, degree=2)
    with pytest.raises(ValueError, match="must be 'least' or 'most'"):
        topology.check_params("knn", 7, degree=2, pick="closest")


def test_registry_and_build():
    assert set(topology.TOPOLOGIES) == {
        "ring", "torus", "grid", "regular", "fully_connected",
        "erdos_renyi", "watts_strogatz", "star", "exponential", "dumbbell", "knn",
    }
    G = topology.build("regular", 12, seed=5, degree=3)
    assert degrees(G) == [3] * 12
    H = topology.build("regular", 12, seed=5, degree=3)
    assert set(G.edges()) == set(H.edges())
    # known parameters another kind uses (and None) are ignored
    assert topology.build("ring", 7, seed=1, degree=4, p=None).number_of_edges() == 7


# --------------------------------------------------------------------------- check_params


@pytest.mark.parametrize(
    "kind,n,params,key",
    [
        ("regular", 8, {"degree": 8}, "topology.options.degree = 8 must be < nodes = 8"),
        ("regular", 7, {"degree": 3}, "n·d must be even"),
        ("regular", 8, {"degree": 0}, "topology.options.degree"),
        ("regular", 8, {}, "topology.options.degree"),
        ("erdos_renyi", 8, {"p": 0.0}, "topology.options.p"),
        ("erdos_renyi", 8, {"p": 1.5}, "topology.options.p"),
        ("watts_strogatz", 8, {"k": 8, "p": 0.1}, "topology.options.k"),
        ("watts_strogatz", 8, {"k": 1, "p": 0.1}, "topology.options.k"),
        ("watts_strogatz", 8, {"k": 3, "p": 0.1}, "topology.options.k"),
        ("torus", 12, {"rows": 5}, "topology.options.rows"),
        ("grid", 12, {"rows": 0}, "topology.options.rows"),
        ("ring", 0, {}, "nodes"),
        ("hypercube", 8, {}, "ring"),  # unknown kind lists the valid ones
    ],
)
def test_check_params_rejects(kind, n, params, key):
    with pytest.raises(ValueError, match=re_escape(key)):
        topology.check_params(kind, n, **params)
    with pytest.raises(ValueError, match=re_escape(key)):
        topology.build(kind, n, **params)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_check_params_messages_say_the_fix():
    with pytest.raises(ValueError) as exc:
        topology.check_params("regular", 8, degree=8)
    assert "lower the degree or add nodes" in str(exc.value)
    with pytest.raises(ValueError) as exc:
        topology.check_params("regular", 7, degree=3)
    assert "change topology.options.degree or nodes" in str(exc.value)
    with pytest.raises(ValueError) as exc:
        topology.check_params("torus", 12, rows=5)
    assert "1, 2, 3, 4, 6, 12" in str(exc.value)


def test_check_params_accepts_valid():
    topology.check_params("regular", 8, degree=3)
    topology.check_params("torus", 12, rows=4)
    topology.check_params("watts_strogatz", 10, k=4, p=0.0)
    topology.check_params("erdos_renyi", 10, p=1)
    topology.check_params("ring", 5, degree=100)  # degree is not a ring parameter


# --------------------------------------------------------------------------- files


def same_graph(a: nx.Graph, b: nx.Graph) -> bool:
    return sorted(a.nodes) == sorted(b.nodes) and set(map(frozenset, a.edges())) == set(
        map(frozenset, b.edges())
    )


def graph_with_isolated_node() -> nx.Graph:
    G = topology.erdos_renyi(12, 0.4, seed=4)
    G.add_node(12)
    return G


def test_edge_list_round_trip(tmp_path):
    G = graph_with_isolated_node()
    path = tmp_path / "g.edges"
    topology.write_edge_list(G, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "13" and len(lines) == 1 + G.number_of_edges()
    H = topology.read_edge_list(path)
    assert same_graph(G, H)
    assert same_graph(G, topology.read_graph(path))


def test_adjacency_list_round_trip(tmp_path):
    G = graph_with_isolated_node()
    path = tmp_path / "g.adj"
    topology.write_adjacency_list(G, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "13" and len(lines) == 14 and lines[-1] == "12"
    assert same_graph(G, topology.read_adjacency_list(path))
    assert same_graph(G, topology.read_graph(path))


def test_decentralizepy_files_parse(tmp_path):
    # edges listed in both directions, as DecentralizePy writes them
    edges = tmp_path / "regular_4.txt"
    edges.write_text("4\n0 1\n0 3\n1 0\n1 2\n2 1\n2 3\n3 2\n3 0\n")
    G = topology.read_graph(edges)
    assert G.number_of_edges() == 4 and degrees(G) == [2, 2, 2, 2]
    assert same_graph(G, topology.ring(4))

    adj = tmp_path / "star"  # no suffix: sniffed from the content
    adj.write_text("5\n0 1 2 3\n\n1 0\n2 0\n3 0\n4\n")
    S = topology.read_graph(adj)
    assert degrees(S) == [3, 1, 1, 1, 0]


def test_sniff_edges_without_suffix(tmp_path):
    path = tmp_path / "graph"
    path.write_text("3\n0 1\n1 2\n")
    assert set(topology.read_graph(path).edges()) == {(0, 1), (1, 2)}


@pytest.mark.parametrize(
    "text,reader,where",
    [
        ("3\n0 1\n1 x\n", "edges", ":3:"),
        ("3\n0 1\n1 3\n", "edges", ":3:"),  # id out of range
        ("3\n0 1 2\n", "edges", ":2:"),
        ("3\n1 1\n", "edges", ":2:"),  # self-loop
        ("three\n0 1\n", "edges", ":1:"),
        ("3 4\n0 1\n", "edges", ":1:"),
        ("", "edges", "empty"),
        ("3\n0 1\n1 0\n", "adjacency", "3 nodes but the file has 2"),  # count mismatch
        ("2\n0 1\n1 0\n2\n", "adjacency", ":4:"),  # id out of range
        ("3\n0 1\n2 1\n1 0 2\n", "adjacency", ":3:"),  # rows out of order
        ("2\n0 1\n1 0 z\n", "adjacency", ":3:"),
    ],
)
def test_malformed_files(tmp_path, text, reader, where):
    path = tmp_path / "bad.graph"
    path.write_text(text)
    read = topology.read_edge_list if reader == "edges" else topology.read_adjacency_list
    with pytest.raises(ValueError) as exc:
        read(path)
    assert str(path) in str(exc.value)
    assert where in str(exc.value)


def test_read_graph_unknown_format(tmp_path):
    path = tmp_path / "g.edges"
    path.write_text("1\n")
    with pytest.raises(ValueError, match="format"):
        topology.read_graph(path, format="gml")


# --------------------------------------------------------------------------- mixing


IRREGULAR = [
    ("star", lambda: topology.star(9)),
    ("erdos_renyi", lambda: topology.erdos_renyi(30, 0.2, seed=0)),
    ("grid", lambda: topology.grid(12, rows=3)),
]


@pytest.mark.parametrize("rule", ["metropolis_hastings", "max_degree"])
@pytest.mark.parametrize("name,make", IRREGULAR)
def test_symmetric_rules_are_doubly_stochastic(rule, name, make):
    G = make()
    W = topology.mixing_matrix(G, rule)
    assert sp.issparse(W) and W.format == "csr" and W.dtype == np.float64
    assert W.shape == (G.number_of_nodes(),) * 2
    assert topology.is_symmetric(W)
    assert topology.is_doubly_stochastic(W)
    assert W.min() >= 0
    # sparsity pattern = edges plus diagonal
    assert W.nnz <= 2 * G.number_of_edges() + G.number_of_nodes()


def test_metropolis_hastings_weights_on_star():
    W = topology.metropolis_hastings(topology.star(5)).toarray()
    assert W[0, 1] == pytest.approx(1 / 5) and W[1, 0] == pytest.approx(1 / 5)
    assert W[1, 1] == pytest.approx(4 / 5)
    assert W[0, 0] == pytest.approx(1 - 4 / 5)
    assert W[1, 2] == 0


def test_max_degree_weights():
    G = topology.grid(12, rows=3)  # d_max = 4
    W = topology.max_degree(G).toarray()
    assert W[0, 1] == pytest.approx(1 / 5)
    assert W[0, 0] == pytest.approx(1 - 2 / 5)  # corner has degree 2


def test_uniform_row_stochastic_not_doubly_on_star():
    W = topology.uniform(topology.star(5))
    assert np.allclose(np.asarray(W.sum(axis=1)).ravel(), 1)
    assert not topology.is_doubly_stochastic(W)
    assert not topology.is_symmetric(W)
    dense = W.toarray()
    assert dense[1, 0] == pytest.approx(1 / 2) and dense[0, 1] == pytest.approx(1 / 5)
    # on a regular graph it is doubly stochastic
    assert topology.is_doubly_stochastic(topology.uniform(topology.ring(7)))


def test_spectral_gap_fully_connected_is_one():
    W = topology.metropolis_hastings(topology.fully_connected(10))
    assert np.allclose(W.toarray(), 1 / 10)
    assert topology.spectral_gap(W) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("n", [6, 16, 50])
def test_spectral_gap_ring_closed_form(n):
    W = topology.metropolis_hastings(topology.ring(n))
    expected = 1 - (1 / 3 + 2 / 3 * math.cos(2 * math.pi / n))
    assert topology.spectral_gap(W) == pytest.approx(expected, abs=1e-10)


def test_spectral_gap_sparse_solver_matches_dense():
    W = topology.metropolis_hastings(topology.regular(60, 3, seed=0))
    dense = topology.spectral_gap(W)
    sparse = topology.spectral_gap(W, dense_limit=10)
    assert sparse == pytest.approx(dense, abs=1e-8)
    assert 0 < dense < 1


def test_disconnected_graph_has_zero_gap():
    G = nx.disjoint_union(topology.ring(5), topology.ring(5))
    assert not topology.is_connected(G)
    info = topology.describe(G)
    assert info["connected"] is False and info["diameter"] is None
    assert info["spectral_gap"] == pytest.approx(0.0, abs=1e-12)


def test_describe():
    G = topology.star(6)
    info = topology.describe(G, topology.uniform(G))
    assert info == {
        "nodes": 6,
        "edges": 5,
        "degree_min": 1,
        "degree_mean": pytest.approx(10 / 6),
        "degree_max": 5,
        "diameter": 2,
        "connected": True,
        "symmetric": False,
        "doubly_stochastic": False,
        "spectral_gap": info["spectral_gap"],
    }
    assert 0 < info["spectral_gap"] <= 1
    json.dumps(info)  # plain types only


def test_unknown_weight_rule():
    with pytest.raises(ValueError, match="topology.weights"):
        topology.mixing_matrix(topology.ring(4), "laplacian")


# --------------------------------------------------------------------------- CLI


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="meshlearn")
    topology_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_generate_inspect_draw(tmp_path, capsys):
    edges = tmp_path / "out" / "reg.edges"
    assert cli(["topology", "generate", "regular", "--nodes", "12", "--degree", "3",
                "--seed", "2", "-o", str(edges)]) == 0
    assert same_graph(topology.read_edge_list(edges), topology.regular(12, 3, seed=2))
    capsys.readouterr()

    assert cli(["topology", "inspect", str(edges), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["nodes"] == 12 and info["edges"] == 18
    assert info["degree_min"] == info["degree_max"] == 3
    assert info["connected"] and info["doubly_stochastic"] and info["symmetric"]
    assert 0 < info["spectral_gap"] < 1

    assert cli(["topology", "inspect", str(edges), "--weights", "uniform"]) == 0
    table = capsys.readouterr().out
    assert "spectral_gap" in table and "diameter" in table

    png = tmp_path / "reg.png"
    assert cli(["topology", "draw", str(edges), "-o", str(png), "--layout", "circular"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_generate_adjacency_format(tmp_path, capsys):
    adj = tmp_path / "t.adj"
    assert cli(["topology", "generate", "torus", "--nodes", "12", "-o", str(adj)]) == 0
    assert len(adj.read_text().splitlines()) == 13
    assert same_graph(topology.read_graph(adj), topology.torus(12))


def test_cli_errors_are_one_line(tmp_path, capsys):
    out = tmp_path / "x.edges"
    assert cli(["topology", "generate", "regular", "--nodes", "8", "--degree", "8", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "topology.options.degree" in err and err.count("\n") == 1
    assert not out.exists()

    assert cli(["topology", "inspect", str(tmp_path / "missing.edges")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.edges" in err and "Traceback" not in err

    bad = tmp_path / "bad.edges"
    bad.write_text("2\n0 5\n")
    assert cli(["topology", "draw", str(bad), "-o", str(tmp_path / "b.png")]) == 2
    assert "bad.edges:2" in capsys.readouterr().err


def test_cli_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        cli(["topology", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "generate" in out and "inspect" in out and "draw" in out
    assert cli(["topology"]) == 2


@pytest.mark.parametrize("reader", ["edges", "adjacency"])
def test_absurd_node_counts_are_refused_before_building_a_graph(tmp_path, reader):
    path = tmp_path / "huge.graph"
    path.write_text("1000000000000\n0 1\n")
    with pytest.raises(ValueError, match="more than the 1048576"):
        topology.read_graph(path, format=reader)
    path.write_text("100000\n0 1\n")
    with pytest.raises(ValueError, match="declares 100000 nodes but nodes = 8"):
        topology.read_graph(path, format=reader, nodes=8)
