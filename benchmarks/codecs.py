"""Lossless stages on real payloads: compression ratio and speed of each codec.

The payloads come from a short D-PSGD run (64 nodes, Fashion-MNIST label shards, 5-regular,
MLP 784-64-10 with 50,890 parameters, 20 rounds). For 8 nodes' rows this prints, per payload
and codec, the ratio raw bytes / wire bytes (frames only; a header is 100-200 bytes) and the
encode and decode speeds in MB of raw payload per second:

    model            the whole float32 model (full sharing)
    topk 10 %/1 %    the values and sorted int32 indices of the largest changes over the last
                     round (``support = "indices"``; at 10 % the default support is a bitmask)
    fpzip p=N        the model rounded by the ``fpzip`` compressor at N bits (fpzip's lossy
                     mode), with its largest relative error

Decoding fpzip runs fpzip's reader in its own process, and its speed includes that trip.
About a minute on 2 cores:

    python benchmarks/codecs.py [--root /usr/share/datasets/fashion-mnist]
"""

from __future__ import annotations

import argparse
import time

import torch

from meshlearn import wire
from meshlearn.config import parse_config
from meshlearn.engines.sim import SimEngine
from meshlearn.experiment import Experiment
from meshlearn.sharing.compressors import Fpzip, TopK, top_indices

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
CODECS = ["none", "zstd", "lz4", "elias", "fpzip", "elias-fpzip"]


def trained_rows(root: str, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(models after ``rounds``, their change over the last round) of 8 of 64 nodes."""
    cfg = parse_config({
        "seed": 1, "nodes": 64, "rounds": rounds,
        "data": {"dataset": "fashion-mnist", "root": root, "partition": "shards",
                 "partition_options": {"shards_per_node": 2}},
        "topology": {"kind": "regular", "options": {"degree": 5}},
        "model": {"name": "mlp", "options": {"hidden": [64]}},
        "training": {"local_steps": 10, "batch_size": 16, "lr": 0.05},
        "evaluation": {"every": rounds},
    })
    engine = SimEngine(Experiment.build(cfg))
    for rnd in range(1, rounds):
        engine.run_round(rnd)
    before = engine.nodes.params[:8].clone()
    engine.run_round(rounds)
    return engine.nodes.params[:8].clone(), engine.nodes.params[:8] - before


def measure(rows: list[dict[str, torch.Tensor]], codec: str) -> tuple[float, float, float]:
    """(raw / wire bytes, encode MB/s, decode MB/s) over the rows' messages."""
    messages = [wire.Message("bench", node, 1, "model", tensors, {"dst": 0}) for node, tensors in enumerate(rows)]
    raw = sum(wire.payload_nbytes(m) for m in messages)
    t0 = time.perf_counter()
    encoded = [[bytes(f) for f in wire.encode(m, codec)] for m in messages]
    t1 = time.perf_counter()
    for frames, msg in zip(encoded, messages):
        back = wire.decode(frames)
        assert all(torch.equal(back.tensors[k], t) for k, t in msg.tensors.items())
    t2 = time.perf_counter()
    sent = sum(len(f) for frames in encoded for f in frames[1:])
    return raw / sent, raw / 1e6 / (t1 - t0), raw / 1e6 / (t2 - t1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=FASHION_MNIST, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    models, change = trained_rows(args.root, args.rounds)
    measure([{"model": models[0]}], "fpzip")  # starts fpzip's reader process before anything is timed
    size = models.shape[1]
    payloads: dict[str, tuple[list[dict[str, torch.Tensor]], str]] = {"model": ([{"model": m} for m in models], "")}
    for fraction in (0.1, 0.01):
        top = TopK(fraction, support="indices")
        top.setup(size)
        payload = top.payload(models, top_indices(change, top.k))
        payloads[f"topk {fraction:.0%}"] = ([{k: t[i] for k, t in payload.items()} for i in range(8)], "")
    for precision in (8, 12, 16, 20):
        fp = Fpzip(precision)
        fp.setup(size)
        rounded = fp.compress(models, torch.arange(8), 1)["values"]
        error = ((rounded - models).abs() / models.abs().clamp_min(1e-30)).max().item()
        payloads[f"fpzip p={precision}"] = ([{"model": r} for r in rounded], f"max rel. error {error:.1e}")

    print(f"D-PSGD, 64 nodes, MLP 784-64-10 ({size:,} parameters), after {args.rounds} rounds; rows of 8 nodes")
    print(f"{'payload':<14} {'codec':<12} {'ratio':>6} {'encode MB/s':>11} {'decode MB/s':>11}  note")
    for name, (rows, note) in payloads.items():
        for codec in CODECS:
            ratio, enc, dec = measure(rows, codec)
            print(f"{name:<14} {codec:<12} {ratio:>6.2f} {enc:>11.0f} {dec:>11.0f}  {note}", flush=True)
        print()


if __name__ == "__main__":
    main()
