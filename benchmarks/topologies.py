"""Topologies on non-IID data: accuracy against rounds and against bytes, FedAvg included.

64 nodes learn Fashion-MNIST split into label shards (2 shards per node, so most nodes see
two classes); each trains an MLP (784-64-10, 50,890 parameters) for 10 local SGD steps of
batch 16 per round, for the same number of rounds on every topology:

    ring            static ring (degree 2), Metropolis-Hastings weights (slowest mixing)
    regular5        a static random 5-regular graph
    dynamic5        a random 5-regular graph re-drawn every round from the shared seed (same
                    bytes as regular5)
    epidemic5       Epidemic Learning, s = 5: each node pushes to 5 random peers per round
                    and receivers average themselves with what arrived, equal weights
    sampled5        the same pushes to 5 peers drawn from each node's own peer-sampling view
                    of 10 nodes (Jelasity et al. 2007), not from the whole membership
    fully           fully connected (degree 63): every node averages all models every round
    fedavg          FedAvg on a star: a server (node 0, no data) and the same 64 data shards as
                    clients (65 nodes); all clients every round unless --fedavg-fraction

Bytes are the exact wire sizes the simulator charges; "MB/node" is the mean over all nodes
(FedAvg's server sends one model per sampled client per round, its clients one each: see
"max MB/node" for the server). FedAvg's accuracy is that of the server's model (there is no
averaged model to report). "bytes/fully" compares with the fully connected graph, "best acc"
is the best evaluation of the run, "spectral gap" the mean over the evaluated rounds' graphs
(a round's push graph has gap 0 when some node heard from nobody). Writes one run directory per topology under --out,
``accuracy.png`` (mean node test accuracy against rounds and against cumulative bytes sent per
node, log scale) and ``avg_model.png``, and prints a table. One round of 64 nodes takes about
0.15 s on 2 cores, so the six runs of 200 rounds take about 5 minutes; --quick is a
10-second smoke test:

    python benchmarks/topologies.py [--rounds 200] [--nodes 64] [--out runs/topologies]
                                    [--only dynamic5,fully] [--fedavg-fraction 0.25] [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from matplotlib.ticker import FuncFormatter

from meshlearn import plotting
from meshlearn.config import parse_config
from meshlearn.results import read_jsonl
from meshlearn.runner import run_experiment

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
DEGREE = 5

TOPOLOGIES: dict[str, dict] = {
    "ring": {"kind": "ring"},
    "regular5": {"kind": "regular", "options": {"degree": DEGREE}},
    "dynamic5": {"kind": "regular", "options": {"degree": DEGREE}, "dynamic": True},
    "epidemic5": {"kind": "epidemic", "peers": DEGREE},
    "sampled5": {"kind": "peer_sampling", "peers": DEGREE, "options": {"view_size": 2 * DEGREE}},
    "fully": {"kind": "fully_connected"},
    "fedavg": {"kind": "star"},
}


def config(name: str, args: argparse.Namespace) -> dict:
    fedavg = name == "fedavg"
    cfg = {
        "name": name, "seed": 1, "nodes": args.nodes + fedavg, "rounds": args.rounds,
        "data": {"dataset": "fashion-mnist", "root": args.root, "partition": "shards",
                 "partition_options": {"shards_per_node": 2}},
        "topology": TOPOLOGIES[name],
        "model": {"name": "mlp", "options": {"hidden": [64]}},
        "training": {"local_steps": 10, "batch_size": 16, "lr": 0.05},
        "evaluation": {"every": max(1, args.rounds // 30), "test_samples": 2000},
    }
    if fedavg:   # the server holds no data: its clients get the same shards as the decentralized nodes
        cfg["algorithm"] = {"name": "fedavg", "options": {"client_fraction": args.fedavg_fraction}}
    if args.threads:
        cfg["engine"] = {"threads": args.threads}
    if args.quick:   # a smoke test: a slice of the data, a few rounds
        cfg["data"]["options"] = {"limit_train": 3000, "limit_test": 500}
        cfg["evaluation"] = {"every": 1, "test_samples": 500}
        cfg["training"]["local_steps"] = 2
    return cfg


def plot(runs: list, path: Path, metric: str) -> None:
    """``metric`` against rounds and against bytes sent per node (log scale)."""
    runs = [run for run in runs if any(metric in r for r in run.rounds)]
    if not runs:
        return
    fig = plotting.build_figure(runs, metric=metric, x_axes=("round", "bytes"))
    ax = fig.axes[1]
    ax.set_xscale("log", nonpositive="mask")   # round 0 has sent nothing
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value / 1e6:g}"))
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, help="rounds of every run (default 200; --quick: 3)")
    parser.add_argument("--nodes", type=int, help="decentralized nodes, FedAvg's clients (default 64; --quick: 16)")
    parser.add_argument("--out", default="runs/topologies")
    parser.add_argument("--root", default=FASHION_MNIST, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--only", default=",".join(TOPOLOGIES), help="comma-separated topologies to run")
    parser.add_argument("--fedavg-fraction", type=float, default=1.0, help="FedAvg's client_fraction")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 16 nodes, 3 rounds of 2 local steps "
                        "on 3,000 training samples")
    args = parser.parse_args(argv)
    args.nodes = args.nodes or (16 if args.quick else 64)
    args.rounds = args.rounds or (3 if args.quick else 200)
    if args.nodes * DEGREE % 2 or args.nodes <= DEGREE:
        parser.error(f"--nodes must be even and above {DEGREE} (a {DEGREE}-regular graph)")
    out = Path(args.out)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(names) - set(TOPOLOGIES)
    if unknown:
        parser.error(f"unknown topologies {sorted(unknown)}; use {', '.join(TOPOLOGIES)}")

    rows = []
    for name in names:
        t0 = time.perf_counter()
        summary = run_experiment(parse_config(config(name, args)), out / name)
        curve = read_jsonl(out / name / "rounds.jsonl")
        rows.append((name, curve, summary))
        print(f"{name}: {curve[-1]['test_acc_mean']:.4f} after {args.rounds} rounds "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    runs = plotting.load_runs([out / name for name in names])
    plot(runs, out / "accuracy.png", "test_acc_mean")
    plot(runs, out / "avg_model.png", "avg_model_acc")

    fully = next((curve[-1]["bytes_sent_per_node"] for name, curve, _ in rows if name == "fully"), None)
    fraction = f", FedAvg client_fraction {args.fedavg_fraction:g}" if "fedavg" in names else ""
    print(f"\n{args.nodes} nodes, Fashion-MNIST shards (2/node), MLP 784-64-10, {args.rounds} rounds{fraction}")
    print(f"{'topology':<10} {'mean acc':>8} {'best acc':>8} {'avg-model':>9} {'MB/node':>9} {'max MB/node':>11} "
          f"{'bytes/fully':>11} {'spectral gap':>12} {'s/round':>8}")
    for name, curve, summary in rows:
        last = curve[-1]
        sent = last["bytes_sent_per_node"]
        ratio = f"{sent / fully:.4f}" if fully else "-"
        avg = last.get("avg_model_acc")
        gaps = [r["spectral_gap"] for r in curve if r.get("spectral_gap") is not None]
        gap = sum(gaps) / len(gaps) if gaps and name != "fedavg" else None   # FedAvg talks along its own graphs
        print(f"{name:<10} {last['test_acc_mean']:>8.4f} {max(r['test_acc_mean'] for r in curve):>8.4f} "
              f"{'-' if avg is None else f'{avg:.4f}':>9} {sent / 1e6:>9.2f} "
              f"{last['bytes_sent_per_node_max'] / 1e6:>11.2f} {ratio:>11} "
              f"{'-' if gap is None else f'{gap:.3f}':>12} {summary['time_per_round_s']:>8.3f}")
    print(f"\nplots: {out / 'accuracy.png'}, {out / 'avg_model.png'}")


if __name__ == "__main__":
    main()
