"""Lossless stages for tensor frames, chosen per frame by its wire dtype.

A codec is one or more stages; each frame goes through the first stage that takes its dtype,
and travels raw when no stage takes it or the result would not be strictly shorter:

- ``zstd`` and ``lz4`` take every frame;
- ``elias`` takes integer frames that are strictly increasing and non-negative (the sorted
  index lists of sparse payloads) and writes the Elias-gamma codes of their gaps;
- ``fpzip`` takes float32/float64 frames and writes them with fpzip (Lindstrom & Isenburg,
  2006) at the fewest bits of precision that still hold every value exactly, so it is lossless
  on any frame, and as small as fpzip's lossy mode on values already rounded to that precision
  (the ``fpzip`` compressor rounds them);
- ``elias-fpzip`` is both (DecentralizePy's ``EliasFpzip``).

Decoders produce exactly the declared number of bytes and check everything a hostile frame
could lie about before any native code sees it: fpzip's header (type and dimensions) is read
here. fpzip's reader has no input bound and divides by values a crafted stream can zero (a
crash, measured), so it runs in a process of its own on a zero-padded copy as long as it can
possibly read; a frame that kills it is rejected like any other bad frame.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["CODECS", "CodecError", "check_codec", "compress", "decompress", "gamma_decode", "gamma_encode"]

ZSTD_LEVEL = 3
_INTS = {"int16": np.dtype("<i2"), "int32": np.dtype("<i4"), "int64": np.dtype("<i8")}
_FLOATS = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8")}


class CodecError(ValueError):
    """Why a compressed frame was rejected (the wire reports it as a MessageError)."""


class _Stage(NamedTuple):
    package: str | None  # the PyPI package it needs (None: numpy only)
    takes: Callable[[str], bool]
    compress: Callable[[memoryview, str], bytes | None]
    decompress: Callable[[memoryview, int, str, str], bytes | bytearray]


# ---------------------------------------------------------------------------
# zstd, lz4

_local = threading.local()  # zstd contexts are reusable but not shareable between threads


def _zstd_compress(data: memoryview, dtype: str) -> bytes:
    import zstandard

    cctx = getattr(_local, "zstd", None)
    if cctx is None:
        cctx = _local.zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)  # records the content size
    return cctx.compress(data)


def _zstd_decompress(view: memoryview, nbytes: int, dtype: str, what: str) -> bytes:
    import zstandard

    try:
        declared = zstandard.frame_content_size(view)
    except zstandard.ZstdError as e:
        raise CodecError(f"{what} is not a zstd frame: {e}") from None
    if declared < 0:  # -1: the frame does not state its size, so nothing bounds it in advance
        raise CodecError(f"{what} is a zstd frame without its content size; header declares {nbytes} bytes")
    if declared != nbytes:
        raise CodecError(f"{what} decompresses to {declared} bytes, header declares {nbytes}")
    dobj = zstandard.ZstdDecompressor().decompressobj()
    try:
        out = dobj.decompress(view)
    except zstandard.ZstdError as e:
        raise CodecError(f"{what} is corrupt: {e}") from None
    if not dobj.eof or dobj.unused_data:
        raise CodecError(f"{what} is not exactly one complete zstd frame")
    return out


def _lz4_compress(data: memoryview, dtype: str) -> bytes:
    import lz4.block

    return lz4.block.compress(data, store_size=False)


def _lz4_decompress(view: memoryview, nbytes: int, dtype: str, what: str) -> bytearray:
    import lz4.block

    try:  # the block format has no size of its own: lz4 writes at most nbytes
        # a writable bytearray: decode wraps it instead of copying it again
        return lz4.block.decompress(view, uncompressed_size=nbytes, return_bytearray=True)
    except lz4.block.LZ4BlockError as e:
        raise CodecError(f"{what} is corrupt or larger than declared: {e}") from None


# ---------------------------------------------------------------------------
# Elias gamma


def gamma_encode(values: np.ndarray) -> bytes:
    """Elias-gamma codes of positive integers below 2**53, most significant bit first, the
    last byte padded with zeros: v takes 2·⌊log2 v⌋ + 1 bits (⌊log2 v⌋ zeros, then v)."""
    v = np.asarray(values, dtype=np.int64)
    width = np.frexp(v.astype(np.float64))[1].astype(np.int64)  # bit length, exact below 2**53
    ends = np.cumsum(2 * width - 1)
    first = ends - width  # where each value's leading one goes
    owner = np.repeat(np.arange(v.size), width)
    place = np.arange(owner.size) - np.repeat(np.cumsum(width) - width, width)  # 0 = leading bit
    bits = np.zeros(int(ends[-1]) if v.size else 0, dtype=np.uint8)
    bits[first[owner] + place] = (v[owner] >> (width[owner] - 1 - place)) & 1
    return np.packbits(bits).tobytes()


def gamma_decode(data: bytes | memoryview, count: int, max_bits: int, what: str = "frame") -> np.ndarray:
    """``count`` values from ``gamma_encode``'s bytes, each of at most ``max_bits`` bits; anything
    else in ``data`` (a longer code, too few codes, bits left over) is a CodecError. Each code
    starts where the previous one ended, so this walks them in order, at most ``max_bits``
    bits ahead per code whatever the bytes hold."""
    raw = bytes(data)
    size = 8 * len(raw)
    values = np.empty(count, dtype=np.int64)
    pos = 0
    for i in range(count):
        byte = pos >> 3
        b = raw[byte] & (0xFF >> (pos & 7)) if byte < len(raw) else 0
        while not b:
            byte += 1
            if byte >= len(raw) or 8 * byte - pos >= max_bits:
                raise CodecError(f"{what} holds {i} valid Elias-gamma codes, header declares {count}")
            b = raw[byte]
        lead = 8 * byte + 8 - b.bit_length()
        width = lead - pos + 1
        end = lead + width
        if width > max_bits or end > size:
            raise CodecError(f"{what} holds {i} valid Elias-gamma codes, header declares {count}")
        last = (end + 7) >> 3
        values[i] = (int.from_bytes(raw[lead >> 3:last], "big") >> (8 * last - end)) & ((1 << width) - 1)
        pos = end
    if size - pos >= 8 or (pos < size and raw[-1] & (0xFF >> (pos & 7))):
        raise CodecError(f"{what} does not end with its last Elias-gamma code")
    return values


def _takes_int(dtype: str) -> bool:
    return dtype in _INTS


def _elias_compress(data: memoryview, dtype: str) -> bytes | None:
    """Strictly increasing non-negative integers as the gamma codes of idx[0] + 1 and the gaps."""
    idx = np.frombuffer(data, dtype=_INTS[dtype]).astype(np.int64)
    gaps = np.diff(idx, prepend=-1)
    if (gaps <= 0).any() or idx[-1] >= 2**53:
        return None
    return gamma_encode(gaps)


def _elias_decompress(view: memoryview, nbytes: int, dtype: str, what: str) -> bytes:
    wire = _INTS[dtype]
    bits = 8 * wire.itemsize - 1
    idx = np.cumsum(gamma_decode(view, nbytes // wire.itemsize, bits, what)) - 1
    if (np.diff(idx) <= 0).any() or idx[-1] >= 2**bits:  # int64 sums may wrap: they then decrease
        raise CodecError(f"{what} holds indices beyond {dtype}")
    return idx.astype(wire).tobytes()


# ---------------------------------------------------------------------------
# fpzip


def _takes_float(dtype: str) -> bool:
    return dtype in _FLOATS


def _exact_precision(values: np.ndarray) -> int:
    """The fewest leading bits that hold every value exactly, among those fpzip offers
    (2..32 for float32; even, 4..64 for float64)."""
    width = 8 * values.itemsize
    word = int(np.bitwise_or.reduce(values.view(f"<u{values.itemsize}")))
    needed = width - ((word & -word).bit_length() - 1 if word else width)
    return max(2, needed) if width == 32 else max(4, needed + needed % 2)


def _valid_precision(precision: int, width: int) -> bool:
    return precision == 0 or (2 <= precision <= 32 if width == 32 else 4 <= precision <= 64 and precision % 2 == 0)


def _fpzip_compress(data: memoryview, dtype: str) -> bytes | None:
    import fpzip

    values = np.frombuffer(data, dtype=_FLOATS[dtype])
    precision = _exact_precision(values)
    # fpzip.compress grows its buffer past its allocation when output outgrows the input; one
    # attempt with the input's size is all a shorter frame needs.
    try:
        return fpzip._try_compress(values, values.nbytes, precision=precision, order="C")
    except fpzip.FpzipError:
        return None


_RC_MASK = 0xFFFFFFFF


class _RangeDecoder:
    """fpzip's 32-bit range decoder (rcdecoder.cpp), enough of it to read a header."""

    def __init__(self, data: memoryview):
        self.data, self.pos = data, 0
        self.low, self.range, self.code = 0, _RC_MASK, 0
        self._get(4)

    def _get(self, n: int) -> None:
        for _ in range(n):
            if self.pos >= len(self.data):
                raise CodecError("fpzip header is truncated")
            self.code = ((self.code << 8) | self.data[self.pos]) & _RC_MASK
            self.low = (self.low << 8) & _RC_MASK
            self.pos += 1

    def _shift(self, n: int) -> int:
        self.range >>= n
        s = ((self.code - self.low) & _RC_MASK) // self.range
        self.low = (self.low + self.range * s) & _RC_MASK
        while not (self.low ^ ((self.low + self.range) & _RC_MASK)) >> 24:
            self._get(1)
            self.range = (self.range << 8) & _RC_MASK
        if not self.range >> 16:
            self._get(2)
            self.range = -self.low & _RC_MASK
        return s

    def number(self, n: int) -> int:
        if n <= 16:
            return self._shift(n)
        low = self._shift(16)
        return (self._shift(n - 16) << 16) + low


