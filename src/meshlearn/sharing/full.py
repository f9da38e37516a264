"""Full-model sharing: every node sends its whole model; aggregation is the gossip average."""

from __future__ import annotations

from meshlearn.nodes import NodeBatch
from meshlearn.sharing.base import Inbox, Payload, Sharing, dense_average


class FullSharing(Sharing):
    """x_i ← w_ii x_i + Σ_j w_ij x_j, the D-PSGD averaging step."""

    name = "full"
    dense = True

    def encode(self, nodes: NodeBatch, rnd: int) -> Payload:
        return {"params": nodes.params}  # a view: nothing is copied until a transport needs it

    def aggregate(self, nodes: NodeBatch, inbox: Inbox) -> None:
        nodes.params = dense_average(nodes.params, inbox, lambda payload: payload["params"])
