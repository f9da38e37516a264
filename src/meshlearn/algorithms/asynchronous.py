"""Asynchronous algorithms: nodes act on events of a virtual clock instead of in rounds."""

from __future__ import annotations

from typing import ClassVar

import torch

from meshlearn.algorithms.base import Algorithm
from meshlearn.nodes import NodeBatch

__all__ = ["AsyncAlgorithm", "GossipLearning", "ADPSGD"]


class AsyncAlgorithm(Algorithm):
    """An algorithm driven by the asynchronous simulator's events, over a fixed graph."""

    asynchronous = True
    pairwise: ClassVar[bool] = False

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        from meshlearn.sharing import FullSharing

        what, topo = f"algorithm.name = {cfg.algorithm.name!r}", cfg.topology
        if cfg.engine.name != "sim":
            raise ValueError(f"{what} is asynchronous and runs on engine.name = 'sim' (its event-driven clock); "
                             "use a synchronous algorithm on other engines")
        if topo.schedule or topo.final_average or topo.dynamic or topo.kind == "epidemic":
            raise ValueError(f"{what} gossips over a fixed graph: remove the topology schedule, dynamic and "
                             "final_average settings")
        if not issubclass(cfg.sharing.implementation(), FullSharing):
            raise ValueError(f"{what} exchanges whole models: set sharing.name = 'full'")

    def round(self, nodes: NodeBatch, rnd: int, ctx) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} is asynchronous: it runs on the asynchronous simulator's events")


class GossipLearning(AsyncAlgorithm):
    """Gossip learning (Ormándi et al. 2013, push): after each local training a node sends its
    model to a random neighbour, which averages it into its own."""

    name = "gossip"


class ADPSGD(AsyncAlgorithm):
    """AD-PSGD (Lian et al., ICML 2018): after each local training a node and a random neighbour
    atomically average their models."""

    name = "adpsgd"
    pairwise = True
