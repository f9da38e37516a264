"""A ring of cliques: nodes form fully connected cliques, and one edge from each clique to the
next closes a ring. Mixing inside a clique is exact in one step and the ring carries it on, at
a fraction of the edges of a fully connected graph; with ``interleave`` a clique gathers nodes
of spread-out ids, which with a label-sorted partition means many classes per clique, the idea
of D-Cliques (Bellet et al., 2022)."""

from __future__ import annotations

import itertools
from typing import Annotated

import networkx as nx
from pydantic import Field


def ring_of_cliques(n: int, *,
                    clique_size: Annotated[int, Field(ge=1, description="nodes per clique; divides nodes")] = 4,
                    interleave: Annotated[bool, Field(description="clique c holds nodes c, c + m, c + 2m... "
                                                      "(m cliques), not a block of consecutive ids")] = True,
                    ) -> nx.Graph:
    """Cliques of ``clique_size`` nodes joined in a ring (deterministic, so it takes no seed)."""
    if n % clique_size:
        raise ValueError(f"topology.options.clique_size = {clique_size} must divide nodes = {n}")
    m = n // clique_size
    cliques = [list(range(c, n, m)) if interleave else list(range(c * clique_size, (c + 1) * clique_size))
               for c in range(m)]
    graph = nx.empty_graph(n)
    for clique in cliques:
        graph.add_edges_from(itertools.combinations(clique, 2))
    if m > 1:
        graph.add_edges_from((cliques[c][-1], cliques[(c + 1) % m][0]) for c in range(m))
    return graph
