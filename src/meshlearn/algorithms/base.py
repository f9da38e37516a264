"""The algorithm interface: one round of a node's life, independent of the engine.

An algorithm talks to its engine only through ``RoundContext``: ``train`` runs local
steps, ``exchange`` delivers payloads along a round's graph and returns an ``Inbox``, and
``graph`` says who talks to whom in a round (the topology schedule's choice). An algorithm
may also exchange along graphs of its own (a server and its sampled clients), several
times a round. The vectorized simulator and the networked engines implement the context;
algorithms are written once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Protocol

import torch

from meshlearn.nodes import NodeBatch
from meshlearn.sharing import Inbox, Payload, Sharing
from meshlearn.topology.schedule import RoundGraph

__all__ = ["RoundContext", "Algorithm"]


class RoundContext(Protocol):
    """What an engine offers an algorithm during one round."""

    def train(self, nodes: NodeBatch, active: torch.Tensor | None = None, *, columns: torch.Tensor | None = None,
              anchor: torch.Tensor | None = None, mu: float = 0.0, sampler: str = "model") -> torch.Tensor:
        """Run the configured local training of the ``active`` nodes (default all); returns
        the per-node mean training loss (NaN for nodes that did not train). The keywords are
        ``LocalTrainer.train``'s: train only some parameter ``columns``, add a proximal pull
        ``mu`` towards ``anchor`` rows, draw mini-batches from a named ``sampler``."""

    def graph(self, rnd: int) -> RoundGraph:
        """The communication graph of round ``rnd``."""

    @property
    def departed(self) -> frozenset[int]:
        """Nodes known to have left the run (their process died)."""

    def exchange(self, nodes: NodeBatch, payload: Payload, rnd: int, graph: RoundGraph | None = None,
                 per_link: bool = False) -> Inbox:
        """Send each node's payload along ``graph`` (default: the round's graph) and collect
        what its senders sent. Exchanges of one round are matched by their order.

        With ``per_link`` the payload holds one row per outgoing link (local nodes in order,
        each followed by its receivers in increasing id: a different message per receiver)
        and the inbox is a ``LinkInbox``.
        """


class Algorithm(ABC):
    """A decentralized-learning algorithm: what every node does in a round.

    Its options are the keyword arguments of ``__init__`` after ``sharing`` (the configured
    sharing scheme, passed by the framework). What the algorithm *is* lives in class
    attributes that engines and config checks ask, so a subclass behaves like its parent.
    """

    name: str = ""
    server: ClassVar[bool] = False
    """Node 0 is a server on a star: it holds no data, and only its model is evaluated."""
    asynchronous: ClassVar[bool] = False
    """Nodes act on events of a virtual clock, not in rounds (``AsyncAlgorithm``)."""

    def __init__(self, sharing: Sharing):
        self.sharing = sharing

    @classmethod
    def check_config(cls, cfg) -> None:
        """Refuse an ``ExperimentConfig`` this algorithm cannot run, naming the key to change."""
        topo, what = cfg.topology, f"algorithm.name = {cfg.algorithm.name!r}"
        if cls.server:
            if topo.kind != "star" or not topo.static:
                raise ValueError(f"{what} runs a server (node 0) and its clients on a star: "
                                 "set topology.kind = 'star' with no schedule")
            if cfg.nodes < 2:
                raise ValueError(f"{what} needs nodes >= 2 (a server and a client)")
            if not cfg.sharing.implementation().dense:
                raise ValueError(f"{what} sends whole models to and from the server: use a sharing scheme "
                                 "that sends whole models, e.g. sharing.name = 'full' or 'quantize'")

    sends_through_sharing: ClassVar[bool] = True
    """Every model it sends is the sharing scheme's message (``encode``/``share``), so what the
    scheme withholds (``sharing.private``) never leaves a node."""
    supports_secagg: ClassVar[bool] = False
    """Its exchanges can be secure aggregation's masked, per-link messages (D-PSGD)."""

    def setup(self, nodes: NodeBatch, experiment) -> None:
        """Create per-node state; ``experiment`` tells the data sizes and the graph."""
        self.sharing.setup(nodes)

    def state_dict(self) -> dict:
        """State kept outside ``nodes.state`` that later rounds depend on, for checkpoints
        (tensors, arrays, numbers, strings, lists, dicts). Per-node state belongs in
        ``nodes.state``, which is saved already; override this only for the rest."""
        return {"sharing": self.sharing.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state_dict()``'s state."""
        self.sharing.load_state_dict(state["sharing"])

    @abstractmethod
    def round(self, nodes: NodeBatch, rnd: int, ctx: RoundContext) -> torch.Tensor:
        """Advance ``nodes`` by one round; returns the per-node training loss."""
