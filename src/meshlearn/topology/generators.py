"""Communication graphs for decentralized learning.

Every generator returns an undirected ``nx.Graph`` on nodes ``0..n-1`` without
self-loops, so node ids double as row indices of the mixing matrix. Random
generators only return connected graphs: on a disconnected graph gossip averaging
never reaches consensus, and a run would silently train isolated islands.
"""

from __future__ import annotations

import inspect
import math
from numbers import Integral, Real
from typing import Annotated, Any, Callable, Literal

import networkx as nx
import numpy as np
from pydantic import Field

__all__ = [
    "ring",
    "torus",
    "grid",
    "regular",
    "fully_connected",
    "erdos_renyi",
    "watts_strogatz",
    "star",
    "exponential",
    "dumbbell",
    "knn",
    "TOPOLOGIES",
    "check_params",
    "build",
]

#: Redraws allowed before a random generator gives up on finding a connected graph.
MAX_TRIES = 100


def _derived_seed(seed: int | None, attempt: int) -> int | None:
    """Seed of the ``attempt``-th draw: the seed itself first, then independent streams."""
    if seed is None:
        return None
    if attempt == 0:
        return int(seed)
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, attempt]).generate_state(1)
    return int(state[0])


def _empty(n: int) -> nx.Graph:
    G = nx.Graph()
    G.add_nodes_from(range(n))
    return G


def _relabel_sorted(G: nx.Graph) -> nx.Graph:
    """Copy with nodes inserted in order 0..n-1, so iteration order matches matrix rows."""
    H = _empty(G.number_of_nodes())
    H.add_edges_from((u, v) for u, v in G.edges() if u != v)
    return H


def _default_rows(n: int) -> int:
    """Largest divisor of n not above sqrt(n): the squarest rows × cols layout."""
    for r in range(math.isqrt(n), 0, -1):
        if n % r == 0:
            return r
    return 1


def _lattice(n: int, rows: int | None, periodic: bool) -> nx.Graph:
    rows = _default_rows(n) if rows is None else int(rows)
    cols = n // rows
    G = _empty(n)
    for r in range(rows):
        for c in range(cols):
            u = r * cols + c
            if periodic:
                right = r * cols + (c + 1) % cols
                down = ((r + 1) % rows) * cols + c
            else:
                right = u + 1 if c + 1 < cols else u
                down = u + cols if r + 1 < rows else u
            for v in (right, down):
                if v != u:  # a dimension of length 1 would wrap onto the node itself
                    G.add_edge(u, v)
    return G


def ring(n: int) -> nx.Graph:
    """Cycle 0-1-...-(n-1)-0: the sparsest connected regular graph (degree 2)."""
    G = _empty(n)
    G.add_edges_from((i, (i + 1) % n) for i in range(n) if (i + 1) % n != i)
    return G


def torus(n: int, rows: int | None = None) -> nx.Graph:
    """2-D periodic grid of ``rows × n/rows`` nodes; node ``r*cols + c`` sits at (r, c).

    ``rows`` defaults to the largest divisor of n not above sqrt(n), the squarest
    layout and hence the smallest diameter. Degree is 4 when both sides are > 2.
    """
    return _lattice(n, rows, periodic=True)


def grid(n: int, rows: int | None = None) -> nx.Graph:
    """2-D grid like :func:`torus` but without wrap-around edges (border nodes have lower degree)."""
    return _lattice(n, rows, periodic=False)


def regular(n: int, degree: int = 4, seed: int | None = 0) -> nx.Graph:
    """Uniformly random connected ``degree``-regular graph.

    Disconnected draws are discarded and redrawn with seeds derived from ``seed``,
    so the same seed always gives the same graph.
    """
    if degree == 2:
        # A connected 2-regular graph is one Hamiltonian cycle: draw a random node order
        # directly instead of rejecting the (mostly disconnected) unions of cycles.
        order = np.random.default_rng(_derived_seed(seed, 0)).permutation(n)
        G = _empty(n)
        G.add_edges_from((int(order[i]), int(order[(i + 1) % n])) for i in range(n))
        return G
    dense = degree > (n - 1) / 2
    for attempt in range(MAX_TRIES):
        s = _derived_seed(seed, attempt)
        if dense:
            # The pairing algorithm stalls when degree is close to n; the complement of a
            # uniform (n-1-degree)-regular graph is a uniform degree-regular graph.
            H = nx.complement(nx.random_regular_graph(n - 1 - degree, n, seed=s))
        else:
            H = nx.random_regular_graph(degree, n, seed=s)
        G = _relabel_sorted(H)
        if n <= 1 or nx.is_connected(G):
            return G
    raise ValueError(
        f"no connected {degree}-regular graph on nodes = {n} in {MAX_TRIES} draws; "
        "raise topology.options.degree"
    )


