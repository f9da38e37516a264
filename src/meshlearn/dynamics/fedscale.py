"""Convert a FedScale device-availability trace into an ``[availability]`` trace CSV.

FedScale's ``client_behave_trace`` is a pickle of ``{client_id: {"active": [t, ...],
"inactive": [t, ...], "finish_time": T, ...}}``: a client is available from ``active[k]`` to
``inactive[k]`` (seconds) and its trace repeats every ``finish_time`` seconds. This turns
the traces of ``nodes`` clients (the first ones by id, or a random sample with ``--seed``)
into offline periods over ``[0, horizon_s)``, one CSV row each, in seconds:

    python -m meshlearn.dynamics.fedscale client_behave_trace --nodes 64 --horizon-s 86400 --out trace.csv

then ``[availability] model = "trace"``, ``file = "trace.csv"``, ``unit = "seconds"`` and
``round_s`` = the seconds a round stands for. The pickle is read without running code: every
length it declares is checked first, and the unpickler resolves no global at all, so only
plain dicts, lists, numbers and strings can come out of it.
"""

from __future__ import annotations

import argparse
import io
import math
import pickle
import pickletools
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_fedscale", "offline_periods", "convert", "MAX_ROWS"]

MAX_ROWS = 10_000_000   # rows a conversion may write (a short finish_time over a long horizon repeats often)


class _PlainUnpickler(pickle.Unpickler):
    """Builds containers and scalars only: any reference to a global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"the trace references {module}.{name}; a FedScale availability trace holds "
                                     "only dicts, lists and numbers")


def read_fedscale(path: Path) -> dict[Any, dict]:
    """The client traces of a FedScale availability pickle; ValueError naming the file if it is not one."""
    raw = path.read_bytes()
    try:
        for _ in pickletools.genops(raw):   # declared lengths checked against the bytes there
            pass
        trace = _PlainUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:
        raise ValueError(f"{path}: not a FedScale availability trace ({type(exc).__name__}: {exc})") from None
    if not isinstance(trace, dict) or not trace:
        raise ValueError(f"{path}: expected a non-empty dict of client id -> trace, got {type(trace).__name__}")
    for client, entry in trace.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("active"), list)
                and isinstance(entry.get("inactive"), list) and _number(entry.get("finish_time"))
                and entry["finish_time"] > 0 and len(entry["active"]) == len(entry["inactive"])
                and all(_number(t) for t in entry["active"] + entry["inactive"])):
            raise ValueError(f"{path}: client {client!r} has no valid trace (active and inactive lists of equal "
                             "length, finish_time > 0)")
    return trace


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def offline_periods(entry: dict, horizon_s: float) -> list[tuple[float, float]]:
    """A client's offline periods in [0, horizon_s): the gaps between its active periods,
    its trace repeated every ``finish_time``."""
    period = float(entry["finish_time"])
    active = sorted((float(a), float(b)) for a, b in zip(entry["active"], entry["inactive"]) if b > a)
    out: list[tuple[float, float]] = []
    start = 0.0
    for offset in np.arange(0.0, horizon_s, period):
        for a, b in active:
            a, b = min(a + offset, horizon_s), min(b + offset, horizon_s)
            if a > start:
                out.append((start, a))
            start = max(start, b)
    if start < horizon_s:
        out.append((start, horizon_s))
    return out


def convert(path: Path, nodes: int, horizon_s: float, seed: int | None = None) -> str:
    """The trace CSV (node,offline_from,online_from in seconds) of ``nodes`` clients of a
    FedScale availability trace."""
    trace = read_fedscale(path)
    clients = sorted(trace, key=str)
    if len(clients) < nodes:
        raise ValueError(f"{path}: {len(clients)} clients, fewer than --nodes {nodes}")
    if seed is not None:
        clients = [clients[i] for i in sorted(np.random.default_rng(seed).choice(len(clients), nodes, replace=False))]
    rows = ["node,offline_from,online_from"]
    for node, client in enumerate(clients[:nodes]):
        entry = trace[client]
        if horizon_s / float(entry["finish_time"]) * (len(entry["active"]) + 1) > MAX_ROWS:
            raise ValueError(f"{path}: client {client!r} repeats every {entry['finish_time']} s: over "
                             f"{MAX_ROWS:,} rows in --horizon-s {horizon_s}; shorten the horizon")
        for start, until in offline_periods(entry, horizon_s):
            rows.append(f"{node},{start:g},{'' if until >= horizon_s else format(until, 'g')}")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshlearn.dynamics.fedscale",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", help="FedScale's client_behave_trace pickle")
    parser.add_argument("--nodes", type=int, required=True, help="clients to take, one per node")
    parser.add_argument("--horizon-s", type=float, required=True, help="seconds of trace to convert")
    parser.add_argument("--seed", type=int, help="sample the clients at random with this seed (default: the first)")
    parser.add_argument("--out", required=True, help="the CSV to write")
    args = parser.parse_args(argv)
    if args.nodes < 1 or not args.horizon_s > 0:
        parser.error("--nodes and --horizon-s must be positive")
    try:
        text = convert(Path(args.trace), args.nodes, args.horizon_s, args.seed)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(args.out).write_text(text)
    print(f"{args.out}: {text.count(chr(10)) - 1} offline periods of {args.nodes} nodes over {args.horizon_s:g} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
