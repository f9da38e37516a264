"""Simulator scaling: time per round and peak memory at 64/256/1024 nodes, against the
per-node reference loop (one nn.Module + torch.optim per node) measured in the same run.

Each configuration runs in a fresh subprocess so that its peak RSS is its own. Training
throughput (GFLOP/s, counted exactly with torch's FlopCounterMode) is printed next to a
large fp32 matmul measured in this run. The reference loop's cost is linear in nodes by
construction, so it is timed on at most --ref-nodes nodes and scaled to N (printed as such).

    python benchmarks/sim_scaling.py                       # full table (about 6 minutes on 2 cores)
    python benchmarks/sim_scaling.py --nodes 64,256 --models logreg,mlp
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

STEPS, BATCH, DEGREE = 10, 16, 4
CLASSES = {"femnist_cnn": 62}


def config(model: str, nodes: int) -> dict:
    return {
        "name": f"bench-{model}-{nodes}", "seed": 0, "nodes": nodes, "rounds": 1,
        "data": {"dataset": "synthetic", "partition": "iid",
                 "options": {"shape": [1, 28, 28], "num_classes": CLASSES.get(model, 10),
                             "train_samples": 64 * nodes, "test_samples": 100}},
        "topology": {"kind": "regular", "options": {"degree": DEGREE}},
        "model": {"name": model},
        "training": {"local_steps": STEPS, "batch_size": BATCH, "lr": 0.01},
    }


def flops_per_node_step(experiment) -> float:
    """Exact FLOPs of one forward+backward of one node on one batch."""
    import copy

    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(experiment.model)
    x = torch.from_numpy(experiment.dataset.x_train[:BATCH])
    y = torch.from_numpy(experiment.dataset.y_train[:BATCH])
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return float(counter.get_total_flops())


def worker(mode: str, model: str, nodes: int, rounds: int) -> dict:
    from meshlearn.config import parse_config
    from meshlearn.engines.reference import ReferenceDPSGD
    from meshlearn.engines.sim import SimEngine
    from meshlearn.experiment import Experiment
    from meshlearn.metrics import peak_rss_bytes

    experiment = Experiment.build(parse_config(config(model, nodes)))
    engine = SimEngine(experiment) if mode == "sim" else ReferenceDPSGD(experiment)
    train_time = 0.0
    if mode == "sim":
        train = engine.trainer.train

        def timed_train(nodes_batch, active=None):
            nonlocal train_time
            t0 = time.perf_counter()
            out = train(nodes_batch, active)
            train_time += time.perf_counter() - t0
            return out

        engine.trainer.train = timed_train
    times = []
    for rnd in range(1, rounds + 1):
        train_time = 0.0
        t0 = time.perf_counter()
        engine.run_round(rnd)
        times.append(time.perf_counter() - t0)
    return {"round_s": times[-1], "train_s": train_time if mode == "sim" else None,
            "peak_rss": peak_rss_bytes(), "flops": flops_per_node_step(experiment),
            "params": experiment.layout.size, "batching": experiment.batching}


def run_worker(mode: str, model: str, nodes: int, rounds: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", mode, model, str(nodes), str(rounds)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def matmul_gflops(n: int = 2048, reps: int = 10, device: str = "cpu") -> float:
    """GFLOP/s of an n×n fp32 matrix product on ``device`` (the training's ceiling)."""
    a = torch.randn(n, n, device=device)
    a @ a
    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ a
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="64,256,1024")
    parser.add_argument("--models", default="logreg,mlp,femnist_cnn")
    parser.add_argument("--ref-nodes", type=int, default=64, help="nodes the reference loop is timed on")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, model, nodes, rounds = args.worker
        print(json.dumps(worker(mode, model, int(nodes), int(rounds))))
        return

    peak = matmul_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"fp32 matmul 2048³: {peak:.0f} GFLOP/s")
    print(f"{STEPS} local steps of batch {BATCH} per round, random {DEGREE}-regular graph, "
          "Metropolis-Hastings D-PSGD")
    header = (f"{'model':<12}{'nodes':>6}{'params':>10}  {'sim s/round':>11}{'ms/node':>8}{'train GFLOP/s':>14}"
              f"{'% matmul':>9}{'peak RSS':>10}  {'loop s/round':>12}{'loop RSS':>9}{'speed-up':>9}")
    print(header)
    print("-" * len(header))
    for model in args.models.split(","):
        for nodes in [int(n) for n in args.nodes.split(",")]:
            rounds = 2 if nodes * (1 if model != "femnist_cnn" else 16) <= 1024 else 1
            sim = run_worker("sim", model, nodes, rounds)
            ref_nodes = min(nodes, args.ref_nodes)
            ref = run_worker("reference", model, ref_nodes, 2)
            ref_round = ref["round_s"] * nodes / ref_nodes
            gflops = sim["flops"] * STEPS * nodes / sim["train_s"] / 1e9
            scaled = "*" if ref_nodes < nodes else " "
            print(f"{model:<12}{nodes:>6}{sim['params']:>10,}  {sim['round_s']:>11.3f}"
                  f"{sim['round_s'] / nodes * 1e3:>8.2f}{gflops:>14.1f}{gflops / peak * 100:>8.0f}%"
                  f"{sim['peak_rss'] / 2**30:>8.2f}Gi  {ref_round:>11.3f}{scaled}{ref['peak_rss'] / 2**30:>7.2f}Gi"
                  f"{ref_round / sim['round_s']:>8.1f}×", flush=True)
    print(f"* loop timed on {args.ref_nodes} nodes and scaled linearly to N; its RSS is for those nodes.")
    print(f"fp32 matmul at the end: {matmul_gflops():.0f} GFLOP/s")


if __name__ == "__main__":
    main()
