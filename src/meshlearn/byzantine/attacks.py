"""The attack interface: what a Byzantine node sends instead of its honest message.

An attack crafts whole models (the sharing scheme then encodes them like honest ones, so a
crafted message is well formed on the wire). What it may read is stated on its class:

- every attack sees its attackers' own models (``own``, after this round's local training,
  and ``start``, before it) and a random stream of its own;
- a ``rushing`` attack also waits for the messages its honest neighbours send it in the
  same exchange (``received``): a node can really do that, so it runs on every engine;
- an ``omniscient`` attack reads every node's model and the whole graph (``models``,
  ``byzantine``, ``graph``): only the simulator holds them, so other engines refuse it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch

from meshlearn.sharing.base import Received
from meshlearn.topology.schedule import RoundGraph

__all__ = ["Attack", "AttackView"]


@dataclass
class AttackView:
    """What the b Byzantine nodes of one host know when they craft an exchange's messages
    (row r of every tensor is attacker ``ids[r]``)."""

    rnd: int
    ids: torch.Tensor                    # (b,) int64 global ids of the attackers
    own: torch.Tensor                    # (b, P) each attacker's model now (after this round's training)
    start: torch.Tensor                  # (b, P) its model at the start of the round
    num_nodes: int = 0                   # nodes in the run
    num_byzantine: int = 0               # Byzantine nodes in the run (they collude)
    received: Received | None = None     # rushing: row r = what attacker r got from honest nodes (decoded)
    models: torch.Tensor | None = None   # omniscient: (N, P) every node's model now
    byzantine: torch.Tensor | None = None  # omniscient: (N,) bool, the Byzantine nodes
    graph: RoundGraph | None = None      # omniscient or per_receiver: this exchange's graph (w_ij, who hears whom)


class Attack(ABC):
    """What the Byzantine nodes send (``craft``) and, for data poisoning, what they train on.

    Its options are the keyword arguments of ``__init__``; ``seed`` (the experiment seed) is
    passed by the framework: draw randomness from ``streams`` with ``Stream.ATTACK``, the
    attacker's id and the round, so every engine sends the same messages.
    """

    name: str = ""
    rushing: ClassVar[bool] = False
    """Reads the honest messages its attackers receive in the same exchange (``view.received``)."""
    omniscient: ClassVar[bool] = False
    """Reads every node's model and the graph (``view.models``, ``view.graph``): simulator only."""
    per_receiver: ClassVar[bool] = False
    """Sends each receiver its own message: ``craft`` returns one row per outgoing link."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    @classmethod
    def check_config(cls, cfg) -> None:
        """Refuse an ``ExperimentConfig`` this attack cannot run, naming the key to change."""

    def labels(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The labels an attacker trains on in place of its true ``y`` (default: the true ones)."""
        return y

    @abstractmethod
    def craft(self, view: AttackView) -> torch.Tensor:
        """The messages, as models: (b, P), one per attacker; with ``per_receiver``, one per
        outgoing link, attackers in view order, each followed by its receivers in increasing
        id (``graph.receivers_of``)."""
