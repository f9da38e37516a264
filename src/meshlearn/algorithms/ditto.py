"""Ditto (Li et al., ICML 2021), decentralized: a personal model beside the gossiped one.

Each node keeps two models. The global one runs D-PSGD unchanged (its own mini-batches,
the sharing scheme, the round's graph). The personal one is the node's model, the one
evaluated and saved: each round it trains on the node's data with the proximal term
``lam / 2 · ||v - w||²`` towards the global model ``w`` of the start of the round. ``lam = 0``
is local training only; as ``lam`` grows the personal model tracks the gossiped one.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from meshlearn.algorithms.base import Algorithm, RoundContext
from meshlearn.nodes import NodeBatch
from meshlearn.sharing import Sharing

__all__ = ["Ditto"]

_GLOBAL = "global."   # prefix of the gossiped model's entries in NodeBatch.state


class Ditto(Algorithm):
    """Personal models (``nodes.params``) regularized towards gossiped global models."""

    name = "ditto"

    def __init__(self, sharing: Sharing,
                 lam: Annotated[float, Field(ge=0, description="weight λ of the pull of the personal model towards "
                                             "the global one")] = 1.0):
        super().__init__(sharing)
        self.lam = lam

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        if cfg.privacy.dp is not None:
            raise ValueError(f"algorithm.name = {cfg.algorithm.name!r} trains two models per node, and privacy.dp "
                             "accounts for one: remove [privacy.dp] or use another algorithm")

    def setup(self, nodes: NodeBatch, experiment) -> None:
        # the global model starts where the personal one does, with its own optimizer state
        nodes.state.update({_GLOBAL + key: value.clone() for key, value in nodes.state.items()})
        nodes.state[_GLOBAL + "params"] = nodes.params.clone()
        glob = self.global_models(nodes)
        self.sharing.setup(glob)
        self._store(nodes, glob)

    def global_models(self, nodes: NodeBatch) -> NodeBatch:
        """The gossiped models of ``nodes``, with their optimizer and sharing state."""
        state = {key[len(_GLOBAL):]: value for key, value in nodes.state.items() if key.startswith(_GLOBAL)}
        return NodeBatch(nodes.ids, state.pop("params"), state)

    def _store(self, nodes: NodeBatch, glob: NodeBatch) -> None:
        nodes.state[_GLOBAL + "params"] = glob.params
        nodes.state.update({_GLOBAL + key: value for key, value in glob.state.items()})

    def round(self, nodes: NodeBatch, rnd: int, ctx: RoundContext) -> torch.Tensor:
        glob = self.global_models(nodes)
        anchor = glob.params.clone()
        ctx.train(glob)
        self.sharing.share(glob, rnd, ctx)
        self._store(nodes, glob)
        return ctx.train(nodes, anchor=anchor, mu=self.lam, sampler="personal")
