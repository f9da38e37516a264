"""What privacy costs in accuracy, bytes and time: plain D-PSGD vs secure aggregation vs DP-SGD.

32 nodes learn Fashion-MNIST split by a Dirichlet(0.5) partition on a random 5-regular
graph (Metropolis-Hastings weights), each training an MLP (784-64-10, 50,890 parameters)
for 10 local SGD steps of batch 16 per round, with the same seed in every variant:

    plain       D-PSGD, float32 models
    secagg32    secure aggregation: pairwise-masked messages in Z_2^32, 16 fraction bits
    secagg64    the same in Z_2^64 with 32 fraction bits (twice the bytes)
    dp-eps8     DP-SGD (clip 1.0, noise solved per node for ε = 8 at δ = 1e-5 after all rounds)
    dp-eps2     the same for ε = 2

Prints final mean node test accuracy, averaged-model accuracy, its difference to plain,
bytes per node, ε reached, and time per round; plots accuracy vs rounds, vs bytes and vs ε
into ``--out``. About 4 minutes on 2 cores:

    python benchmarks/privacy.py [--rounds 100] [--nodes 32] [--out runs/privacy] [--only plain,secagg32]
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
    "plain": {},
    "secagg32": {"secagg": {"ring_bits": 32}},
    "secagg64": {"secagg": {"ring_bits": 64}},
    "dp-eps8": {"dp": {"clip_norm": 1.0, "target_epsilon": 8.0, "delta": 1e-5}},
    "dp-eps2": {"dp": {"clip_norm": 1.0, "target_epsilon": 2.0, "delta": 1e-5}},
}


def config(variant: str, nodes: int, rounds: int, root: str) -> dict:
    return {
        "name": variant, "seed": 1, "nodes": nodes, "rounds": rounds,
        "data": {"dataset": "fashion-mnist", "root": root, "partition": "dirichlet",
                 "partition_options": {"alpha": 0.5}},
        "topology": {"kind": "regular", "options": {"degree": 5}},
        "model": {"name": "mlp", "options": {"hidden": [64]}},
        "training": {"local_steps": 10, "batch_size": 16, "lr": 0.05},
        "privacy": VARIANTS[variant],
        "evaluation": {"every": max(1, rounds // 20), "test_samples": 2000},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--out", default="runs/privacy")
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
        t0 = time.perf_counter()
        summary = run_experiment(parse_config(config(name, args.nodes, args.rounds, args.root)), out / name)
        curve = read_jsonl(out / name / "rounds.jsonl")
        rows[name] = (curve, summary, time.perf_counter() - t0)
        print(f"{name}: {curve[-1]['test_acc_mean']:.4f} after {args.rounds} rounds "
              f"({rows[name][2]:.0f} s)", flush=True)

    runs = plotting.load_runs([out / name for name in names])
    plotting.plot_runs(runs, out / "accuracy.png", metric="test_acc_mean", x_axes=("round", "bytes"))
    dp_runs = [run for run, name in zip(runs, names) if name.startswith("dp")]
    if dp_runs:
        plotting.plot_runs(dp_runs, out / "accuracy_vs_epsilon.png", metric="test_acc_mean", x_axes=("epsilon",))

    print(f"\n{args.nodes} nodes, Fashion-MNIST Dirichlet(0.5), 5-regular, MLP 784-64-10, {args.rounds} rounds")
    print(f"{'variant':<10} {'mean acc':>8} {'Δ vs plain':>10} {'max |Δ| curve':>13} {'avg-model':>9} "
          f"{'MB/node':>8} {'bytes/plain':>11} {'ε mean':>7} {'s/round':>8}")
    plain = rows.get("plain")
    for name, (curve, summary, seconds) in rows.items():
        last = curve[-1]
        delta = gap = "-"
        if plain:
            delta = f"{last['test_acc_mean'] - plain[0][-1]['test_acc_mean']:+.4f}"
            gap = f"{max(abs(a['test_acc_mean'] - b['test_acc_mean']) for a, b in zip(curve, plain[0])):.4f}"
        ratio = f"{last['bytes_sent_per_node'] / plain[0][-1]['bytes_sent_per_node']:.3f}" if plain else "-"
        eps = last.get("epsilon_per_node")
        avg = last.get("avg_model_acc")
        print(f"{name:<10} {last['test_acc_mean']:>8.4f} {delta:>10} {gap:>13} "
              f"{'-' if avg is None else f'{avg:.4f}':>9} {last['bytes_sent_per_node'] / 1e6:>8.2f} {ratio:>11} "
              f"{'-' if eps is None else f'{eps:.2f}':>7} {summary['time_per_round_s']:>8.3f}")
        if "secagg_aborts_per_node" in last:
            print(f"{'':<10} aborted aggregates per node: {last['secagg_aborts_per_node']:.2f}, "
                  f"clipped coordinates per node: {last['secagg_clipped_per_node']:.0f}")
    print(f"\nplots: {out / 'accuracy.png'}" + (f", {out / 'accuracy_vs_epsilon.png'}" if dp_runs else ""))


if __name__ == "__main__":
    main()
