"""The algorithm interface: one round of a node's life, independent of the engine.

An algorithm talks to its engine only through ``RoundContext``: ``train`` runs local
steps, ``exchange`` delivers payloads to the neighbours and returns an ``Inbox``. The
vectorized simulator and the networked engines implement the context; algorithms are
written once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

import torch

from meshlearn.nodes import NodeBatch
from meshlearn.sharing import Inbox, Payload, Sharing

__all__ = ["RoundContext", "Algorithm"]


class RoundContext(Protocol):
    """What an engine offers an algorithm during one round."""

    def train(self, nodes: NodeBatch) -> torch.Tensor:
        """Run the configured local training; returns the per-node mean training loss."""

    def exchange(self, nodes: NodeBatch, payload: Payload, rnd: int) -> Inbox:
        """Send each node's payload to its neighbours and collect theirs."""


class Algorithm(ABC):
    """A decentralized-learning algorithm: what every node does in a round."""

    name: str = ""

    def __init__(self, sharing: Sharing):
        self.sharing = sharing

    def setup(self, nodes: NodeBatch) -> None:
        self.sharing.setup(nodes)

    @abstractmethod
    def round(self, nodes: NodeBatch, rnd: int, ctx: RoundContext) -> torch.Tensor:
        """Advance ``nodes`` by one round; returns the per-node training loss."""
