"""Federated learning as nodes with roles on a star: node 0 is the server, the rest are clients.

Written on the same ``RoundContext`` as the decentralized algorithms, so FL and DL runs use
the same engines, byte accounting and metrics. A round exchanges twice, each time along a
graph of the algorithm's own: the server sends the global model to the clients sampled
this round (weight 1, so a client's model becomes the global one), the sampled clients
train, and they send back to the server, which weighs them by their sample counts.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from meshlearn import streams
from meshlearn.algorithms.base import Algorithm, RoundContext
from meshlearn.nodes import NodeBatch
from meshlearn.sharing import Sharing
from meshlearn.streams import Stream
from meshlearn.topology.schedule import RoundGraph

__all__ = ["FedAvg", "ParameterServer", "STC", "SERVER"]

SERVER = 0

ClientFraction = Annotated[float, Field(gt=0, le=1, description="share of the clients sampled each round")]


class FedAvg(Algorithm):
    """FedAvg (McMahan et al., AISTATS 2017): sampled clients train from the global model,
    and the server replaces it by their average weighted by sample count."""

    name = "fedavg"
    server = True

    def __init__(self, sharing: Sharing,
                 client_fraction: ClientFraction = 1.0):
        super().__init__(sharing)
        self.client_fraction = client_fraction

    def setup(self, nodes: NodeBatch, experiment) -> None:
        super().setup(nodes, experiment)
        self.n = experiment.num_nodes
        self.seed = experiment.config.seed
        self.samples = np.array([len(part) for part in experiment.parts], dtype=np.float64)

    def clients(self, rnd: int) -> np.ndarray:
        """The clients of round ``rnd``: ``client_fraction`` of them (at least one), drawn
        from (seed, round) so that every process draws the same ones."""
        k = self.n - 1
        m = max(1, int(round(self.client_fraction * k)))
        if m == k:
            return np.arange(1, self.n)
        rng = streams.generator(self.seed, Stream.CLIENTS, 0, rnd)
        return np.sort(rng.choice(k, m, replace=False)) + 1

    def graphs(self, clients: np.ndarray) -> tuple[RoundGraph, RoundGraph]:
        """(server → clients with weight 1, clients → server weighted by sample counts)."""
        n, server = self.n, np.full(len(clients), SERVER)
        keep = np.ones(n)
        keep[clients] = 0.0
        down = RoundGraph.from_links(n, clients, server, np.ones(len(clients)), keep, "server → clients")
        share = self.samples[clients] / self.samples[clients].sum()
        keep = np.ones(n)
        keep[SERVER] = 0.0
        up = RoundGraph.from_links(n, server, clients, share, keep, "clients → server")
        return down, up

    def round(self, nodes: NodeBatch, rnd: int, ctx: RoundContext) -> torch.Tensor:
        clients = self.clients(rnd)
        down, up = self.graphs(clients)
        self.sharing.aggregate(nodes, ctx.exchange(nodes, self.sharing.encode(nodes, rnd), rnd, down))
        start = nodes.params.clone()
        loss = ctx.train(nodes, torch.from_numpy(np.isin(nodes.ids.numpy(), clients)))
        self.upload(nodes, start, ctx.exchange(nodes, self.update(nodes, start, rnd), rnd, up))
        return loss

    def update(self, nodes: NodeBatch, start: torch.Tensor, rnd: int):
        """What a client sends back: its model."""
        return self.sharing.encode(nodes, rnd)

    def upload(self, nodes: NodeBatch, start: torch.Tensor, inbox) -> None:
        """The server's aggregation (clients have no in-links here, so they keep their models)."""
        self.sharing.aggregate(nodes, inbox)


class ParameterServer(FedAvg):
    """A synchronous parameter server: clients send their update x_k − x (the sum of their
    local steps), and the server applies the weighted mean update with its own step size
    and momentum: v ← β v + Σ_k w_k Δ_k, x ← x + η v (η = 1, β = 0 is FedAvg)."""

    name = "parameter_server"
    sends_through_sharing = False   # clients send raw updates, not the scheme's messages

    def __init__(self, sharing: Sharing,
                 client_fraction: ClientFraction = 1.0,
                 server_lr: Annotated[float, Field(gt=0, description="step size of the averaged update")] = 1.0,
                 server_momentum: Annotated[float, Field(ge=0, lt=1, description="momentum of the server's "
                                                         "update")] = 0.0):
        super().__init__(sharing, client_fraction)
        self.server_lr, self.server_momentum = server_lr, server_momentum

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        from meshlearn.sharing import FullSharing

        if not issubclass(cfg.sharing.implementation(), FullSharing):   # it sends raw updates
            raise ValueError(f"algorithm.name = {cfg.algorithm.name!r} sends model updates to the server: "
                             "use sharing.name = 'full'")

    def setup(self, nodes: NodeBatch, experiment) -> None:
        super().setup(nodes, experiment)
        self.velocity = torch.zeros(nodes.params.shape[1], device=nodes.params.device)   # used by the process hosting the server

    def state_dict(self) -> dict:
        return {**super().state_dict(), "velocity": self.velocity}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.velocity.copy_(state["velocity"])

    def update(self, nodes: NodeBatch, start: torch.Tensor, rnd: int):
        return {"update": nodes.params - start}

    def upload(self, nodes: NodeBatch, start: torch.Tensor, inbox) -> None:
        mean_update = inbox.weighted_sum(lambda payload: payload["update"])
        rows = torch.nonzero(nodes.ids == SERVER).flatten().tolist()
        for row in rows:
            self.velocity.mul_(self.server_momentum).add_(mean_update[row])
            nodes.params[row] += self.server_lr * self.velocity


