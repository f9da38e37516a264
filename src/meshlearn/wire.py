"""Message format exchanged between nodes.

A message is a list of frames: frame 0 is a msgpack header that describes the
tensors, frames 1..k are their raw little-endian, C-contiguous buffers.  The
format carries data only (no pickle), so a receiver can check every declared
size before it trusts or allocates anything, and the same frames give the
simulator the exact number of bytes a real transport would put on the wire.

``to_bytes``/``from_bytes`` wrap the frames in a single buffer for files and
byte streams: a 4-byte little-endian frame count, then per frame an 8-byte
little-endian length followed by the frame bytes.

An optional lossless stage (``compression``: a codec of ``meshlearn.codecs``) compresses each
tensor frame that shrinks and names the codec in the header (``"codec"``). A frame whose length
equals its declared size travels raw; a shorter one is decompressed into exactly the
declared size, so the size check against ``max_bytes`` still bounds what a receiver
allocates (a decompression bomb is rejected, never expanded).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

import msgpack
import numpy as np
import torch

from meshlearn import codecs

__all__ = [
    "ALLOWED_DTYPES",
    "CODECS",
    "DEFAULT_MAX_BYTES",
    "MAX_META_ENTRIES",
    "PROTOCOL_VERSION",
    "Message",
    "MessageError",
    "check_codec",
    "decode",
    "encode",
    "encode_header",
    "encode_tensors",
    "from_bytes",
    "header_nbytes",
    "message_nbytes",
    "payload_nbytes",
    "tensor_frame_nbytes",
    "uint_nbytes",
    "to_bytes",
]

PROTOCOL_VERSION = 1
DEFAULT_MAX_BYTES = 1 << 30

# Limits that keep a hostile header cheap to reject.  Real headers are far
# below all of them (a few hundred bytes for typical models).
MAX_HEADER_BYTES = 16 << 20
MAX_TENSORS = 1 << 16
MAX_NDIM = 32
MAX_NAME_LEN = 1024
MAX_RUN_LEN = 256
MAX_KIND_LEN = 64
MAX_META_ENTRIES = 64
MAX_META_KEY_LEN = 64
MAX_META_STR_LEN = 256

# Range of integers msgpack can carry.
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1
# numpy and torch refuse arrays whose (zero-skipping) byte size overflows intp.
_MAX_ARRAY_BYTES = (1 << 63) - 1

_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")

# wire name -> (torch dtype, numpy dtype of the little-endian wire bytes)
_DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float32": (torch.float32, np.dtype("<f4")),
    "float64": (torch.float64, np.dtype("<f8")),
    "float16": (torch.float16, np.dtype("<f2")),
    # numpy has no bfloat16: the raw 2-byte storage travels as int16.
    "bfloat16": (torch.bfloat16, np.dtype("<i2")),
    "int8": (torch.int8, np.dtype("i1")),
    "uint8": (torch.uint8, np.dtype("u1")),
    "int16": (torch.int16, np.dtype("<i2")),
    "int32": (torch.int32, np.dtype("<i4")),
    "int64": (torch.int64, np.dtype("<i8")),
    "bool": (torch.bool, np.dtype("?")),
}
ALLOWED_DTYPES = frozenset(_DTYPES)
_DTYPE_NAMES = {tdt: name for name, (tdt, _) in _DTYPES.items()}

_REQUIRED_KEYS = frozenset({"v", "run", "src", "rnd", "kind", "names", "dtypes", "shapes"})
_OPTIONAL_KEYS = frozenset({"meta", "codec"})

# Lossless codecs for tensor frames: name -> its stages (see meshlearn.codecs).
CODECS = codecs.CODECS

Frame = Union[bytes, bytearray, memoryview]
MetaValue = Union[int, float, str, bool]


class MessageError(ValueError):
    """Why a received message was rejected."""


@dataclass
class Message:
    """One model exchange: who sent it, for which round, and the tensors."""

    run: str
    src: int
    rnd: int
    kind: str
    tensors: dict[str, torch.Tensor]  # order preserved on the wire
    meta: dict[str, MetaValue] = field(default_factory=dict)


class _Spec(NamedTuple):
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


class _Header(NamedTuple):
    run: str
    src: int
    rnd: int
    kind: str
    specs: list[_Spec]
    meta: dict[str, MetaValue]
    codec: str | None


# ---------------------------------------------------------------------------
# header validation (shared by encode and decode so both agree on what's valid)


def _check_str(value: Any, what: str, max_len: int, *, allow_empty: bool) -> str:
    if type(value) is not str:
        raise MessageError(f"{what} must be a str, got {type(value).__name__}")
    if not value and not allow_empty:
        raise MessageError(f"{what} must be non-empty")
    if len(value) > max_len:
        raise MessageError(f"{what} is {len(value)} characters, limit {max_len}")
    return value


def _check_int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise MessageError(f"{what} must be an int, got {type(value).__name__}")
    if not _INT_MIN <= value <= _INT_MAX:
        raise MessageError(f"{what} = {value} does not fit in 64 bits")
    return value


def _check_list(value: Any, what: str) -> list:
    if type(value) is not list:
        raise MessageError(f"{what} must be a list, got {type(value).__name__}")
    return value


def _check_meta(meta: Any) -> dict[str, MetaValue]:
    if type(meta) is not dict:
        raise MessageError(f"header field 'meta' must be a map, got {type(meta).__name__}")
    if len(meta) > MAX_META_ENTRIES:
        raise MessageError(f"meta has {len(meta)} entries, limit {MAX_META_ENTRIES}")
    for key, value in meta.items():
        _check_str(key, "meta key", MAX_META_KEY_LEN, allow_empty=False)
        if type(value) is bool or type(value) is float:
            continue
        if type(value) is int:
            _check_int(value, f"meta[{key!r}]")
        elif type(value) is str:
            _check_str(value, f"meta[{key!r}]", MAX_META_STR_LEN, allow_empty=True)
        else:
            raise MessageError(
                f"meta[{key!r}] must be int, float, str or bool, got {type(value).__name__}"
            )
    return meta


def _check_shape(shape: Any, name: str, itemsize: int) -> tuple[tuple[int, ...], int]:
    _check_list(shape, f"shape of tensor {name!r}")
    if len(shape) > MAX_NDIM:
        raise MessageError(f"tensor {name!r} has {len(shape)} dims, limit {MAX_NDIM}")
    for dim in shape:
        if type(dim) is not int:
            raise MessageError(
                f"tensor {name!r} has a non-integer dim {dim!r} in shape {shape}"
            )
        if dim < 0:
            raise MessageError(f"tensor {name!r} has a negative dim in shape {shape}")
    # Arrays with a zero dim are still refused by numpy/torch when the other
    # dims overflow, so bound the zero-skipping product too.
    if math.prod(d for d in shape if d) * itemsize > _MAX_ARRAY_BYTES:
        raise MessageError(f"tensor {name!r} has an impossibly large shape {shape}")
    return tuple(shape), math.prod(shape) * itemsize


def _check_header(header: Any) -> _Header:
    """Validate an unpacked header completely; raise MessageError on any flaw."""
    if type(header) is not dict:
        raise MessageError(f"header is not a msgpack map (got {type(header).__name__})")
    # The version decides what the rest must look like, so check it first.
    if "v" not in header:
        raise MessageError("header is missing the protocol version 'v'")
    version = header["v"]
    if type(version) is not int:
        raise MessageError(f"protocol version must be an int, got {type(version).__name__}")
    if version != PROTOCOL_VERSION:
        raise MessageError(
            f"unsupported protocol version {version}, expected {PROTOCOL_VERSION}"
        )
    keys = set(header)
    unknown = keys - _REQUIRED_KEYS - _OPTIONAL_KEYS
    if unknown:
        raise MessageError(f"header has unknown keys {sorted(unknown)}")
    missing = _REQUIRED_KEYS - keys
    if missing:
        raise MessageError(f"header is missing keys {sorted(missing)}")

    run = _check_str(header["run"], "run id", MAX_RUN_LEN, allow_empty=True)
    src = _check_int(header["src"], "src")
    rnd = _check_int(header["rnd"], "rnd")
    kind = _check_str(header["kind"], "kind", MAX_KIND_LEN, allow_empty=False)
    names = _check_list(header["names"], "names")
    dtypes = _check_list(header["dtypes"], "dtypes")
    shapes = _check_list(header["shapes"], "shapes")
    if not len(names) == len(dtypes) == len(shapes):
        raise MessageError(
            f"header lists {len(names)} names, {len(dtypes)} dtypes and {len(shapes)} shapes"
        )
    if len(names) > MAX_TENSORS:
        raise MessageError(f"header declares {len(names)} tensors, limit {MAX_TENSORS}")

    specs: list[_Spec] = []
    seen: set[str] = set()
    for name, dtype, shape in zip(names, dtypes, shapes):
        _check_str(name, "tensor name", MAX_NAME_LEN, allow_empty=False)
        if name in seen:
            raise MessageError(f"duplicate tensor name {name!r}")
        seen.add(name)
        if type(dtype) is not str or dtype not in _DTYPES:
            raise MessageError(
                f"tensor {name!r} has unknown dtype {dtype!r}; "
                f"allowed: {', '.join(sorted(ALLOWED_DTYPES))}"
            )
        dims, nbytes = _check_shape(shape, name, _DTYPES[dtype][1].itemsize)
        specs.append(_Spec(name, dtype, dims, nbytes))

    meta = _check_meta(header.get("meta", {}))
    codec = header.get("codec")
    if codec is not None and (type(codec) is not str or codec not in CODECS):
        raise MessageError(f"unknown codec {codec!r}; allowed: {', '.join(sorted(CODECS))}")
    return _Header(run, src, rnd, kind, specs, meta, codec)


# ---------------------------------------------------------------------------
# lossless stage


def _codec_name(compression: str | None) -> str | None:
    """``None``/``"none"`` mean raw frames; anything else must be a known codec."""
    if compression is None or compression == "none":
        return None
    if compression not in CODECS:
        raise ValueError(f"unknown compression {compression!r}; use one of none, {', '.join(sorted(CODECS))}")
    return compression


def check_codec(compression: str | None) -> None:
    """Raise ImportError, naming the package to install, if the codec is unavailable."""
    codec = _codec_name(compression)
    if codec is not None:
        codecs.check_codec(codec)


def _decompress(view: memoryview, spec: _Spec, codec: str, what: str) -> bytes | bytearray:
    try:
        return codecs.decompress(view, spec.nbytes, spec.dtype, codec, what)
    except codecs.CodecError as e:
        raise MessageError(str(e)) from None


# ---------------------------------------------------------------------------
# encoding


def _meta_value(value: Any) -> Any:
    # numpy scalars are common (seeds, norms); msgpack cannot pack them.
    return value.item() if isinstance(value, np.generic) else value


def _header_dict(msg: Message, codec: str | None = None) -> dict[str, Any]:
    if not isinstance(msg.tensors, dict):
        raise TypeError(f"Message.tensors must be a dict, got {type(msg.tensors).__name__}")
    dtypes = []
    for name, t in msg.tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
        if t.layout != torch.strided:
            raise ValueError(f"tensor {name!r} has layout {t.layout}; only dense tensors travel")
        if t.dtype not in _DTYPE_NAMES:
            raise ValueError(
                f"tensor {name!r} has dtype {t.dtype}, which the wire format does not carry; "
                f"allowed: {', '.join(sorted(ALLOWED_DTYPES))}"
            )
        dtypes.append(_DTYPE_NAMES[t.dtype])
    header: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "run": msg.run,
        "src": int(msg.src) if isinstance(msg.src, np.integer) else msg.src,
        "rnd": int(msg.rnd) if isinstance(msg.rnd, np.integer) else msg.rnd,
        "kind": msg.kind,
        "names": list(msg.tensors),
        "dtypes": dtypes,
        "shapes": [list(t.shape) for t in msg.tensors.values()],
    }
    if msg.meta:
        header["meta"] = {k: _meta_value(v) for k, v in dict(msg.meta).items()}
    if codec is not None:
        header["codec"] = codec
    try:
        _check_header(header)
    except MessageError as e:
        # Refuse to send what a receiver would refuse to accept.
        raise ValueError(f"cannot encode message: {e}") from None
    return header


def _pack_header(msg: Message, codec: str | None = None) -> bytes:
    header = _header_dict(msg, codec)
    try:
        return msgpack.packb(header, use_bin_type=True)
    except UnicodeEncodeError as e:  # e.g. lone surrogates in a name
        raise ValueError(f"cannot encode message: a string is not valid UTF-8 ({e})") from None


def _tensor_frame(t: torch.Tensor) -> memoryview:
    """A byte view of the tensor's memory; copies only when unavoidable."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()  # unavoidable copy: the wire needs host memory
    t = t.resolve_conj().resolve_neg()
    if not t.is_contiguous():
        t = t.contiguous()  # unavoidable copy: the wire needs C order
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    arr = t.numpy()
    if not np.little_endian:
        arr = arr.astype(arr.dtype.newbyteorder("<"))  # big-endian host: swap once
    return memoryview(arr.reshape(-1).view(np.uint8))


