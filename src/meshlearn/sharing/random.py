"""Random sparsification: each round a node sends a fresh random subset of its parameters.

The subset is drawn from a seed derived from (experiment seed, node id, round). With
``indices = "seed"`` only that 8-byte seed travels with the values and receivers regenerate
the indices; ``"explicit"`` sends the indices (or a bitmask) instead, which costs more but
needs no shared generator. Both give the same models; only the bytes differ.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from meshlearn.nodes import NodeBatch
from meshlearn.sharing.base import PartialSharing, Payload
from meshlearn.sharing.compressors import Fraction, RandomK


class RandomSharing(PartialSharing):
    """Send x_i at k = fraction·P random coordinates; average each coordinate over its senders."""

    name = "random"

    def __init__(self, fraction: Fraction = 0.1,
                 indices: Annotated[Literal["seed", "explicit"], Field(
                     description="send a seed (receivers regenerate the indices) or the indices")] = "seed",
                 seed: int = 0):
        super().__init__(seed)
        self.sampler = RandomK(fraction, indices, seed=seed)

    def setup(self, nodes: NodeBatch) -> None:
        self.sampler.setup(nodes.params.shape[1])

    def encode(self, nodes: NodeBatch, rnd: int) -> Payload:
        return self.sampler.compress(nodes.params, nodes.ids, rnd)

    def decode_partial(self, payload: Payload) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sampler.decompress_partial(payload)
