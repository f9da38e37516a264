"""Graph files in DecentralizePy's text formats, so topologies can be shared between the two.

Both formats start with a line holding the node count N; nodes are 0..N-1.

* edge list (``.edges``, ``.txt``): one edge ``u v`` per line. An edge may appear in
  both directions (DecentralizePy writes it so); duplicates collapse.
* adjacency list (``.adj``): one line per node, ``i j k ...`` = node i then its
  neighbours, in node order. A line holding only ``i`` is an isolated node.

Blank lines are ignored. Malformed content raises ``ValueError`` naming file and line,
because a silently misread topology changes every result downstream.
"""

from __future__ import annotations

import os
from pathlib import Path

import networkx as nx

__all__ = [
    "write_edge_list",
    "read_edge_list",
    "write_adjacency_list",
    "read_adjacency_list",
    "read_graph",
    "FORMATS",
]

#: File formats understood by :func:`read_graph`.
FORMATS = ("edges", "adjacency")

_SUFFIX_FORMAT = {".edges": "edges", ".txt": "edges", ".adj": "adjacency"}

PathLike = str | os.PathLike


def _node_range(G: nx.Graph) -> int:
    n = G.number_of_nodes()
    if set(G.nodes) != set(range(n)):
        raise ValueError("graph nodes must be the integers 0..n-1 to be written in this format")
    return n


def write_edge_list(G: nx.Graph, path: PathLike) -> None:
    """Write N, then each edge once as ``u v`` with u < v (self-loops dropped)."""
    n = _node_range(G)
    edges = sorted((min(u, v), max(u, v)) for u, v in G.edges() if u != v)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{n}\n")
        f.writelines(f"{u} {v}\n" for u, v in edges)


def write_adjacency_list(G: nx.Graph, path: PathLike) -> None:
    """Write N, then one line per node: its id followed by its sorted neighbours."""
    n = _node_range(G)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{n}\n")
        for i in range(n):
            neighbours = sorted(j for j in G.adj[i] if j != i)
            f.write(" ".join(map(str, [i, *neighbours])) + "\n")


MAX_NODES = 1 << 20
"""Largest node count a graph file may declare: the header is checked before a graph is built."""


def _data_lines(path: PathLike, nodes: int | None = None) -> tuple[int, list[tuple[int, list[int]]]]:
    """Node count and the non-blank lines after it as (line number, ints); a header that
    declares more than ``MAX_NODES`` nodes, or other than the expected ``nodes``, is refused."""
    name = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    numbered = [(no, line.split()) for no, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise ValueError(f"{name}: empty file; the first line must be the node count")

    def ints(no: int, tokens: list[str]) -> list[int]:
        try:
            return [int(t) for t in tokens]
        except ValueError:
            raise ValueError(
                f"{name}:{no}: expected integers, got {' '.join(tokens)!r}"
            ) from None

    head_no, head = numbered[0]
    if len(head) != 1:
        raise ValueError(
            f"{name}:{head_no}: first line must be the node count alone, got {' '.join(head)!r}"
        )
    (n,) = ints(head_no, head)
    if n < 0:
        raise ValueError(f"{name}:{head_no}: node count {n} must be >= 0")
    if nodes is not None and n != nodes:
        raise ValueError(f"{name}:{head_no}: the header declares {n} nodes but nodes = {nodes}; make them agree")
    if n > MAX_NODES:
        raise ValueError(f"{name}:{head_no}: the header declares {n} nodes, more than the {MAX_NODES} a graph file "
                         "may hold")
    rows = [(no, ints(no, tokens)) for no, tokens in numbered[1:]]
    for no, values in rows:
        for x in values:
            if not 0 <= x < n:
                raise ValueError(
                    f"{name}:{no}: node id {x} out of range; the header declares {n} nodes (0..{n - 1})"
                )
    return n, rows


def _graph(n: int) -> nx.Graph:
    G = nx.Graph()
    G.add_nodes_from(range(n))
    return G


def read_edge_list(path: PathLike, nodes: int | None = None) -> nx.Graph:
    """Read an edge-list file (of ``nodes`` nodes, when given); nodes that appear in no edge stay isolated."""
    name = os.fspath(path)
    n, rows = _data_lines(path, nodes)
    G = _graph(n)
    for no, values in rows:
        if len(values) != 2:
            raise ValueError(f"{name}:{no}: expected one edge 'u v', got {len(values)} numbers")
        u, v = values
        if u == v:
            raise ValueError(f"{name}:{no}: self-loop {u} {v} is not allowed")
        G.add_edge(u, v)
    return G


def read_adjacency_list(path: PathLike, nodes: int | None = None) -> nx.Graph:
    """Read an adjacency-list file (of ``nodes`` nodes, when given): exactly one row per node, rows in node order."""
    name = os.fspath(path)
    n, rows = _data_lines(path, nodes)
    if len(rows) != n:
        raise ValueError(
            f"{name}: header declares {n} nodes but the file has {len(rows)} node rows"
        )
    G = _graph(n)
    for expected, (no, values) in enumerate(rows):
        node, neighbours = values[0], values[1:]
        if node != expected:
            raise ValueError(
                f"{name}:{no}: row should start with node id {expected}, found {node}; "
                "each row is 'node neighbour neighbour ...' in node order"
            )
        if node in neighbours:
            raise ValueError(f"{name}:{no}: node {node} lists itself as a neighbour")
        G.add_edges_from((node, j) for j in neighbours)
    return G


def _sniff(path: PathLike) -> str:
    """Edge list when every line after the count holds exactly two numbers, else adjacency."""
    with open(path, encoding="utf-8") as f:
        rows = [line.split() for line in f if line.strip()][1:]
    return "edges" if all(len(r) == 2 for r in rows) else "adjacency"


def read_graph(path: PathLike, format: str | None = None, nodes: int | None = None) -> nx.Graph:
    """Read a graph file; ``format`` is "edges" or "adjacency", or None to infer it; with
    ``nodes``, a file of another node count is refused before any graph is built.

    Inference uses the suffix (``.edges``/``.txt`` edge list, ``.adj`` adjacency) and
    otherwise looks at the content.
    """
    if format is None:
        suffix = Path(path).suffix.lower()
        format = _SUFFIX_FORMAT.get(suffix) or _sniff(path)
    if format == "edges":
        return read_edge_list(path, nodes)
    if format == "adjacency":
        return read_adjacency_list(path, nodes)
    raise ValueError(f"unknown graph file format {format!r}; choose one of: {', '.join(FORMATS)}")
