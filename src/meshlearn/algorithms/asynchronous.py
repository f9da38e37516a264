"""Asynchronous algorithms: nodes act on events of a virtual clock instead of in rounds.

Every node loops train → communicate → train ... at its own speed. The engine owns the clock,
the local trainings and the network; an algorithm only says what a node does when

- ``on_trained(node, ctx)``: its local training ended and the update is applied to its model;
- ``on_message(node, message, ctx)``: a message sent to it with ``ctx.send`` arrived.

Through the ``AsyncContext`` it reads and writes models, picks peers, sends messages (priced,
delayed and lost as on the configured network), exchanges models atomically with a neighbour,
and delays a node's next training. A new protocol is a subclass with these two handlers.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from meshlearn.algorithms.base import Algorithm
from meshlearn.nodes import NodeBatch
from meshlearn.sharing import Payload

__all__ = ["AsyncContext", "Message", "AsyncAlgorithm", "GossipLearning", "ADPSGD"]


@dataclass(frozen=True)
class Message:
    """A message that arrived: what ``src`` sent to ``dst`` at virtual time ``sent_at``."""

    src: int
    dst: int
    kind: str
    payload: Payload      # named tensors, copied when sent
    sent_at: float


class AsyncContext(Protocol):
    """What the asynchronous engine offers an algorithm's event handlers."""

    @property
    def params(self) -> torch.Tensor:
        """Every node's model, one row per node; rows are read and written in place."""

    @property
    def now(self) -> float:
        """The virtual time of the event being handled, in seconds."""

    def neighbours(self, node: int) -> np.ndarray:
        """The nodes ``node`` can send to in the fixed graph, in increasing id."""

    def rng(self, node: int) -> np.random.Generator:
        """``node``'s own random stream for choosing peers (drawn from the seed and the node)."""

    def random_neighbour(self, node: int) -> int | None:
        """A neighbour drawn uniformly from ``node``'s stream; None for a node without any."""

    def send(self, src: int, dst: int, payload: Payload, kind: str = "model") -> None:
        """Send a copy of ``payload`` from ``src`` to its neighbour ``dst``: ``src`` is charged
        the message's exact wire size, and ``dst``'s ``on_message`` runs when the link's delay
        has passed, unless the link loses it. The sender does not wait."""

    def exchange(self, src: int, dst: int, request: Payload, reply: Payload, kind: str = "model") -> bool:
        """An atomic exchange, as under a lock on both nodes: ``src`` sends ``request`` to its
        neighbour ``dst``, which answers ``reply`` (both read now). ``src`` waits for the round
        trip before it trains again. True when both messages arrived (a lost request gets no
        reply); the caller then updates both models, else neither."""

    def wait(self, node: int, seconds: float) -> None:
        """``node`` starts its next training no earlier than ``seconds`` from now."""


class AsyncAlgorithm(Algorithm):
    """An algorithm driven by the asynchronous simulator's events, over a fixed graph."""

    asynchronous = True
    sends_through_sharing = False   # its messages are whole models it sends itself

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        from meshlearn.sharing import FullSharing

        what, topo = f"algorithm.name = {cfg.algorithm.name!r}", cfg.topology
        if cfg.engine.name != "sim":
            raise ValueError(f"{what} is asynchronous and runs on engine.name = 'sim' (its event-driven clock); "
                             "use a synchronous algorithm on other engines")
        if not topo.static:
            raise ValueError(f"{what} gossips over a fixed graph: remove the topology schedule, dynamic and "
                             "final_average settings")
        if not issubclass(cfg.sharing.implementation(), FullSharing):
            raise ValueError(f"{what} exchanges whole models: set sharing.name = 'full'")

    @abstractmethod
    def on_trained(self, node: int, ctx: AsyncContext) -> None:
        """``node`` finished a local training and its update is applied; it trains again once
        this returns (later if it waits)."""

    def on_message(self, node: int, message: Message, ctx: AsyncContext) -> None:
        """A message sent to ``node`` arrived."""
        raise NotImplementedError(f"{type(self).__name__} sends messages (kind {message.kind!r}) but does not "
                                  "define on_message to receive them")

    def round(self, nodes: NodeBatch, rnd: int, ctx) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} is asynchronous: it runs on the asynchronous simulator's events")


class GossipLearning(AsyncAlgorithm):
    """Gossip learning (Ormándi et al. 2013, push): after each local training a node sends its
    model to a random neighbour, which averages it into its own."""

    name = "gossip"

    def on_trained(self, node: int, ctx: AsyncContext) -> None:
        peer = ctx.random_neighbour(node)
        if peer is not None:
            ctx.send(node, peer, {"params": ctx.params[node]})

    def on_message(self, node: int, message: Message, ctx: AsyncContext) -> None:
        ctx.params[node] = (ctx.params[node] + message.payload["params"]) * 0.5


class ADPSGD(AsyncAlgorithm):
    """AD-PSGD (Lian et al., ICML 2018): after each local training a node and a random neighbour
    atomically average their models; the node waits for the round trip."""

    name = "adpsgd"

    def on_trained(self, node: int, ctx: AsyncContext) -> None:
        peer, params = ctx.random_neighbour(node), ctx.params
        if peer is not None and ctx.exchange(node, peer, {"params": params[node]}, {"params": params[peer]}):
            params[node] = params[peer] = (params[node] + params[peer]) * 0.5