def fully_connected(n: int) -> nx.Graph:
    """Complete graph: one gossip round computes the exact average."""
    G = _empty(n)
    G.add_edges_from((i, j) for i in range(n) for j in range(i + 1, n))
    return G


def erdos_renyi(n: int, p: float, seed: int | None = 0) -> nx.Graph:
    """G(n, p) random graph, redrawn (with derived seeds) until connected.

    Connectivity needs p above roughly ln(n)/n; below that every draw is likely
    disconnected and a ``ValueError`` says how far to raise ``topology.options.p``.
    """
    gen = nx.fast_gnp_random_graph if p < 0.2 else nx.gnp_random_graph
    for attempt in range(MAX_TRIES):
        G = _relabel_sorted(gen(n, p, seed=_derived_seed(seed, attempt)))
        if n <= 1 or nx.is_connected(G):
            return G
    threshold = math.log(n) / n
    raise ValueError(
        f"erdos_renyi with nodes = {n} and topology.options.p = {p} gave no connected graph in "
        f"{MAX_TRIES} draws; raise topology.options.p (connectivity needs p > ln(n)/n ≈ {threshold:.3g})"
    )


def watts_strogatz(n: int, k: int, p: float, seed: int | None = 0) -> nx.Graph:
    """Small-world graph: ring lattice with ``k`` nearest neighbours, each edge rewired with probability ``p``.

    Redrawn (with derived seeds) until connected.
    """
    for attempt in range(MAX_TRIES):
        G = _relabel_sorted(nx.watts_strogatz_graph(n, k, p, seed=_derived_seed(seed, attempt)))
        if nx.is_connected(G):
            return G
    raise ValueError(
        f"watts_strogatz with nodes = {n}, topology.options.k = {k}, topology.options.p = {p} gave no "
        f"connected graph in {MAX_TRIES} draws; raise topology.options.k or lower topology.options.p"
    )


def star(n: int) -> nx.Graph:
    """Node 0 is the hub linked to every other node: the extreme of degree heterogeneity."""
    G = _empty(n)
    G.add_edges_from((0, i) for i in range(1, n))
    return G


def exponential(n: int) -> nx.Graph:
    """Undirected exponential graph: node i links to i ± 2^k (mod n) for every 2^k < n.

    Degree O(log n) with diameter O(log n), a common sparse yet well-mixing choice.
    """
    G = _empty(n)
    hop = 1
    while hop < n:
        G.add_edges_from((i, (i + hop) % n) for i in range(n) if (i + hop) % n != i)
        hop *= 2
    return G


def dumbbell(n: int, bridges: int = 1) -> nx.Graph:
    """Two cliques (nodes 0..⌈n/2⌉-1 and the rest) joined by ``bridges`` edges i — ⌈n/2⌉+i:
    the bottleneck graph on which He, Karimireddy & Jaggi (2022) show that robust rules that
    ignore the topology break down."""
    half = (n + 1) // 2
    G = _empty(n)
    G.add_edges_from((i, j) for i in range(half) for j in range(i + 1, half))
    G.add_edges_from((i, j) for i in range(half, n) for j in range(i + 1, n))
    G.add_edges_from((i, half + i) for i in range(min(bridges, n - half)))
    return G


