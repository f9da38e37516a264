"""Compressors: what a node sends instead of a dense vector, and how a receiver rebuilds it.

Every compressor maps stacked rows ``(B, P)`` to a payload whose tensors have the same shape
in every row (so one message per node is ``{name: t[row]}``, and a receiver can stack the
messages of its senders again), and back. Decoding depends only on the payload and the
compressor's settings, so the sender and all its receivers rebuild bit-identical vectors —
CHOCO-SGD's public copies rely on it.

Randomness (random-k indices, stochastic rounding) comes from ``round_seeds``: one seed per
(experiment seed, global node id, round, purpose), never from a row position or a global
generator, so every engine and every placement of nodes draws the same numbers.

Sparse payloads carry their support in whichever form is smaller on the wire: a sorted index
list (int16 when the model has at most 2**15 parameters, else int32) or a bitmask of P bits.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field

from meshlearn import streams
from meshlearn.sharing.base import Payload
from meshlearn.streams import Stream
from meshlearn.wire import MessageError

__all__ = [
    "Compressor", "Identity", "TopK", "SparseTernary", "RandomK", "QSGD", "Uniform", "Fpzip", "COMPRESSORS",
    "round_seeds", "count", "top_indices", "encode_support", "decode_support", "scatter", "pack_bits",
    "unpack_bits", "Fraction", "BucketSize", "Levels", "Bits", "Support",
]

# Options shared by the compressors and by the sharing schemes built on them.
Fraction = Annotated[float, Field(gt=0, le=1, description="share of the parameters sent each round")]
BucketSize = Annotated[int, Field(ge=0, description="coordinates per scale (0 = one scale for all)")]
Levels = Annotated[int, Field(ge=1, le=127, description="levels per sign (2·levels+1 codes, e.g. 7 → 4 bits)")]
Bits = Annotated[int, Field(ge=1, le=8, description="bits per coordinate")]
Support = Annotated[Literal["smaller", "indices", "bitmask"], Field(
    description="how the support travels: whichever is smaller raw, a sorted index list (which "
                "sharing.compression = 'elias' shrinks further), or a bitmask")]


def round_seeds(seed: int, ids: torch.Tensor, rnd: int, stream: int) -> list[int]:
    """One 63-bit seed per node for this round and purpose, independent of where the node runs."""
    return [streams.seed_of(seed, stream, node, rnd) for node in ids.tolist()]


def count(fraction: float, size: int) -> int:
    """Coordinates a fraction of ``size`` keeps: at least one, at most all."""
    return max(1, min(size, round(fraction * size)))


def _index_dtype(size: int) -> torch.dtype:
    """The narrowest signed integer type that holds every index below ``size``."""
    return torch.int16 if size <= 2**15 else torch.int32 if size <= 2**31 else torch.int64


def _uses_bitmask(k: int, size: int, support: str) -> bool:
    """Whether the support travels as a P-bit mask (sender and receiver decide alike): as asked,
    or where it is shorter than k raw indices."""
    if support != "smaller":
        return support == "bitmask"
    index_bytes = k * torch.empty(0, dtype=_index_dtype(size)).element_size()
    return math.ceil(size / 8) < index_bytes


def encode_support(idx: torch.Tensor, size: int, support: str = "smaller") -> Payload:
    """The support of (B, k) sorted indices: ``{"indices": ...}`` or ``{"bitmask": ...}``."""
    if not _uses_bitmask(idx.shape[1], size, support):
        return {"indices": idx.to(_index_dtype(size))}
    mask = _mask_of(idx, size)
    return {"bitmask": torch.from_numpy(np.packbits(mask.cpu().numpy(), axis=1, bitorder="little")).to(idx.device)}


def _mask_of(idx: torch.Tensor, size: int) -> torch.Tensor:
    """(S, size) bool rows, true at each row's (S, k) indices."""
    return torch.zeros(idx.shape[0], size, dtype=torch.bool, device=idx.device).scatter_(1, idx, True)