def _maybe_compressed(frame: memoryview, dtype: str, codec: str | None) -> Frame:
    """The compressed frame if it is strictly shorter, else the raw one (no ambiguity on decode)."""
    if codec is None or not frame.nbytes:
        return frame
    packed = codecs.compress(frame, dtype, codec)
    return packed if packed is not None and len(packed) < frame.nbytes else frame


def encode(msg: Message, compression: str | None = None) -> list[Frame]:
    """Frames for ``msg``: the header, then one zero-copy view per tensor.

    Tensor frames alias the tensors' memory (for contiguous CPU tensors), so
    the tensors must not be modified until the frames have been sent.
    With ``compression`` (a name in ``CODECS``), each tensor frame that shrinks is
    replaced by its compressed bytes.
    """
    return [encode_header(msg, compression), *encode_tensors(msg.tensors, compression)]


def encode_tensors(tensors: dict[str, torch.Tensor], compression: str | None = None) -> list[Frame]:
    """Frames 1..k of a message holding ``tensors`` (they do not depend on the header)."""
    codec = _codec_name(compression)
    return [_maybe_compressed(_tensor_frame(t), _DTYPE_NAMES.get(t.dtype, ""), codec) for t in tensors.values()]


def encode_header(msg: Message, compression: str | None = None) -> bytes:
    """Frame 0 of ``msg`` alone: a sender of one payload to many receivers encodes the
    tensor frames once and only the header (which names the receiver) per message."""
    return _pack_header(msg, _codec_name(compression))


