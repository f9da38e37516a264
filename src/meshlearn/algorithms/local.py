"""Local training only: every node trains on its own data and never communicates.

The lower bound of decentralized learning on non-IID data: a personalized method is worth
its messages only if it beats both this and D-PSGD on the nodes' own distributions.
"""

from __future__ import annotations

import torch

from meshlearn.algorithms.base import Algorithm, RoundContext
from meshlearn.nodes import NodeBatch

__all__ = ["LocalOnly"]


class LocalOnly(Algorithm):
    """Train locally every round; send nothing, mix nothing (the sharing scheme is unused)."""

    name = "local"

    def round(self, nodes: NodeBatch, rnd: int, ctx: RoundContext) -> torch.Tensor:
        return ctx.train(nodes)
