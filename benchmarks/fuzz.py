"""Fuzzing the readers of untrusted input: every bad input must end in the reader's own error.

Hypothesis generates inputs for each reader (configs as text and as tables, topology files,
IDX files plain and gzipped, LEAF JSON and its Reddit records, CIFAR-10 batches, checkpoint files, and wire messages,
raw and through the Elias-gamma and fpzip stages (``codecs``):
random bytes and mutations of valid ones). An input passes when the reader accepts it or raises its documented
error (``ConfigError`` for configs, ``ValueError`` naming the file for data and graph files,
``MessageError`` for messages, ``CheckpointError`` for checkpoints); any other exception is a crash, a traceback a user would see.
Prints, per reader, the inputs tried, the crashes (with the first few), and the slowest input;
then the process's peak memory.

    python benchmarks/fuzz.py [--inputs 100000] [--targets config_text,wire,...]

It runs outside the test suite: 100,000 inputs take minutes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import pickle
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshlearn import checkpoint, wire
from meshlearn.config import ExperimentConfig, ConfigError, load_config, parse_config
from meshlearn.data import cifar, idx, leaf
from meshlearn.topology import read_graph

WORK = Path(tempfile.mkdtemp(prefix="meshlearn-fuzz-"))


class Tally:
    """Inputs tried, crashes and the slowest input of one target."""

    def __init__(self, name: str):
        self.name, self.tried, self.crashes, self.slowest = name, 0, [], (0.0, "")

    def run(self, call, allowed: tuple[type[BaseException], ...], describe) -> None:
        self.tried += 1
        t0 = time.perf_counter()
        try:
            call()
        except allowed:
            pass
        except Exception as exc:   # a traceback that would reach the user
            self.crashes.append(f"{type(exc).__name__}: {exc} ← {describe()[:200]}")
        took = time.perf_counter() - t0
        if took > self.slowest[0]:
            self.slowest = (took, describe()[:120])


# ---- inputs

SECTIONS = {name: field.annotation for name, field in ExperimentConfig.model_fields.items()}
KEYS = sorted(SECTIONS) + ["name", "options", "kind", "degree", "lr", "batch_size", "private", "path", "root"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["digits", "sim", "processes", "dpsgd", "full", "regular",
                                                           "mlp", "../../etc/passwd", "x.py:Y", "nan", "inf"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
                      max_leaves=12)
config_tables = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)


def valid_message() -> list[bytes]:
    msg = wire.Message(kind="model", run="0123456789ab", src=3, rnd=7,
                       meta={"dst": 5, "step": 0}, tensors={"params": torch.arange(12, dtype=torch.float32)})
    return [bytes(frame) for frame in wire.encode(msg)]


VALID_FRAMES = valid_message()
# A top-k payload through the Elias-gamma and fpzip stages: both decoders meet the mutations.
VALID_CODED = [bytes(frame) for frame in wire.encode(wire.Message(
    kind="model", run="0123456789ab", src=3, rnd=7, meta={"dst": 5},
    tensors={"values": torch.linspace(-1, 1, 400), "indices": torch.arange(0, 4000, 10, dtype=torch.int32)}),
    "elias-fpzip")]


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        if out:
            out[position % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


def valid_idx(shape: tuple[int, ...]) -> bytes:
    header = bytes([0, 0, 0x08, len(shape)]) + np.array(shape, ">u4").tobytes()
    return header + bytes(int(np.prod(shape)))


def valid_cifar() -> bytes:
    return pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)


VALID_CIFAR = valid_cifar()


# ---- targets

def fuzz_config_text(tally: Tally, n: int) -> None:
    path = WORK / "config.toml"

    @given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                     st.builds(lambda k, v: f"[{k}]\n{v}".encode(), st.sampled_from(KEYS), st.text(max_size=60))))
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def case(data: bytes) -> None:
        path.write_bytes(data)
        tally.run(lambda: load_config(path, check_files=False), (ConfigError,), lambda: repr(data))

    case()


def fuzz_config_table(tally: Tally, n: int) -> None:
    @given(config_tables)
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def case(raw: dict) -> None:
        tally.run(lambda: parse_config(raw, check_files=False), (ConfigError,), lambda: repr(raw))

    case()


def fuzz_graph_file(tally: Tally, n: int) -> None:
    path = WORK / "graph.txt"
    token = st.one_of(st.integers(-3, 10**13).map(str), st.text("0123456789 -x", max_size=6))
    rows = st.lists(st.lists(token, max_size=4).map(" ".join), max_size=8)

    @given(token, rows, st.sampled_from(["edges", "adjacency", None]), st.one_of(st.none(), st.integers(0, 50)))
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def case(head: str, body: list[str], fmt, nodes) -> None:
        text = "\n".join([head, *body])
        path.write_text(text)
        tally.run(lambda: read_graph(path, fmt, nodes=nodes), (ValueError,), lambda: repr(text))

    case()


def fuzz_idx(tally: Tally, n: int) -> None:
    path = WORK / "data-idx3-ubyte"
    shapes = st.lists(st.integers(0, 2**32 - 1) | st.integers(0, 6), min_size=0, max_size=4).map(tuple)
    edits = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4)

    @given(shapes, edits, st.one_of(st.none(), st.integers(0, 64)), st.booleans())
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def case(shape, changes, cut, gz) -> None:
        base = valid_idx(tuple(min(d, 6) for d in shape))   # a plausible body, the header as drawn
        header = bytes([0, 0, 0x08, len(shape)]) + np.array(shape, ">u4").tobytes()
        data = mutate(header + base[4 + 4 * len(shape):], changes, cut)
        path.write_bytes(gzip.compress(data) if gz else data)
        tally.run(lambda: idx.read_idx(path), (ValueError,), lambda: repr(data[:80]))

    case()


def fuzz_leaf(tally: Tally, n: int) -> None:
    folder = WORK / "leaf"
    folder.mkdir(exist_ok=True)
    users = st.lists(st.text(max_size=4), max_size=3)
    record = st.dictionaries(st.sampled_from(["x", "y", "z"]), values, max_size=3)
    blob = st.one_of(values, st.builds(lambda u, d, c: {"users": u, "user_data": d, "num_samples": c},
                                       users, st.dictionaries(st.text(max_size=4), record, max_size=3),
                                       st.lists(st.integers(-2, 5), max_size=3) | values))

    @given(blob, st.booleans())
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def case(content, corrupt) -> None:
        text = json.dumps(content)
        (folder / "all_data.json").write_text(text[: len(text) // 2] if corrupt else text)
        tally.run(lambda: leaf.read_leaf_split(folder), (ValueError,), lambda: text[:200])

    case()


def fuzz_reddit(tally: Tally, n: int) -> None:
    """LEAF Reddit records (comments of token lists, target records) inside valid LEAF files."""
    root = WORK / "reddit"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True, exist_ok=True)
    tokens = st.lists(st.one_of(st.sampled_from(["<PAD>", "<BOS>", "a", "b"]), values), max_size=4)
    comment = st.one_of(values, st.lists(tokens, max_size=3))
    target = st.one_of(values, st.builds(lambda t: {"target_tokens": t}, st.one_of(values, st.lists(tokens, max_size=3))))
    user = st.tuples(st.lists(comment, max_size=3), st.lists(target, max_size=3))

    @given(user, user)
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def case(train, test) -> None:
        for split, (xs, ys) in (("train", train), ("test", test)):
            blob = {"users": ["u"], "user_data": {"u": {"x": xs, "y": ys}}}
            (root / split / "all_data.json").write_text(json.dumps(blob))
        tally.run(lambda: leaf.load_reddit(str(root), vocab_size=4, seq_len=3), (ValueError,),
                  lambda: repr((train, test))[:200])

    case()


def fuzz_cifar(tally: Tally, n: int) -> None:
    path = WORK / "data_batch_1"
    edits = st.lists(st.tuples(st.integers(0, 10**5), st.integers(0, 255)), max_size=6)

    @given(st.one_of(st.binary(max_size=200), st.builds(mutate, st.just(VALID_CIFAR), edits,
                                                        st.one_of(st.none(), st.integers(0, len(VALID_CIFAR))))))
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def case(data: bytes) -> None:
        path.write_bytes(data)
        tally.run(lambda: cifar.read_batch(path), (ValueError,), lambda: repr(data[:80]))

    case()


def _fuzz_frames(tally: Tally, n: int, valid: list[bytes]) -> None:
    edits = st.lists(st.tuples(st.integers(0, 10**4), st.integers(0, 255)), max_size=6)
    frame = st.sampled_from(range(len(valid)))

    @given(st.one_of(st.lists(st.binary(max_size=120), max_size=4),
                     st.builds(lambda k, e, cut, extra: [mutate(f, e, cut) if i == k else f
                                                         for i, f in enumerate(valid)] + extra,
                               frame, edits, st.one_of(st.none(), st.integers(0, 2000)),
                               st.lists(st.binary(max_size=16), max_size=2))))
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def case(frames: list[bytes]) -> None:
        tally.run(lambda: wire.decode(frames, max_bytes=1 << 20), (wire.MessageError,), lambda: repr(frames)[:200])

    case()


def fuzz_wire(tally: Tally, n: int) -> None:
    _fuzz_frames(tally, n, VALID_FRAMES)


def fuzz_codecs(tally: Tally, n: int) -> None:
    _fuzz_frames(tally, n, VALID_CODED)


VALID_CHECKPOINT = checkpoint.encode({"params": torch.ones(2, 3), "order": np.arange(4), "pos": {0: 2, 1: None},
                                      "rng": {"state": 2**100}})


def fuzz_checkpoint(tally: Tally, n: int) -> None:
    edits = st.lists(st.tuples(st.integers(0, 10**4), st.integers(0, 255)), max_size=6)

    @given(st.one_of(st.binary(max_size=200), st.builds(mutate, st.just(VALID_CHECKPOINT), edits,
                                                        st.one_of(st.none(), st.integers(0, len(VALID_CHECKPOINT))))))
    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def case(data: bytes) -> None:
        tally.run(lambda: checkpoint.decode(data), (checkpoint.CheckpointError,), lambda: repr(data[:80]))

    case()


TARGETS = {"config_text": fuzz_config_text, "config_table": fuzz_config_table, "graph_file": fuzz_graph_file,
           "idx": fuzz_idx, "leaf": fuzz_leaf, "reddit": fuzz_reddit, "cifar": fuzz_cifar, "wire": fuzz_wire, "codecs": fuzz_codecs,
           "checkpoint": fuzz_checkpoint}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs in all, shared among the targets")
    parser.add_argument("--targets", default=",".join(TARGETS))
    args = parser.parse_args(argv)
    names = args.targets.split(",")
    per_target = max(1, -(-args.inputs // len(names)))   # rounded up: at least --inputs in all
    tallies = []
    t0 = time.perf_counter()
    for name in names:
        tally = Tally(name)
        start = time.perf_counter()
        TARGETS[name](tally, per_target)
        tallies.append(tally)
        print(f"{name:>13}: {tally.tried:>7} inputs, {len(tally.crashes)} crashes, slowest "
              f"{tally.slowest[0] * 1e3:.1f} ms ({time.perf_counter() - start:.0f} s)", flush=True)
        for crash in tally.crashes[:3]:
            print(f"               {crash}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total = sum(t.tried for t in tallies)
    crashes = sum(len(t.crashes) for t in tallies)
    slowest = max(tallies, key=lambda t: t.slowest[0])
    print(f"\n{total} inputs in {time.perf_counter() - t0:.0f} s, {crashes} crashes, peak memory {peak:.0f} MiB; "
          f"slowest input {slowest.slowest[0] * 1e3:.1f} ms ({slowest.name}: {slowest.slowest[1]})")
    return 1 if crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