def tensor_frame_nbytes(t: torch.Tensor, compression: str | None = None) -> int:
    """Length of the frame that ``encode`` sends for tensor ``t``."""
    codec = _codec_name(compression)
    if codec is None:
        return t.numel() * t.element_size()
    return len(_maybe_compressed(_tensor_frame(t), _DTYPE_NAMES.get(t.dtype, ""), codec))


def header_nbytes(msg: Message, compression: str | None = None) -> int:
    """Exact size of frame 0, the protocol overhead of ``msg``."""
    return len(_pack_header(msg, _codec_name(compression)))


def uint_nbytes(values: np.ndarray) -> np.ndarray:
    """msgpack's size of each non-negative integer (1, 2, 3, 5 or 9 bytes).

    Headers are msgpack maps, so replacing an integer field changes the header size by
    exactly the difference of these sizes: a simulator can price every message of a round
    from one packed header.
    """
    v = np.asarray(values, dtype=np.uint64)
    return (1 + (v > 127) + (v > 255) + 2 * (v > 0xFFFF) + 4 * (v > 0xFFFFFFFF)).astype(np.int64)


def payload_nbytes(msg: Message) -> int:
    """Sum of tensor frame sizes, computed without touching tensor memory."""
    return sum(t.numel() * t.element_size() for t in msg.tensors.values())


