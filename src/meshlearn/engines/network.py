"""Network emulation: per-link latency, bandwidth and loss, the same in every engine.

Links are the entries of the communication graph's CSR adjacency, entry (i, j) being the
link that carries j's messages to i. A message of b bytes on a link arrives
``latency + 8 b / bandwidth`` after it is sent; links are independent (no shared uplink).
Losses are drawn per round from a generator seeded by (seed, round), one draw per link in
CSR order, so the simulator and every networked worker lose exactly the same messages.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from meshlearn import streams
from meshlearn.config import LinkConfig, NetworkConfig
from meshlearn.streams import Stream

__all__ = ["LinkModel"]



class LinkModel:
    """Latency (s), rate (bytes/s) and loss probability of every link of a graph."""

    def __init__(self, cfg: NetworkConfig, adjacency: sp.csr_matrix, seed: int, strict: bool = True):
        """``strict``: a file row for a pair that is not an edge is an error (set it False for
        graphs that change every round, where such a row applies whenever the edge exists)."""
        adjacency = adjacency.tocsr()
        adjacency.sort_indices()
        self.indptr, self.indices = adjacency.indptr, adjacency.indices
        self.receivers = np.repeat(np.arange(adjacency.shape[0]), np.diff(self.indptr))
        self.seed = seed
        self.enabled = cfg.enabled
        e = len(self.indices)
        latency_ms = np.full(e, cfg.latency_ms, dtype=np.float64)
        mbps = np.full(e, cfg.bandwidth_mbps or np.inf, dtype=np.float64)
        loss = np.full(e, cfg.loss, dtype=np.float64)
        for cls in cfg.classes.values():
            members = np.zeros(adjacency.shape[0], dtype=bool)
            members[cls.nodes] = True
            touched = members[self.receivers] | members[self.indices]
            _apply_slowest(cls, touched, latency_ms, mbps, loss)
        if cfg.file:
            for src, dst, link in _read_links(cfg.file):
                pos = self.position(dst, src)
                if pos is None and not strict:
                    continue
                if pos is None:
                    raise ValueError(f"network.file = {cfg.file!r}: link {src} -> {dst} is not an edge of the "
                                     "topology; list only existing edges")
                for values, value in ((latency_ms, link.latency_ms), (mbps, link.bandwidth_mbps),
                                      (loss, link.loss)):
                    if value is not None:
                        values[pos] = value
        self.latency_s = latency_ms / 1e3
        self.rate = mbps * 1e6 / 8          # bytes per second
        self.loss = loss

    def position(self, dst: int, src: int) -> int | None:
        """Index of the link src → dst in CSR order, or None if they are not neighbours."""
        row = self.indices[self.indptr[dst]:self.indptr[dst + 1]]
        k = int(np.searchsorted(row, src))
        return int(self.indptr[dst]) + k if k < len(row) and row[k] == src else None

    def delay(self, positions, nbytes) -> np.ndarray:
        """Seconds from sending to arrival for messages of ``nbytes`` on the given links."""
        return self.latency_s[positions] + np.asarray(nbytes, dtype=np.float64) / self.rate[positions]

    def lost(self, rnd: int, step: int = 0) -> np.ndarray:
        """Which links lose their message of exchange ``step`` of round ``rnd`` (bool per
        link, CSR order)."""
        if not self.loss.any():
            return np.zeros(len(self.indices), dtype=bool)
        return streams.generator(self.seed, Stream.LINK_LOSS, 0, rnd, step).random(len(self.indices)) < self.loss


def _apply_slowest(link: LinkConfig, where: np.ndarray, latency_ms, mbps, loss) -> None:
    if link.latency_ms is not None:
        latency_ms[where] = np.maximum(latency_ms[where], link.latency_ms)
    if link.bandwidth_mbps is not None:
        mbps[where] = np.minimum(mbps[where], link.bandwidth_mbps)
    if link.loss is not None:
        loss[where] = np.maximum(loss[where], link.loss)


def _read_links(path: str) -> list[tuple[int, int, LinkConfig]]:
    """Rows ``src,dst,latency_ms,bandwidth_mbps,loss`` (empty cells keep the defaults),
    parsed once per version of the file (graphs that change every round re-read it)."""
    stat = Path(path).stat()
    return _parse_links(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _parse_links(path: str, mtime_ns: int, size: int) -> list[tuple[int, int, LinkConfig]]:
    rows = []
    with Path(path).open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"src", "dst"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"network.file = {path!r} needs a header with src,dst and any of "
                             "latency_ms,bandwidth_mbps,loss")
        for lineno, row in enumerate(reader, start=2):
            try:
                values = {key: float(row[key]) for key in ("latency_ms", "bandwidth_mbps", "loss")
                          if row.get(key) not in (None, "")}
                rows.append((int(row["src"]), int(row["dst"]), LinkConfig(**values)))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"network.file = {path!r} line {lineno}: {exc}") from None
    return rows


def renormalized(self_weight: np.ndarray, weights: np.ndarray, rows: np.ndarray,
                 received: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mixing weights of receivers that missed some messages, rescaled to sum to one.

    ``weights`` (float64, one per link) belong to receiver ``rows[k]``; links not
    ``received`` get weight 0 and the rest of the row, w_ii included, is divided by what is
    left. Rows that received everything keep their weights exactly, so an engine without
    losses mixes with the very same float32 numbers as one that never checks.
    Returns float32 (self weights, link weights).
    """
    kept = np.where(received, weights, 0.0)
    scale, alone = renormalizing_scale(self_weight, weights, rows, received)
    self_weight = np.where(alone, 1.0, self_weight * scale)
    return self_weight.astype(np.float32), (kept * scale[rows]).astype(np.float32)


def renormalizing_scale(self_weight: np.ndarray, weights: np.ndarray, rows: np.ndarray,
                        received: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per receiver, the factor ``renormalized`` applies to its weights (exactly 1 where
    everything arrived), and whether it is left alone: nothing arrived and its own weight is
    0 (a client missing the server), so it keeps its model."""
    kept = np.where(received, weights, 0.0)
    total = self_weight + np.bincount(rows, weights=kept, minlength=len(self_weight))
    complete = np.bincount(rows, weights=~received, minlength=len(self_weight)) == 0
    alone = total <= 0
    return np.where(complete | alone, 1.0, 1.0 / np.where(alone, 1.0, total)), alone
