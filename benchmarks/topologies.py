"""Which topology buys the most accuracy per byte: static, dynamic, epidemic and federated.

64 nodes learn Fashion-MNIST split into label shards (2 shards per node: most nodes see two
classes), each training an MLP (784-64-10, 50,890 parameters) for 10 local SGD steps of
batch 16 per round, for the same number of rounds and seed in every variant:

    ring            static ring (degree 2), Metropolis-Hastings weights
    regular5        a static random 5-regular graph
    dynamic5        a random 5-regular graph re-drawn every round (from the shared seed)
    fully           fully connected (degree 63): every node averages all models each round
    epidemic5       Epidemic Learning: each node pushes to 5 random peers per round and
                    averages itself with whatever arrived
    fedavg          FedAvg: node 0 is the server, all 63 clients train every round

Accuracy is the mean test accuracy of all nodes' models (FedAvg: the server's model), on
2,000 test samples. Bytes are the exact wire sizes each node sent (FedAvg: mean over the
server and its clients). Writes one run directory per variant under --out, plus
``accuracy.png`` (accuracy against rounds and against bytes per node). About 5 minutes on
2 cores:

    python benchmarks/topologies.py [--rounds 200] [--out runs/topologies] [--only dynamic5,fully]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from meshlearn import plotting
from meshlearn.config import parse_config
from meshlearn.results import read_jsonl
from meshlearn.runner import run_experiment

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"

VARIANTS: dict[str, dict] = {
    "ring": {"topology": {"kind": "ring"}},
    "regular5": {"topology": {"kind": "regular", "degree": 5}},
    "dynamic5": {"topology": {"kind": "regular", "degree": 5, "dynamic": True}},
    "fully": {"topology": {"kind": "fully_connected"}},
    "epidemic5": {"topology": {"kind": "epidemic", "peers": 5}},
    "fedavg": {"topology": {"kind": "star"}, "algorithm": {"name": "fedavg", "client_fraction": 1.0}},
}


def config(variant: str, nodes: int, rounds: int, root: str) -> dict:
    return {
        "name": variant, "seed": 1, "nodes": nodes, "rounds": rounds,
        "data": {"dataset": "fashion-mnist", "root": root, "partition": "shards", "shards_per_node": 2},
        "model": {"name": "mlp", "options": {"hidden": [64]}},
        "training": {"local_steps": 10, "batch_size": 16, "lr": 0.05},
        "evaluation": {"every": max(1, rounds // 25), "test_samples": 2000},
        **VARIANTS[variant],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--out", default="runs/topologies")
    parser.add_argument("--root", default=FASHION_MNIST, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants to run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; use {', '.join(VARIANTS)}")

    rows = {}
    for name in names:
        summary = run_experiment(parse_config(config(name, args.nodes, args.rounds, args.root)), out / name)
        rows[name] = (read_jsonl(out / name / "rounds.jsonl"), summary)
        print(f"{name}: {rows[name][0][-1]['test_acc_mean']:.4f} after {args.rounds} rounds "
              f"({summary['wall_time_s']:.0f} s)", flush=True)

    runs = plotting.load_runs([out / name for name in names])
    plotting.plot_runs(runs, out / "accuracy.png", metric="test_acc_mean", x_axes=("round", "bytes"))

    print(f"\n{args.nodes} nodes, Fashion-MNIST shards (2/node), MLP 784-64-10, {args.rounds} rounds")
    print(f"{'variant':<10} {'mean acc':>8} {'best acc':>8} {'avg-model':>9} {'MB/node':>8} {'bytes/fully':>11} "
          f"{'spectral gap':>12} {'s/round':>8}")
    fully = rows["fully"][0][-1]["bytes_sent_per_node"] if "fully" in rows else None
    for name, (curve, summary) in rows.items():
        last = curve[-1]
        avg = last.get("avg_model_acc")
        ratio = f"{last['bytes_sent_per_node'] / fully:.4f}" if fully else "-"
        gap = last.get("spectral_gap")
        print(f"{name:<10} {last['test_acc_mean']:>8.4f} {max(r['test_acc_mean'] for r in curve):>8.4f} "
              f"{'-' if avg is None else f'{avg:.4f}':>9} {last['bytes_sent_per_node'] / 1e6:>8.2f} {ratio:>11} "
              f"{'-' if gap is None else f'{gap:.3f}':>12} {summary['time_per_round_s']:>8.3f}")
    print(f"\nplot: {out / 'accuracy.png'}")


if __name__ == "__main__":
    main()