def message_nbytes(msg: Message, compression: str | None = None) -> int:
    """Exactly ``sum(len(f) for f in encode(msg, compression))``; without compression,
    without building frames."""
    if _codec_name(compression) is None:
        return header_nbytes(msg) + payload_nbytes(msg)
    return header_nbytes(msg, compression) + sum(tensor_frame_nbytes(t, compression)
                                                  for t in msg.tensors.values())


def to_bytes(msg: Message, compression: str | None = None) -> bytes:
    """One buffer holding all frames, for files and byte streams."""
    frames = encode(msg, compression)
    parts: list[Frame] = [_COUNT.pack(len(frames))]
    for frame in frames:
        parts.append(_LENGTH.pack(len(frame)))
        parts.append(frame)
    return b"".join(parts)


# ---------------------------------------------------------------------------
# decoding


def _byte_view(frame: Any, what: str) -> memoryview:
    try:
        view = memoryview(frame)
    except TypeError:
        raise MessageError(f"{what} is a {type(frame).__name__}, not a bytes-like object") from None
    if view.format != "B" or view.ndim != 1:
        if not view.c_contiguous:
            raise MessageError(f"{what} is not a contiguous buffer")
        view = view.cast("B")
    return view


def _pairs_to_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise MessageError("header map has duplicate keys")
    return out


