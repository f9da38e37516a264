"""DePRL (Xiong et al., AAAI 2024): nodes gossip a shared representation and keep personal heads.

The decentralized form of FedRep (Collins et al., ICML 2021). A node's head is the part of
its model that ``sharing.private`` names (``["fc2.*"]``, say): each round the node trains
its head on the frozen body for ``head_trainings`` local trainings, then its body on the
frozen head for one, and gossips the body through the sharing scheme, which never sends the
head. Without private parameters there is no head, and a round is D-PSGD's.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from meshlearn.algorithms.dpsgd import DPSGD
from meshlearn.nodes import NodeBatch
from meshlearn.sharing import Sharing

__all__ = ["DePRL"]


class DePRL(DPSGD):
    """Head steps on the frozen body, body steps on the frozen head, gossip of the body."""

    name = "deprl"

    def __init__(self, sharing: Sharing,
                 head_trainings: Annotated[int, Field(ge=1, description="local trainings (of training.local_steps "
                                                      "or local_epochs each) of the head before the body's one "
                                                      "per round")] = 1):
        super().__init__(sharing)
        self.head_trainings = head_trainings

    def setup(self, nodes: NodeBatch, experiment) -> None:
        super().setup(nodes, experiment)
        self.body = experiment.shared_columns()
        head = torch.ones(experiment.layout.size, dtype=torch.bool)
        head[self.body] = False
        self.head = torch.nonzero(head).flatten()

    def round(self, nodes: NodeBatch, rnd: int, ctx) -> torch.Tensor:
        if len(self.head):
            for _ in range(self.head_trainings):
                ctx.train(nodes, columns=self.head)
            loss = ctx.train(nodes, columns=self.body)
        else:
            loss = ctx.train(nodes)
        self.sharing.share(nodes, rnd, ctx)
        return loss
