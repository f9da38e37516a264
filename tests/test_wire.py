"""Tests for the node-to-node wire format."""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshlearn import wire
from meshlearn.wire import (
    ALLOWED_DTYPES,
    DEFAULT_MAX_BYTES,
    PROTOCOL_VERSION,
    Message,
    MessageError,
    decode,
    encode,
    from_bytes,
    header_nbytes,
    message_nbytes,
    payload_nbytes,
    to_bytes,
)

TORCH_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}


def raw(t: torch.Tensor) -> bytes:
    """Bit pattern of a tensor, so NaNs and -0.0 compare exactly."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def assert_same(a: Message, b: Message) -> None:
    assert (a.run, a.src, a.rnd, a.kind, a.meta) == (b.run, b.src, b.rnd, b.kind, b.meta)
    assert list(a.tensors) == list(b.tensors)
    for name in a.tensors:
        x, y = a.tensors[name], b.tensors[name]
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        assert raw(x) == raw(y), name


def make_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000), shape, generator=g, dtype=dtype)


def sample_message(**kw) -> Message:
    tensors = {
        "layer.weight": make_tensor(torch.float32, (3, 4), 1),
        "layer.bias": make_tensor(torch.float32, (4,), 2),
        "steps": torch.tensor(7, dtype=torch.int64),
        "mask": make_tensor(torch.bool, (5,), 3),
    }
    fields = dict(run="run-1", src=3, rnd=12, kind="model", tensors=tensors, meta={"seed": 42})
    fields.update(kw)
    return Message(**fields)


def good_frames(msg: Message | None = None) -> list[bytes]:
    return [bytes(f) for f in encode(msg or sample_message())]


def header_of(frames) -> dict:
    return msgpack.unpackb(frames[0], raw=False)


def with_header(frames, header: dict) -> list[bytes]:
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def rejects(frames, match: str, **kw) -> None:
    with pytest.raises(MessageError, match=match):
        decode(frames, **kw)


# ---------------------------------------------------------------------------
# round trips


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("dtype", sorted(ALLOWED_DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (2, 0, 3), (5,), (2, 3, 4)])
def test_round_trip_every_dtype_and_shape(dtype, shape):
    msg = Message("r", 0, 1, "model", {"t": make_tensor(TORCH_DTYPES[dtype], shape)})
    frames = encode(msg)
    assert_same(msg, decode(frames))
    assert_same(msg, decode([bytes(f) for f in frames]))
    assert_same(msg, decode([bytearray(f) for f in frames]))
    assert_same(msg, from_bytes(to_bytes(msg)))
    assert_same(msg, from_bytes(bytearray(to_bytes(msg))))


def test_bfloat16_bits_survive():
    t = torch.tensor([1.5, -0.0, float("inf"), float("nan"), 3.0e38], dtype=torch.bfloat16)
    out = decode(encode(Message("r", 0, 0, "model", {"b": t}))).tensors["b"]
    assert out.dtype == torch.bfloat16
    assert raw(out) == raw(t)


def test_all_dtypes_in_one_message_preserve_order_and_meta():
    tensors = {
        f"t_{d}": make_tensor(TORCH_DTYPES[d], (3, 2), i)
        for i, d in enumerate(sorted(ALLOWED_DTYPES))
    }
    meta = {"seed": -5, "ratio": 0.25, "mode": "topk", "flag": True, "big": 2**64 - 1}
    msg = Message("run", 7, 9, "model", dict(reversed(list(tensors.items()))), meta)
    out = decode(encode(msg))
    assert_same(msg, out)
    assert type(out.meta["flag"]) is bool and type(out.meta["seed"]) is int


def test_empty_tensor_dict_and_no_meta():
    msg = Message("", 0, 0, "ping", {})
    out = decode(encode(msg))
    assert out.tensors == {} and out.meta == {}
    assert len(encode(msg)) == 1


def test_noncontiguous_grad_and_parameter_tensors_encode():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    p = torch.nn.Parameter(torch.randn(3, 3))
    msg = Message("r", 1, 2, "model", {"t": base.T, "s": base[:, ::2], "p": p})
    out = decode(encode(msg))
    assert torch.equal(out.tensors["t"], base.T)
    assert torch.equal(out.tensors["s"], base[:, ::2])
    assert torch.equal(out.tensors["p"], p.detach())
    assert not out.tensors["p"].requires_grad


def test_numpy_scalars_in_fields_are_accepted():
    meta = {"seed": np.int64(9), "x": np.float32(0.5)}
    msg = Message("r", np.int64(2), np.int32(3), "model", {}, meta)
    out = decode(encode(msg))
    assert (out.src, out.rnd, out.meta) == (2, 3, {"seed": 9, "x": 0.5})


# ---------------------------------------------------------------------------
# zero copy and ownership


def test_encode_frames_alias_tensor_memory():
    t = torch.zeros(8, dtype=torch.float32)
    frames = encode(Message("r", 0, 0, "model", {"t": t}))
    assert isinstance(frames[1], memoryview)
    t[0] = 1.5
    assert np.frombuffer(frames[1], dtype="<f4")[0] == 1.5


def test_decode_of_writable_frames_is_zero_copy():
    frames = [bytearray(f) for f in encode(Message("r", 0, 0, "model", {"t": torch.zeros(4)}))]
    out = decode(frames).tensors["t"]
    frames[1][0:4] = struct.pack("<f", 2.5)
    assert out[0].item() == 2.5


@pytest.mark.filterwarnings("error")
def test_decode_of_immutable_frames_gives_owned_writable_tensors():
    frames = good_frames()
    out = decode(frames)
    for t in out.tensors.values():
        assert t.numpy().flags.writeable
    out.tensors["layer.bias"].add_(1.0)  # must not touch the bytes frame
    expected = sample_message().tensors["layer.bias"]
    assert torch.equal(decode(frames).tensors["layer.bias"], expected)


def test_misaligned_writable_buffer_is_copied_to_aligned_memory():
    msg = Message("r", 0, 0, "model", {"x": make_tensor(torch.float64, (5,))})
    data = bytearray(to_bytes(msg))
    out = from_bytes(data).tensors["x"]
    assert out.data_ptr() % 8 == 0
    assert_same(msg, Message("r", 0, 0, "model", {"x": out}))


# ---------------------------------------------------------------------------
# sizes


def test_message_nbytes_matches_encoded_size():
    for msg in [sample_message(), Message("", 0, 0, "x", {}), sample_message(meta={})]:
        frames = encode(msg)
        assert message_nbytes(msg) == sum(len(f) for f in frames)
        assert header_nbytes(msg) == len(frames[0])
        assert payload_nbytes(msg) == sum(len(f) for f in frames[1:])
        assert len(to_bytes(msg)) == message_nbytes(msg) + 4 + 8 * len(frames)


def test_header_is_small_and_reported_separately():
    msg = sample_message()
    assert len(msg.tensors) == 4
    assert header_nbytes(msg) < 200
    assert payload_nbytes(msg) == (12 + 4) * 4 + 8 + 5


def test_sizes_do_not_need_tensor_memory():
    msg = Message("r", 0, 0, "model", {"w": torch.empty(1000, 1000, device="meta")})
    assert payload_nbytes(msg) == 4_000_000
    assert message_nbytes(msg) == header_nbytes(msg) + 4_000_000


# ---------------------------------------------------------------------------
# malformed input: each rejected with a specific reason


def test_truncated_frame():
    frames = good_frames()
    frames[1] = frames[1][:-3]
    rejects(frames, r"frame 1 \(tensor 'layer.weight'\) is truncated")


def test_frame_too_long():
    frames = good_frames()
    frames[2] = frames[2] + b"\0"
    rejects(frames, r"frame 2 .* too long")


def test_extra_frame():
    rejects(good_frames() + [b"\0" * 4], "extra frame")


def test_missing_frame():
    rejects(good_frames()[:-1], "missing frame")


def test_no_frames():
    rejects([], "no header frame")


def test_single_buffer_instead_of_frames():
    rejects(to_bytes(sample_message()), "single buffer")


def test_wrong_version():
    frames = good_frames()
    h = header_of(frames)
    h["v"] = 2
    rejects(with_header(frames, h), r"unsupported protocol version 2, expected 1")


def test_wrong_version_is_reported_even_if_other_keys_changed():
    frames = good_frames()
    h = header_of(frames)
    h["v"] = 7
    h["newfield"] = 1
    rejects(with_header(frames, h), "unsupported protocol version 7")


def test_wrong_run_id():
    frames = good_frames()
    assert decode(frames, expect_run="run-1").run == "run-1"
    rejects(frames, r"run id mismatch: got 'run-1', expected 'other'", expect_run="other")


def test_unknown_dtype():
    frames = good_frames()
    h = header_of(frames)
    h["dtypes"][0] = "complex64"
    rejects(with_header(frames, h), r"unknown dtype 'complex64'")


def test_negative_dim():
    frames = good_frames()
    h = header_of(frames)
    h["shapes"][0] = [-3, -4]
    rejects(with_header(frames, h), "negative dim")


def test_shape_length_mismatch():
    frames = good_frames()
    h = header_of(frames)
    h["shapes"][0] = [4, 4]  # frame still holds 3*4 floats
    rejects(with_header(frames, h), "length mismatch")


def test_oversized_rejected_before_allocating(monkeypatch):
    def no_alloc(*a, **k):
        raise AssertionError("allocated for an oversized message")

    monkeypatch.setattr(wire, "_to_tensor", no_alloc)
    monkeypatch.setattr(np, "frombuffer", no_alloc)
    h = header_of(good_frames(Message("r", 0, 0, "model", {"x": torch.zeros(1)})))
    h["shapes"] = [[1 << 40]]
    rejects(with_header([b"", b"\0" * 4], h), "message too large")
    # the same check applies to honest messages above a caller's limit
    frames = good_frames()
    rejects(frames, "message too large", max_bytes=sum(map(len, frames)) - 1)


def test_max_bytes_boundary_is_inclusive():
    frames = good_frames()
    assert decode(frames, max_bytes=sum(map(len, frames))).run == "run-1"


def test_header_not_a_map():
    frames = good_frames()
    rejects([msgpack.packb([1, 2, 3]), *frames[1:]], "header is not a msgpack map")


def test_header_with_extra_key():
    frames = good_frames()
    h = header_of(frames)
    h["extra"] = 1
    rejects(with_header(frames, h), r"unknown keys \['extra'\]")


def test_header_with_missing_key():
    frames = good_frames()
    h = header_of(frames)
    del h["rnd"]
    rejects(with_header(frames, h), r"missing keys \['rnd'\]")


def test_non_msgpack_garbage():
    frames = good_frames()
    rejects([b"\xc1\xc1garbage", *frames[1:]], "not valid msgpack")
    rejects([frames[0] + b"\x00", *frames[1:]], "not valid msgpack")  # trailing bytes
    rejects([frames[0][:-2], *frames[1:]], "not valid msgpack")  # cut header


def test_header_field_types():
    frames = good_frames()
    cases = [
        ("src", "3", "src must be an int"),
        ("rnd", True, "rnd must be an int"),
        ("run", 5, "run id must be a str"),
        ("kind", "", "kind must be non-empty"),
        ("names", "abc", "names must be a list"),
        ("meta", [1], "'meta' must be a map"),
        ("meta", {"k": [1, 2]}, r"meta\['k'\] must be int, float, str or bool"),
        ("meta", {f"k{i}": i for i in range(65)}, "meta has 65 entries"),
        ("v", "1", "protocol version must be an int"),
    ]
    for key, value, reason in cases:
        h = header_of(frames)
        h[key] = value
        rejects(with_header(frames, h), reason)


def test_names_must_be_unique_non_empty_strings():
    frames = good_frames()
    for names, reason in [
        (["a", "a", "b", "c"], "duplicate tensor name 'a'"),
        (["a", "", "b", "c"], "tensor name must be non-empty"),
        (["a", 1, "b", "c"], "tensor name must be a str"),
    ]:
        h = header_of(frames)
        h["names"] = names
        rejects(with_header(frames, h), reason)


def test_list_lengths_must_agree():
    frames = good_frames()
    h = header_of(frames)
    h["dtypes"] = h["dtypes"][:-1]
    rejects(with_header(frames, h), "4 names, 3 dtypes and 4 shapes")


def test_bad_shapes():
    frames = good_frames(Message("r", 0, 0, "model", {"x": torch.zeros(0)}))
    for shape, reason in [
        ([1.5], "non-integer dim"),
        ([True], "non-integer dim"),
        (5, "must be a list"),
        ([1] * 33, "33 dims"),
        ([0, 1 << 62, 4], "impossibly large shape"),
    ]:
        h = header_of(frames)
        h["shapes"] = [shape]
        rejects(with_header(frames, h), reason)


def test_bool_bytes_other_than_zero_one():
    frames = good_frames(Message("r", 0, 0, "model", {"m": torch.ones(3, dtype=torch.bool)}))
    frames[1] = b"\x01\x02\x00"
    rejects(frames, "bool tensor 'm' holds bytes other than 0 and 1")


def test_duplicate_keys_in_header_map():
    frames = good_frames()
    packed = bytearray(frames[0])
    # fixmap with one more entry, then append a second 'v'
    assert packed[0] & 0xF0 == 0x80
    packed[0] += 1
    packed += msgpack.packb("v") + msgpack.packb(1)
    rejects([bytes(packed), *frames[1:]], "duplicate keys")


def test_non_buffer_frames():
    frames = good_frames()
    rejects([frames[0], "text", *frames[2:]], "not a bytes-like object")
    rejects(12, "sequence of frames")


def test_from_bytes_truncated_and_garbage():
    data = to_bytes(sample_message())
    assert_same(sample_message(), from_bytes(data))
    for cut in [0, 2, 4, 10, 12, 40, len(data) - 1]:
        with pytest.raises(MessageError, match="truncated"):
            from_bytes(data[:cut])
    with pytest.raises(MessageError, match="trailing bytes"):
        from_bytes(data + b"\0")
    with pytest.raises(MessageError, match="no header frame"):
        from_bytes(b"\0\0\0\0")
    with pytest.raises(MessageError, match=r"declares 4294967295 frames"):
        from_bytes(b"\xff\xff\xff\xff" + b"\0" * 16)
    with pytest.raises(MessageError):
        from_bytes(b"this is not a message at all")
    with pytest.raises(MessageError, match="not a bytes-like object"):
        from_bytes("text")  # type: ignore[arg-type]


def test_from_bytes_applies_decode_checks():
    data = to_bytes(sample_message())
    with pytest.raises(MessageError, match="run id mismatch"):
        from_bytes(data, expect_run="x")
    with pytest.raises(MessageError, match="message too large"):
        from_bytes(data, max_bytes=10)


def test_message_error_is_value_error():
    assert issubclass(MessageError, ValueError)
    assert DEFAULT_MAX_BYTES == 1 << 30 and PROTOCOL_VERSION == 1


# ---------------------------------------------------------------------------
# encode refuses what a receiver would refuse


@pytest.mark.parametrize(
    "kw, exc, reason",
    [
        (dict(tensors={"c": torch.zeros(2, dtype=torch.complex64)}), ValueError, "complex64"),
        (dict(tensors={"x": [1.0]}), TypeError, "not a torch.Tensor"),
        (dict(tensors={"": torch.zeros(1)}), ValueError, "tensor name must be non-empty"),
        (dict(tensors={1: torch.zeros(1)}), ValueError, "tensor name must be a str"),
        (dict(tensors={"s": torch.zeros(2).to_sparse()}), ValueError, "only dense"),
        (dict(meta={"k": [1]}), ValueError, "must be int, float, str or bool"),
        (dict(meta={f"k{i}": i for i in range(65)}), ValueError, "65 entries"),
        (dict(meta={"k": 1 << 64}), ValueError, "does not fit in 64 bits"),
        (dict(src="3"), ValueError, "src must be an int"),
        (dict(kind=""), ValueError, "kind must be non-empty"),
        (dict(run="\ud800"), ValueError, "not valid UTF-8"),
    ],
)
def test_encode_rejects_invalid_messages(kw, exc, reason):
    msg = sample_message(**kw)
    with pytest.raises(exc, match=reason):
        encode(msg)
    with pytest.raises(exc, match=reason):
        message_nbytes(msg)


# ---------------------------------------------------------------------------
# properties

def text_st(**kw):
    return st.text(st.characters(codec="utf-8"), **kw)


names_st = text_st(min_size=1, max_size=20)
shape_st = st.lists(st.integers(0, 4), max_size=4)
scalar_st = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.booleans(),
    text_st(max_size=30),
)


@st.composite
def tensors_st(draw):
    names = draw(st.lists(names_st, max_size=6, unique=True))
    out = {}
    for name in names:
        dtype = TORCH_DTYPES[draw(st.sampled_from(sorted(ALLOWED_DTYPES)))]
        shape = tuple(draw(shape_st))
        itemsize = torch.empty((), dtype=dtype).element_size()
        n = int(np.prod(shape, dtype=np.int64))
        buf = bytearray(draw(st.binary(min_size=n * itemsize, max_size=n * itemsize)))
        if dtype == torch.bool:
            buf = bytearray(b & 1 for b in buf)
        if n == 0:
            t = torch.empty(shape, dtype=dtype)
        else:
            t = torch.frombuffer(buf, dtype=dtype).reshape(shape)
        out[name] = t
    return out


@st.composite
def messages_st(draw):
    return Message(
        run=draw(text_st(max_size=40)),
        src=draw(st.integers(-(2**63), 2**64 - 1)),
        rnd=draw(st.integers(0, 2**40)),
        kind=draw(text_st(min_size=1, max_size=10)),
        tensors=draw(tensors_st()),
        meta=draw(st.dictionaries(text_st(min_size=1, max_size=10), scalar_st, max_size=8)),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages_st())
def test_property_random_messages_round_trip(msg):
    frames = encode(msg)
    assert message_nbytes(msg) == sum(len(f) for f in frames)
    assert_same(msg, decode(frames, expect_run=msg.run))
    assert_same(msg, decode([bytes(f) for f in frames]))
    assert_same(msg, from_bytes(to_bytes(msg)))


def decode_frames_of(data: bytes) -> list[bytes]:
    (count,) = struct.unpack_from("<I", data, 0)
    off, frames = 4, []
    for _ in range(count):
        (n,) = struct.unpack_from("<Q", data, off)
        frames.append(data[off + 8 : off + 8 + n])
        off += 8 + n
    return frames


FUZZ_BASE = to_bytes(
    Message(
        "fuzz",
        1,
        2,
        "model",
        {
            "w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
            "b": torch.tensor([1.0, 2.0], dtype=torch.bfloat16),
            "m": torch.tensor([True, False]),
            "i": torch.tensor(5, dtype=torch.int64),
        },
        {"seed": 3},
    )
)

mutation_st = st.one_of(
    st.tuples(st.just("set"), st.integers(0, len(FUZZ_BASE) - 1), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, len(FUZZ_BASE)), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, len(FUZZ_BASE)), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, len(FUZZ_BASE) - 1), st.just(0)),
)


def mutate(data: bytearray, ops) -> bytearray:
    for op, pos, val in ops:
        pos = min(pos, len(data))
        if op == "set" and pos < len(data):
            data[pos] = val
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data.insert(pos, val)
        elif op == "delete" and pos < len(data):
            del data[pos]
    return data


def check_valid_or_rejected(decode_it) -> None:
    try:
        msg = decode_it()
    except MessageError:
        return
    # Anything accepted must be a well-formed message that re-encodes.
    assert isinstance(msg, Message)
    assert all(isinstance(t, torch.Tensor) for t in msg.tensors.values())
    assert_same(msg, decode(encode(msg)))


@settings(max_examples=300, deadline=None)
@given(st.lists(mutation_st, min_size=1, max_size=4), st.booleans())
def test_fuzz_single_buffer_mutations(ops, writable):
    data = mutate(bytearray(FUZZ_BASE), ops)
    check_valid_or_rejected(lambda: from_bytes(data if writable else bytes(data)))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 4),  # which frame
            st.sampled_from(["set", "cut", "insert", "delete"]),
            st.integers(0, 200),
            st.integers(0, 255),
        ),
        max_size=4,
    ),
    st.sampled_from(["none", "drop", "dup", "swap"]),
)
def test_fuzz_frame_mutations(ops, frame_op):
    frames = [bytearray(f) for f in decode_frames_of(FUZZ_BASE)]
    for idx, op, pos, val in ops:
        mutate(frames[idx], [(op, pos, val)])
    if frame_op == "drop":
        frames.pop(1)
    elif frame_op == "dup":
        frames.append(frames[-1])
    elif frame_op == "swap":
        frames[1], frames[2] = frames[2], frames[1]
    check_valid_or_rejected(lambda: decode([bytes(f) for f in frames]))


# ---------------------------------------------------------------------------
# lossless stage


def compressible_message() -> Message:
    return sample_message(tensors={
        "zeros": torch.zeros(4096),                      # shrinks: sent compressed
        "noise": make_tensor(torch.float32, (64,), 5),   # does not shrink: sent raw
        "empty": torch.zeros(0),
        "scalar": torch.tensor(7, dtype=torch.int64),
    })


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_compressed_round_trip_and_exact_sizes(codec):
    msg = compressible_message()
    frames = encode(msg, codec)
    assert header_of(frames)["codec"] == codec
    assert len(frames[1]) < 4096 * 4 and len(frames[2]) == 64 * 4  # raw when compression does not help
    assert_same(msg, decode(frames))
    assert_same(msg, decode([bytes(f) for f in frames]))
    assert_same(msg, from_bytes(to_bytes(msg, codec)))
    assert message_nbytes(msg, codec) == sum(len(f) for f in frames)
    assert header_nbytes(msg, codec) == len(frames[0])
    assert [wire.tensor_frame_nbytes(t, codec) for t in msg.tensors.values()] == [len(f) for f in frames[1:]]
    assert "codec" not in header_of(encode(msg, "none")) and encode(msg, None)[0] == encode(msg)[0]


def test_decompression_bomb_is_rejected_by_its_declared_size():
    import zstandard

    frames = good_frames(compressible_message())
    bomb = zstandard.ZstdCompressor().compress(bytes(1 << 24))  # 16 MiB of zeros in a few hundred bytes
    h = header_of(frames)
    h["codec"] = "zstd"
    rejects(with_header([frames[0], bomb, *frames[2:]], h), "decompresses to 16777216 bytes, header declares 16384")
    h["shapes"][0] = [1 << 22]  # declaring the true size instead runs into max_bytes before decompressing
    rejects(with_header([frames[0], bomb, *frames[2:]], h), "message too large", max_bytes=1 << 20)


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_corrupt_or_mislabelled_compressed_frames_are_rejected(codec):
    frames = [bytes(f) for f in encode(compressible_message(), codec)]
    rejects([frames[0], frames[1][:-3], *frames[2:]], "frame 1")
    rejects([frames[0], b"\x00" * 20, *frames[2:]], "frame 1")
    raw = good_frames(compressible_message())
    rejects([raw[0], frames[1], *raw[2:]], "truncated")  # no codec in the header: a short frame is truncated
    h = header_of(frames)
    h["codec"] = "gzip"
    rejects(with_header(frames, h), "unknown codec 'gzip'")
    if codec == "zstd":
        rejects([frames[0], frames[1] + b"junk", *frames[2:]], "exactly one complete zstd frame")


def test_unknown_compression_is_refused_when_encoding():
    with pytest.raises(ValueError, match="unknown compression 'gzip'"):
        encode(sample_message(), "gzip")