def _unpack_header(view: memoryview) -> Any:
    # The header's size was bounded before this call, which plays the role of
    # msgpack's max_buffer_size; the per-object limits stop length prefixes
    # that claim more than the buffer holds.
    limit = view.nbytes
    try:
        return msgpack.unpackb(
            view,
            raw=False,
            strict_map_key=True,
            use_list=True,
            object_pairs_hook=_pairs_to_map,
            max_str_len=limit,
            max_bin_len=0,
            max_ext_len=0,
            max_array_len=limit,
            max_map_len=limit,
        )
    except MessageError:
        raise
    except Exception as e:
        # msgpack signals malformed input with several exception types
        # (ExtraData, FormatError, StackError, ValueError, UnicodeDecodeError...);
        # all mean the same thing here.
        raise MessageError(f"header is not valid msgpack: {type(e).__name__}: {e}") from None


def _to_tensor(view: memoryview, spec: _Spec) -> torch.Tensor:
    torch_dtype, wire_dtype = _DTYPES[spec.dtype]
    arr = np.frombuffer(view, dtype=wire_dtype)  # zero-copy
    if spec.dtype == "bool" and arr.size and arr.view(np.uint8).max() > 1:
        raise MessageError(f"bool tensor {spec.name!r} holds bytes other than 0 and 1")
    if not (arr.flags.writeable and arr.flags.aligned and arr.dtype.isnative):
        # Immutable frames (bytes) would make torch warn and leave a tensor whose
        # writes are undefined; misaligned or foreign-endian memory is unsafe or
        # wrong for torch kernels.  One copy gives an owned, native tensor.
        arr = arr.astype(wire_dtype.newbyteorder("="), copy=True)
    t = torch.from_numpy(arr.reshape(spec.shape))
    return t.view(torch_dtype) if torch_dtype == torch.bfloat16 else t


