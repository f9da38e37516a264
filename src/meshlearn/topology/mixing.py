"""Gossip mixing matrices and the checks that tell whether averaging will converge.

A round of gossip replaces the stacked node models X by W X. Consensus on the exact
average needs W doubly stochastic (the average is preserved and is a fixed point) on a
connected graph; how fast it gets there is governed by the spectral gap
1 - max(|λ2|, |λn|). Matrices are ``scipy.sparse.csr_matrix`` (float64, N × N, row i =
node i) because real graphs are sparse and W X is then one sparse product.
"""

from __future__ import annotations

from typing import Any, Callable

import networkx as nx
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

__all__ = [
    "metropolis_hastings",
    "uniform",
    "max_degree",
    "WEIGHTS",
    "mixing_matrix",
    "is_connected",
    "is_symmetric",
    "is_doubly_stochastic",
    "spectral_gap",
    "describe",
]

#: Above this many nodes :func:`spectral_gap` uses a sparse eigensolver instead of a dense one.
DENSE_LIMIT = 2048


def _edges_and_degrees(G: nx.Graph) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Edge endpoints (self-loops dropped: a node always keeps its own model) and degrees."""
    n = G.number_of_nodes()
    if set(G.nodes) != set(range(n)):
        raise ValueError("graph nodes must be the integers 0..n-1 (they index the matrix rows)")
    pairs = np.array([(u, v) for u, v in G.edges() if u != v], dtype=np.int64).reshape(-1, 2)
    u, v = pairs[:, 0], pairs[:, 1]
    degree = np.bincount(np.concatenate([u, v]), minlength=n).astype(np.float64)
    return n, u, v, degree


def _assemble(n: int, u: np.ndarray, v: np.ndarray, w_uv: np.ndarray, w_vu: np.ndarray) -> sp.csr_matrix:
    """Off-diagonal weights plus a diagonal that makes every row sum to one."""
    rows = np.concatenate([u, v])
    cols = np.concatenate([v, u])
    vals = np.concatenate([w_uv, w_vu])
    off = sp.csr_matrix((vals, (rows, cols)), shape=(n, n), dtype=np.float64)
    diag = 1.0 - np.asarray(off.sum(axis=1)).ravel()
    W = (off + sp.diags(diag, format="csr")).tocsr()
    W.sort_indices()
    return W


def metropolis_hastings(G: nx.Graph) -> sp.csr_matrix:
    """w_ij = 1 / (1 + max(d_i, d_j)) on edges, w_ii = 1 - Σ_j w_ij.

    Symmetric and doubly stochastic on any graph using only neighbour degrees, which is
    why it is the default for irregular topologies.
    """
    n, u, v, d = _edges_and_degrees(G)
    w = 1.0 / (1.0 + np.maximum(d[u], d[v]))
    return _assemble(n, u, v, w, w)


def uniform(G: nx.Graph) -> sp.csr_matrix:
    """w_ij = 1 / (d_i + 1) for j in N(i) ∪ {i}: each node averages itself and its neighbours equally.

    Row-stochastic only; it is doubly stochastic (and so converges to the true average)
    only on regular graphs. On irregular graphs consensus is biased toward high-degree nodes.
    """
    n, u, v, d = _edges_and_degrees(G)
    return _assemble(n, u, v, 1.0 / (d[u] + 1.0), 1.0 / (d[v] + 1.0))


def max_degree(G: nx.Graph) -> sp.csr_matrix:
    """w_ij = 1 / (d_max + 1) on edges, w_ii = 1 - d_i / (d_max + 1).

    Symmetric and doubly stochastic on any graph, but needs the global maximum degree
    and mixes slowly when degrees are very uneven (low-degree nodes mostly keep their model).
    """
    n, u, v, d = _edges_and_degrees(G)
    d_max = float(d.max()) if n else 0.0
    w = np.full(u.shape, 1.0 / (d_max + 1.0))
    return _assemble(n, u, v, w, w)


WEIGHTS: dict[str, Callable[[nx.Graph], sp.csr_matrix]] = {
    "metropolis_hastings": metropolis_hastings,
    "uniform": uniform,
    "max_degree": max_degree,
}


def mixing_matrix(G: nx.Graph, rule: str = "metropolis_hastings") -> sp.csr_matrix:
    """Mixing matrix of ``G`` under the weighting ``rule`` (a key of :data:`WEIGHTS`)."""
    try:
        fn = WEIGHTS[rule]
    except KeyError:
        raise ValueError(
            f"topology.weights = {rule!r} is unknown; choose one of: {', '.join(WEIGHTS)}"
        ) from None
    return fn(G)


def is_connected(G: nx.Graph) -> bool:
    """True when every node can reach every other (an empty graph is not connected)."""
    return G.number_of_nodes() > 0 and nx.is_connected(G)


def _as_csr(W: Any) -> sp.csr_matrix:
    return sp.csr_matrix(W, dtype=np.float64)


def is_symmetric(W: Any, tol: float = 1e-12) -> bool:
    """True when |W - Wᵀ| ≤ tol entrywise; symmetric W means no node's model counts more in the average."""
    W = _as_csr(W)
    diff = abs(W - W.T)
    return diff.nnz == 0 or float(diff.max()) <= tol