def _expect(payload: Payload, name: str, shape: tuple[int, ...], dtype: torch.dtype,
            rows: int | None = None) -> torch.Tensor:
    """A payload tensor with the shape and dtype this compressor sends, else MessageError.

    Payloads come from the network: the leading (sender) dimension must be there, and agree
    with ``rows`` (the other tensors of the payload), or decoding would broadcast one sender's
    scales over another's codes, or fail deep inside torch with an unclear error.
    """
    if name not in payload:
        raise MessageError(f"payload lacks {name!r} (has {sorted(payload)}); sender and receiver disagree "
                           "on the sharing scheme")
    t = payload[name]
    if t.dim() != len(shape) + 1:
        raise MessageError(f"payload {name!r} has shape {list(t.shape)}, expected {['senders', *shape]}")
    if t.dtype != dtype or tuple(t.shape[1:]) != shape:
        raise MessageError(f"payload {name!r} is {t.dtype}{list(t.shape[1:])} per sender, expected "
                           f"{dtype}{list(shape)}; sender and receiver disagree on the sharing options")
    if rows is not None and t.shape[0] != rows:
        raise MessageError(f"payload {name!r} has {t.shape[0]} senders, its other tensors {rows}")
    return t


def decode_support(payload: Payload, k: int, size: int, support: str = "smaller") -> torch.Tensor:
    """(S, size) bool mask of the coordinates each sender sent, validated (exactly k per row)."""
    if not _uses_bitmask(k, size, support):
        idx = _expect(payload, "indices", (k,), _index_dtype(size)).long()
        if idx.numel() and (idx.min() < 0 or idx.max() >= size or (idx[:, 1:] <= idx[:, :-1]).any()):
            raise MessageError(f"indices must be increasing and in [0, {size})")
        return _mask_of(idx, size)
    packed = _expect(payload, "bitmask", (math.ceil(size / 8),), torch.uint8)
    mask = torch.from_numpy(np.unpackbits(packed.cpu().numpy(), axis=1, count=size, bitorder="little").view(bool))
    mask = mask.to(packed.device)
    if (mask.sum(1) != k).any():
        raise MessageError(f"bitmask must select exactly {k} coordinates per sender")
    return mask


def scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Dense (S, size) rows with each row's values at its mask, in increasing index order."""
    dense = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    dense[mask] = values.reshape(-1)
    return dense


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(B, n) uint8 codes below 2**bits → (B, ceil(n·bits/8)) bytes, little-endian bit order."""
    if bits == 8:
        return codes
    planes = np.unpackbits(codes.cpu().numpy()[..., None], axis=-1, count=bits, bitorder="little")
    return torch.from_numpy(np.packbits(planes.reshape(codes.shape[0], -1), axis=1, bitorder="little")).to(codes.device)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: (S, n) uint8 codes."""
    if bits == 8:
        return packed
    planes = np.unpackbits(packed.cpu().numpy(), axis=1, count=n * bits, bitorder="little")
    return torch.from_numpy(np.packbits(planes.reshape(-1, n, bits), axis=-1, bitorder="little")[..., 0]).to(packed.device)


class Compressor:
    """Maps (B, P) rows to a payload and a payload back to dense (S, P) rows."""

    name = ""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.size = 0

    def setup(self, size: int) -> None:
        self.size = size

    def compress(self, rows: torch.Tensor, ids: torch.Tensor, rnd: int) -> Payload:
        raise NotImplementedError

    def decompress(self, payload: Payload) -> torch.Tensor:
        raise NotImplementedError

    def decompress_partial(self, payload: Payload) -> tuple[torch.Tensor, torch.Tensor]:
        """(dense values, float mask of sent coordinates) for partial-model averaging."""
        dense = self.decompress(payload)
        return dense, torch.ones_like(dense)


class Identity(Compressor):
    """No compression: the dense vector (CHOCO-SGD with it and γ = 1 is D-PSGD)."""

    name = "identity"

    def compress(self, rows, ids, rnd):
        return {"values": rows.contiguous()}

    def decompress(self, payload):
        return _expect(payload, "values", (self.size,), torch.float32)


