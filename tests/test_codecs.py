"""The Elias-gamma and fpzip stages: exact round trips, fpzip's lossy sizes, hostile frames."""

from __future__ import annotations

import fpzip
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlearn import codecs, wire
from meshlearn.sharing.compressors import Fpzip
from meshlearn.wire import Message, MessageError, decode, encode

from test_wire import assert_same, header_of, rejects, with_header


def message(**tensors) -> Message:
    return Message("run", 1, 2, "model", tensors, {"dst": 3})


def frames_of(msg: Message, codec: str) -> list[bytes]:
    return [bytes(f) for f in encode(msg, codec)]


# ---------------------------------------------------------------------------
# Elias gamma


def test_gamma_codes_are_the_textbook_ones():
    # 1 → 1, 2 → 010, 3 → 011, 4 → 00100, 9 → 0001001; then zero padding
    assert codecs.gamma_encode(np.array([1, 2, 3, 4, 9])) == bytes([0b10100110, 0b01000001, 0b00100000])
    assert codecs.gamma_decode(bytes([0b10100110, 0b01000001, 0b00100000]), 5, 31).tolist() == [1, 2, 3, 4, 9]


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(0, 2**31 - 1), min_size=1, max_size=300), st.sampled_from([torch.int32, torch.int64]))
def test_sorted_indices_round_trip_exactly(indices, dtype):
    idx = torch.tensor(sorted(indices), dtype=dtype)
    msg = message(indices=idx)
    frames = frames_of(msg, "elias")
    assert_same(msg, decode(frames))
    assert wire.message_nbytes(msg, "elias") == sum(len(f) for f in frames)


def test_elias_takes_sorted_indices_only_and_shrinks_them():
    rng = np.random.default_rng(0)
    idx = torch.from_numpy(np.sort(rng.choice(30_000, 1_500, replace=False)).astype(np.int16))
    msg = message(indices=idx, unsorted=idx.flip(0), values=torch.randn(1_500), negative=torch.tensor([-3, 4]))
    frames = frames_of(msg, "elias")
    assert header_of(frames)["codec"] == "elias"
    # gaps average 20: 9 bits against 16
    assert len(frames[1]) == len(codecs.gamma_encode(np.diff(idx.numpy(), prepend=-1))) < 0.6 * 2 * 1_500
    assert [len(f) for f in frames[2:]] == [2 * 1_500, 4 * 1_500, 2 * 8]  # not increasing / floats: raw
    assert_same(msg, decode(frames))


def test_hostile_elias_frames_are_rejected():
    idx = torch.arange(0, 4000, 4, dtype=torch.int32)
    frames = frames_of(message(indices=idx), "elias")
    body = frames[1]
    rejects([frames[0], body[: len(body) // 2]], "valid Elias-gamma codes, header declares 1000")
    rejects([frames[0], body + b"\x80"], "does not end with its last Elias-gamma code")
    rejects([frames[0], bytes(len(body))], "holds 0 valid Elias-gamma codes")   # zeros: no code ends
    too_long = codecs.gamma_encode(np.array([2**40] * 10))   # 81-bit codes for an int32 tensor
    rejects([frames[0], too_long], "valid Elias-gamma codes")
    h = header_of(frames)
    h["dtypes"], h["shapes"] = ["int16"], [[53]]   # three gaps of 2**14 reach past int16's range
    rejects(with_header([frames[0], codecs.gamma_encode(np.array([1] * 50 + [2**14] * 3))], h),
            "indices beyond int16")
    h["dtypes"], h["shapes"] = ["float32"], [[1000]]   # a short float frame is not an Elias frame
    rejects(with_header(frames, h), "elias does not compress float32 frames")


# ---------------------------------------------------------------------------
# fpzip


SPECIALS = [0.0, -0.0, float("inf"), float("-inf"), 1e-40, -3e-39, 3.4e38, 1.0, -2.5]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fpzip_is_lossless_on_any_floats(dtype):
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(5_000, generator=g, dtype=torch.float64).to(dtype) * 0.05,
                        torch.tensor(SPECIALS, dtype=dtype), torch.full((3,), float("nan"), dtype=dtype)])
    smooth = torch.arange(5_000, dtype=dtype) / 8   # compresses well
    msg = message(values=values, smooth=smooth, ids=torch.arange(3))
    frames = frames_of(msg, "fpzip")
    assert len(frames[2]) < 0.6 * smooth.numel() * smooth.element_size()
    assert len(frames[3]) == 3 * 8   # integers are not fpzip's
    assert_same(msg, decode(frames))
    assert wire.message_nbytes(msg, "fpzip") == sum(len(f) for f in frames)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=200), st.integers(0, 30))
