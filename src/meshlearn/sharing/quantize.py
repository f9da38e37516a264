"""Quantized model sharing: every node sends its whole model, quantized.

``method = "qsgd"``: QSGD's stochastic, unbiased quantization with ``levels`` levels per sign
and one L2 norm per bucket; ``"uniform"``: ``bits``-bit uniform quantization between each
bucket's min and max; ``"fpzip"``: fpzip's lossy mode at ``precision`` bits (with
``sharing.compression = "fpzip"``, which writes the rounded floats at that precision). Receivers average the dequantized models; a node keeps its own exact
model for its self-weight. The same quantizers serve as CHOCO-SGD's compressor, where they
quantize model differences instead.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from meshlearn.nodes import NodeBatch
import torch

from meshlearn.sharing.base import DenseSharing, Payload
from meshlearn.sharing.compressors import QSGD, Bits, BucketSize, Fpzip, Levels, Uniform


class QuantizeSharing(DenseSharing):
    """x_i ← w_ii x_i + Σ_j w_ij Q(x_j) (or the configured aggregator over the Q(x_j))."""

    name = "quantize"

    def __init__(self, method: Annotated[Literal["qsgd", "uniform", "fpzip"], Field(
                     description="QSGD (takes levels), uniform (takes bits) or fpzip (takes precision)")] = "qsgd",
                 levels: Levels = 7, bits: Bits = 8, bucket_size: BucketSize = 512,
                 precision: Annotated[int, Field(ge=2, le=32, description="fpzip: leading bits kept per float")] = 16,
                 seed: int = 0):
        super().__init__(seed)
        if method == "qsgd":
            self.quantizer = QSGD(levels, bucket_size, seed)
        elif method == "uniform":
            self.quantizer = Uniform(bits, bucket_size, seed)
        elif method == "fpzip":
            self.quantizer = Fpzip(precision, seed)
        else:
            raise ValueError(f"method = {method!r} must be 'qsgd', 'uniform' or 'fpzip'")

    def setup(self, nodes: NodeBatch) -> None:
        self.quantizer.setup(nodes.params.shape[1])

    def encode(self, nodes: NodeBatch, rnd: int) -> Payload:
        return self.quantizer.compress(nodes.params, nodes.ids, rnd)

    def decode(self, payload: Payload) -> torch.Tensor:
        return self.quantizer.decompress(payload)
