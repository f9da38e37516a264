"""Asynchronous algorithms: nodes act on events of a virtual clock instead of in rounds.

Every node loops train → communicate → train ... at its own speed. The engine owns the clock,
the local trainings and the network; an algorithm only says what a node does when

- ``on_trained(node, ctx)``: its local training ended and the update is applied to its model;
- ``on_message(node, message, ctx)``: a message sent to it with ``ctx.send`` arrived;
- ``on_request(node, message, ctx)``: a request sent with ``ctx.request`` arrived; it returns
  the reply, and ``on_reply(node, message, ctx)`` runs at the requester when that arrives.

Through the ``AsyncContext`` it reads and writes its nodes' models, picks peers, sends
messages and requests (priced, delayed and lost as on the configured network), and delays a
node's next training. A node reads and writes only its own model (``ctx.params[node]``) and
learns of others' only through messages, so the same protocol runs on the simulator and on
the networked engines, where nodes live in different processes. A new protocol is a
subclass with these handlers.
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


MESSAGE, REQUEST, REPLY = range(3)   # what a message is (``Message.call``)


@dataclass
class Message:
    """A message that arrived: what ``src`` sent to ``dst`` at time ``sent_at`` (the
    receiver's clock on the networked engines). ``call``: ``MESSAGE``, a ``REQUEST``, or the
    ``REPLY`` to one, which carries the ``request`` it answers (kept by the requester, not sent
    back)."""

    src: int
    dst: int
    kind: str
    payload: Payload      # named tensors, copied when sent
    sent_at: float
    call: int = MESSAGE
    request: Payload | None = None


class AsyncContext(Protocol):
    """What the asynchronous engine offers an algorithm's event handlers."""

    @property
    def params(self):
        """The models by node id: ``params[node]`` is a row read and written in place (only
        the hosted nodes' rows on the networked engines)."""

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

    def request(self, src: int, dst: int, payload: Payload, kind: str = "model") -> None:
        """Send ``payload`` to neighbour ``dst`` as a request (priced and lost like ``send``):
        ``dst``'s ``on_request`` answers it, and ``src`` trains again only once the reply (or
        the news that it, or the request, was lost) arrived. One request per node at a time."""

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

    def on_request(self, node: int, message: Message, ctx: AsyncContext) -> Payload:
        """A request sent to ``node`` arrived: return the reply."""
        raise NotImplementedError(f"{type(self).__name__} sends requests (kind {message.kind!r}) but does not "
                                  "define on_request to answer them")

    def on_reply(self, node: int, message: Message, ctx: AsyncContext) -> None:
        """The reply to ``node``'s request arrived (``message.request``: what it asked with)."""

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
    average their models; the node waits for the round trip.

    The neighbour moves halfway towards the model it received and replies with its own as it
    was; the requester then moves by half of (reply − what it sent). Both moves cancel, so the
    nodes' sum is preserved even when other exchanges changed either model in between, and
    with no such change both end at the pair's average, as under a lock on both nodes."""

    name = "adpsgd"

    def on_trained(self, node: int, ctx: AsyncContext) -> None:
        peer = ctx.random_neighbour(node)
        if peer is not None:
            ctx.request(node, peer, {"params": ctx.params[node]})

    def on_request(self, node: int, message: Message, ctx: AsyncContext) -> Payload:
        mine = ctx.params[node].clone()
        ctx.params[node] += (message.payload["params"] - mine) * 0.5
        return {"params": mine}

    def on_reply(self, node: int, message: Message, ctx: AsyncContext) -> None:
        ctx.params[node] += (message.payload["params"] - message.request["params"]) * 0.5
