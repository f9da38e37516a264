"""Byzantine robustness: honest accuracy for every attack × aggregation rule, and what a rule costs.

Part 1 reproduces the decentralized setup of the robust-gossip papers (He, Karimireddy & Jaggi
2022; Gaucher et al. 2025) at their scale: 20 honest + 4 Byzantine nodes (placed at random
from the seed) on an Erdős–Rényi graph (p = 0.3) and on a two-clique dumbbell (12 + 12, one
bridge), Metropolis–Hastings weights, Fashion-MNIST split by Dirichlet(α = 1), an MLP
784-64-10 trained with 5 local SGD steps of batch 16 per round (lr 0.05). Each cell is the
honest nodes' mean test accuracy after the last round (mean ± std over 3 seeds); the "none"
row has no Byzantine node. Part 2 runs the same grid at 64 and 256 nodes with 1/6 of them
Byzantine (Erdős–Rényi, mean degree 8, one seed) and prints, per rule, its time per round
relative to the mean's in the same runs. Part 3 times the mixing step alone at 256 nodes:
one exchange, then each rule over the same inbox (median of 5).

    python benchmarks/byzantine.py [--parts 1,2,3] [--rounds 30] [--seeds 3] [--out runs/byzantine]
                                   [--root /usr/share/datasets/fashion-mnist] [--quick]

--quick is a one-minute smoke test on scikit-learn's bundled digits.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from meshlearn import plugins
from meshlearn.aggregation import AGGREGATORS, aggregate_models
from meshlearn.byzantine import ATTACKS
from meshlearn.config import parse_config
from meshlearn.engines.sim import SimEngine
from meshlearn.experiment import Experiment
from meshlearn.results import read_jsonl
from meshlearn.runner import run_experiment

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
ATTACK_NAMES = ["none", *ATTACKS]
RULES = list(AGGREGATORS)
GRAPHS = {"erdos_renyi": {"kind": "erdos_renyi", "options": {"p": 0.3}}, "dumbbell": {"kind": "dumbbell"}}


def config(args, nodes: int, byzantine: int, graph: dict, attack: str, rule: str, seed: int, rounds: int) -> dict:
    cfg = {
        "name": f"{attack}-{rule}", "seed": seed, "nodes": nodes, "rounds": rounds,
        "data": {"dataset": "fashion-mnist", "root": args.root, "partition": "dirichlet",
                 "partition_options": {"alpha": 1.0}},
        "topology": {**graph, "weights": "metropolis_hastings"},
        "model": {"name": "mlp", "options": {"hidden": [64]}},
        "training": {"local_steps": 5, "batch_size": 16, "lr": 0.05},
        "aggregation": {"name": rule},
        "evaluation": {"every": rounds, "test_samples": 2000, "average_model": False,
                       "stop_on_divergence": False},
    }
    if attack != "none":
        cfg["byzantine"] = {"count": byzantine, "attack": attack}
    if args.quick:
        cfg["data"] = {"dataset": "digits", "partition": "dirichlet", "partition_options": {"alpha": 1.0}}
        cfg["evaluation"]["test_samples"] = 300
    return cfg


def run(args, cfg: dict) -> tuple[float, float]:
    """(honest mean test accuracy after the last round, training seconds per round)."""
    folder = Path(args.out) / f"n{cfg['nodes']}-{cfg['topology']['kind']}-s{cfg['seed']}-{cfg['name']}"
    run_experiment(parse_config(cfg), folder, overwrite=True)
    last = read_jsonl(folder / "rounds.jsonl")[-1]
    acc = last.get("test_acc_mean")
    return (float("nan") if acc is None else acc), last["wall_time_s"] / max(1, last["round"])


def grid(args, nodes: int, byzantine: int, graph: dict, seeds: list[int], rounds: int) -> dict:
    results = {}
    for attack in ATTACK_NAMES:
        for rule in RULES:
            t0 = time.perf_counter()
            results[attack, rule] = [run(args, config(args, nodes, byzantine, graph, attack, rule, seed, rounds))
                                     for seed in seeds]
            accs = [acc for acc, _ in results[attack, rule]]
            print(f"  {attack:>10} × {rule:<16} {statistics.mean(accs):.4f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    return results


def table(title: str, results: dict, seeds: int) -> None:
    print(f"\n{title}: honest mean test accuracy" + (f" (mean ± std over {seeds} seeds)" if seeds > 1 else ""))
    print(f"{'attack':>10} | " + " | ".join(f"{rule:>16}" for rule in RULES))
    for attack in ATTACK_NAMES:
        cells = []
        for rule in RULES:
            accs = [acc for acc, _ in results[attack, rule]]
            std = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cells.append(f"{statistics.mean(accs):.3f} ± {std:.3f}" if seeds > 1 else f"{accs[0]:.3f}")
        print(f"{attack:>10} | " + " | ".join(f"{cell:>16}" for cell in cells))
    worst = {rule: min(statistics.mean(a for a, _ in results[attack, rule]) for attack in ATTACK_NAMES[1:])
             for rule in RULES}
    clean = {rule: statistics.mean(a for a, _ in results["none", rule]) for rule in RULES}
    print(f"{'worst drop':>10} | " + " | ".join(f"{clean[r] - worst[r]:>16.3f}" for r in RULES))


def round_times(title: str, results: dict) -> None:
    times = {rule: statistics.mean(t for attack in ATTACK_NAMES for _, t in results[attack, rule]) for rule in RULES}
    print(f"{title}: time per round relative to the mean's: " +
          ", ".join(f"{rule} {times[rule] / times['mean']:.2f}×" for rule in RULES))


def mixing_step(args, nodes: int) -> None:
    """Each rule over one 256-node inbox (honest messages only: the cost does not depend on them)."""
    cfg = parse_config(config(args, nodes, 0, {"kind": "erdos_renyi", "options": {"p": 8 / (nodes - 1)}},
                              "none", "mean", 0, 1))
    engine = SimEngine(Experiment.build(cfg))
    sharing = engine.algorithm.sharing
    params = engine.nodes.params
    params += 0.01 * torch.randn(params.shape, generator=torch.Generator().manual_seed(0))   # distinct models
    inbox = engine.exchange(engine.nodes, sharing.encode(engine.nodes, 1), 1)
    print(f"\nmixing step alone, {nodes} nodes × {params.shape[1]:,} parameters, mean degree "
          f"{inbox.weights.nnz / nodes:.1f} (median of 5):")
    base = None
    for rule in RULES:
        aggregator = plugins.build("aggregator", rule, rounds=1)
        aggregate_models(params, inbox, sharing.decode, aggregator)   # warm-up
        seconds = []
        for _ in range(5):
            t0 = time.perf_counter()
            aggregate_models(params, inbox, sharing.decode, aggregator)
            seconds.append(time.perf_counter() - t0)
        took = statistics.median(seconds)
        base = base or took
        print(f"  {rule:<16} {took * 1e3:8.1f} ms  {took / base:6.2f}× the mean", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="1,2,3", help="which parts to run (comma-separated)")
    parser.add_argument("--rounds", type=int, help="rounds of part 1 (default 30; part 2 runs 2/3 of them)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of part 1")
    parser.add_argument("--out", default="runs/byzantine")
    parser.add_argument("--root", default=FASHION_MNIST, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--quick", action="store_true", help="smoke test: digits, 2 rounds, 1 seed, 24 and 48 nodes")
    args = parser.parse_args(argv)
    parts = {part.strip() for part in args.parts.split(",")}
    rounds = args.rounds or (2 if args.quick else 30)
    seeds = list(range(1 if args.quick else args.seeds))
    if "1" in parts:
        for name, graph in GRAPHS.items():
            print(f"part 1: 20 honest + 4 Byzantine nodes, {name}, {rounds} rounds", flush=True)
            table(f"24 nodes, {name}", grid(args, 24, 4, graph, seeds, rounds), len(seeds))
    if "2" in parts:
        for nodes in ([48] if args.quick else [64, 256]):
            graph = {"kind": "erdos_renyi", "options": {"p": 8 / (nodes - 1)}}
            print(f"\npart 2: {nodes} nodes, {round(nodes / 6)} Byzantine, {max(2, rounds * 2 // 3)} rounds", flush=True)
            results = grid(args, nodes, round(nodes / 6), graph, [0], max(2, rounds * 2 // 3))
            table(f"{nodes} nodes, erdos_renyi (mean degree 8)", results, 1)
            round_times(f"{nodes} nodes", results)
    if "3" in parts:
        mixing_step(args, 64 if args.quick else 256)


if __name__ == "__main__":
    main()
