"""JWINS (Dhasade et al., ICDCS 2023): top-k sharing in the wavelet domain, with a random budget.

A node transforms its flat model into wavelet coefficients (PyWavelets' multilevel ``wavedec``)
or Fourier coefficients (an orthonormal real FFT, real and imaginary parts as coordinates),
and sends the k coefficients that changed most since its last aggregation, k = fraction · C for
C coefficients, the fraction drawn each round from ``fractions`` (1.0 sends them all). A
receiver transforms its own model, averages each coefficient over the values received for it
(``partial_average``, as top-k sharing does) and transforms back. A wavelet basis gathers a
model's change into few coefficients, so the same budget carries more of it; with ``level = 0``
the transform is the identity and JWINS is top-k sharing of the raw change.

Against the reference implementation: the round's fraction is drawn once for every node, from
the experiment seed and the round (the reference draws one per node), because the messages of
one round share their shape; and a coefficient is averaged over the neighbours that sent it,
where the reference fills a neighbour's missing coefficients with the receiver's own.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from meshlearn import streams
from meshlearn.nodes import NodeBatch
from meshlearn.sharing.base import Inbox, PartialSharing, Payload, partial_average
from meshlearn.sharing.compressors import Support, TopK, top_indices
from meshlearn.streams import Stream
from meshlearn.wire import MessageError


class JWINSSharing(PartialSharing):
    """Send the top-k coefficients of the model's wavelet (or Fourier) transform, k drawn per round."""

    name = "jwins"

    def __init__(self,
                 fractions: Annotated[tuple[float, ...], Field(
                     min_length=1, description="budgets (shares of the coefficients) to draw from each round")
                 ] = (0.1, 0.2, 0.3, 0.4, 1.0),
                 transform: Annotated[Literal["wavelet", "fft"], Field(
                     description="the domain coefficients are chosen in")] = "wavelet",
                 wavelet: Annotated[str, Field(description="a PyWavelets discrete wavelet (haar, db2, sym4...)")
                                    ] = "haar",
                 level: Annotated[int, Field(ge=0, description="wavelet decomposition levels (0: identity)")] = 4,
                 error_feedback: Annotated[bool, Field(
                     description="measure a coefficient's change from the value last sent (accumulate the rest)")
                 ] = False,
                 support: Support = "smaller", seed: int = 0):
        super().__init__(seed)
        import pywt

        if not fractions or not all(0 < f <= 1 for f in fractions):
            raise ValueError(f"fractions = {list(fractions)}: give one or more shares in (0, 1]")
        if transform not in ("wavelet", "fft"):
            raise ValueError(f"transform = {transform!r} must be 'wavelet' or 'fft'")
        if wavelet not in pywt.wavelist(kind="discrete"):
            raise ValueError(f"wavelet = {wavelet!r} is not a PyWavelets discrete wavelet; e.g. haar, db2, sym4, "
                             "coif1 (pywt.wavelist(kind='discrete') lists them)")
        if level < 0:
            raise ValueError(f"level = {level} must be ≥ 0")
        self.fractions, self.transform, self.wavelet, self.level = tuple(fractions), transform, wavelet, level
        self.error_feedback, self.support = error_feedback, support
        self.size = 0
        self.lengths: list[int] = []                  # wavelet coefficient arrays, coarsest first
        self.sparsifiers: dict[float, TopK] = {}

    def setup(self, nodes: NodeBatch) -> None:
        import pywt

        self.size = nodes.params.shape[1]
        if self.transform == "wavelet" and self.level > pywt.dwt_max_level(self.size, self.wavelet):
            raise ValueError(f"sharing.options.level = {self.level}: a model of {self.size} parameters takes at "
                             f"most {pywt.dwt_max_level(self.size, self.wavelet)} levels of {self.wavelet!r}")
        if self.transform == "wavelet":
            self.lengths = [c.shape[1] for c in pywt.wavedec(np.zeros((1, self.size), np.float32), self.wavelet,
                                                             level=self.level, axis=1)]
        coefficients = self.forward(nodes.params)
        for fraction in self.fractions:
            self.sparsifiers[fraction] = TopK(fraction, self.support, self.seed)
            self.sparsifiers[fraction].setup(coefficients.shape[1])
        nodes.state["jwins_reference"] = coefficients

    def forward(self, params: torch.Tensor) -> torch.Tensor:
        """(B, P) models → (B, C) coefficients."""
        if self.transform == "fft":
            return torch.view_as_real(torch.fft.rfft(params, norm="ortho")).flatten(1)
        if self.level == 0:
            return params.clone()
        import pywt

        parts = pywt.wavedec(params.detach().cpu().numpy(), self.wavelet, level=self.level, axis=1)
        return torch.from_numpy(np.concatenate(parts, axis=1)).to(params.device)

    def inverse(self, coefficients: torch.Tensor) -> torch.Tensor:
        """(B, C) coefficients → (B, P) models."""
        if self.transform == "fft":
            pairs = coefficients.reshape(coefficients.shape[0], -1, 2).contiguous()
            return torch.fft.irfft(torch.view_as_complex(pairs), n=self.size, norm="ortho")
        if self.level == 0:
            return coefficients
        import pywt

        parts = np.split(coefficients.cpu().numpy(), np.cumsum(self.lengths)[:-1], axis=1)
        model = pywt.waverec(parts, self.wavelet, axis=1)[:, :self.size]
        return torch.from_numpy(np.ascontiguousarray(model)).to(coefficients.device)

    def fraction(self, rnd: int) -> float:
        """The budget of round ``rnd``, the same for every node."""
        return self.fractions[int(streams.generator(self.seed, Stream.JWINS_BUDGET, 0, rnd).integers(
            len(self.fractions)))]

    def encode(self, nodes: NodeBatch, rnd: int) -> Payload:
        coefficients = self.forward(nodes.params)
        reference = nodes.state["jwins_reference"]
        sparsifier = self.sparsifiers[self.fraction(rnd)]
        idx = top_indices(coefficients - reference, sparsifier.k)
        if self.error_feedback:   # what is sent now is the new reference for those coefficients
            reference.scatter_(1, idx, coefficients.gather(1, idx))
        return sparsifier.payload(coefficients, idx)

    def decode_partial(self, payload: Payload) -> tuple[torch.Tensor, torch.Tensor]:
        values = payload.get("values")
        k = values.shape[1] if isinstance(values, torch.Tensor) and values.dim() == 2 else None
        sparsifier = next((s for s in self.sparsifiers.values() if s.k == k), None)
        if sparsifier is None:
            raise MessageError(f"a JWINS message with {k} coefficients fits none of the budgets "
                               f"{sorted({s.k for s in self.sparsifiers.values()})}")
        return sparsifier.decompress_partial(payload)

    def aggregate(self, nodes: NodeBatch, inbox: Inbox) -> None:
        mixed = partial_average(self.forward(nodes.params), inbox, self.decode_partial)
        nodes.params = self.inverse(mixed)
        if not self.error_feedback:   # next round's change is measured from here
            nodes.state["jwins_reference"].copy_(mixed)
