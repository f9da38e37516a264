"""Personalized decentralized learning: do personalized methods beat both D-PSGD and local training?

Fashion-MNIST split over 64 and 128 nodes two ways, Dirichlet(α = 0.1) and two label shards per
node (McMahan et al.), a LeNet-5 CNN, a dynamic random 6-regular graph (redrawn every round,
Metropolis–Hastings weights), 5 local SGD steps of batch 16 per round (lr 0.05). Every node
holds out 20 % of its samples as its local test set (``evaluation.local_test``). Methods:

- ``dpsgd``: one consensus model;
- ``local``: local training only, no communication (the lower bound);
- ``finetune``: D-PSGD, then one local epoch per node after the last round;
- ``deprl``: DePRL/FedRep, the classifier's last layer a personal head (``sharing.private``),
  one head training then one body training per round, the body gossiped;
- ``ditto``: personal models with λ = 1 beside the gossiped global ones;
- ``pens``: performance-based neighbour selection, the 3 best of 6 received models.

Each cell is mean ± std over the seeds of: the mean local accuracy over nodes, the worst
decile's (10th percentile of nodes), the mean accuracy on the global test set, and the MB each
node sent. The last lines say, per split, which personalized methods beat both D-PSGD and
local training on mean and worst-decile local accuracy.

    python benchmarks/personalization.py [--nodes 64,128] [--rounds 30] [--seeds 3] [--out runs/personalization]
                                         [--root /usr/share/datasets/fashion-mnist] [--quick]

--quick is a one-minute smoke test on scikit-learn's bundled digits with an MLP.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from meshlearn.config import parse_config
from meshlearn.results import read_jsonl
from meshlearn.runner import run_experiment

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
SPLITS = {"dirichlet(0.1)": {"partition": "dirichlet", "partition_options": {"alpha": 0.1}},
          "2 shards": {"partition": "shards", "partition_options": {"shards_per_node": 2}}}
METHODS = {
    "dpsgd": {"algorithm": {"name": "dpsgd"}},
    "local": {"algorithm": {"name": "local"}},
    "finetune": {"algorithm": {"name": "finetune", "options": {"epochs": 1.0}}},
    "deprl": {"algorithm": {"name": "deprl"}, "private": True},
    "ditto": {"algorithm": {"name": "ditto", "options": {"lam": 1.0}}},
    "pens": {"algorithm": {"name": "pens", "options": {"selected": 3, "probe": 64}}},
}
PERSONALIZED = ["finetune", "deprl", "ditto", "pens"]
FIGURES = [("local_acc_mean", "local mean"), ("local_acc_p10", "local p10"), ("test_acc_mean", "global"),
           ("mb_per_node", "MB/node")]


def config(args, nodes: int, split: str, method: str, seed: int) -> dict:
    spec = METHODS[method]
    cfg = {
        "name": method, "seed": seed, "nodes": nodes, "rounds": args.rounds,
        "data": {"dataset": "fashion-mnist", "root": args.root, **SPLITS[split]},
        "topology": {"kind": "regular", "options": {"degree": 6}, "dynamic": True,
                     "weights": "metropolis_hastings"},
        "model": {"name": "lenet"},
        "training": {"local_steps": 5, "batch_size": 16, "lr": 0.05},
        "algorithm": spec["algorithm"],
        "evaluation": {"every": args.rounds, "test_samples": 2000, "local_test": 0.2, "average_model": False,
                       "stop_on_divergence": False},
    }
    if spec.get("private"):
        cfg["sharing"] = {"name": "full", "private": ["classifier.4.*"] if not args.quick else ["net.2.*"]}
    if args.quick:
        cfg["data"] = {"dataset": "digits", **SPLITS[split]}
        cfg["model"] = {"name": "mlp", "options": {"hidden": [32]}}
        cfg["evaluation"]["test_samples"] = 300
    return cfg


def run(args, cfg: dict) -> dict[str, float]:
    split = cfg["data"]["partition"]
    folder = Path(args.out) / f"n{cfg['nodes']}-{split}-s{cfg['seed']}-{cfg['name']}"
    run_experiment(parse_config(cfg), folder, overwrite=True)
    last = read_jsonl(folder / "rounds.jsonl")[-1]
    out = {key: float(last.get(key) if last.get(key) is not None else "nan") for key, _ in FIGURES[:3]}
    out["mb_per_node"] = last["bytes_sent_per_node"] / 1e6
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(nodes: int, split: str, results: dict[str, list[dict]]) -> None:
    print(f"\n{nodes} nodes, {split}: mean ± std over {len(next(iter(results.values())))} seeds")
    print(f"{'method':>9} | " + " | ".join(f"{label:>15}" for _, label in FIGURES))
    for method, runs in results.items():
        cells = []
        for key, _ in FIGURES:
            m, s = mean_std([r[key] for r in runs])
            cells.append(f"{m:.3f} ± {s:.3f}" if key != "mb_per_node" else f"{m:.1f}")
        print(f"{method:>9} | " + " | ".join(f"{cell:>15}" for cell in cells))
    if "dpsgd" not in results or "local" not in results:
        return
    for method in (m for m in PERSONALIZED if m in results):
        verdict = []
        for key, label in FIGURES[:2]:
            mine = mean_std([r[key] for r in results[method]])[0]
            best = max(mean_std([r[key] for r in results[b]])[0] for b in ("dpsgd", "local"))
            verdict.append(f"{label} {'beats' if mine > best else 'does not beat'} both ({mine - best:+.3f})")
        print(f"  {method}: " + "; ".join(verdict))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", default="64,128", help="network sizes (comma-separated)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS), help="methods to run (comma-separated)")
    parser.add_argument("--out", default="runs/personalization")
    parser.add_argument("--root", default=FASHION_MNIST, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--quick", action="store_true", help="smoke test: digits, 32 nodes, 10 rounds, 1 seed")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.nodes.split(",")]
    methods = args.methods.split(",")
    if args.quick:
        sizes, args.rounds, args.seeds = [32], 10, 1
    for nodes in sizes:
        for split in SPLITS:
            results = {}
            for method in methods:
                t0 = time.perf_counter()
                results[method] = [run(args, config(args, nodes, split, method, seed)) for seed in range(args.seeds)]
                print(f"  {nodes} × {split} × {method}: local mean "
                      f"{statistics.mean(r['local_acc_mean'] for r in results[method]):.3f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
            table(nodes, split, results)


if __name__ == "__main__":
    main()
