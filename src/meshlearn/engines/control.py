"""The control protocol between the launcher and its workers: msgpack maps with a ``kind``.

A worker's life, as messages (launcher ← worker, launcher → worker):

- ← ``hello`` (worker index, pid); → ``setup`` (the resolved config, run id, the worker's
  nodes, threads, bind address, the folders plug-ins are imported from, and for a resumed run
  its state and first round);
- ← ``ready`` (its data address, public keys for secure aggregation); → ``start`` (the address
  book, which worker owns each node, workers already down, the key directory);
- ← ``round`` every round (per-node losses and counters; on evaluation rounds raw float64
  frames follow: the sum of the local models, and the models themselves after the last round
  when asked; on checkpoint rounds ``checkpoint`` holds the worker's encoded state);
- ← ``done`` (CPU time, memory, timings) or ``error`` (``config``: a configuration the worker
  could not load, e.g. a plug-in it cannot import, else a traceback);
- → ``down`` (workers that died: stop waiting for their nodes), → ``checkpoint`` (send your
  state with the report of ``round``), → ``stop``.

Nothing is pickled: maps are msgpack, tensors raw little-endian frames.
"""

from __future__ import annotations

import msgpack

__all__ = ["NODE_METRICS", "pack", "unpack"]

NODE_METRICS = ("bytes_received", "messages_lost", "messages_missing")
"""Per-node counters every worker reports (int64), besides the sharing scheme's own."""


def pack(obj: dict) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(frame: bytes) -> dict:
    obj = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
        raise ValueError("control message is not a map with a 'kind'")
    return obj
