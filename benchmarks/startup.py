"""Start-up time on a LEAF-sized data set: parsing its JSON against mapping the cached arrays.

Writes a FEMNIST-format LEAF set (``--samples`` 28×28 images of ``--writers`` writers, 90 %
for training, about 272 MB of JSON at the default 51,000 samples, the size of LEAF's FEMNIST
at sample fraction 0.05), unless ``--root`` names a real one. Then, with an empty cache
folder, times in fresh processes:

    parse       loading the data set with the cache off (what every process paid before)
    first       the first load with the cache on: parsing plus writing the entry
    second      a later load: the arrays memory-mapped from the entry
    experiment  a whole ``Experiment.build`` (data, partition, model) on the cache, a node per writer

each split into its imports (torch's, mostly) and the data part, with the peak resident memory
(mapped pages are read only when touched). Also times ``import meshlearn.cli`` (the CLI's own
start-up). Target: the data's second start-up ≤ 2 s.

    python benchmarks/startup.py [--samples 51000] [--writers 512] [--root LEAF_DATA] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TIMED = """
import json, os, sys, time, resource
t0 = time.perf_counter()
import torch
from meshlearn.data import datasets
imported = time.perf_counter() - t0
if sys.argv[1] == "experiment":
    from meshlearn.config import parse_config
    from meshlearn.experiment import Experiment
    data = {"dataset": "leaf-femnist", "root": sys.argv[2], "partition": "natural"}
    cfg = parse_config({"nodes": int(sys.argv[3]), "data": data,
                        "model": {"name": "logreg"}, "topology": {"kind": "regular", "options": {"degree": 4}}})
    Experiment.build(cfg)
else:
    data = datasets.load("leaf-femnist", sys.argv[2], cache=sys.argv[1] != "parse")
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "import": imported,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_femnist(root: Path, samples: int, writers: int, seed: int = 0) -> int:
    """A LEAF FEMNIST-format set: writers' train/test JSON files; returns its size in bytes."""
    rng = np.random.default_rng(seed)
    per = np.full(writers, samples // writers)
    per[: samples % writers] += 1
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    size, files = 0, 8
    for f in range(files):
        blobs = {"train": {}, "test": {}}
        for w in range(f, writers, files):
            # FEMNIST's pixels: mostly white background (1.0), some ink in two decimals
            x = np.where(rng.random((per[w], 784)) < 0.8, 1.0, rng.random((per[w], 784)).round(2))
            y = rng.integers(0, 62, per[w])
            cut = max(1, int(0.9 * per[w]))
            for split, rows in (("train", slice(0, cut)), ("test", slice(cut, None))):
                blobs[split][f"f{w:04d}"] = {"x": x[rows].tolist(), "y": y[rows].tolist()}
        for split, users in blobs.items():
            path = root / split / f"all_data_{f}_niid_05_keep_0_{split}_9.json"
            path.write_text(json.dumps({"users": list(users), "num_samples": [len(u["y"]) for u in users.values()],
                                        "user_data": users}))
            size += path.stat().st_size
    return size


def timed(what: str, root: str, cache: Path, nodes: int) -> dict:
    env = {"MESHLEARN_CACHE": str(cache), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", TIMED, what, root, str(nodes)], capture_output=True, text=True,
                         env=env)
    if out.returncode:
        sys.exit(f"{what} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=51_000)
    parser.add_argument("--writers", type=int, default=512)
    parser.add_argument("--root", help="a real LEAF FEMNIST data folder (train/ and test/) instead")
    parser.add_argument("--quick", action="store_true", help="5,000 samples of 64 writers")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.writers = 5_000, 64
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            t0 = time.perf_counter()
            size = write_femnist(Path(tmp) / "leaf", args.samples, args.writers)
            root = str(Path(tmp) / "leaf")
            print(f"wrote {args.samples} samples of {args.writers} writers: {size / 1e6:.0f} MB of JSON "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        cache = Path(tmp) / "cache"
        rows = [(what, timed(what, root, cache, args.writers)) for what in ("parse", "first", "second", "experiment")]
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import meshlearn.cli"], check=True)
        cli = time.perf_counter() - t0
    print(f"\n{'load':<11} {'total s':>8} {'imports s':>9} {'data s':>8} {'peak RSS MB':>12}")
    for what, figures in rows:
        print(f"{what:<11} {figures['seconds']:>8.2f} {figures['import']:>9.2f} "
              f"{figures['seconds'] - figures['import']:>8.2f} {figures['rss_mb']:>12.0f}")
    data = {what: figures["seconds"] - figures["import"] for what, figures in rows}
    print(f"\nsecond start-up of the data: {data['second']:.3f} s against {data['parse']:.2f} s parsing "
          f"({data['parse'] / max(data['second'], 1e-3):.0f}× faster; target ≤ 2 s: "
          f"{'met' if data['second'] <= 2 else 'NOT met'}); importing torch and meshlearn.data takes "
          f"{rows[2][1]['import']:.2f} s in any case; python -c 'import meshlearn.cli': {cli:.2f} s")


if __name__ == "__main__":
    main()