def knn(n: int, label_counts: np.ndarray | None = None,
        degree: Annotated[int, Field(ge=1, description="nodes each node picks")] = 4,
        pick: Annotated[Literal["least", "most"], Field(description="the least or the most similar nodes")] = "least",
        seed: int | None = 0) -> nx.Graph:
    """A KNN overlay on the nodes' data: each node links to the ``degree`` nodes whose label
    distributions are least (``pick = "most"``: most) similar to its own, the similarity being
    the |cosine| of their label-count vectors rounded to 3 decimals, ties drawn from ``seed``;
    links are undirected, so a node's degree is at least ``degree``. Linking unlike nodes (the
    default, as DecentralizePy's KNN overlay does) gives every neighbourhood a label mix closer
    to the whole data set's under non-IID partitions, which is what averaging needs; "most"
    builds communities of like nodes instead."""
    if label_counts is None:
        raise ValueError("topology.kind = 'knn' is built from the nodes' label counts: it needs a run's data "
                         "partition (a config run by meshlearn run), not a graph on its own")
    counts = np.asarray(label_counts, dtype=np.float64)
    if counts.shape[0] != n:
        raise ValueError(f"topology.kind = 'knn': label counts of {counts.shape[0]} nodes for nodes = {n}")
    norms = np.linalg.norm(counts, axis=1, keepdims=True)
    unit = counts / np.where(norms > 0, norms, 1.0)
    similarity = np.round(np.abs(unit @ unit.T), 3)
    score = similarity if pick == "least" else -similarity
    np.fill_diagonal(score, np.inf)
    ties = np.random.default_rng(seed).random((n, n))
    G = _empty(n)
    for i in range(n):
        G.add_edges_from((i, int(j)) for j in np.lexsort((ties[i], score[i]))[:degree])
    if n > 1 and not nx.is_connected(G):
        raise ValueError(f"topology.kind = 'knn' with topology.options.degree = {degree} splits the nodes into "
                         f"{nx.number_connected_components(G)} groups; raise the degree")
    return G


TOPOLOGIES: dict[str, Callable[..., nx.Graph]] = {
    "ring": ring,
    "torus": torus,
    "grid": grid,
    "regular": regular,
    "fully_connected": fully_connected,
    "erdos_renyi": erdos_renyi,
    "watts_strogatz": watts_strogatz,
    "star": star,
    "exponential": exponential,
    "dumbbell": dumbbell,
    "knn": knn,
}

# Parameters each generator takes besides n (and seed), and which must be given.
_PARAMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ring": ((), ()),
    "torus": (("rows",), ()),
    "grid": (("rows",), ()),
    "regular": (("degree",), ("degree",)),
    "fully_connected": ((), ()),
    "erdos_renyi": (("p",), ("p",)),
    "watts_strogatz": (("k", "p"), ("k", "p")),
    "star": ((), ()),
    "exponential": ((), ()),
    "dumbbell": (("bridges",), ()),
    "knn": (("degree", "pick"), ("degree",)),
}
_SEEDED = {"regular", "erdos_renyi", "watts_strogatz", "knn"}
_KNOWN_PARAMS = ("degree", "p", "k", "rows", "bridges", "pick")


def _is_int(x: Any) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)


def _is_real(x: Any) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(float(x))


