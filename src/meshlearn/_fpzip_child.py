"""Decodes fpzip streams for meshlearn.codecs in a process of its own.

fpzip's reader takes no input length and divides by values a crafted stream can make zero, so a
hostile frame could crash or corrupt the process decoding it. This script runs apart (numpy and
fpzip only; started with ``python -I``): a frame that kills it costs the frame, not the node.

Requests on stdin: ``<BQQ`` (1 for float64, value count, stream length), then the stream.
Replies on stdout: ``b"\\0"`` and exactly count values, or ``b"\\1"``, ``<H`` and a message.
"""

import struct
import sys

import fpzip

REQUEST = struct.Struct("<BQQ")


def reply_error(out, message: str) -> None:
    data = message.encode()[:1000]
    out.write(b"\1" + struct.pack("<H", len(data)) + data)


def main() -> None:
    stdin, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(REQUEST.size)
        if len(head) < REQUEST.size:
            return
        double, count, length = REQUEST.unpack(head)
        width = 64 if double else 32
        # The reader consumes at most 4 bytes per range-decoder call: 4 to start, 16 calls for
        # the header and 1 + width/16 per value. Zeros past the stream bound what it can read.
        padded = bytearray(max(length, 4 * (1 + 16 + (1 + width // 16) * count)))
        stdin.readinto(memoryview(padded)[:length])
        try:
            values = fpzip.decompress(bytes(padded), order="C").ravel()
        except fpzip.FpzipError as e:
            reply_error(out, str(e))
        else:
            if values.size != count:
                reply_error(out, f"holds {values.size} values")
            else:
                out.write(b"\0" + values.astype("<f8" if double else "<f4", copy=False).tobytes())
        out.flush()


if __name__ == "__main__":
    main()
