"""D-PSGD, asynchronous gossip and AD-PSGD under churn and stragglers.

64 nodes on Fashion-MNIST (Dirichlet 0.5), a random 5-regular graph, an MLP 784-64-10, 10
local steps of batch 16 per training, every training lasting 1 virtual second. Conditions:
no churn; 20 % churn (online/offline sessions of mean 20/5 rounds); 50 % churn (5/5); and
stragglers (6 of the 64 nodes, about 10 %, 5× slower). Every algorithm runs on ``sim`` and
on ``processes`` (2 workers: do the engines agree?). The asynchronous algorithms run on
``sim``'s event clock, whose round r is the r-th virtual second, and on ``processes`` on the
real clock (round r: the r-th second), so each of their runs there takes ``--rounds``
seconds.

Prints, per run: mean test accuracy after rounds/2 and after all rounds, the virtual time the
run took, and the accuracy reached by virtual time T (the time the fastest run needs for all
rounds), so that round-based and asynchronous algorithms compare on the clock as well.

    python benchmarks/dynamics.py [--rounds 60] [--data /usr/share/datasets/fashion-mnist]
                                  [--only gossip:processes,AD-PSGD:sim]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from meshlearn.config import parse_config
from meshlearn.results import read_jsonl
from meshlearn.runner import run_experiment

SLOW = [0, 11, 22, 33, 44, 55]   # about 10 % of 64
CONDITIONS = {
    "no churn": {},
    "20 % churn": {"availability": {"model": "sessions", "mean_online": 20, "mean_offline": 5}},
    "50 % churn": {"availability": {"model": "sessions", "mean_online": 5, "mean_offline": 5}},
    "10 % 5x slower": {"compute": {"factor": 5.0}},
}


def config(algorithm: str, engine: str, condition: dict, rounds: int, root: str | None) -> dict:
    factor = condition.get("compute", {}).get("factor", 1.0)
    raw = {
        "name": "dynamics", "seed": 1, "nodes": 64, "rounds": rounds,
        "data": {"dataset": "fashion-mnist", "root": root, "partition": "dirichlet",
                 "partition_options": {"alpha": 0.5}},
        "topology": {"kind": "regular", "options": {"degree": 5}},
        "model": {"name": "mlp", "options": {"hidden": [64]}},
        "training": {"local_steps": 10, "batch_size": 16, "lr": 0.05},
        "algorithm": {"name": algorithm},
        # the class is there in every condition (factor 1: no stragglers) so sim's clock always runs
        "compute": {"mean_s": 1.0, "classes": {"slow": {"nodes": SLOW, "factor": factor}}},
        "evaluation": {"every": 5, "test_samples": 2000},
        "engine": {"name": engine, "workers": 2, "threads": 1},
    }
    if "availability" in condition:
        raw["availability"] = condition["availability"]
    if raw["data"]["root"] is None:
        del raw["data"]["root"]
    return raw


def accuracy_by(records: list[dict], time_s: float) -> float | None:
    """Accuracy of the last evaluation at or before virtual time ``time_s``."""
    done = [r for r in records if r.get("sim_time_s") is not None and r["sim_time_s"] <= time_s + 1e-9]
    return done[-1]["test_acc_mean"] if done else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--data", default=None, help="Fashion-MNIST folder (default: the Debian package's)")
    parser.add_argument("--only", help="comma-separated ALGORITHM:ENGINE runs (default: all six)")
    args = parser.parse_args()
    runs = [(label, algorithm, engine) for label, algorithm in (("D-PSGD", "dpsgd"), ("gossip", "gossip"),
                                                               ("AD-PSGD", "adpsgd"))
            for engine in ("sim", "processes")]
    if args.only:
        wanted = {item.strip() for item in args.only.split(",")}
        unknown = wanted - {f"{label}:{engine}" for label, _, engine in runs}
        if unknown:
            parser.error(f"unknown runs {sorted(unknown)}; use ALGORITHM:ENGINE with D-PSGD, gossip or AD-PSGD "
                         "and sim or processes")
        runs = [run for run in runs if f"{run[0]}:{run[2]}" in wanted]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for condition, settings in CONDITIONS.items():
            for label, algorithm, engine in runs:
                cfg = parse_config(config(algorithm, engine, settings, args.rounds, args.data))
                out = Path(tmp) / f"{len(results)}"
                summary = run_experiment(cfg, out)
                records = read_jsonl(out / "rounds.jsonl")
                half = next(r for r in records if r["round"] >= args.rounds // 2)
                results.append((condition, label, engine, half["test_acc_mean"], summary["final"]["test_acc_mean"],
                                records[-1]["sim_time_s"], records, summary["wall_time_s"],
                                summary["final"].get("online_nodes")))
                print(f"  {condition:<15} {label:<8} {engine:<10} done", flush=True)
    horizon = min(r[5] for r in results if r[5] is not None)   # processes runs have no virtual clock
    print(f"\n{'condition':<15} {'algorithm':<8} {'engine':<10} | {'acc R/2':>7} | {'acc R':>6} | "
          f"{'virtual s':>9} | {f'acc @ {horizon:.0f} s':>10} | {'wall s':>6} | online")
    for condition, label, engine, half, final, virtual, records, wall, online in results:
        at = accuracy_by(records, horizon)
        show = lambda value, spec: "—" if value is None else format(value, spec)
        print(f"{condition:<15} {label:<8} {engine:<10} | {half:>7.4f} | {final:>6.4f} | {show(virtual, '.1f'):>9} | "
              f"{show(at, '.4f'):>10} | {wall:>6.1f} | {online}")


if __name__ == "__main__":
    main()
