"""CHOCO-SGD (Koloskova, Stich & Jaggi, ICML 2019): gossip with compressed differences.

Every node i keeps a public copy x̂_i of its model, known to all its neighbours: it sends
q_i = Q(x_i − x̂_i) and everybody, itself included, adds q_i to their copy of x̂_i. The
consensus step x_i ← x_i + γ Σ_j w_ij (x̂_j − x̂_i) then moves toward the neighbours' public
copies. Errors of Q are not lost: they stay in x_i − x̂_i and are sent in later rounds.

Memory-light form: instead of a copy per neighbour, node i keeps x̂_i and
s_i = Σ_{j≠i} w_ij x̂_j, updated with the weighted sum of the received q_j. As
Σ_j w_ij = 1, the step is x_i ← x_i + γ (s_i − (1 − w_ii) x̂_i). With the identity
compressor and γ = 1 this is exactly D-PSGD. It assumes every message arrives (a lost q_j
leaves the copies of x̂_j out of step for good).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from meshlearn import plugins
from meshlearn.nodes import NodeBatch
from meshlearn.plugins import ModuleOf, Spec
from meshlearn.sharing import compressors
from meshlearn.sharing.base import Inbox, Payload, Sharing


class ChocoSharing(Sharing):
    """CHOCO-SGD's gossip step with a pluggable compressor (identity, topk, randomk, qsgd, uniform)."""

    name = "choco"
    reliable_links = True
    static_graph = True

    def __init__(self, gamma: Annotated[float, Field(gt=0, le=1, description="consensus step size (1 with "
                                                     "compressor 'identity' is D-PSGD)")] = 0.2,
                 compressor: Annotated[Spec, ModuleOf("compressor"), Field(
                     description="the compressor Q of x − x̂: a name or {name, options}")] = Spec("topk"),
                 seed: int = 0):
        super().__init__(seed)
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma = {gamma} must be in (0, 1]")
        self.gamma = gamma
        spec = compressor if isinstance(compressor, Spec) else Spec(**plugins.check_module(
            "compressor", compressor, "sharing.options.compressor"))
        options = dict(spec.options)
        if issubclass(plugins.resolve("compressor", spec.name), compressors.QSGD):
            options["scaled"] = True  # CHOCO needs a contraction: QSGD divided by τ
        self.compressor = plugins.build("compressor", spec.name, options, seed=seed)

    def setup(self, nodes: NodeBatch) -> None:
        self.compressor.setup(nodes.params.shape[1])
        nodes.state["choco_public"] = torch.zeros_like(nodes.params)       # x̂_i (starts at 0, as in the paper)
        nodes.state["choco_neighbours"] = torch.zeros_like(nodes.params)   # s_i = Σ_{j≠i} w_ij x̂_j

    def encode(self, nodes: NodeBatch, rnd: int) -> Payload:
        public = nodes.state["choco_public"]
        payload = self.compressor.compress(nodes.params - public, nodes.ids, rnd)
        public += self.compressor.decompress(payload)  # exactly what the receivers add
        return payload

    def aggregate(self, nodes: NodeBatch, inbox: Inbox) -> None:
        neighbours = nodes.state["choco_neighbours"]
        neighbours += inbox.weighted_sum(self.compressor.decompress)
        others = (1 - inbox.self_weight.to(neighbours.device, neighbours.dtype)).unsqueeze(1)
        step = neighbours - others * nodes.state["choco_public"]
        nodes.params = nodes.params.add(step, alpha=self.gamma)
