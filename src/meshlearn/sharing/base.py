"""The sharing interface: what a node sends, and how it folds what it received into its model.

A ``Sharing`` works on a ``NodeBatch`` (any number of local nodes, stacked) and never on
sockets: engines deliver the payloads and hand back an ``Inbox``. The simulator's inbox is a
sparse matrix product over all nodes, a networked engine's inbox sums decoded messages;
the sharing code is the same for both. Rules that are not a weighted sum (a coordinate-wise
median, a trimmed mean, clipping around the node's own model) read the received messages
themselves, grouped by receiver, with ``Inbox.by_receiver``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from meshlearn.nodes import NodeBatch

__all__ = ["Payload", "Inbox", "Received", "LinkInbox", "Sharing", "DenseSharing", "PartialSharing",
           "partial_average", "received_chunks", "RECEIVED_BUDGET"]

Payload = dict[str, torch.Tensor]
"""Named tensors with a leading local-node dimension: row i is what node i sends."""


class Inbox(ABC):
    """What a batch of nodes received in one round, with the mixing weights of the senders.

    ``self_weight[i]`` is node i's own weight w_ii; with the senders' weights w_ij they sum
    to one per receiver (an engine that loses a message renormalizes them). Read an inbox once
    (``weighted_sum`` or ``by_receiver``): a networked worker sums messages as they arrive and
    keeps none. Until then the payload is still being sent: leave its tensors as they are.
    """

    self_weight: torch.Tensor  # (B,); read it after weighted_sum or by_receiver, which may renormalize it
    rnd: int = 0               # the round of the exchange (engines set it)

    @abstractmethod
    def weighted_sum(self, decode: Callable[[Payload], torch.Tensor]) -> torch.Tensor:
        """``out[i] = sum_j w_ij * decode(payload_j)`` over the senders j that node i heard from.

        ``decode`` maps a stacked payload (leading sender dimension) to stacked dense tensors,
        so the engine may apply it to one message or to all senders at once.
        """

    def by_receiver(self, decode: Callable[[Payload], torch.Tensor],
                    chunk_nodes: int | None = None) -> Iterator[Received]:
        """The received messages themselves, decoded, for chunks of receivers in row order.

        Every engine gives the same chunk contents for a round: per receiver, the senders
        whose message arrived (lost and rejected ones left out), in increasing id, with the
        weights ``weighted_sum`` would use and the renormalized ``self_weight``. ``chunk_nodes``
        receivers go in a chunk (default: as many as keep b·k·P values under ``RECEIVED_BUDGET``
        and the padding under the messages' count). Chunks share memory: use one before drawing
        the next. ``weighted_sum`` stays the fast path for linear rules.
        """
        raise NotImplementedError(f"{type(self).__name__} gives weighted sums only")


@dataclass
class Received:
    """What a chunk of b receivers got, side by side: row r holds receiver ``rows[r]``'s
    messages in k slots (senders in increasing id, then padding up to the chunk's largest
    count), so a rule over the messages is one batched tensor operation."""

    rows: torch.Tensor         # (b,) int64 local rows of the receivers
    senders: torch.Tensor      # (b, k) int64 global sender ids; -1 in padding
    weights: torch.Tensor      # (b, k) float32 w_ij, renormalized over what arrived; 0 in padding
    mask: torch.Tensor         # (b, k) bool: a received message (False: padding)
    values: torch.Tensor       # (b, k, *shape) decoded messages; zero in padding
    self_weight: torch.Tensor  # (b,) float32 w_ii, renormalized like the weights


RECEIVED_BUDGET = 1 << 20
"""Values (b·k·P numbers, 4 MiB of float32) that one ``Received`` chunk may hold by default: chunks
and a rule's temporaries stay in the cache and in reused heap memory (measured at 256 nodes ×
50k parameters: gathers 6× and clipping rules 4× faster than with 64 MiB chunks)."""


def received_chunks(indptr: np.ndarray, senders: np.ndarray, weights: np.ndarray, self_weight: torch.Tensor,
                    source: torch.Tensor, source_rows: np.ndarray,
                    chunk_nodes: int | None = None) -> Iterator[Received]:
    """``Received`` chunks of receivers whose messages are listed like a CSR matrix: receiver
    row r got messages ``indptr[r]:indptr[r + 1]`` (``senders`` increasing, float32
    ``weights``), and message e's decoded value is ``source[source_rows[e]]``. Each chunk is
    one gather from ``source`` into memory the chunks share (a new allocation per chunk, page
    faults and all, cost more than the rules themselves), so a chunk's ``values`` are valid until
    the next chunk is drawn; engines build their ``by_receiver`` on it."""
    degree = np.diff(indptr)
    shape = tuple(source.shape[1:])
    size = int(np.prod(shape))   # values per message
    buffer = None
    for r0, r1 in _chunk_bounds(degree, max(1, size), chunk_nodes):
        count = degree[r0:r1]
        b, k = r1 - r0, int(count.max(initial=0))
        lo, hi = int(indptr[r0]), int(indptr[r1])
        # slot of message e: its receiver's row in the chunk times k, plus its rank among that row's
        slot = np.repeat(np.arange(b) * k - (indptr[r0:r1] - lo), count) + np.arange(hi - lo)
        ids = np.full(b * k, -1, dtype=np.int64)
        ids[slot] = senders[lo:hi]
        w = np.zeros(b * k, dtype=np.float32)
        w[slot] = weights[lo:hi]
        index = np.zeros(b * k, dtype=np.int64)
        index[slot] = source_rows[lo:hi]
        mask = torch.from_numpy(ids >= 0).to(source.device)
        if buffer is None or buffer.numel() < b * k * size:
            buffer = source.new_empty(b * k * size)
        values = buffer[:b * k * size].view(b * k, *shape)
        if len(source):
            torch.index_select(source, 0, torch.from_numpy(index).to(source.device), out=values)
            if (ids < 0).any():
                values.index_fill_(0, torch.from_numpy(np.flatnonzero(ids < 0)).to(source.device), 0)
        else:
            values.zero_()
        yield Received(torch.arange(r0, r1), torch.from_numpy(ids).view(b, k).to(source.device),
                       torch.from_numpy(w).view(b, k).to(source.device), mask.view(b, k), values.view(b, k, *shape),
                       self_weight[r0:r1].to(source.device))


def _chunk_bounds(degree: np.ndarray, per_value: int, chunk_nodes: int | None) -> Iterator[tuple[int, int]]:
    """Row ranges of the chunks: ``chunk_nodes`` rows each, or as many rows (at least one) as
    keep the padded slots, rows × (largest count among them), within ``RECEIVED_BUDGET`` values
    and within twice the messages: memory stays bounded whatever the degrees, and a receiver
    with many senders (a server) does not pad a chunk of receivers with few."""
    n = len(degree)
    if chunk_nodes:
        yield from ((r0, min(n, r0 + chunk_nodes)) for r0 in range(0, n, chunk_nodes))
        return
    start, widest, messages = 0, 0, 0
    for r in range(n):
        count = int(degree[r])
        slots = (r - start + 1) * max(widest, count)
        if r > start and (slots * per_value > RECEIVED_BUDGET or slots > 2 * (messages + count)):
            yield start, r
            start, widest, messages = r, 0, 0
        widest, messages = max(widest, count), messages + count
    if n:
        yield start, n


@dataclass
class LinkInbox:
    """What a batch of receivers got when every link carried its own message (``per_link``
    exchanges): one entry per incoming link, grouped by receiver, senders in increasing id."""

    rows: np.ndarray          # (E,) receiving local row of each link
    senders: np.ndarray       # (E,) global id of each link's sender
    weights: np.ndarray       # (E,) float64 mixing weight w_ij of the link
    received: np.ndarray      # (E,) bool: the message arrived
    self_weight: np.ndarray   # (B,) float64 w_ii
    payload: Payload          # (E, ...) the messages; rows of links not received are zero


class Sharing(ABC):
    """One sharing scheme: the message a node sends and the aggregation of what arrives.

    ``seed`` is the experiment seed: any randomness must derive from it, the global node id
    and the round (``compressors.round_seeds``), so that every engine draws the same numbers.
    """

    name: str = ""
    dense: ClassVar[bool] = False
    """Every message carries a whole model (possibly quantized): servers can use it."""
    reliable_links: ClassVar[bool] = False
    """Needs every message to arrive (sender and receivers keep copies of each other's state)."""
    static_graph: ClassVar[bool] = False
    """Needs the same neighbours every round."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    @classmethod
    def check_config(cls, cfg) -> None:
        """Refuse an ``ExperimentConfig`` this scheme cannot run, naming the key to change."""
        what, topo, net = f"sharing.name = {cfg.sharing.name!r}", cfg.topology, cfg.network
        if cls.reliable_links and (net.loss > 0 or any((c.loss or 0) > 0 for c in net.classes.values())):
            raise ValueError(f"{what} needs every message to arrive (sender and receivers keep copies of each "
                             "other's public models); set network.loss = 0 and no lossy classes, or use another "
                             "sharing scheme")
        if cls.static_graph and not topo.static:
            raise ValueError(f"{what} keeps state about its fixed neighbours, so it needs a static topology: "
                             "remove topology.dynamic, schedule, final_average and kind = 'epidemic', or use "
                             "another sharing scheme")

    def setup(self, nodes: NodeBatch) -> None:
        """Create per-node sharing state (e.g. public copies) in ``nodes.state``."""

    @abstractmethod
    def encode(self, nodes: NodeBatch, rnd: int) -> Payload:
        """The payload each local node sends to every neighbour this round."""

    @abstractmethod
    def aggregate(self, nodes: NodeBatch, inbox: Inbox) -> None:
        """Replace ``nodes.params`` with the aggregate of own and received models."""

    def node_metrics(self, ids: list[int]) -> dict[str, np.ndarray]:
        """Per-node counters of the scheme for the results (int64, aligned with ``ids``)."""
        return {}

    def state_dict(self) -> dict:
        """State kept outside ``nodes.state`` that later rounds depend on, for checkpoints
        (``Algorithm.state_dict``); per-node state in ``nodes.state`` is saved already."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``'s state."""

    def public_keys(self) -> dict[int, bytes]:
        """Public keys of the local nodes that other processes need (secure aggregation)."""
        return {}

    def add_public_keys(self, directory: dict[int, bytes]) -> None:
        """The key directory the engine publishes (all nodes' public keys)."""

    def share(self, nodes: NodeBatch, rnd: int, ctx) -> None:
        """One gossip step over the round's graph: send, receive, aggregate. Schemes whose
        messages differ per receiver (secure aggregation) override this."""
        self.aggregate(nodes, ctx.exchange(nodes, self.encode(nodes, rnd), rnd))


def dense_average(params: torch.Tensor, inbox: Inbox,
                  decode: Callable[[Payload], torch.Tensor]) -> torch.Tensor:
    """x_i ← w_ii x_i + Σ_j w_ij decode(payload_j): gossip averaging of whole models."""
    mixed = inbox.weighted_sum(decode)
    return mixed.addcmul_(params, inbox.self_weight.to(mixed.device, mixed.dtype).unsqueeze(1))


def partial_average(params: torch.Tensor, inbox: Inbox,
                    decode: Callable[[Payload], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Average each parameter over the values actually received for it.

    ``decode`` maps stacked payloads to (dense values, 0/1 mask of the sent coordinates).
    Coordinate k of node i becomes (w_ii x_ik + Σ_j w_ij v_jk) / (w_ii + Σ_j w_ij m_jk): the
    mixing weights renormalized over the senders of k, so a partial model is not pulled toward
    zero where it is silent. A coordinate nobody sent keeps its value. One ``weighted_sum`` of
    [values | mask] gives numerator and denominator together.
    """
    size = params.shape[1]
    summed = inbox.weighted_sum(lambda payload: torch.cat(decode(payload), dim=1))
    weight = inbox.self_weight.to(summed.device, summed.dtype).unsqueeze(1)
    numerator = summed[:, :size].addcmul_(params, weight)
    denominator = summed[:, size:].add_(weight)
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-30), params)


class DenseSharing(Sharing):
    """A scheme whose every message decodes to a whole model, so a node can fold what it
    received with any aggregation rule: ``aggregator`` (the framework sets it from
    ``[aggregation]``; the weighted mean by default) over the ``decode``d messages. Its
    messages can also be crafted by Byzantine nodes: an attack's models go through ``encode``."""

    dense = True
    aggregator = None
    """The ``Aggregator`` that folds received models (set from ``[aggregation]``); None: the mean."""

    @abstractmethod
    def decode(self, payload: Payload) -> torch.Tensor:
        """Stacked payloads → the (senders, P) models they carry."""

    def aggregate(self, nodes: NodeBatch, inbox: Inbox) -> None:
        from meshlearn.aggregation import Mean, aggregate_models

        nodes.params = aggregate_models(nodes.params, inbox, self.decode, self.aggregator or Mean())


class PartialSharing(Sharing):
    """A scheme whose messages hold some of the parameters; aggregation is ``partial_average``."""

    @abstractmethod
    def decode_partial(self, payload: Payload) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked payloads → (dense values, float mask of the coordinates each sender sent)."""

    def aggregate(self, nodes: NodeBatch, inbox: Inbox) -> None:
        nodes.params = partial_average(nodes.params, inbox, self.decode_partial)
