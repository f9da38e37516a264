"""Random streams: one key layout, no two purposes sharing a stream."""

import itertools

import numpy as np

from meshlearn import streams
from meshlearn.streams import Stream


def test_purposes_never_share_a_stream():
    """Keys of different purposes differ whatever the node and round; the old per-module keys
    let the link-loss stream of round 1 equal node 4181's mini-batch stream."""
    seen = {}
    for stream, node, rnd in itertools.product(Stream, (0, 1, 4181), (0, 1, 2)):
        draws = tuple(streams.generator(7, stream, node, rnd).integers(2**62, size=4))
        assert draws not in seen, (stream, node, rnd, seen.get(draws))
        seen[draws] = (stream, node, rnd)
    assert streams.key(7, Stream.LINK_LOSS, 0, 1) != streams.key(7, Stream.MINI_BATCH, 4181, 1)


def test_streams_are_reproducible_and_seeds_fit_torch():
    a = streams.generator(3, Stream.MINI_BATCH, 5).random(3)
    assert np.array_equal(a, streams.generator(3, Stream.MINI_BATCH, 5).random(3))
    assert not np.array_equal(a, streams.generator(4, Stream.MINI_BATCH, 5).random(3))
    seed = streams.seed_of(-1, Stream.GRAPH, 0, 9)   # negative seeds are taken modulo 2**64
    assert 0 <= seed < 2**63
    assert streams.user(0) == Stream.USER and streams.user(3) > max(s for s in Stream if s != Stream.USER)