class _Sparsifier(Compressor):
    """k = fraction·P coordinates per node: their values and their support."""


    def __init__(self, fraction: Fraction = 0.1, support: Support = "smaller", seed: int = 0):
        super().__init__(seed)
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction = {fraction} must be in (0, 1]")
        if support not in ("smaller", "indices", "bitmask"):
            raise ValueError(f"support = {support!r} must be 'smaller', 'indices' or 'bitmask'")
        self.fraction, self.support = fraction, support
        self.k = 0

    def setup(self, size: int) -> None:
        super().setup(size)
        self.k = count(self.fraction, size)

    def select(self, rows: torch.Tensor, ids: torch.Tensor, rnd: int) -> torch.Tensor:
        """(B, k) increasing indices to send."""
        raise NotImplementedError

    def payload(self, values: torch.Tensor, idx: torch.Tensor) -> Payload:
        """``values`` at ``idx`` (each row's own) and the support."""
        return {"values": values.gather(1, idx), **encode_support(idx, self.size, self.support)}

    def compress(self, rows, ids, rnd):
        return self.payload(rows, self.select(rows, ids, rnd))

    def mask(self, payload: Payload) -> torch.Tensor:
        return decode_support(payload, self.k, self.size, self.support)

    def decompress_partial(self, payload):
        values = _expect(payload, "values", (self.k,), torch.float32)
        mask = self.mask(payload).to(values.device)   # random-k rebuilds it from seeds, on the host
        if mask.shape[0] != values.shape[0]:
            raise MessageError(f"payload has values of {values.shape[0]} senders, support of {mask.shape[0]}")
        return scatter(values, mask), mask.to(values.dtype)

    def decompress(self, payload):
        return self.decompress_partial(payload)[0]


class TopK(_Sparsifier):
    """The k largest-magnitude coordinates (a δ = k/P contraction, as CHOCO-SGD requires)."""

    name = "topk"

    def select(self, rows, ids, rnd):
        return top_indices(rows, self.k)


class SparseTernary(TopK):
    """Sparse ternary compression (STC, Sattler et al. 2019): the top k coordinates, each sent
    as ± the mean magnitude of the k, i.e. one float, k sign bits and the support."""

    name = "stc"

    def payload(self, values: torch.Tensor, idx: torch.Tensor) -> Payload:
        chosen = values.gather(1, idx)
        return {"mean": chosen.abs().mean(1), "signs": pack_bits((chosen < 0).to(torch.uint8), 1),
                **encode_support(idx, self.size, self.support)}

    def decompress_partial(self, payload):
        mean = _expect(payload, "mean", (), torch.float32)
        if (mean < 0).any():
            raise MessageError("sparse ternary means must be non-negative")
        signs = _expect(payload, "signs", (math.ceil(self.k / 8),), torch.uint8, rows=mean.shape[0])
        mask = self.mask(payload)
        if mask.shape[0] != mean.shape[0]:
            raise MessageError(f"payload has means of {mean.shape[0]} senders, support of {mask.shape[0]}")
        values = mean.unsqueeze(1) * (1 - 2 * unpack_bits(signs, 1, self.k).to(mean.dtype))
        return scatter(values, mask), mask.to(mean.dtype)


class Fpzip(Compressor):
    """fpzip's lossy mode at ``precision`` bits: every value as fpzip reconstructs it (its low
    32 − precision bits cleared). The values travel as floats; with ``sharing.compression =
    "fpzip"`` the wire writes them at that precision, so they take fpzip's lossy size exactly."""

    name = "fpzip"

    def __init__(self, precision: Annotated[int, Field(ge=2, le=32, description=(
                     "leading bits kept of each float32 (sign, 8 exponent bits, then mantissa): 32 is "
                     "lossless, 16 keeps 7 mantissa bits as bfloat16 does, 12 keeps 3"))] = 16, seed: int = 0):
        super().__init__(seed)
        if not 2 <= precision <= 32:
            raise ValueError(f"precision = {precision} must be in [2, 32]")
        self.precision = precision

    def compress(self, rows, ids, rnd):
        mask = torch.tensor(-(1 << (32 - self.precision)), dtype=torch.int32)  # ones above the dropped bits
        return {"values": (rows.contiguous().view(torch.int32) & mask).view(torch.float32)}

    def decompress(self, payload):
        return _expect(payload, "values", (self.size,), torch.float32)


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) increasing indices of each row's k largest |scores|."""
    if k == scores.shape[1]:
        return torch.arange(k, device=scores.device).expand(scores.shape[0], k).contiguous()
    return scores.abs().topk(k, dim=1, sorted=False).indices.sort(dim=1).values