def check_params(kind: str, n: int, **params: Any) -> None:
    """Reject impossible graph parameters before any work, naming the config key and the fix.

    ``None`` values count as unset. Known parameters that ``kind`` does not use
    (e.g. ``degree`` for a ring) are ignored, so one config section can switch kinds.
    """
    if kind not in TOPOLOGIES:
        raise ValueError(
            f"topology.kind = {kind!r} is unknown; choose one of: {', '.join(TOPOLOGIES)} "
            "or give a generator by import path 'package.module:function'"
        )
    unknown = sorted(set(params) - set(_KNOWN_PARAMS))
    if unknown:
        raise ValueError(
            f"unknown topology parameter(s) {', '.join(unknown)}; valid: {', '.join(_KNOWN_PARAMS)}"
        )
    if not _is_int(n) or n < 1:
        raise ValueError(f"nodes = {n!r} must be an integer >= 1")

    accepted, required = _PARAMS[kind]
    given = {key: value for key, value in params.items() if value is not None and key in accepted}
    for key in required:
        if key not in given:
            raise ValueError(f"topology.kind = {kind!r} needs topology.options.{key}")
    for key in ("degree", "k", "rows", "bridges"):
        if key in given and not _is_int(given[key]):
            raise ValueError(f"topology.options.{key} = {given[key]!r} must be an integer")
    if "p" in given and not _is_real(given["p"]):
        raise ValueError(f"topology.options.p = {given['p']!r} must be a number")

    if kind == "knn":
        if given.get("pick", "least") not in ("least", "most"):
            raise ValueError(f"topology.options.pick = {given['pick']!r} must be 'least' or 'most' (similar)")
        if not 1 <= given["degree"] < n:
            raise ValueError(f"topology.options.degree = {given['degree']} must be in 1..{n - 1} (nodes - 1)")
    elif kind == "regular":
        d = given["degree"]
        if d < 1:
            raise ValueError(f"topology.options.degree = {d} must be >= 1")
        if d >= n:
            raise ValueError(
                f"topology.options.degree = {d} must be < nodes = {n}; lower the degree or add nodes"
            )
        if (n * d) % 2:
            raise ValueError(
                f"topology.options.degree = {d} with nodes = {n}: n·d must be even: "
                "change topology.options.degree or nodes"
            )
        if d == 1 and n > 2:
            raise ValueError(
                f"topology.options.degree = 1 splits nodes = {n} into disconnected pairs; "
                "use topology.options.degree >= 2"
            )
    elif kind == "erdos_renyi":
        p = given["p"]
        if not 0 < p <= 1:
            raise ValueError(f"topology.options.p = {p} must be in (0, 1]; it is the edge probability")
    elif kind == "watts_strogatz":
        k, p = given["k"], given["p"]
        if k < 2:
            raise ValueError(f"topology.options.k = {k} must be >= 2 (neighbours in the ring lattice)")
        if k >= n:
            raise ValueError(f"topology.options.k = {k} must be < nodes = {n}; lower topology.options.k or add nodes")
        if k % 2:
            raise ValueError(
                f"topology.options.k = {k} must be even (k/2 neighbours on each side); "
                f"use topology.options.k = {k - 1} or {k + 1}"
            )
        if not 0 <= p <= 1:
            raise ValueError(f"topology.options.p = {p} must be in [0, 1]; it is the rewiring probability")
    elif kind == "dumbbell":
        bridges = given.get("bridges", 1)
        if n < 2 or not 1 <= bridges <= n // 2:
            raise ValueError(f"topology.kind = 'dumbbell' needs nodes >= 2 and topology.options.bridges in "
                             f"1..{max(1, n // 2)} (edges between the two cliques), got nodes = {n}, bridges = {bridges}")
    elif kind in ("torus", "grid") and "rows" in given:
        rows = given["rows"]
        if rows < 1 or n % rows:
            divisors = [r for r in range(1, n + 1) if n % r == 0]
            shown = ", ".join(map(str, divisors[:12])) + (", ..." if len(divisors) > 12 else "")
            raise ValueError(
                f"topology.options.rows = {rows} must divide nodes = {n}; use one of {shown} "
                "or leave topology.options.rows unset"
            )


def build(kind: str, n: int, seed: int | None = 0,
          label_counts: np.ndarray | Callable[[], np.ndarray] | None = None, **params: Any) -> nx.Graph:
    """Validate with :func:`check_params`, then generate; ``seed`` only matters for random kinds,
    ``label_counts`` (nodes × classes training labels, or a function giving them, called only by
    a generator that takes them) for those built on the data (``knn``).

    ``kind`` may also be a user's generator by import path: a function ``(n, **options)``
    (taking ``seed`` too if it is random, ``label_counts`` if it reads the data) that returns
    a networkx graph on nodes 0..n-1.
    """
    if kind not in TOPOLOGIES and ":" in kind:
        from meshlearn import plugins

        G = plugins.build("topology", kind, params, n=n, seed=seed, label_counts=_counts(label_counts))
        if not isinstance(G, nx.Graph) or set(G.nodes) != set(range(n)):
            raise ValueError(f"topology.kind = {kind!r} must return a networkx graph on nodes 0..{n - 1}, "
                             f"got {type(G).__name__} with {getattr(G, 'number_of_nodes', lambda: '?')()} nodes")
        return _relabel_sorted(nx.Graph(G))
    check_params(kind, n, **params)
    accepted, _ = _PARAMS[kind]
    kwargs = {key: value for key, value in params.items() if value is not None and key in accepted}
    if kind in _SEEDED:
        kwargs["seed"] = seed
    if "label_counts" in inspect.signature(TOPOLOGIES[kind]).parameters:   # built on the data
        kwargs["label_counts"] = _counts(label_counts)
    return TOPOLOGIES[kind](n, **kwargs)


def _counts(label_counts: np.ndarray | Callable[[], np.ndarray] | None) -> np.ndarray | None:
    return label_counts() if callable(label_counts) else label_counts
