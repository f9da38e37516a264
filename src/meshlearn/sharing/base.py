"""The sharing interface: what a node sends, and how it folds what it received into its model.

A ``Sharing`` works on a ``NodeBatch`` (any number of local nodes, stacked) and never on
sockets: engines deliver the payloads and hand back an ``Inbox``. The simulator's inbox is a
sparse matrix product over all nodes, a networked engine's inbox sums decoded messages;
the sharing code is the same for both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from meshlearn.nodes import NodeBatch

__all__ = ["Payload", "Inbox", "LinkInbox", "Sharing", "PartialSharing", "partial_average"]

Payload = dict[str, torch.Tensor]
"""Named tensors with a leading local-node dimension: row i is what node i sends."""


class Inbox(ABC):
    """What a batch of nodes received in one round, with the mixing weights of the senders.

    ``self_weight[i]`` is node i's own weight w_ii; with the senders' weights w_ij they sum
    to one per receiver (an engine that loses a message renormalizes them).
    """

    self_weight: torch.Tensor  # (B,); read it after weighted_sum, which may renormalize it

    @abstractmethod
    def weighted_sum(self, decode: Callable[[Payload], torch.Tensor]) -> torch.Tensor:
        """``out[i] = sum_j w_ij * decode(payload_j)`` over the senders j that node i heard from.

        ``decode`` maps a stacked payload (leading sender dimension) to stacked dense tensors,
        so the engine may apply it to one message or to all senders at once.
        """


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
        if cls.static_graph and (topo.schedule or topo.dynamic or topo.final_average or topo.kind == "epidemic"):
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
    return mixed.addcmul_(params, inbox.self_weight.to(mixed.dtype).unsqueeze(1))


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
    weight = inbox.self_weight.to(summed.dtype).unsqueeze(1)
    numerator = summed[:, :size].addcmul_(params, weight)
    denominator = summed[:, size:].add_(weight)
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-30), params)


class PartialSharing(Sharing):
    """A scheme whose messages hold some of the parameters; aggregation is ``partial_average``."""

    @abstractmethod
    def decode_partial(self, payload: Payload) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked payloads → (dense values, float mask of the coordinates each sender sent)."""

    def aggregate(self, nodes: NodeBatch, inbox: Inbox) -> None:
        nodes.params = partial_average(nodes.params, inbox, self.decode_partial)
