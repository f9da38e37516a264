"""Secure aggregation building blocks: masks cancel, messages look random, sums decode."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from meshlearn.privacy.secagg import (
    KEY_BYTES,
    FixedPoint,
    PairwiseMasks,
    aggregate_usable,
    expected_senders,
    generate_keys,
    public_bytes,
    public_keys,
)

RINGS = [32, 64]
# A fixed significance level: a truly uniform message fails it once in a million runs.
P_THRESHOLD = 1e-6


def random_in_neighbours(n: int, p: float, seed: int) -> dict[int, list[int]]:
    """A random directed graph as {receiver: senders}."""
    rng = np.random.default_rng(seed)
    links = rng.random((n, n)) < p
    return {i: [j for j in range(n) if links[i, j] and j != i] for i in range(n)}


def masked_messages(fp, masks, senders, receiver, models, weights, rnd=0):
    """What each sender of ``senders`` puts on the wire for ``receiver``: encode + mask."""
    size = models[senders[0]].numel()
    all_masks = masks.receiver_masks(receiver, senders, rnd, size)
    return {j: fp.add(fp.encode(models[j], weights[j]), all_masks[j]) for j in senders}


def byte_p_values(message: torch.Tensor, ring_bits: int) -> tuple[float, float]:
    """Chi-square p-values of the byte histogram and of the top-byte histogram."""
    raw = message.numpy()
    all_bytes = np.bincount(raw.view(np.uint8), minlength=256)
    unsigned = raw.view(np.uint32 if ring_bits == 32 else np.uint64)
    top = np.bincount((unsigned >> (ring_bits - 8)).astype(np.int64), minlength=256)
    return chisquare(all_bytes).pvalue, chisquare(top).pvalue


@pytest.mark.parametrize("ring_bits", RINGS)
def test_masks_cancel_exactly_on_random_graphs(ring_bits):
    n = 12
    keys = generate_keys(range(n))
    directory = public_keys(keys)
    fp = FixedPoint(ring_bits)
    batch = PairwiseMasks(keys, directory, ring_bits)  # one process hosting every node
    # two processes hosting half the nodes each, and one process per node
    halves = [PairwiseMasks({j: keys[j] for j in range(n) if j % 2 == h}, directory, ring_bits) for h in (0, 1)]
    alone = {j: PairwiseMasks({j: keys[j]}, directory, ring_bits) for j in range(n)}
    for seed in range(3):
        for receiver, senders in random_in_neighbours(n, 0.45, seed).items():
            if not senders:
                continue
            size = 40_000 if receiver == 0 else 257  # 40k elements span several keystream chunks
            together = batch.receiver_masks(receiver, senders, seed, size)
            assert sorted(together) == senders
            assert torch.equal(fp.sum(list(together.values())), torch.zeros(size, dtype=fp.dtype))
            assert torch.equal(fp.sum(torch.stack(list(together.values()))), torch.zeros(size, dtype=fp.dtype))
            split = {**halves[0].receiver_masks(receiver, senders, seed, size),
                     **halves[1].receiver_masks(receiver, senders, seed, size)}
            for j in senders:
                single = alone[j].mask(j, receiver, senders, seed, size)
                assert torch.equal(single, together[j]) and torch.equal(single, split[j])
            if len(senders) >= 2:
                assert not torch.equal(together[senders[0]], torch.zeros(size, dtype=fp.dtype))


def test_masks_are_fresh_per_receiver_and_round():
    keys = generate_keys(range(5))
    masks = PairwiseMasks(keys, public_keys(keys))
    base = masks.mask(1, 0, [1, 2, 3], 5, 64)
    assert not torch.equal(base, masks.mask(1, 0, [1, 2, 3], 6, 64))  # another round
    assert not torch.equal(base, masks.mask(1, 4, [1, 2, 3], 5, 64))  # another receiver
    assert not masks.mask(1, 0, [1], 5, 64).any()  # |S| = 1: no mask, nothing hidden (documented)


@pytest.mark.parametrize("ring_bits", RINGS)
def test_masked_messages_look_uniform_and_the_test_has_power(ring_bits):
    fp = FixedPoint(ring_bits)
    keys = generate_keys(range(5))
    masks = PairwiseMasks(keys, public_keys(keys), ring_bits)
    senders, size = [1, 2, 3], 4096
    for plain in (torch.zeros(size), torch.full((size,), 0.37)):
        message = masked_messages(fp, masks, senders, 0, {j: plain for j in senders}, {j: 0.25 for j in senders})[1]
        assert min(byte_p_values(message, ring_bits)) > P_THRESHOLD
        # the same statistic rejects the unmasked encoding at once
        assert max(byte_p_values(fp.encode(plain, 0.25), ring_bits)) < P_THRESHOLD
    # ... and an unmasked realistic model too
    model = torch.randn(size, generator=torch.Generator().manual_seed(0))
    assert min(byte_p_values(fp.encode(model, 0.25), ring_bits)) < P_THRESHOLD
    # ... and a subtle PRG bug: a mask whose top bit is always clear
    top_bit_clear = message & ((1 << (ring_bits - 1)) - 1)
    assert byte_p_values(top_bit_clear, ring_bits)[1] < P_THRESHOLD


@pytest.mark.parametrize("ring_bits", RINGS)
def test_decoded_sum_matches_float64_weighted_sum_within_resolution(ring_bits):
    fp = FixedPoint(ring_bits)
    generator = torch.Generator().manual_seed(1)
    senders, size = [2, 3, 5, 7, 11, 13, 17, 19, 23], 5000
    models = {j: 3 * torch.randn(size, generator=generator) for j in senders}
    weights = dict(zip(senders, torch.rand(len(senders), generator=generator, dtype=torch.float64).tolist()))
    keys = generate_keys(senders)
    masks = PairwiseMasks(keys, public_keys(keys), ring_bits)
    messages = masked_messages(fp, masks, senders, 0, models, weights, rnd=4)
    total = fp.sum(list(messages.values()))
    exact = sum(models[j].double() * weights[j] for j in senders)
    error = (fp.decode(total, dtype=torch.float64) - exact).abs().max().item()
    assert error <= fp.error_bound(len(senders)) + 1e-12
    assert error > 0 or ring_bits == 64  # rounding is real at 16 fraction bits
    as_float32 = fp.decode(total)
    assert as_float32.dtype == torch.float32
    float32_rounding = exact.abs().max().item() * 2.0 ** -24
    assert (as_float32.double() - exact).abs().max() <= fp.error_bound(len(senders)) + float32_rounding
    assert fp.clipped == 0


def test_encode_broadcasts_weights_over_receivers():
    fp = FixedPoint()
    model = torch.randn(100)
    weights = torch.tensor([0.1, 0.25, 0.5], dtype=torch.float64)
    rows = fp.encode(model, weights.unsqueeze(1))
    assert rows.shape == (3, 100) and rows.dtype == torch.int32
    for row, weight in zip(rows, weights.tolist()):
        assert torch.equal(row, fp.encode(model, weight))


@pytest.mark.parametrize("ring_bits", RINGS)
def test_clipping_is_counted_and_max_terms_sums_never_overflow(ring_bits):
    fp = FixedPoint(ring_bits, max_terms=4)
    inf, nan = float("inf"), float("nan")
    values = torch.tensor([10 * fp.limit, -10 * fp.limit, inf, nan, fp.limit, 0.5], dtype=torch.float64)
    term = fp.encode(values)
    assert fp.clipped == 4  # beyond the limit either way, inf, NaN; the limit itself is kept
    total = fp.decode(fp.sum(term.expand(4, -1)), dtype=torch.float64)
    expected = torch.tensor([4 * fp.limit, -4 * fp.limit, 4 * fp.limit, 0.0, 4 * fp.limit, 2.0], dtype=torch.float64)
    assert torch.equal(total, expected)
    assert fp.limit == pytest.approx(2.0 ** (ring_bits - 1 - fp.fraction_bits) / 4)
    # one term more than max_terms wraps around: the bound is what keeps sums exact
    assert fp.decode(fp.sum(term.expand(5, -1)), dtype=torch.float64)[0] < 0
    fp.encode(torch.zeros(3))
    assert fp.clipped == 4


def test_default_parameters():
    small, large = FixedPoint(), FixedPoint(64)
    assert (small.dtype, small.fraction_bits, small.max_terms) == (torch.int32, 16, 256)
    assert (large.dtype, large.fraction_bits, large.max_terms) == (torch.int64, 32, 256)
    assert small.limit == 128 - 2.0 ** -16 and small.resolution == 2.0 ** -16
    assert large.limit == pytest.approx(2.0 ** 23) and large.limit * 2 ** 32 * 256 < 2.0 ** 63
    assert small.error_bound(8) == 8 * 2.0 ** -17


@pytest.mark.parametrize("ring_bits", RINGS)
def test_keys_differ_between_runs_but_aggregates_do_not(ring_bits):
    senders, size = [1, 2, 4, 6], 300
    models = {j: torch.randn(size, generator=torch.Generator().manual_seed(j)) for j in senders}
    weights = {j: 0.2 for j in senders}
    runs = []
    for _ in range(2):
        keys = generate_keys(senders)
        fp = FixedPoint(ring_bits)
        messages = masked_messages(fp, PairwiseMasks(keys, public_keys(keys), ring_bits), senders, 0, models, weights)
        runs.append((public_keys(keys), messages, fp.decode(fp.sum(list(messages.values())))))
    (keys_a, messages_a, total_a), (keys_b, messages_b, total_b) = runs
    assert all(keys_a[j] != keys_b[j] and len(keys_a[j]) == KEY_BYTES for j in senders)
    assert not any(torch.equal(messages_a[j], messages_b[j]) for j in senders)
    assert torch.equal(total_a, total_b)


def test_dropped_sender_makes_the_round_unusable():
    fp = FixedPoint()
    keys = generate_keys(range(6))
    masks = PairwiseMasks(keys, public_keys(keys))
    senders = sorted(expected_senders([1, 2, 3, 5], departed=[5]))
    assert senders == [1, 2, 3]
    models = {j: torch.full((50,), float(j)) for j in senders}
    messages = masked_messages(fp, masks, senders, 0, models, {j: 0.3 for j in senders}, rnd=7)
    assert aggregate_usable(senders, messages.keys())
    delivered = {j: messages[j] for j in (1, 3)}  # sender 2 dropped
    assert not aggregate_usable(senders, delivered.keys())
    assert not aggregate_usable(senders, [1, 2, 3, 4])  # a sender outside S used another S
    # why: the partial sum is noise, not 0.3 * (1 + 3)
    partial = fp.decode(fp.sum(list(delivered.values())), dtype=torch.float64)
    assert (partial - 1.2).abs().max() > 1.0
    # later rounds exclude the departed sender and cancel again
    survivors = sorted(expected_senders(senders, departed=[2]))
    later = masked_messages(fp, masks, survivors, 0, models, {j: 0.3 for j in survivors}, rnd=8)
    decoded = fp.decode(fp.sum(list(later.values())), dtype=torch.float64)
    assert (decoded - 1.2).abs().max() <= fp.error_bound(2)


def test_public_keys_are_raw_32_bytes():
    keys = generate_keys([3, 4])
    assert public_keys(keys) == {3: public_bytes(keys[3]), 4: public_bytes(keys[4])}
    assert all(isinstance(raw, bytes) and len(raw) == KEY_BYTES for raw in public_keys(keys).values())


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match="ring_bits"):
        FixedPoint(16)
    with pytest.raises(ValueError, match="fraction_bits"):
        FixedPoint(32, fraction_bits=40)
    with pytest.raises(ValueError, match="fraction_bits=23 is too large.*at most 22"):
        FixedPoint(32, fraction_bits=23)
    assert FixedPoint(32, fraction_bits=22).limit >= 1
    with pytest.raises(ValueError, match="fraction_bits"):
        FixedPoint(64, fraction_bits=-1)
    with pytest.raises(ValueError, match="max_terms"):
        FixedPoint(32, max_terms=0)
    keys = generate_keys(range(3))
    directory = public_keys(keys)
    with pytest.raises(ValueError, match="ring_bits"):
        PairwiseMasks(keys, directory, ring_bits=16)
    with pytest.raises(ValueError, match="public key of node 1"):
        PairwiseMasks(keys, {**directory, 1: directory[1][:31]})
    with pytest.raises(ValueError, match="does not match"):
        PairwiseMasks(keys, {**directory, 1: directory[2]})
    masks = PairwiseMasks({1: keys[1]}, directory)
    with pytest.raises(ValueError, match="not in the sender set"):
        masks.mask(1, 0, [2], 0, 8)
    with pytest.raises(ValueError, match="not a local node"):
        masks.mask(2, 0, [1, 2], 0, 8)
    with pytest.raises(ValueError, match="own senders"):
        masks.mask(1, 2, [1, 2], 0, 8)
    with pytest.raises(ValueError, match="size"):
        masks.mask(1, 0, [1, 2], 0, -1)
    with pytest.raises(ValueError, match="dtype"):
        FixedPoint(64).decode(torch.zeros(3, dtype=torch.int32))
