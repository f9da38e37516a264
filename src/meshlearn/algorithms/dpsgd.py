"""D-PSGD (Lian et al., NeurIPS 2017): local SGD, then gossip-average with neighbours."""

from __future__ import annotations

import torch

from meshlearn.algorithms.base import Algorithm, RoundContext
from meshlearn.nodes import NodeBatch


class DPSGD(Algorithm):
    """Train locally, send the model (through the sharing scheme), aggregate what arrives."""

    name = "dpsgd"
    supports_secagg = True

    def round(self, nodes: NodeBatch, rnd: int, ctx: RoundContext) -> torch.Tensor:
        loss = ctx.train(nodes)
        self.sharing.share(nodes, rnd, ctx)
        return loss