def test_fpzip_is_exact_for_every_bit_pattern(words, cleared):
    """Any float32 bits, NaN payloads and denormals included, with the low ``cleared`` bits
    zero (the precision the encoder picks is then lower): decoded bit for bit."""
    bits = np.array(words, dtype=np.uint32) & np.uint32((0xFFFFFFFF << cleared) & 0xFFFFFFFF)
    msg = message(values=torch.from_numpy(bits.view(np.float32).copy()))
    assert_same(msg, decode(frames_of(msg, "fpzip")))


@pytest.mark.parametrize("precision", [4, 8, 12, 16, 20, 24, 32])
def test_the_fpzip_compressor_is_fpzips_lossy_mode(precision):
    """Rounded by the compressor and written by the wire stage, a model takes exactly the bytes
    and decodes to exactly the values of fpzip's own lossy mode at that precision."""
    x = torch.randn(20_000, generator=torch.Generator().manual_seed(precision)) * 0.1
    compressor = Fpzip(precision)
    compressor.setup(x.numel())
    rounded = compressor.decompress(compressor.compress(x[None], torch.tensor([0]), 1))[0]
    lossy = fpzip.compress(x.numpy(), precision=precision)
    frame = frames_of(message(values=rounded), "fpzip")[1]
    assert len(frame) == len(lossy) if precision < 32 else len(frame) <= len(lossy)
    assert np.array_equal(rounded.numpy(), fpzip.decompress(lossy).ravel())
    rel = ((rounded - x).abs() / x.abs()).max().item()
    assert rel < 2.0 ** (9 - precision)   # 8 exponent bits and the sign come first
    assert torch.equal(decode([frames_of(message(values=rounded), "fpzip")[0], frame]).tensors["values"], rounded)


def test_hostile_fpzip_frames_are_rejected_before_fpzip_reads_them():
    frames = frames_of(message(values=torch.arange(1000) / 8), "fpzip")
    longer = frames_of(message(values=torch.zeros(4000)), "fpzip")[1]   # a short stream of 4000 values
    rejects([frames[0], longer], r"dimensions \(4000, 1, 1, 1\); header declares float32\[1000\]")
    double = frames_of(message(values=torch.zeros(1000, dtype=torch.float64)), "fpzip")[1]
    rejects([frames[0], double], "type 1")
    rejects([frames[0], b"fpz" + bytes(40)], "not an fpzip stream")
    rejects([frames[0], frames[1][:10]], "fpzip header is truncated")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(24, 4000))
def test_fuzzed_fpzip_frames_decode_or_are_rejected_never_crash(edits, cut):
    """fpzip's reader has no input bound: truncated or altered streams must read only the
    zero padding the decoder gives it (a crash here would take the test process down)."""
    msg = message(values=torch.arange(-500, 500) / 64)
    frames = frames_of(msg, "fpzip")
    body = bytearray(frames[1][:cut])
    for pos, value in edits:
        if body:
            body[pos % len(body)] = value
    try:
        back = decode([frames[0], bytes(body)])
    except MessageError:
        return
    assert back.tensors["values"].shape == (1000,)


def test_a_stream_that_crashes_fpzips_reader_costs_only_its_frame():
    """About a quarter of randomly altered streams kill fpzip's reader (a division by zero):
    the frame is rejected, and the next one decodes in a fresh reader process."""
    msg = message(values=torch.arange(-500, 500) / 64)
    frames = frames_of(msg, "fpzip")
    rng = np.random.default_rng(0)
    crashes = 0
    for _ in range(40):
        body = bytearray(frames[1])
        for pos, value in zip(rng.integers(24, len(body), 3).tolist(), rng.integers(0, 256, 3).tolist()):
            body[pos] = value
        try:
            decode([frames[0], bytes(body)])
        except MessageError as e:
            crashes += "crashed fpzip's reader" in str(e)
        if crashes:
            break
    assert crashes
    assert_same(msg, decode(frames))


def test_unknown_and_unavailable_codecs_name_the_fix():
    with pytest.raises(ValueError, match="use one of none, elias, elias-fpzip, fpzip, lz4, zstd"):
        encode(message(x=torch.zeros(3)), "gzip")
