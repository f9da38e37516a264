"""Asynchronous push-pull gossip, a plug-in algorithm (see pushpull.toml).

After each local training node i pushes its model to a random neighbour j; j answers with
its own model (a pull), and each side merges the model it receives when it arrives. Unlike
AD-PSGD nobody waits: i trains on at once, and messages in flight may meet newer models.
"""

from typing import Annotated

from pydantic import Field

from meshlearn.algorithms import AsyncAlgorithm, AsyncContext, Message


class PushPullGossip(AsyncAlgorithm):
    """Push-pull gossip: a pushed model is answered with the receiver's; both sides merge."""

    def __init__(self, sharing, weight: Annotated[float, Field(gt=0, le=1, description=(
            "share of the received model in a merge: x ← (1 − weight) x + weight x_received"))] = 0.5):
        super().__init__(sharing)
        self.weight = weight

    def on_trained(self, node: int, ctx: AsyncContext) -> None:
        peer = ctx.random_neighbour(node)
        if peer is not None:
            ctx.send(node, peer, {"params": ctx.params[node]}, kind="push")

    def on_message(self, node: int, message: Message, ctx: AsyncContext) -> None:
        if message.kind == "push":   # answer with the model as it was before this merge
            ctx.send(node, message.src, {"params": ctx.params[node]}, kind="pull")
        ctx.params[node] += self.weight * (message.payload["params"] - ctx.params[node])