class RandomK(_Sparsifier):
    """k coordinates drawn afresh each round. With ``indices = "seed"`` only the 8-byte seed
    travels and receivers regenerate the indices; ``"explicit"`` sends them."""

    name = "randomk"

    def __init__(self, fraction: Fraction = 0.1,
                 indices: Annotated[Literal["seed", "explicit"], Field(
                     description="send a seed (receivers regenerate the indices) or the indices")] = "seed",
                 support: Support = "smaller", seed: int = 0):
        super().__init__(fraction, support, seed)
        if indices not in ("seed", "explicit"):
            raise ValueError(f"indices = {indices!r} must be 'seed' or 'explicit'")
        self.indices = indices

    def _from_seeds(self, seeds: list[int]) -> torch.Tensor:
        out = torch.empty(len(seeds), self.k, dtype=torch.int64)
        for row, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(seed)
            out[row] = torch.randperm(self.size, generator=gen)[:self.k].sort().values
        return out

    def compress(self, rows, ids, rnd):
        seeds = round_seeds(self.seed, ids, rnd, Stream.RANDOM_K)
        idx = self._from_seeds(seeds).to(rows.device)
        if self.indices == "explicit":
            return self.payload(rows, idx)
        return {"seed": torch.tensor(seeds, dtype=torch.int64), "values": rows.gather(1, idx)}

    def mask(self, payload):
        if self.indices == "explicit":
            return super().mask(payload)
        seeds = _expect(payload, "seed", (), torch.int64)
        if (seeds < 0).any():
            raise MessageError("random-k seeds must be non-negative")
        return _mask_of(self._from_seeds(seeds.tolist()).to(seeds.device), self.size)


class _Bucketed(Compressor):
    """Quantizers with one scale per bucket of ``bucket_size`` coordinates (0: one bucket)."""

    def __init__(self, bucket_size: BucketSize = 512, seed: int = 0):
        super().__init__(seed)
        if bucket_size < 0:
            raise ValueError(f"bucket_size = {bucket_size} must be ≥ 0")
        self.bucket_size = bucket_size
        self.bucket = self.buckets = 0

    def setup(self, size: int) -> None:
        super().setup(size)
        self.bucket = min(self.bucket_size or size, size)
        self.buckets = math.ceil(size / self.bucket)

    def _split(self, rows: torch.Tensor, fill: str) -> torch.Tensor:
        """(B, buckets, bucket) view, the last bucket padded (zeros, or its last value)."""
        pad = self.buckets * self.bucket - self.size
        if pad:
            tail = rows[:, -1:].expand(-1, pad) if fill == "last" else rows.new_zeros(rows.shape[0], pad)
            rows = torch.cat([rows, tail], dim=1)
        return rows.reshape(rows.shape[0], self.buckets, self.bucket)

    def _per_coordinate(self, per_bucket: torch.Tensor) -> torch.Tensor:
        """(S, buckets) → (S, P), each coordinate its bucket's value."""
        return per_bucket.repeat_interleave(self.bucket, dim=1)[:, :self.size]


