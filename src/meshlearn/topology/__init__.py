"""Communication graphs, their files and their gossip mixing matrices.

Generators build undirected ``networkx`` graphs on nodes 0..n-1 (random ones always
connected and reproducible from a seed), ``check_params`` rejects impossible
parameters before any work, ``io`` reads and writes DecentralizePy's edge- and
adjacency-list files, and ``mixing`` turns a graph into a sparse mixing matrix W
and reports whether and how fast gossip averaging with it converges.
"""

from .generators import (
    TOPOLOGIES,
    build,
    check_params,
    dumbbell,
    erdos_renyi,
    exponential,
    fully_connected,
    grid,
    regular,
    ring,
    star,
    torus,
    watts_strogatz,
)
from .io import (
    FORMATS,
    read_adjacency_list,
    read_edge_list,
    read_graph,
    write_adjacency_list,
    write_edge_list,
)
from .mixing import (
    WEIGHTS,
    describe,
    is_connected,
    is_doubly_stochastic,
    is_symmetric,
    max_degree,
    metropolis_hastings,
    mixing_matrix,
    spectral_gap,
    uniform,
)

__all__ = [
    "TOPOLOGIES",
    "build",
    "check_params",
    "dumbbell",
    "erdos_renyi",
    "exponential",
    "fully_connected",
    "grid",
    "regular",
    "ring",
    "star",
    "torus",
    "watts_strogatz",
    "FORMATS",
    "read_adjacency_list",
    "read_edge_list",
    "read_graph",
    "write_adjacency_list",
    "write_edge_list",
    "WEIGHTS",
    "describe",
    "is_connected",
    "is_doubly_stochastic",
    "is_symmetric",
    "max_degree",
    "metropolis_hastings",
    "mixing_matrix",
    "spectral_gap",
    "uniform",
]
