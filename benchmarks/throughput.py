"""Training throughput on CPU: node-steps per second and achieved GFLOP/s against the matmul peak.

For each model (logistic regression, the MLP, LeNet, the FEMNIST CNN) and number of nodes,
one D-PSGD round of ``--steps`` local steps of batch 16 on a random 4-regular graph, on
``sim`` and on ``processes`` (one single-threaded worker per core), after a warm-up round.
FLOPs per node-step are counted exactly (torch's FlopCounterMode, forward and backward);
the fp32 matmul peak is measured in the same run. Each configuration runs in a fresh process,
and reports its start-up (building the experiment and the engine) and peak memory (``sim``:
its process; ``processes``: launcher and workers together).

Targets on CPU: CNN training at >= 85 % of the matmul GFLOP/s on both engines; logistic
regression and MLP rounds at 64 nodes within 2x of their arithmetic.

    python benchmarks/throughput.py [--models logreg,mlp,lenet,femnist_cnn] [--nodes 16,64,256,1024]
                                    [--engines sim,processes] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from sim_scaling import BATCH, flops_per_node_step, matmul_gflops  # noqa: E402
from sim_scaling import config as scaling_config  # noqa: E402


def config(model: str, nodes: int, steps: int, engine: str) -> dict:
    """``sim_scaling``'s experiment with ``steps`` local steps, 2 rounds and only the first evaluation."""
    cores = os.cpu_count() or 1
    cfg = scaling_config(model, nodes)
    cfg["training"]["local_steps"] = steps
    return {**cfg, "name": f"throughput-{model}-{nodes}", "rounds": 2,
            "evaluation": {"every": 1000, "test_samples": 100},
            "engine": {"name": engine, **({"workers": cores, "threads": 1} if engine == "processes" else {})}}


def measure(model: str, nodes: int, steps: int, engine: str) -> dict:
    """One configuration, in this process: start-up, the second round's time, peak memory."""
    from meshlearn.config import parse_config
    from meshlearn.engines import build_engine
    from meshlearn.experiment import Experiment
    from meshlearn.metrics import peak_rss_bytes

    t0 = time.perf_counter()
    experiment = Experiment.build(parse_config(config(model, nodes, steps, engine)))
    options = {"workers": os.cpu_count() or 1} if engine == "processes" else {}
    runner = build_engine(engine, experiment, "throughput", **options)
    runner.start()
    runner.step(0)
    startup = time.perf_counter() - t0
    rounds = []
    for rnd in (1, 2):
        t1 = time.perf_counter()
        runner.step(rnd)
        rounds.append(time.perf_counter() - t1)
    peak = runner.close().get("peak_rss_bytes_total", peak_rss_bytes())   # processes: launcher and workers
    return {"startup_s": startup, "round_s": rounds[-1], "peak_rss": peak, "flops": flops_per_node_step(experiment)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="logreg,mlp,lenet,femnist_cnn")
    parser.add_argument("--nodes", default="16,64,256,1024")
    parser.add_argument("--engines", default="sim,processes")
    parser.add_argument("--steps", type=int, default=10, help="local steps per round")
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        model, nodes, steps, engine = args.measure
        print(json.dumps(measure(model, int(nodes), int(steps), engine)))
        return

    peak = matmul_gflops()
    print(f"torch {torch.__version__}, {os.cpu_count()} cores; fp32 matmul 2048³: {peak:.0f} GFLOP/s "
          f"(all cores); {args.steps} local steps of batch {BATCH} per round")
    header = (f"{'model':<12}{'nodes':>6} {'engine':<10}{'s/round':>9}{'node-steps/s':>13}{'GFLOP/s':>9}"
              f"{'% matmul':>9}{'× arith':>8}{'start-up s':>11}{'peak RSS':>10}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "MESHLEARN_CACHE": cache}
        for model in args.models.split(","):
            for nodes in [int(n) for n in args.nodes.split(",")]:
                for engine in args.engines.split(","):
                    out = subprocess.run([sys.executable, __file__, "--measure", model, str(nodes), str(args.steps),
                                          engine], capture_output=True, text=True, env=env)
                    if out.returncode:
                        print(f"{model:<12}{nodes:>6} {engine:<10} failed: {out.stderr.strip().splitlines()[-1]}")
                        continue
                    m = json.loads(out.stdout.strip().splitlines()[-1])
                    steps_per_s = nodes * args.steps / m["round_s"]
                    gflops = m["flops"] * steps_per_s / 1e9
                    print(f"{model:<12}{nodes:>6} {engine:<10}{m['round_s']:>9.3f}{steps_per_s:>13,.0f}"
                          f"{gflops:>9.1f}{gflops / peak * 100:>8.0f}%{peak / gflops:>8.1f}{m['startup_s']:>11.2f}"
                          f"{m['peak_rss'] / 2**30:>8.2f}Gi", flush=True)
    print(f"fp32 matmul at the end: {matmul_gflops():.0f} GFLOP/s. GFLOP/s counts the whole round "
          "(training, messages, mixing); × arith: the round's time over its training arithmetic at the matmul peak.")


if __name__ == "__main__":
    main()
