"""``meshlearn topology``: generate, inspect and draw communication graphs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

DESCRIPTION = """\
Work with communication graphs outside a run: generate one into a file that a
config can point to (topology.kind = 'file', topology.path = FILE), check
whether gossip on it converges and how fast (spectral gap of the mixing
matrix), or draw it.

Files use DecentralizePy's formats: an edge list (first line = node count, then
'u v' per edge) or an adjacency list (first line = node count, then
'i neighbour neighbour ...' per node).
"""

EPILOG = """\
examples:
  meshlearn topology generate regular --nodes 64 --degree 4 --seed 1 -o regular64.edges
  meshlearn topology inspect regular64.edges --weights metropolis_hastings
  meshlearn topology draw regular64.edges -o regular64.png --layout kamada_kawai
"""

# Must match meshlearn.topology.TOPOLOGIES / WEIGHTS; kept literal so `--help`
# does not import networkx and scipy.
KINDS = (
    "ring", "torus", "grid", "regular", "fully_connected",
    "erdos_renyi", "watts_strogatz", "star", "exponential",
)
WEIGHT_RULES = ("metropolis_hastings", "uniform", "max_degree")
LAYOUTS = ("spring", "circular", "kamada_kawai")


def add_parser(subparsers: Any) -> None:
    """Register ``topology`` and its sub-commands on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "topology",
        help="generate, inspect and draw communication graphs",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    sub = parser.add_subparsers(dest="topology_command", metavar="COMMAND")

    gen = sub.add_parser(
        "generate",
        help="write a generated graph to an edge- or adjacency-list file",
        description="Generate a graph and write it to FILE. Random kinds (regular, "
        "erdos_renyi, watts_strogatz) are redrawn until connected and are reproducible "
        "from --seed.",
    )
    gen.add_argument("kind", choices=KINDS, metavar="KIND", help=f"one of: {', '.join(KINDS)}")
    gen.add_argument("--nodes", "-n", type=int, required=True, help="number of nodes")
    gen.add_argument("--degree", type=int, help="node degree (regular)")
    gen.add_argument("--p", type=float, help="edge probability (erdos_renyi) or rewiring probability (watts_strogatz)")
    gen.add_argument("--k", type=int, help="even number of ring-lattice neighbours (watts_strogatz)")
    gen.add_argument("--rows", type=int, help="rows of the layout (torus, grid; must divide --nodes)")
    gen.add_argument("--seed", type=int, default=0, help="seed of random kinds (default: %(default)s)")
    gen.add_argument(
        "--format", choices=("edges", "adjacency"), default=None,
        help="file format (default: adjacency for a .adj file, else edges)",
    )
    gen.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write")
    gen.set_defaults(func=run_generate)

    insp = sub.add_parser(
        "inspect",
        help="print size, degrees, diameter and spectral gap of a graph file",
        description="Describe a graph file and its mixing matrix: connectivity, degrees, "
        "diameter, whether W is symmetric and doubly stochastic (needed for exact "
        "averaging), and its spectral gap (larger = faster consensus).",
    )
    insp.add_argument("file", metavar="FILE", help="edge- or adjacency-list file")
    insp.add_argument(
        "--weights", choices=WEIGHT_RULES, default="metropolis_hastings",
        help="mixing-matrix rule (default: %(default)s)",
    )
    insp.add_argument("--format", choices=("edges", "adjacency"), default=None,
                      help="file format (default: from the suffix or the content)")
    insp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    insp.set_defaults(func=run_inspect)

    draw = sub.add_parser(
        "draw",
        help="draw a graph file to an image",
        description="Draw a graph file with networkx and matplotlib; the image format "
        "follows the output extension.",
    )
    draw.add_argument("file", metavar="FILE", help="edge- or adjacency-list file")
    draw.add_argument("-o", "--output", required=True, metavar="IMAGE", help="image to write (e.g. graph.png)")
    draw.add_argument("--layout", choices=LAYOUTS, default="spring", help="node placement (default: %(default)s)")
    draw.add_argument("--format", choices=("edges", "adjacency"), default=None,
                      help="file format (default: from the suffix or the content)")
    draw.set_defaults(func=run_draw)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn expected failures (bad parameters, unreadable files) into one line and exit code 2."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except FileNotFoundError as exc:
            return _error(f"{exc.filename}: no such file")
        except (ValueError, OSError) as exc:
            return _error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@_guarded
def run_generate(args: argparse.Namespace) -> int:
    """Execute ``meshlearn topology generate``; returns the exit code."""
    from meshlearn import topology

    params = {"degree": args.degree, "p": args.p, "k": args.k, "rows": args.rows}
    G = topology.build(args.kind, args.nodes, seed=args.seed, **params)
    out = Path(args.output)
    fmt = args.format or ("adjacency" if out.suffix.lower() == ".adj" else "edges")
    if out.parent != Path(""):
        out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "adjacency":
        topology.write_adjacency_list(G, out)
    else:
        topology.write_edge_list(G, out)
    print(f"wrote {args.kind} graph ({G.number_of_nodes()} nodes, {G.number_of_edges()} edges) to {out}")
    return 0


@_guarded
def run_inspect(args: argparse.Namespace) -> int:
    """Execute ``meshlearn topology inspect``; returns the exit code."""
    from meshlearn import topology

    G = topology.read_graph(args.file, format=args.format)
    W = topology.mixing_matrix(G, args.weights)
    info = topology.describe(G, W)
    if args.json:
        print(json.dumps({"file": str(args.file), "weights": args.weights, **info}, indent=2))
        return 0

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{args.file} ({args.weights} weights)")
    table.add_column("property")
    table.add_column("value", justify="right")
    for key, value in info.items():
        if isinstance(value, float):
            shown = f"{value:.6g}"
        elif value is None:
            shown = "-"
        else:
            shown = str(value)
        table.add_row(key, shown)
    Console().print(table)
    return 0


@_guarded
def run_draw(args: argparse.Namespace) -> int:
    """Execute ``meshlearn topology draw``; returns the exit code."""
    from meshlearn import topology

    G = topology.read_graph(args.file, format=args.format)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    if args.layout == "circular":
        pos = nx.circular_layout(G)
    elif args.layout == "kamada_kawai":
        pos = nx.kamada_kawai_layout(G)
    else:
        pos = nx.spring_layout(G, seed=0)  # fixed seed: the same file gives the same picture

    n = G.number_of_nodes()
    fig, ax = plt.subplots(figsize=(7, 7))
    try:
        nx.draw_networkx_edges(G, pos, ax=ax, alpha=0.4, width=0.8 if n <= 200 else 0.3)
        nx.draw_networkx_nodes(G, pos, ax=ax, node_size=300 if n <= 50 else max(10, 3000 // n))
        if n <= 50:
            nx.draw_networkx_labels(G, pos, ax=ax, font_size=8)
        ax.set_title(f"{Path(args.file).name}: {n} nodes, {G.number_of_edges()} edges")
        ax.set_axis_off()
        out = Path(args.output)
        if out.parent != Path(""):
            out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    print(f"wrote {out}")
    return 0
