"""Training throughput: node-steps per second and achieved GFLOP/s against the matmul peak.

For each model (logistic regression, the MLP, LeNet, the FEMNIST CNN; any registered model
by name) and number of nodes, D-PSGD rounds of ``--steps`` local steps of batch 16 on a
random 4-regular graph, on ``sim`` and on ``processes`` (one single-threaded worker per
core), after a warm-up round. FLOPs per node-step are counted exactly (torch's
FlopCounterMode, forward and backward); the fp32 matmul peak of the device is measured in
each configuration's process, before it starts and after it ends, and the better one kept
(a shared machine's speed drifts within minutes, so a ratio holds only against a peak taken
beside it). Each configuration runs in a fresh process, and reports its start-up (building the experiment
and the engine) and peak memory (``sim``: its process, or the GPU's allocations;
``processes``: launcher and workers together).

Targets on CPU: CNN training at >= 85 % of the matmul GFLOP/s on both engines; logistic
regression and MLP rounds at 64 nodes within 2x of their arithmetic. On a GPU
(``--device cuda``, ``sim`` only; benchmarks/gpu.sh): >= 10^4 FEMNIST-CNN node-steps per
second at 1024 nodes, and 1000 rounds of 1024 nodes on CIFAR-sized inputs (``--shape 3,32,32``)
in under an hour (the "1000 rounds" column).

    python benchmarks/throughput.py [--models logreg,mlp,lenet,femnist_cnn] [--nodes 16,64,256,1024]
                                    [--engines sim,processes] [--steps 10] [--device cpu|cuda]
                                    [--shape 1,28,28] [--batching auto|vmap|loop] [--chunk-size N]
                                    [--timeout SECONDS]
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


def config(spec: dict) -> dict:
    """``sim_scaling``'s experiment with the spec's steps, inputs and engine, 3 rounds and only
    the first evaluation."""
    cores = os.cpu_count() or 1
    cfg = scaling_config(spec["model"], spec["nodes"])
    cfg["training"]["local_steps"] = spec["steps"]
    cfg["data"]["options"]["shape"] = spec["shape"]
    engine = {"name": spec["engine"], "device": spec["device"], "batching": spec["batching"],
              "chunk_size": spec["chunk_size"]}
    if spec["engine"] == "processes":
        engine.update(workers=cores, threads=1)
    return {**cfg, "name": f"throughput-{spec['model']}-{spec['nodes']}", "rounds": 3,
            "evaluation": {"every": 1000, "test_samples": 100}, "engine": engine}


def measure(spec: dict) -> dict:
    """One configuration, in this process: start-up, the last round's time, peak memory."""
    from meshlearn.config import parse_config
    from meshlearn.engines import build_engine
    from meshlearn.experiment import Experiment
    from meshlearn.metrics import peak_rss_bytes

    device = spec["device"]
    side = 2048 if device == "cpu" else 8192   # a GPU needs a larger product to reach its peak
    before = matmul_gflops(side, reps=5, device=device)   # before any worker starts: they would share the cores
    t0 = time.perf_counter()
    experiment = Experiment.build(parse_config(config(spec)))
    cuda = experiment.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    options = {"workers": os.cpu_count() or 1} if spec["engine"] == "processes" else {}
    runner = build_engine(spec["engine"], experiment, "throughput", **options)
    runner.start()
    runner.step(0)
    sync()
    startup = time.perf_counter() - t0
    rounds = []
    for rnd in (1, 2, 3):   # the first warms up (allocator, kernels' autotuning)
        t1 = time.perf_counter()
        runner.step(rnd)
        sync()
        rounds.append(time.perf_counter() - t1)
    peak = runner.close().get("peak_rss_bytes_total", peak_rss_bytes())   # processes: launcher and workers
    # the ceiling next to the rounds themselves: this machine's speed drifts by a third within minutes
    matmul = max(before, matmul_gflops(side, reps=5, device=device))
    return {"startup_s": startup, "round_s": min(rounds[1:]), "peak": torch.cuda.max_memory_allocated() if cuda
            else peak, "flops": flops_per_node_step(experiment), "batching": f"{experiment.batching}/"
            f"{experiment.chunk_size}", "matmul": matmul}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="logreg,mlp,lenet,femnist_cnn")
    parser.add_argument("--nodes", default="16,64,256,1024")
    parser.add_argument("--engines", default="sim,processes")
    parser.add_argument("--steps", type=int, default=10, help="local steps per round")
    parser.add_argument("--device", default="cpu", help="engine.device of sim (cpu, cuda, cuda:K)")
    parser.add_argument("--shape", default="1,28,28", help="input shape of the synthetic samples")
    parser.add_argument("--batching", default="auto", help="engine.batching: auto, vmap or loop")
    parser.add_argument("--chunk-size", type=int, default=0, help="engine.chunk_size (0: the model's)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds a configuration may take")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return

    device = args.device
    where = torch.cuda.get_device_name(device) if device != "cpu" else f"{os.cpu_count()} cores"
    print(f"torch {torch.__version__}, {where}; {args.steps} local steps of batch {BATCH} per round, "
          f"inputs {args.shape}")
    header = (f"{'model':<12}{'nodes':>6} {'engine':<10}{'batching':>10}{'s/round':>9}{'node-steps/s':>13}"
              f"{'GFLOP/s':>10}{'matmul':>8}{'% matmul':>9}{'× arith':>8}{'1000 rounds':>12}{'start-up s':>11}"
              f"{'peak mem':>10}")
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "MESHLEARN_CACHE": cache}
        for model in args.models.split(","):
            for nodes in [int(n) for n in args.nodes.split(",")]:
                for engine in args.engines.split(","):
                    spec = {"model": model, "nodes": nodes, "steps": args.steps, "engine": engine,
                            "device": device if engine == "sim" else "cpu", "batching": args.batching,
                            "chunk_size": args.chunk_size, "shape": [int(d) for d in args.shape.split(",")]}
                    try:
                        out = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)],
                                             capture_output=True, text=True, env=env, timeout=args.timeout)
                    except subprocess.TimeoutExpired:
                        print(f"{model:<12}{nodes:>6} {engine:<10} took over {args.timeout:.0f} s", flush=True)
                        continue
                    if out.returncode:
                        lines = out.stderr.strip().splitlines() or ["no output"]
                        print(f"{model:<12}{nodes:>6} {engine:<10} failed: {lines[-1]}", flush=True)
                        continue
                    m = json.loads(out.stdout.strip().splitlines()[-1])
                    steps_per_s = nodes * args.steps / m["round_s"]
                    gflops, peak = m["flops"] * steps_per_s / 1e9, m["matmul"]
                    print(f"{model:<12}{nodes:>6} {engine:<10}{m['batching']:>10}{m['round_s']:>9.3f}"
                          f"{steps_per_s:>13,.0f}{gflops:>10,.1f}{peak:>8,.0f}{gflops / peak * 100:>8.0f}%"
                          f"{peak / gflops:>8.1f}"
                          f"{m['round_s'] * 1000 / 60:>10.1f}min{m['startup_s']:>11.2f}"
                          f"{m['peak'] / 2**30:>8.2f}Gi", flush=True)
    print("GFLOP/s counts the whole round (training, messages, mixing); matmul: the fp32 GFLOP/s of a large "
          "product on the device, the better of two measured in the configuration's process, before it starts and after it ends; "
          "× arith: the round's time over its training arithmetic at that peak; 1000 rounds: that many of these "
          "rounds, without evaluation.")


if __name__ == "__main__":
    main()
