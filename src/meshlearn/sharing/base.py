"""The sharing interface: what a node sends, and how it folds what it received into its model.

A ``Sharing`` works on a ``NodeBatch`` (any number of local nodes, stacked) and never on
sockets: engines deliver the payloads and hand back an ``Inbox``. The simulator's inbox is a
sparse matrix product over all nodes, a networked engine's inbox sums decoded messages;
the sharing code is the same for both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from meshlearn.nodes import NodeBatch

__all__ = ["Payload", "Inbox", "Sharing"]

Payload = dict[str, torch.Tensor]
"""Named tensors with a leading local-node dimension: row i is what node i sends."""


class Inbox(ABC):
    """What a batch of nodes received in one round, with the mixing weights of the senders.

    ``self_weight[i]`` is node i's own weight w_ii; with the senders' weights w_ij they sum
    to one per receiver (an engine that loses a message renormalizes them).
    """

    self_weight: torch.Tensor  # (B,)

    @abstractmethod
    def weighted_sum(self, decode: Callable[[Payload], torch.Tensor]) -> torch.Tensor:
        """``out[i] = sum_j w_ij * decode(payload_j)`` over the senders j that node i heard from.

        ``decode`` maps a stacked payload (leading sender dimension) to stacked dense tensors,
        so the engine may apply it to one message or to all senders at once.
        """


class Sharing(ABC):
    """One sharing scheme: the message a node sends and the aggregation of what arrives."""

    name: str = ""

    def setup(self, nodes: NodeBatch) -> None:
        """Create per-node sharing state (e.g. public copies) in ``nodes.state``."""

    @abstractmethod
    def encode(self, nodes: NodeBatch, rnd: int) -> Payload:
        """The payload each local node sends to every neighbour this round."""

    @abstractmethod
    def aggregate(self, nodes: NodeBatch, inbox: Inbox) -> None:
        """Replace ``nodes.params`` with the aggregate of own and received models."""
