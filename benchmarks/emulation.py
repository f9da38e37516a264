"""Emulation cost: the `processes` engine (P worker processes over ZeroMQ/TCP) against the
vectorized `sim` engine on the same configs, measured in one run.

For the FEMNIST CNN (1.69 M parameters, 62 classes, FEMNIST-shaped synthetic data) and
logistic regression at 16, 32 and 64 nodes (the workload of ``sim_scaling.py``: 4-regular,
10 local steps of batch 16): time
per round (mean and slowest round, evaluation excluded), peak memory (sim: its process;
processes: launcher + all workers), and whether both engines charged the same bytes. Each
run is a fresh subprocess, so its memory is its own.

    python benchmarks/emulation.py                                # full table (~5 min on 2 cores)
    python benchmarks/emulation.py --models logreg --nodes 16,32 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

from sim_scaling import config as scaling_config   # the same workload as the sim scaling benchmark


def config(model: str, nodes: int, rounds: int, engine: str, workers: int, secure: bool = True) -> dict:
    cfg = scaling_config(model, nodes)
    cfg["data"]["options"]["test_samples"] = 200
    return {
        **cfg, "name": f"emulation-{model}-{nodes}-{engine}", "rounds": rounds,
        # evaluate every round (2 nodes, 200 samples) so every round's wall time is recorded
        "evaluation": {"every": 1, "nodes": 2, "test_samples": 200, "average_model": False},
        "engine": {"name": engine, "workers": workers, "timeout_s": 120, "secure": secure},
    }


def measure(model: str, nodes: int, rounds: int, engine: str, workers: int, secure: bool = True) -> dict:
    """Run one config in this process and return its figures (called in a subprocess)."""
    from meshlearn.config import parse_config
    from meshlearn.results import read_jsonl
    from meshlearn.runner import run_experiment

    cfg = parse_config(config(model, nodes, rounds, engine, workers, secure))
    with tempfile.TemporaryDirectory() as out:
        summary = run_experiment(cfg, out)
        walls = [r["wall_time_s"] for r in read_jsonl(f"{out}/rounds.jsonl")]
    per_round = [b - a for a, b in zip(walls, walls[1:])]
    return {"mean_s": sum(per_round) / len(per_round), "max_s": max(per_round),
            "peak_bytes": summary.get("peak_rss_bytes_total", summary["peak_rss_bytes"]),
            "bytes_per_node": summary["bytes_sent_per_node"], "parameters": summary["parameters"]}


def run_one(model: str, nodes: int, rounds: int, engine: str, workers: int, secure: bool = True) -> dict:
    cmd = [sys.executable, __file__, "--one", json.dumps([model, nodes, rounds, engine, workers, secure])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="logreg,femnist_cnn")
    parser.add_argument("--nodes", default="16,32,64")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*json.loads(args.one))))
        return
    print(f"{'model':<12}{'nodes':>6}{'params':>11} | {'sim s/round':>12}{'max':>8}{'MiB':>8} | "
          f"{'proc s/round':>13}{'max':>8}{'MiB':>8} | {'mean ratio':>10}{'max/sim':>9}  bytes equal")
    for model in args.models.split(","):
        for nodes in map(int, args.nodes.split(",")):
            sim = run_one(model, nodes, args.rounds, "sim", 1)
            proc = run_one(model, nodes, args.rounds, "processes", args.workers)
            print(f"{model:<12}{nodes:>6}{sim['parameters']:>11,} | {sim['mean_s']:>12.3f}{sim['max_s']:>8.3f}"
                  f"{sim['peak_bytes'] / 2**20:>8.0f} | {proc['mean_s']:>13.3f}{proc['max_s']:>8.3f}"
                  f"{proc['peak_bytes'] / 2**20:>8.0f} | {proc['mean_s'] / sim['mean_s']:>10.2f}"
                  f"{proc['max_s'] / sim['mean_s']:>9.2f}  {sim['bytes_per_node'] == proc['bytes_per_node']}",
                  flush=True)


if __name__ == "__main__":
    main()
