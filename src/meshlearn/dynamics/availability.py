"""Availability (churn): which nodes are online in each round.

Every engine asks the same ``Availability`` and gets the same answer, since the draws come
from the run's random streams (``Stream.AVAILABILITY``) or from a trace file. The engines
apply it alike (``NodeHost.play_round``): an offline node does not train, the round's graph
loses its links (``RoundGraph.without``, the receivers renormalizing over who is present), and
whatever the algorithm does to it that round is undone, so it comes back with its stale model.

Models: ``bernoulli`` (each node online in each round with a probability, independently),
``sessions`` (each node alternates online and offline spells of geometric lengths, the
discrete counterpart of exponential on/off sessions, starting online), and ``trace`` (a CSV of
offline periods, ``node,offline_from,online_from``, in rounds or in seconds).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from meshlearn import streams
from meshlearn.streams import Stream

__all__ = ["Availability", "read_trace", "MAX_TRACE_BYTES"]

MAX_TRACE_BYTES = 64 << 20   # a trace larger than this is refused before reading (about 3 M periods)


class Availability:
    """Which of ``num_nodes`` nodes are online in a round. ``always_online`` nodes (a
    federated server) never leave."""

    def __init__(self, cfg, num_nodes: int, seed: int, always_online: tuple[int, ...] = ()):
        self.cfg, self.n, self.seed = cfg, num_nodes, seed
        self.always_online = np.asarray(always_online, dtype=np.int64)
        self._recent: dict[int, np.ndarray] = {}   # the masks of the last rounds asked for
        self._spells: dict[int, _Spells] = {}   # sessions: each node's spells drawn so far
        self.periods: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None   # (node, from, until) offline
        if cfg.model == "trace":
            self.periods = read_trace(Path(cfg.file), num_nodes, cfg.round_s if cfg.unit == "seconds" else None)

    def online(self, rnd: int) -> np.ndarray:
        """(N,) bool: who is online in round ``rnd`` (round 0, the initial evaluation: everyone)."""
        mask = self._recent.get(rnd)
        if mask is None:
            mask = np.ones(self.n, dtype=bool) if rnd < 1 else self._draw(rnd)
            mask[self.always_online] = True
            if len(self._recent) >= 64:   # the asynchronous simulator looks a few windows ahead
                self._recent.clear()
            self._recent[rnd] = mask
        return mask

    def next_online(self, node: int, rnd: int, last: int) -> int | None:
        """The first round from ``rnd`` to ``last`` in which ``node`` is online (None: none)."""
        return next((r for r in range(rnd, last + 1) if self.online(r)[node]), None)

    def _draw(self, rnd: int) -> np.ndarray:
        model = self.cfg.model
        if model == "bernoulli":
            return streams.generator(self.seed, Stream.AVAILABILITY, 0, rnd).random(self.n) < self.cfg.online_probability
        if model == "sessions":
            return np.array([self._in_session(node, rnd) for node in range(self.n)], dtype=bool)
        if model == "trace":
            node, start, until = self.periods
            offline = np.zeros(self.n, dtype=bool)
            offline[node[(start <= rnd) & (rnd < until)]] = True
            return ~offline
        return np.ones(self.n, dtype=bool)

    def _in_session(self, node: int, rnd: int) -> bool:
        """Whether ``node`` is online in round ``rnd``: its spells are drawn in order from its
        own stream (online first), so the answer does not depend on the number of nodes."""
        if node not in self._spells:
            self._spells[node] = _Spells(streams.generator(self.seed, Stream.AVAILABILITY, node),
                                         self.cfg.mean_online, self.cfg.mean_offline)
        return self._spells[node].online(rnd)


class _Spells:
    """A node's alternating online/offline spells, drawn as far as asked."""

    def __init__(self, rng: np.random.Generator, mean_online: float, mean_offline: float):
        self.rng, self.means = rng, (mean_online, mean_offline)
        self.ends: list[int] = []   # round after which the k-th spell ends (k even: online)

    def online(self, rnd: int) -> bool:
        while not self.ends or self.ends[-1] < rnd:
            mean = self.means[len(self.ends) % 2]
            start = self.ends[-1] if self.ends else 0
            self.ends.append(start + int(self.rng.geometric(1.0 / mean)))
        return int(np.searchsorted(self.ends, rnd)) % 2 == 0


def read_trace(path: Path, num_nodes: int, round_s: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The offline periods of a trace CSV (header ``node,offline_from,online_from``) as
    (node, first offline round, first round online again) arrays; ``online_from`` empty means
    never back. With ``round_s`` the times are seconds: a node is offline in round r when the
    round's start, (r − 1)·round_s, lies in [offline_from, online_from)."""
    size = path.stat().st_size
    if size > MAX_TRACE_BYTES:
        raise ValueError(f"availability.file = {str(path)!r} is {size / 2**20:.0f} MiB; traces up to "
                         f"{MAX_TRACE_BYTES >> 20} MiB are read: keep the nodes and the span the run uses")
    nodes, starts, untils = [], [], []
    with path.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if header != ["node", "offline_from", "online_from"]:
            raise ValueError(f"availability.file = {str(path)!r}: the first line must be the header "
                             f"node,offline_from,online_from (got {','.join(header)[:80]!r})")
        for line, row in enumerate(reader, start=2):
            if not row or not "".join(row).strip():
                continue
            where = f"availability.file = {str(path)!r}, line {line}"
            if len(row) != 3:
                raise ValueError(f"{where}: expected 3 values node,offline_from,online_from, got {len(row)}")
            try:
                node = int(row[0])
                start = float(row[1])
                until = float(row[2]) if row[2].strip() else math.inf
            except ValueError:
                raise ValueError(f"{where}: {','.join(row)[:80]!r} is not a node id and two times") from None
            if not 0 <= node < num_nodes:
                raise ValueError(f"{where}: node {node} is not one of the run's nodes 0..{num_nodes - 1}")
            if not (math.isfinite(start) and start >= 0 and until > start):
                raise ValueError(f"{where}: an offline period needs 0 <= offline_from < online_from, got "
                                 f"{row[1].strip()!r} and {row[2].strip()!r}")
            nodes.append(node)
            starts.append(start)
            untils.append(until)
    start, until = np.asarray(starts, dtype=np.float64), np.asarray(untils, dtype=np.float64)
    if round_s is not None:   # round r starts at (r - 1)·round_s: offline in the rounds whose start is in the period
        start, until = np.ceil(start / round_s) + 1, np.ceil(until / round_s) + 1
    return np.asarray(nodes, dtype=np.int64), start, until
