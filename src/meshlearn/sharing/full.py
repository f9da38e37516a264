"""Full-model sharing: every node sends its whole model; aggregation is the gossip average."""

from __future__ import annotations

from meshlearn.nodes import NodeBatch
import torch

from meshlearn.sharing.base import DenseSharing, Payload


class FullSharing(DenseSharing):
    """Send the whole model; fold received models with the aggregator (by default
    x_i ← w_ii x_i + Σ_j w_ij x_j, the D-PSGD averaging step)."""

    name = "full"

    def encode(self, nodes: NodeBatch, rnd: int) -> Payload:
        return {"params": nodes.params}  # a view: nothing is copied until a transport needs it

    def decode(self, payload: Payload) -> torch.Tensor:
        return payload["params"]
