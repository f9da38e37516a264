"""The reference paper's findings (DecentralizePy, EuroMLSys 2023), re-measured with 3 seeds each.

Real Fashion-MNIST stands in for CIFAR-10: 2 label shards per node (most nodes see two
classes), an MLP (784-64-10), D-PSGD with Metropolis-Hastings weights, 10 local SGD steps of
batch 16 per round, 100 rounds, every node evaluated on 1,000 test samples every 10 rounds.
Each variant is a sweep over seeds (``meshlearn sweep CONFIG --seeds 3``) of a config this
script writes to ``OUT/configs/``; a variant shared by several figures runs once:

    topologies (Fig. 3)       256 nodes: ring, 5-regular, dynamic 5-regular (re-drawn every
                              round), fully connected
    sparsification (Fig. 4)   256 nodes, 5-regular, 10 % budget: random sampling (seeded
                              indices) and CHOCO-SGD (top-k 10 % of x - x_hat, gamma 0.25)
                              against full sharing
    secure (Fig. 5)           48 nodes, 5-regular: secure aggregation (pairwise masks in
                              Z_2^32) against plain D-PSGD
    scale (Fig. 6)            5-regular at 256 and 1,024 nodes, 9-regular at 1,024 nodes

Then it checks each claim of the paper on the final round (mean over seeds, a Welch 95 %
t-interval for a difference of means), prints the table, writes it to ``OUT/claims.md`` and
writes one ``meshlearn report`` of all runs, a part per figure, to ``OUT/report.html``. A claim
"holds" when the interval of the difference it states lies on its side of zero, "does not hold"
when it lies on the other side or within one accuracy point of zero (no difference), and is
"inconclusive" otherwise; a claim of equality holds when the means differ by less than one
point, does not hold when the interval excludes zero, and is inconclusive otherwise. A claim
about bytes holds below half the bytes.

87 minutes on 2 cores (the six 1,024-node runs take a third of it); running it again
continues where it stopped (ended runs are skipped, interrupted ones resume). --quick shrinks
every run (16 and 32 nodes, 4 rounds, a slice of the data) for a check in about two minutes:

    python benchmarks/paper/suite.py [--out runs/paper] [--seeds 3] [--only topologies,scale] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import tomli_w

from meshlearn.plotting import seed_band
from meshlearn.sweep import run_sweep

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
ROUNDS = 100

BASE = {
    "seed": 1, "nodes": 256, "rounds": ROUNDS,
    "data": {"dataset": "fashion-mnist", "root": FASHION_MNIST, "partition": "shards",
             "partition_options": {"shards_per_node": 2}},
    "topology": {"kind": "regular", "options": {"degree": 5}},
    "model": {"name": "mlp", "options": {"hidden": [64]}},
    "training": {"local_steps": 10, "batch_size": 16, "lr": 0.05},
    "evaluation": {"every": 10, "test_samples": 1000},
}

# Each variant: what it changes in BASE (nested tables merge into BASE's).
VARIANTS: dict[str, dict] = {
    "ring": {"topology": {"kind": "ring", "options": {}}},
    "regular5": {},
    "dynamic5": {"topology": {"dynamic": True}},
    "fully": {"topology": {"kind": "fully_connected", "options": {}}},
    "random10": {"sharing": {"name": "random", "options": {"fraction": 0.1, "indices": "seed"}}},
    "choco10": {"sharing": {"name": "choco", "options": {
        "gamma": 0.25, "compressor": {"name": "topk", "options": {"fraction": 0.1}}}}},
    "plain48": {"nodes": 48},
    "secagg48": {"nodes": 48, "privacy": {"secagg": {"ring_bits": 32}}},
    "regular5-1024": {"nodes": 1024},
    "regular9-1024": {"nodes": 1024, "topology": {"options": {"degree": 9}}},
}

FIGURES: dict[str, list[str]] = {
    "topologies": ["ring", "regular5", "dynamic5", "fully"],
    "sparsification": ["regular5", "random10", "choco10"],
    "secure": ["plain48", "secagg48"],
    "scale": ["regular5", "regular5-1024", "regular9-1024"],
}

FIGURE_TITLES = {
    "topologies": "Fig. 3, D-PSGD on ring, 5-regular, dynamic 5-regular and fully connected graphs, 256 nodes",
    "sparsification": "Fig. 4, random sampling and CHOCO-SGD at a 10 % budget against full sharing, 256 nodes",
    "secure": "Fig. 5, secure aggregation against plain D-PSGD, 48 nodes",
    "scale": "Fig. 6, 5-regular at 256 and 1,024 nodes, 9-regular at 1,024 nodes",
}

# (figure, claim, kind, a, b): "greater" claims mean(a) > mean(b); "equal" claims
# |mean(a) - mean(b)| < 1 point; "bytes" rows report a's bytes as a fraction of b's.
CLAIMS = [
    ("topologies", "denser is better per round: 5-regular beats ring", "greater", "regular5", "ring"),
    ("topologies", "denser is better per round: fully connected beats 5-regular", "greater", "fully", "regular5"),
    ("topologies", "dynamic 5-regular matches fully connected", "equal", "dynamic5", "fully"),
    ("topologies", "... at a fraction of the bytes", "bytes", "dynamic5", "fully"),
    ("sparsification", "full sharing beats random sampling at 10 % (non-IID)", "greater", "regular5", "random10"),
    ("sparsification", "full sharing beats CHOCO-SGD at 10 % (non-IID)", "greater", "regular5", "choco10"),
    ("sparsification", "... at a fraction of the bytes (CHOCO)", "bytes", "choco10", "regular5"),
    ("secure", "secure aggregation costs accuracy (paper: -3 points, float masks)", "greater", "plain48", "secagg48"),
    ("scale", "5-regular: 1,024 nodes match 256 nodes", "equal", "regular5-1024", "regular5"),
    ("scale", "1,024 nodes: degree 9 beats degree 5 (paper: +5.8 points)", "greater", "regular9-1024",
     "regular5-1024"),
]


def variant_config(name: str, args: argparse.Namespace) -> dict:
    cfg = _merge(copy.deepcopy(BASE), VARIANTS[name])
    cfg["name"] = name
    cfg["data"]["root"] = args.root
    if args.quick:
        cfg["nodes"] = 32 if cfg["nodes"] > 256 else 16
        cfg["rounds"] = 4
        cfg["data"]["options"] = {"limit_train": 4000, "limit_test": 500}
        cfg["training"]["local_steps"] = 2
        cfg["evaluation"] = {"every": 2, "test_samples": 500}
    return cfg


def _merge(base: dict, change: dict) -> dict:
    for key, value in change.items():
        if isinstance(value, dict) and value and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def finals(run_dir: Path) -> list[dict]:
    """The final records (summary ``final``) of a variant's seeds that completed."""
    out = []
    for summary in sorted(run_dir.glob("seed=*/summary.json")):
        data = json.loads(summary.read_text())
        if data.get("status") == "completed":
            out.append(data["final"])
    return out


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95 % t-interval (``meshlearn plot``'s seed band)."""
    mean, low, high = seed_band(values)
    return mean, (high - low) / 2 if len(values) > 1 else math.nan


def welch(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its 95 % Welch t-interval."""
    from scipy import stats

    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return ma - mb, ma - mb, ma - mb
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.975, dof)) * se
    return ma - mb, ma - mb - half, ma - mb + half


def judge(kind: str, a: list[dict], b: list[dict]) -> tuple[str, str]:
    """(measurement, verdict) of one claim."""
    if kind == "bytes":
        ratio = a[0]["bytes_sent_per_node"] / b[0]["bytes_sent_per_node"]
        return f"{ratio:.3f} of the bytes ({a[0]['bytes_sent_per_node'] / 1e6:.0f} vs " \
               f"{b[0]['bytes_sent_per_node'] / 1e6:.0f} MB per node)", "holds" if ratio < 0.5 else "does not hold"
    acc_a = [100 * f["test_acc_mean"] for f in a]
    acc_b = [100 * f["test_acc_mean"] for f in b]
    (ma, ha), (mb, hb) = mean_ci(acc_a), mean_ci(acc_b)
    diff, lo, hi = welch(acc_a, acc_b) if len(a) > 1 and len(b) > 1 else (ma - mb, math.nan, math.nan)
    text = f"{ma:.1f} ± {ha:.1f} vs {mb:.1f} ± {hb:.1f} %: difference {diff:+.1f} [{lo:+.1f}, {hi:+.1f}]"
    significant = not math.isnan(lo) and (lo > 0 or hi < 0)
    if kind == "equal":
        return text, "holds" if abs(diff) < 1 else "does not hold" if significant else "inconclusive"
    if significant:
        return text, "holds" if diff > 0 else "does not hold"
    return text, "does not hold (no difference)" if -1 < lo and hi < 1 else "inconclusive"


def claims_table(out: Path, figures: list[str]) -> str:
    rows = ["| figure | paper claim | our measurement (final mean test accuracy ± 95 % CI) | verdict |",
            "|---|---|---|---|"]
    for figure, claim, kind, a, b in CLAIMS:
        if figure not in figures:
            continue
        fa, fb = finals(out / "runs" / a), finals(out / "runs" / b)
        if not fa or not fb:
            rows.append(f"| {figure} | {claim} | (runs missing) | — |")
            continue
        text, verdict = judge(kind, fa, fb)
        rows.append(f"| {figure} | {claim} ({a} vs {b}) | {text} | **{verdict}** |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/paper")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", default=",".join(FIGURES), help="comma-separated figures: " + ", ".join(FIGURES))
    parser.add_argument("--root", default=FASHION_MNIST, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--quick", action="store_true", help="tiny runs: check the suite works")
    args = parser.parse_args(argv)
    figures = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        parser.error(f"--only: unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURES)}")
    out = Path(args.out)
    (out / "configs").mkdir(parents=True, exist_ok=True)
    variants = list(dict.fromkeys(v for f in figures for v in FIGURES[f]))
    started = time.perf_counter()
    for name in variants:
        config = out / "configs" / f"{name}.toml"
        config.write_text(tomli_w.dumps(variant_config(name, args)))
        t0 = time.perf_counter()
        run_sweep(config, {}, args.seeds, out / "runs" / name, log=lambda line: print(line, flush=True))
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"all runs: {time.perf_counter() - started:.0f} s\n")

    table = claims_table(out, figures)
    (out / "claims.md").write_text(table)
    print(table)
    for name in variants:
        accs = [100 * f["test_acc_mean"] for f in finals(out / "runs" / name)]
        if accs:
            mean, half = mean_ci(accs)
            print(f"  {name:15s} {mean:5.1f} ± {half:.1f} %  ({len(accs)} seeds: "
                  + ", ".join(f"{a:.1f}" for a in accs) + ")")
    from meshlearn.report import write_report

    report = write_report({f"{figure}: {FIGURE_TITLES[figure]}": [out / "runs" / name for name in FIGURES[figure]]
                           for figure in figures}, out / "report.html", title="The reference paper's findings, re-measured")
    print(f"\nwrote {report}")


if __name__ == "__main__":
    main()
