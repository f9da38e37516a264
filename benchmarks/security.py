"""What authenticated, encrypted channels cost: `processes` with CURVE (the default) against
`engine.secure = false`, measured in one run.

The workload of ``emulation.py`` (FEMNIST CNN with 1.69 M parameters on FEMNIST-shaped
synthetic data, and logistic regression; 16 nodes on a 4-regular graph, 10 local steps of
batch 16, 2 workers): time per round (mean over rounds, evaluation excluded) with and without
security. Runs alternate (off, on, off, on...) so drifts of a noisy machine hit both; each cell
is the median of ``--repeats`` runs.

    python benchmarks/security.py [--models logreg,femnist_cnn] [--nodes 16] [--rounds 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

from emulation import run_one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="logreg,femnist_cnn")
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'model':<12}{'params':>11} | {'off s/round':>12} | {'on s/round':>11} | {'on / off':>8}  bytes equal")
    for model in args.models.split(","):
        times = {False: [], True: []}
        figures = {}
        for _ in range(args.repeats):
            for secure in (False, True):
                figures[secure] = run_one(model, args.nodes, args.rounds, "processes", args.workers, secure)
                times[secure].append(figures[secure]["mean_s"])
        off, on = statistics.median(times[False]), statistics.median(times[True])
        print(f"{model:<12}{figures[True]['parameters']:>11,} | {off:>12.3f} | {on:>11.3f} | {on / off:>8.3f}  "
              f"{figures[True]['bytes_per_node'] == figures[False]['bytes_per_node']}", flush=True)


if __name__ == "__main__":
    main()
