"""Communication-efficient sharing on non-IID data: accuracy against rounds and against bytes.

64 nodes learn Fashion-MNIST split into label shards (2 shards per node, so most nodes see
two classes), on a random 5-regular graph with Metropolis-Hastings weights; each trains an
MLP (784-64-10, 50,890 parameters) for 10 local SGD steps of batch 16 per round. Every
compressed scheme gets a budget of about 10 % of the full model per message:

    full            the whole model (D-PSGD), the reference
    random          10 % of the parameters, drawn from a seed that travels instead of the
                    indices (values + 8 bytes; explicit indices would add a 6,362-byte bitmask)
    topk            the 10 % that changed most since last sent, with error feedback; values
                    plus their support, a bitmask of P bits (smaller than 10 % of P indices):
                    13 % of the full model
    topk-noef       the same without error feedback: the 10 % that changed most this round
    choco           CHOCO-SGD, top-k 10 % of x − x̂, consensus step gamma = 0.25 (0.3 and
                    more diverge on this graph, even without training)
    quantize-u3     3-bit uniform quantization (8 values between each 512-parameter bucket's
                    min and max): (3 + 64/512) / 32 = 9.8 % of the full model
    quantize-qsgd3  QSGD with 3 levels per sign: 7 codes in 3 bits plus one norm per 512
                    parameters, 9.6 %. Stochastic rounding of whole models adds noise that
                    accumulates; 4-bit uniform (12.9 %) or 8-bit (25 %) are the next steps up.
    topk-elias      topk with its support as a sorted index list, which the elias-fpzip stage
                    writes as Elias-gamma codes of the gaps (values through fpzip)
    fpzip10/12      whole models rounded to fpzip's lossy precision of 10 or 12 bits (1 or 3
                    mantissa bits) and written by fpzip: the reference framework's EliasFpzipLossy

Bytes are the exact wire sizes the simulator charges (header, values, indices or seed).
"full @ same MB" is full sharing's accuracy when it had sent as many bytes as the scheme
sent in all its rounds (interpolated between evaluations): the fixed-budget comparison.
Writes one run directory per scheme under --out, ``accuracy.png`` (mean node test accuracy
against rounds and against cumulative bytes sent per node) and ``avg_model.png``, and prints
a table. About 7 minutes on 2 cores:

    python benchmarks/sparsification.py [--rounds 300] [--out runs/sparsification] [--only topk,choco]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from meshlearn import plotting
from meshlearn.config import parse_config
from meshlearn.results import read_jsonl
from meshlearn.runner import run_experiment

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
BUDGET = 0.1

SCHEMES: dict[str, dict] = {
    "full": {"name": "full"},
    "random": {"name": "random", "options": {"fraction": BUDGET, "indices": "seed"}},
    "topk": {"name": "topk", "options": {"fraction": BUDGET, "error_feedback": True}},
    "topk-noef": {"name": "topk", "options": {"fraction": BUDGET, "error_feedback": False}},
    "choco": {"name": "choco", "options": {"gamma": 0.25, "compressor": {"name": "topk", "options": {"fraction": BUDGET}}}},
    "quantize-u3": {"name": "quantize", "method": "uniform", "bits": 3, "bucket_size": 512},
    "quantize-qsgd3": {"name": "quantize", "method": "qsgd", "levels": 3, "bucket_size": 512},
    "topk-elias": {"name": "topk", "options": {"fraction": BUDGET, "error_feedback": True, "support": "indices"},
                   "compression": "elias-fpzip"},
    "fpzip10": {"name": "quantize", "options": {"method": "fpzip", "precision": 10}, "compression": "fpzip"},
    "fpzip12": {"name": "quantize", "options": {"method": "fpzip", "precision": 12}, "compression": "fpzip"},
}


def config(scheme: str, rounds: int, root: str) -> dict:
    return {
        "name": scheme, "seed": 1, "nodes": 64, "rounds": rounds,
        "data": {"dataset": "fashion-mnist", "root": root, "partition": "shards",
                 "partition_options": {"shards_per_node": 2}},
        "topology": {"kind": "regular", "options": {"degree": 5}, "weights": "metropolis_hastings"},
        "model": {"name": "mlp", "options": {"hidden": [64]}},
        "training": {"local_steps": 10, "batch_size": 16, "lr": 0.05},
        "sharing": SCHEMES[scheme],
        "evaluation": {"every": max(1, rounds // 30), "test_samples": 2000},
    }


def accuracy_at_bytes(curve: list[dict], sent: float) -> float | None:
    """Mean test accuracy of a run when it had sent ``sent`` bytes per node (linear interpolation)."""
    xs = [r["bytes_sent_per_node"] for r in curve]
    if not curve or sent > xs[-1]:
        return None
    return float(np.interp(sent, xs, [r["test_acc_mean"] for r in curve]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--out", default="runs/sparsification")
    parser.add_argument("--root", default=FASHION_MNIST, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--only", default=",".join(SCHEMES), help="comma-separated schemes to run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(names) - set(SCHEMES)
    if unknown:
        parser.error(f"unknown schemes {sorted(unknown)}; use {', '.join(SCHEMES)}")

    rows = []
    for name in names:
        t0 = time.perf_counter()
        run_experiment(parse_config(config(name, args.rounds, args.root)), out / name)
        record = read_jsonl(out / name / "rounds.jsonl")[-1]
        rows.append((name, record, time.perf_counter() - t0))
        print(f"{name}: {record['test_acc_mean']:.4f} after {args.rounds} rounds "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)

    runs = plotting.load_runs([out / name for name in names])
    for metric, file in (("test_acc_mean", "accuracy.png"), ("avg_model_acc", "avg_model.png")):
        plotting.plot_runs(runs, out / file, metric=metric, x_axes=("round", "bytes"))

    full_curve = runs[names.index("full")].rounds if "full" in names else []
    full_bytes = full_curve[-1]["bytes_sent_per_node"] if full_curve else None
    print(f"\n64 nodes, Fashion-MNIST shards (2/node), 5-regular, MLP 784-64-10, {args.rounds} rounds, "
          f"budget {BUDGET:.0%}")
    print(f"{'scheme':<15} {'mean test acc':>13} {'avg-model acc':>13} {'MB sent/node':>12} "
          f"{'bytes / full':>12} {'full @ same MB':>14} {'time [s]':>8}")
    for name, record, seconds in rows:
        sent = record["bytes_sent_per_node"]
        ratio = f"{sent / full_bytes:.3f}" if full_bytes else "-"
        avg = record.get("avg_model_acc")
        same = accuracy_at_bytes(full_curve, sent)
        print(f"{name:<15} {record['test_acc_mean']:>13.4f} {'-' if avg is None else f'{avg:.4f}':>13} "
              f"{sent / 1e6:>12.2f} {ratio:>12} {'-' if same is None else f'{same:.4f}':>14} {seconds:>8.0f}")
    print(f"\nplots: {out / 'accuracy.png'}, {out / 'avg_model.png'}")


if __name__ == "__main__":
    main()