class STC(FedAvg):
    """Sparse Ternary Compression (Sattler et al., IEEE TNNLS 2019): FedAvg whose updates are
    compressed both ways. A sampled client sends its update plus what it left unsent before
    (error feedback) as the top ``fraction`` of coordinates, each ± their mean magnitude; the
    server averages what arrives, adds its own unsent remainder and broadcasts that, compressed
    the same way, to every client; server and clients add the broadcast to the model they
    started the round from, so all hold the same global model. ``ternarize = false`` sends the
    top-k values themselves; ``fraction = 1`` without ternarizing is FedAvg."""

    name = "stc"
    sends_through_sharing = False   # clients and server send compressed updates, not the scheme's messages

    def __init__(self, sharing: Sharing,
                 client_fraction: ClientFraction = 1.0,
                 fraction: Annotated[float, Field(gt=0, le=1, description="share of the coordinates each update "
                                                  "keeps")] = 0.01,
                 ternarize: Annotated[bool, Field(description="send ± the mean magnitude instead of the values")
                                      ] = True,
                 downstream: Annotated[bool, Field(description="compress the server's broadcast too")] = True):
        super().__init__(sharing, client_fraction)
        from meshlearn.sharing.compressors import Identity, SparseTernary, TopK

        self.up = (SparseTernary if ternarize else TopK)(fraction)
        self.down = (SparseTernary if ternarize else TopK)(fraction) if downstream else Identity()

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        from meshlearn.sharing import FullSharing

        what = f"algorithm.name = {cfg.algorithm.name!r}"
        if not issubclass(cfg.sharing.implementation(), FullSharing):
            raise ValueError(f"{what} compresses its updates itself: use sharing.name = 'full'")
        if not cfg.model.same_init:
            raise ValueError(f"{what} sends updates of one global model, so every node starts from it: "
                             "remove model.same_init = false")
        if cfg.availability.model != "always":
            raise ValueError(f"{what} keeps every client's copy of the global model in step with the server's "
                             "broadcasts, which an offline client would miss: remove [availability]")

    def setup(self, nodes: NodeBatch, experiment) -> None:
        super().setup(nodes, experiment)
        self.up.setup(nodes.params.shape[1])
        self.down.setup(nodes.params.shape[1])
        nodes.state["stc_residual"] = torch.zeros_like(nodes.params)   # a client's upload's, the server's broadcast's

    def round(self, nodes: NodeBatch, rnd: int, ctx: RoundContext) -> torch.Tensor:
        clients = self.clients(rnd)
        _, up = self.graphs(clients)
        ids = nodes.ids.numpy()
        sampled, server = torch.from_numpy(np.isin(ids, clients)), torch.from_numpy(ids == SERVER).to(nodes.params.device)
        start = nodes.params.clone()
        loss = ctx.train(nodes, sampled)
        residual = nodes.state["stc_residual"]
        update = nodes.params - start + residual
        message = self.up.compress(update, nodes.ids, rnd)
        residual[sampled] = (update - self.up.decompress(message))[sampled]
        mean = ctx.exchange(nodes, message, rnd, up).weighted_sum(self.up.decompress)
        pending = torch.where(server.unsqueeze(1), mean + residual, torch.zeros_like(mean))
        broadcast = self.down.compress(pending, nodes.ids, rnd)
        sent = self.down.decompress(broadcast)
        residual[server] = (pending - sent)[server]
        received = ctx.exchange(nodes, broadcast, rnd, self.broadcast_graph()).weighted_sum(self.down.decompress)
        nodes.params = start + torch.where(server.unsqueeze(1), sent, received)
        return loss

    def broadcast_graph(self) -> RoundGraph:
        """The server to every client, weight 1 (every client stays in step)."""
        clients = np.arange(1, self.n)
        keep = np.ones(self.n)
        keep[clients] = 0.0
        return RoundGraph.from_links(self.n, clients, np.full(len(clients), SERVER), np.ones(len(clients)), keep,
                                     "server → all clients")