def _fpzip_header(view: memoryview) -> tuple[int, int, tuple[int, int, int, int]]:
    """(type, precision, (nx, ny, nz, nf)) of an fpzip stream, read without fpzip."""
    rd = _RangeDecoder(view)
    if [rd.number(8) for _ in range(4)] != list(b"fpz\0"):
        raise CodecError("is not an fpzip stream")
    rd.number(16), rd.number(8)  # format version: fpzip itself checks it
    kind, precision = rd.number(1), rd.number(7)
    return kind, precision, tuple(rd.number(32) for _ in range(4))


class _FpzipReader:
    """fpzip's reader in a process of its own (``_fpzip_child.py``), started on first use and
    again after a frame kills it; one per process and thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.pid = 0  # a forked worker must not share its parent's pipes

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.pid != os.getpid() or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, "-I", str(Path(__file__).with_name("_fpzip_child.py"))],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            self.pid = os.getpid()
        return self.proc

    def _read(self, n: int) -> bytes:
        data = self.proc.stdout.read(n)
        if len(data) != n:
            raise BrokenPipeError
        return data

    def decode(self, view: memoryview, count: int, double: bool, what: str) -> bytes:
        with self.lock:
            proc = self._start()
            try:
                from meshlearn._fpzip_child import REQUEST   # the one definition of the requests

                proc.stdin.write(REQUEST.pack(double, count, view.nbytes))
                proc.stdin.write(view)
                proc.stdin.flush()
                if self._read(1) == b"\0":
                    return self._read(count * (8 if double else 4))
                message = self._read(struct.unpack("<H", self._read(2))[0]).decode(errors="replace")
            except (BrokenPipeError, OSError):
                proc.kill()
                proc.wait()
                raise CodecError(f"{what} crashed fpzip's reader (it runs in a process of its own, "
                                 "restarted for the next frame)") from None
        raise CodecError(f"{what} is corrupt: fpzip: {message}")


_fpzip_reader = _FpzipReader()


def _fpzip_decompress(view: memoryview, nbytes: int, dtype: str, what: str) -> bytes:
    wire = _FLOATS[dtype]
    count, width = nbytes // wire.itemsize, 8 * wire.itemsize
    try:
        kind, precision, dims = _fpzip_header(view)
    except CodecError as e:
        raise CodecError(f"{what} {e}") from None
    if kind != (width == 64) or dims != (count, 1, 1, 1) or not _valid_precision(precision, width):
        raise CodecError(f"{what} is an fpzip stream of type {kind}, precision {precision}, dimensions {dims}; "
                         f"header declares {dtype}[{count}]")
    return _fpzip_reader.decode(view, count, width == 64, what)


# ---------------------------------------------------------------------------
# codecs


def _any(dtype: str) -> bool:
    return True


_STAGES = {
    "zstd": _Stage("zstandard", _any, _zstd_compress, _zstd_decompress),
    "lz4": _Stage("lz4", _any, _lz4_compress, _lz4_decompress),
    "elias": _Stage(None, _takes_int, _elias_compress, _elias_decompress),
    "fpzip": _Stage("fpzip", _takes_float, _fpzip_compress, _fpzip_decompress),
}
# codec name -> its stages, in the order they are offered a frame
CODECS: dict[str, tuple[str, ...]] = {"zstd": ("zstd",), "lz4": ("lz4",), "elias": ("elias",),
                                      "fpzip": ("fpzip",), "elias-fpzip": ("elias", "fpzip")}


def check_codec(codec: str) -> None:
    """Raise ImportError, naming the package to install, if a stage of ``codec`` is unavailable."""
    for stage in CODECS[codec]:
        package = _STAGES[stage].package
        if package is None:
            continue
        try:
            __import__("lz4.block" if package == "lz4" else package)
        except ImportError:
            raise ImportError(f"compression {codec!r} needs the {package!r} package: pip install {package}") from None


def _stage(codec: str, dtype: str) -> _Stage | None:
    return next((_STAGES[s] for s in CODECS[codec] if _STAGES[s].takes(dtype)), None)


def compress(data: memoryview, dtype: str, codec: str) -> bytes | None:
    """The frame's compressed bytes, or None where no stage of ``codec`` takes it."""
    check_codec(codec)
    stage = _stage(codec, dtype)
    return None if stage is None else stage.compress(data, dtype)


def decompress(view: memoryview, nbytes: int, dtype: str, codec: str, what: str) -> bytes | bytearray:
    """Exactly ``nbytes`` from a compressed frame, never allocating more than a bound of it."""
    try:
        check_codec(codec)
    except ImportError as e:
        raise CodecError(f"{what} is {codec}-compressed: {e}") from None
    stage = _stage(codec, dtype)
    if stage is None:
        raise CodecError(f"{what} is shorter than declared, but {codec} does not compress {dtype} frames")
    out = stage.decompress(view, nbytes, dtype, what)
    if len(out) != nbytes:
        raise CodecError(f"{what} decompresses to {len(out)} bytes, header declares {nbytes}")
    return out