class QSGD(_Bucketed):
    """QSGD (Alistarh et al., NeurIPS 2017): per bucket the L2 norm, per coordinate a sign and
    a level in 0..s rounded stochastically so that the estimate is unbiased; sign and level
    travel as one code of ceil(log2(2s+1)) bits. ``scaled`` divides by τ = 1 + min(d/s², √d/s)
    to make it a contraction, as CHOCO-SGD uses it (Koloskova et al., 2019)."""

    name = "qsgd"

    def __init__(self, levels: Levels = 7, bucket_size: BucketSize = 512, seed: int = 0,
                 scaled: Annotated[bool, Field(description="divide by τ: a contraction (CHOCO-SGD)")] = False):
        super().__init__(bucket_size, seed)
        if not 1 <= levels <= 127:
            raise ValueError(f"levels = {levels} must be in 1..127")
        self.levels = levels
        self.bits = math.ceil(math.log2(2 * levels + 1))
        self.scaled = scaled
        self.shrink = 1.0

    def setup(self, size: int) -> None:
        super().setup(size)
        d, s = self.bucket, self.levels
        self.shrink = 1.0 / (1.0 + min(d / s**2, math.sqrt(d) / s)) if self.scaled else 1.0

    def compress(self, rows, ids, rnd):
        s = self.levels
        buckets = self._split(rows, "zeros")
        norms = buckets.norm(dim=2)
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))
        ratio = (buckets.abs() * (s / safe).unsqueeze(2)).reshape(rows.shape[0], -1)[:, :self.size]
        ratio.clamp_(max=s)
        uniform = torch.empty_like(ratio)
        for row, seed in enumerate(round_seeds(self.seed, ids, rnd, Stream.QUANTIZE)):
            uniform[row] = torch.rand(self.size, generator=torch.Generator().manual_seed(seed))
        level = ratio.floor()
        level += (uniform < ratio - level).to(level.dtype)
        codes = (torch.sign(rows) * level + s).to(torch.uint8)
        return {"norms": norms.contiguous(), "codes": pack_bits(codes, self.bits)}

    def decompress(self, payload):
        norms = _expect(payload, "norms", (self.buckets,), torch.float32)
        packed = _expect(payload, "codes", (math.ceil(self.size * self.bits / 8),), torch.uint8, len(norms))
        codes = unpack_bits(packed, self.bits, self.size)
        if codes.numel() and codes.max() > 2 * self.levels:
            raise MessageError(f"QSGD codes must be at most {2 * self.levels}")
        if (norms < 0).any():  # NaN passes: a diverged sender's model, as with full sharing
            raise MessageError("QSGD norms must be non-negative")
        scale = self._per_coordinate(norms * (self.shrink / self.levels))
        return (codes.to(torch.float32) - self.levels) * scale


class Uniform(_Bucketed):
    """Uniform quantization to 2**bits values between each bucket's min and max, rounded to
    nearest (8 bits: one byte per coordinate plus two floats per bucket)."""

    name = "uniform"

    def __init__(self, bits: Bits = 8, bucket_size: BucketSize = 512, seed: int = 0):
        super().__init__(bucket_size, seed)
        if not 1 <= bits <= 8:
            raise ValueError(f"bits = {bits} must be in 1..8")
        self.bits = bits

    def compress(self, rows, ids, rnd):
        top = 2**self.bits - 1
        buckets = self._split(rows, "last")
        lo, hi = buckets.amin(dim=2), buckets.amax(dim=2)
        scale = (hi - lo) / top
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = ((buckets - lo.unsqueeze(2)) / safe.unsqueeze(2)).round_().clamp_(0, top)
        codes = codes.reshape(rows.shape[0], -1)[:, :self.size].to(torch.uint8)
        return {"lo": lo.contiguous(), "scale": scale.contiguous(), "codes": pack_bits(codes, self.bits)}

    def decompress(self, payload):
        lo = _expect(payload, "lo", (self.buckets,), torch.float32)
        scale = _expect(payload, "scale", (self.buckets,), torch.float32, len(lo))
        packed = _expect(payload, "codes", (math.ceil(self.size * self.bits / 8),), torch.uint8, len(lo))
        if (scale < 0).any():  # (max - min) / steps; NaN passes, as with full sharing
            raise MessageError("uniform quantization scales must be non-negative")
        codes = unpack_bits(packed, self.bits, self.size).to(torch.float32)
        return self._per_coordinate(lo) + codes * self._per_coordinate(scale)


COMPRESSORS: dict[str, type[Compressor]] = {
    c.name: c for c in (Identity, TopK, SparseTernary, RandomK, QSGD, Uniform, Fpzip)
}