def decode(
    frames: Sequence[Frame],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    expect_run: str | None = None,
) -> Message:
    """Validate ``frames`` completely and rebuild the message.

    Sizes declared in the header are checked against ``max_bytes`` and the
    actual frame lengths before any tensor is built.  Writable frames
    (bytearray, writable memoryview) are wrapped without copying; immutable
    ones are copied so the returned tensors are always writable.
    """
    if isinstance(frames, (bytes, bytearray, memoryview, str)):
        raise MessageError("expected a sequence of frames, got a single buffer (see from_bytes)")
    try:
        frames = list(frames)
    except TypeError:
        raise MessageError(f"expected a sequence of frames, got {type(frames).__name__}") from None
    if not frames:
        raise MessageError("empty message: no header frame")

    head = _byte_view(frames[0], "header frame")
    header_limit = min(max_bytes, MAX_HEADER_BYTES)
    if head.nbytes > header_limit:
        raise MessageError(
            f"message too large: header frame is {head.nbytes} bytes, limit {header_limit}"
        )
    header = _check_header(_unpack_header(head))

    if expect_run is not None and header.run != expect_run:
        raise MessageError(f"run id mismatch: got {header.run!r}, expected {expect_run!r}")

    declared = head.nbytes + sum(s.nbytes for s in header.specs)
    if declared > max_bytes:
        raise MessageError(f"message too large: declares {declared} bytes, limit {max_bytes}")

    n_declared, n_frames = len(header.specs), len(frames) - 1
    if n_frames < n_declared:
        raise MessageError(
            f"missing frame: header declares {n_declared} tensors, got {n_frames} tensor frames"
        )
    if n_frames > n_declared:
        raise MessageError(
            f"extra frame: header declares {n_declared} tensors, got {n_frames} tensor frames"
        )

    views = []
    for i, (spec, frame) in enumerate(zip(header.specs, frames[1:]), start=1):
        view = _byte_view(frame, f"frame {i}")
        if header.codec is not None and view.nbytes < spec.nbytes:
            view = memoryview(_decompress(view, spec, header.codec, f"frame {i} (tensor {spec.name!r})"))
        if view.nbytes != spec.nbytes:
            problem = "truncated" if view.nbytes < spec.nbytes else "too long"
            raise MessageError(
                f"frame {i} (tensor {spec.name!r}) is {problem}: length mismatch, "
                f"{view.nbytes} bytes but {spec.dtype}{list(spec.shape)} needs {spec.nbytes}"
            )
        views.append(view)

    tensors = {spec.name: _to_tensor(view, spec) for spec, view in zip(header.specs, views)}
    return Message(
        run=header.run,
        src=header.src,
        rnd=header.rnd,
        kind=header.kind,
        tensors=tensors,
        meta=dict(header.meta),
    )


def from_bytes(
    data: bytes | bytearray | memoryview,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    expect_run: str | None = None,
) -> Message:
    """Inverse of ``to_bytes``, with the same validation as ``decode``."""
    view = _byte_view(data, "data")
    size = view.nbytes
    if size < _COUNT.size:
        raise MessageError(f"truncated: {size} bytes, too short for the frame count")
    (count,) = _COUNT.unpack_from(view, 0)
    if count == 0:
        raise MessageError("empty message: no header frame")
    if count > MAX_TENSORS + 1:
        raise MessageError(f"declares {count} frames, limit {MAX_TENSORS + 1}")
    offset = _COUNT.size
    frames = []
    for i in range(count):
        if size - offset < _LENGTH.size:
            raise MessageError(f"truncated: frame {i} of {count} has no length prefix")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if length > size - offset:
            raise MessageError(
                f"truncated: frame {i} declares {length} bytes, only {size - offset} remain"
            )
        frames.append(view[offset : offset + length])
        offset += length
    if offset != size:
        raise MessageError(f"{size - offset} trailing bytes after the last frame")
    return decode(frames, max_bytes=max_bytes, expect_run=expect_run)
