"""Top-k sparsification: a node sends the parameters that changed most.

Without error feedback the change is this round's local update (x_i now minus x_i after the
last aggregation), as in DecentralizePy's ``PartialModel``. With error feedback the change of
a parameter is measured from the value the node last sent for it, so what was left unsent
keeps accumulating (the residual) until it is large enough to be sent.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from meshlearn.nodes import NodeBatch
from meshlearn.sharing.base import Inbox, PartialSharing, Payload
from meshlearn.sharing.compressors import Fraction, Support, TopK, top_indices


class TopKSharing(PartialSharing):
    """Send x_i at the k = fraction·P coordinates of largest |x_i − reference_i|."""

    name = "topk"

    def __init__(self, fraction: Fraction = 0.1,
                 error_feedback: Annotated[bool, Field(description="accumulate unsent changes (residual)")] = False,
                 support: Support = "smaller", seed: int = 0):
        super().__init__(seed)
        self.sparsifier = TopK(fraction, support, seed)
        self.error_feedback = error_feedback

    def setup(self, nodes: NodeBatch) -> None:
        self.sparsifier.setup(nodes.params.shape[1])
        nodes.state["topk_reference"] = nodes.params.clone()

    def encode(self, nodes: NodeBatch, rnd: int) -> Payload:
        reference = nodes.state["topk_reference"]
        idx = top_indices(nodes.params - reference, self.sparsifier.k)
        if self.error_feedback:  # what is sent now is the new reference for those coordinates
            reference.scatter_(1, idx, nodes.params.gather(1, idx))
        return self.sparsifier.payload(nodes.params, idx)

    def decode_partial(self, payload: Payload) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sparsifier.decompress_partial(payload)

    def aggregate(self, nodes: NodeBatch, inbox: Inbox) -> None:
        super().aggregate(nodes, inbox)
        if not self.error_feedback:  # next round's change is measured from here
            nodes.state["topk_reference"].copy_(nodes.params)
