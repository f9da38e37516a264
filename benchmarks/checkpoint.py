"""What a checkpoint costs on the simulator: its size, the time to take it (encode + write) and
to restore it, against the time of one round, measured in one run.

Workloads: the quickstart (64 nodes, MLP 4.8 k parameters, digits) and a large one (1024
nodes, MLP 784-64-10 with 51 k parameters on Fashion-MNIST-shaped synthetic data, SGD with
momentum so the optimizer state doubles the tensors). Each figure is the median of
``--repeats``.

    python benchmarks/checkpoint.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from meshlearn.checkpoint import load_checkpoint, save_checkpoint
from meshlearn.config import load_config, parse_config
from meshlearn.engines.sim import SimEngine
from meshlearn.experiment import Experiment

REPO = Path(__file__).resolve().parents[1]


def workloads():
    yield "quickstart (64 nodes)", load_config(REPO / "examples" / "quickstart.toml")
    yield "1024 nodes, 51 k params", parse_config({
        "name": "large", "nodes": 1024, "rounds": 10,
        "data": {"dataset": "synthetic", "partition": "iid",
                 "options": {"shape": [1, 28, 28], "train_samples": 60 * 1024, "test_samples": 100}},
        "topology": {"kind": "regular", "options": {"degree": 5}},
        "model": {"name": "mlp", "options": {"hidden": [64]}},
        "training": {"local_steps": 1, "batch_size": 16, "lr": 0.05, "optimizer_options": {"momentum": 0.9}},
        "evaluation": {"every": 100, "test_samples": 100}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"{'workload':<26}{'MB':>8} | {'round s':>8} | {'save s':>7} | {'restore s':>9} | save / round")
    for name, cfg in workloads():
        engine = SimEngine(Experiment.build(cfg))
        engine.step(0)
        rounds, saves, restores = [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            for rnd in range(1, args.repeats + 1):
                t0 = time.perf_counter()
                engine.step(rnd)
                t1 = time.perf_counter()
                save_checkpoint(tmp, {"round": rnd, "hosts": [0]}, engine.checkpoint(rnd, True))
                t2 = time.perf_counter()
                _, hosts = load_checkpoint(tmp)
                engine.restore(hosts, rnd)
                t3 = time.perf_counter()
                rounds.append(t1 - t0)
                saves.append(t2 - t1)
                restores.append(t3 - t2)
            size = (Path(tmp) / "checkpoint" / "host-0.safetensors").stat().st_size
        r, s, x = (statistics.median(v) for v in (rounds, saves, restores))
        print(f"{name:<26}{size / 1e6:>8.1f} | {r:>8.3f} | {s:>7.3f} | {x:>9.3f} | {s / r:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