def is_doubly_stochastic(W: Any, tol: float = 1e-9) -> bool:
    """Non-negative with rows and columns summing to one: gossip then preserves the average."""
    W = _as_csr(W)
    if W.shape[0] != W.shape[1]:
        return False
    if W.nnz and float(W.data.min()) < -tol:
        return False
    rows = np.asarray(W.sum(axis=1)).ravel()
    cols = np.asarray(W.sum(axis=0)).ravel()
    return bool(np.all(np.abs(rows - 1) <= tol) and np.all(np.abs(cols - 1) <= tol))


def spectral_gap(W: Any, dense_limit: int = DENSE_LIMIT) -> float:
    """1 - second-largest eigenvalue magnitude of W.

    The consensus error shrinks by about (1 - gap) per round, so a larger gap means
    faster mixing; 0 means no convergence (e.g. a disconnected graph). Uses a dense
    solver up to ``dense_limit`` nodes and a sparse Lanczos solver above. Intended for
    symmetric W; a non-symmetric W falls back to a general eigensolver.
    """
    W = _as_csr(W)
    n = W.shape[0]
    if n < 2:
        return 1.0
    symmetric = is_symmetric(W, tol=1e-12)
    if n <= dense_limit:
        dense = W.toarray()
        eig = np.linalg.eigvalsh(dense) if symmetric else np.linalg.eigvals(dense)
        mags = np.sort(np.abs(eig))[::-1]
    else:
        v0 = np.random.default_rng(0).standard_normal(n)  # all-ones is an eigenvector: avoid it
        if symmetric:
            eig = spla.eigsh(W, k=2, which="LM", v0=v0, return_eigenvectors=False)
        else:
            eig = spla.eigs(W, k=2, which="LM", v0=v0, return_eigenvectors=False)
        mags = np.sort(np.abs(eig))[::-1]
    return float(1.0 - mags[1])


def describe(G: nx.Graph, W: Any | None = None) -> dict[str, Any]:
    """Summary of a graph and its mixing matrix (Metropolis-Hastings when W is None).

    Values are plain Python types so the dict can go straight to JSON.
    """
    if W is None:
        W = metropolis_hastings(G)
    degrees = [d for _, d in G.degree()]
    connected = is_connected(G)
    return {
        "nodes": G.number_of_nodes(),
        "edges": G.number_of_edges(),
        "degree_min": int(min(degrees)) if degrees else 0,
        "degree_mean": float(np.mean(degrees)) if degrees else 0.0,
        "degree_max": int(max(degrees)) if degrees else 0,
        "diameter": int(nx.diameter(G)) if connected else None,
        "connected": connected,
        "symmetric": is_symmetric(W),
        "doubly_stochastic": is_doubly_stochastic(W),
        "spectral_gap": spectral_gap(W),
    }
