"""Robust aggregation rules: hand-computed cases, agreement with the mean where theory says so,
bounded influence of an outlier, and chunks of receivers giving the same as one at a time."""

from __future__ import annotations

import math
import typing

import numpy as np
import pytest
import torch

from meshlearn.aggregation.base import Mean
from meshlearn.aggregation.rules import Balance, ClippedGossip, CSPlus, Krum, Median, RemoveThenClip, TrimmedMean
from meshlearn.plugins import options_of
from meshlearn.sharing.base import Received, received_chunks


def chunk(own: list[list[float]], messages: list[list[list[float]]], self_weight: list[float] | None = None,
          weights: list[list[float]] | None = None) -> tuple[torch.Tensor, Received]:
    """Own models (b, P) and what b receivers got, padded to the largest count. Weights default
    to uniform over the own model and the messages (over the messages where self_weight is 0)."""
    b, k, size = len(messages), max(len(m) for m in messages), len(own[0])
    if self_weight is None:
        self_weight = [1 / (len(m) + 1) for m in messages]
    values, mask = torch.zeros(b, k, size), torch.zeros(b, k, dtype=torch.bool)
    senders, w = torch.full((b, k), -1, dtype=torch.int64), torch.zeros(b, k)
    for r, received in enumerate(messages):
        n = len(received)
        values[r, :n] = torch.tensor(received, dtype=torch.float32).reshape(n, size)
        mask[r, :n] = True
        senders[r, :n] = torch.arange(n)
        w[r, :n] = torch.tensor(weights[r]) if weights else (1 - self_weight[r]) / n
    return (torch.tensor(own, dtype=torch.float32),
            Received(torch.arange(b), senders, w, mask, values, torch.tensor(self_weight, dtype=torch.float32)))


def close(actual: torch.Tensor, expected: list[list[float]]) -> bool:
    return torch.allclose(actual, torch.tensor(expected, dtype=torch.float32), atol=1e-5)


def random_chunk(counts: list[int], size: int = 3, seed: int = 0, uniform: bool = True) -> tuple[torch.Tensor,
                                                                                                 Received]:
    """Random models; with ``uniform`` False, random positive weights summing to one per receiver."""
    rng = np.random.default_rng(seed)
    own = rng.normal(size=(len(counts), size)).tolist()
    messages = [rng.normal(size=(n, size)).tolist() for n in counts]
    if uniform:
        return chunk(own, messages)
    mix = [rng.dirichlet(np.ones(n + 1)).astype(np.float32) for n in counts]
    return chunk(own, messages, [float(m[0]) for m in mix], [m[1:].tolist() for m in mix])


ALL_RULES = [Median(), TrimmedMean(), Krum(), ClippedGossip(), ClippedGossip(delta=0.3), RemoveThenClip(),
             Balance(gamma=2.0, rounds=10), CSPlus()]


# --- no Byzantine input ------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ALL_RULES, ids=lambda rule: f"{rule.name}:{vars(rule)}")
def test_identical_models_give_the_model_back_as_float32(rule):
    model = [0.5, -2.0, 3.0]
    own, got = chunk([model] * 3, [[model] * 3, [model], [model] * 2], self_weight=[0.25, 0.5, 0.0])
    out = rule.aggregate(own.double(), got, rnd=3)
    assert out.dtype == torch.float32 and out.shape == (3, 3)
    assert close(out, [model] * 3)


@pytest.mark.parametrize("rule", [ClippedGossip(tau=math.inf), ClippedGossip(delta=0.0), RemoveThenClip(q=0),
                                  RemoveThenClip(q=0, tau=math.inf), CSPlus(b=0)],
                         ids=lambda rule: f"{rule.name}:{vars(rule)}")
def test_clipping_rules_without_removal_or_clipping_are_the_weighted_mean(rule):
    own, got = random_chunk([3, 1, 2], uniform=False)
    assert torch.allclose(rule.aggregate(own, got, 1), Mean().aggregate(own, got, 1), atol=1e-6)


@pytest.mark.parametrize("rule", [TrimmedMean(trim=0), Krum(f=0, m=4), Balance(gamma=1e6, alpha=0.25)],
                         ids=lambda rule: rule.name)
def test_set_rules_keeping_everything_are_the_mean_for_uniform_weights(rule):
    own, got = random_chunk([3, 3, 3])   # own weight 1/4 = alpha, as are the neighbours'
    assert torch.allclose(rule.aggregate(own, got, 1), Mean().aggregate(own, got, 1), atol=1e-6)


# --- hand-computed cases (three receivers, padding, one whose own weight is 0) ---------------------

SET_OWN = [[0, 0], [1, 1], [2, 0]]
SET_MESSAGES = [[[1, 0], [3, 0], [0, 4], [2, 2]], [[1, 3], [5, 1]], [[2, 1]]]


def test_median_takes_the_middle_value_and_the_mean_of_the_two_middle_ones():
    own, got = chunk(SET_OWN, SET_MESSAGES)
    # x: 0,0,1,2,3 → 1; y: 0,0,0,2,4 → 0 | x: 1,1,5; y: 1,1,3 | x: 2,2; y: (0 + 1) / 2
    assert close(Median().aggregate(own, got, 1), [[1, 0], [1, 1], [2, 0.5]])


def test_median_leaves_out_an_own_model_of_weight_zero():
    own, got = chunk(SET_OWN, SET_MESSAGES, self_weight=[0.2, 0.0, 0.5])
    assert close(Median().aggregate(own, got, 1), [[1, 0], [3, 2], [2, 0.5]])


def test_trimmed_mean_trims_fewer_where_there_are_too_few_values():
    own, got = chunk(SET_OWN, SET_MESSAGES)
    # x: drop 0 and 3 → mean(0,1,2); y: drop 0 and 4 → mean(0,0,2) | 3 values: the middle | 2 values: no trim
    assert close(TrimmedMean(trim=1).aggregate(own, got, 1), [[1, 2 / 3], [1, 1], [2, 0.5]])
    # trim 2 leaves the median of 5 values; 3 values trim 1, 2 values trim 0
    assert close(TrimmedMean(trim=2).aggregate(own, got, 1), [[1, 0], [1, 1], [2, 0.5]])
    assert close(TrimmedMean(trim=0).aggregate(own, got, 1), [[6 / 5, 6 / 5], [7 / 3, 5 / 3], [2, 0.5]])


KRUM_OWN = [[0, 0]]
KRUM_MESSAGES = [[[1, 0], [3, 0], [0, 4], [2, 2]]]


def test_krum_picks_the_lowest_score_and_multi_krum_averages_the_m_lowest():
    # squared distances: 01:1 02:9 03:16 04:8 12:4 13:17 14:5 23:25 24:5 34:8
    # f = 1, n = 5: 2 closest → scores 9, 5, 9, 24, 10
    own, got = chunk(KRUM_OWN, KRUM_MESSAGES)
    assert close(Krum(f=1, m=1).aggregate(own, got, 1), [[1, 0]])
    assert close(Krum(f=1, m=3).aggregate(own, got, 1), [[4 / 3, 0]])        # [1,0], [0,0], [3,0]
    assert close(Krum(f=1, m=4).aggregate(own, got, 1), [[6 / 4, 2 / 4]])    # ... and [2,2]
    # f = 0: 3 closest → scores 18, 10, 18, 41, 18; f = 3: at least 1 closest → 1, 1, 4, 8, 5
    assert close(Krum(f=0, m=1).aggregate(own, got, 1), [[1, 0]])
    assert close(Krum(f=3, m=2).aggregate(own, got, 1), [[0.5, 0]])


def test_krum_in_a_padded_chunk():
    own, got = chunk([[0, 0], [1, 1], [2, 0]], [[[1, 0], [3, 0], [0, 4], [2, 2]], [[1, 2], [5, 1], [2, 0]], [[2, 1]]],
                     self_weight=[0.2, 0.25, 0.0])
    # second: candidates [1,1] [1,2] [5,1] [2,0], f = 0 → 2 closest: 1+2, 1+5, 16+10, 2+5 → own;
    # third: own model not a candidate, the single message wins
    assert close(Krum(f=0, m=1).aggregate(own, got, 1), [[1, 0], [1, 1], [2, 1]])


CLIP_OWN = [[0, 0], [1, 1], [2, 0]]
CLIP_MESSAGES = [[[3, 4], [0, 1], [6, 8]], [[1, 3]], [[2, 3], [6, 0]]]   # distances 5, 1, 10 | 2 | 3, 4


def test_clipped_gossip_reference_radius_is_the_second_largest_distance():
    own, got = chunk(CLIP_OWN, CLIP_MESSAGES, self_weight=[0.25, 0.5, 0.0])
    # τ = 5: [6,8] → [3,4]; one message: τ = 2, nothing clipped; own weight 0: τ = 3, [4,0] → [3,0] around [2,0]
    assert close(ClippedGossip().aggregate(own, got, 1), [[1.5, 2.25], [1, 2], [3.5, 1.5]])


def test_clipped_gossip_with_a_fixed_radius():
    own, got = chunk(CLIP_OWN, CLIP_MESSAGES, self_weight=[0.25, 0.5, 0.0])
    # τ = 1: [3,4] → [.6,.8], [6,8] → [.6,.8] | [0,2] → [0,1] | [0,3] → [0,1], [4,0] → [1,0]
    assert close(ClippedGossip(tau=1).aggregate(own, got, 1), [[0.3, 0.65], [1, 1.5], [2.5, 0.5]])
    assert close(ClippedGossip(tau=0).aggregate(own, got, 1), CLIP_OWN)


def test_clipped_gossip_radius_from_the_clipped_weight_bound():
    own, got = chunk(CLIP_OWN, CLIP_MESSAGES, self_weight=[0.25, 0.5, 0.0])
    # δ = 1/4: clip the farthest only (as the reference rule) | messages of weight 1/2 > δ stay unclipped
    assert close(ClippedGossip(delta=0.25).aggregate(own, got, 1), [[1.5, 2.25], [1, 2], [4, 1.5]])
    # δ = 1/2: the two farthest → τ = 1 | the only message → τ = 0 | the farther, [4,0] → [3,0]
    assert close(ClippedGossip(delta=0.5).aggregate(own, got, 1), [[0.3, 0.65], [1, 1], [3.5, 1.5]])


def test_remove_then_clip_with_a_fixed_radius():
    own, got = chunk(CLIP_OWN, CLIP_MESSAGES, self_weight=[0.25, 0.5, 0.0])
    # remove [6,8], clip [3,4] to radius 2 → [1.2,1.6] | the only message removed | remove [6,0], [0,3] → [0,2]
    assert close(RemoveThenClip(q=1, tau=2).aggregate(own, got, 1), [[0.3, 0.65], [1, 1], [2, 1]])
    # q = 2 removes [6,8] and [3,4]; [0,1] is inside the radius
    assert close(RemoveThenClip(q=2, tau=2).aggregate(own, got, 1), [[0, 0.25], [1, 1], [2, 0]])


def test_remove_then_clip_adaptive_radius():
    # w_ii = 5/32; [0,3] 8/32, [6,8] 2/32, [0,-20] 17/32 (removed, δ = 17/32):
    # τ² = (8/32·9 + 2/32·100) / (17/32) = 16 → [6,8] is clipped to [2.4,3.2]
    own, got = chunk([[0, 0]], [[[0, 3], [6, 8], [0, -20]]], [5 / 32], [[8 / 32, 2 / 32, 17 / 32]])
    assert close(RemoveThenClip(q=1).aggregate(own, got, 1), [[0.15, 0.95]])
    # uniform weights: τ² = Σ kept d² / q ≥ every kept d², so only the removal acts
    own, got = chunk(CLIP_OWN, CLIP_MESSAGES)
    assert close(RemoveThenClip(q=1).aggregate(own, got, 1), [[0.75, 1.25], [1, 1], [2, 1]])


def test_balance_accepts_models_within_a_radius_that_shrinks_over_the_run():
    own = [[3, 4]]                                           # norm 5
    messages = [[[3, 6], [5, 4], [3, 1], [100, 100]]]        # distances 2, 2, 3, far
    rule = Balance(gamma=1.0, kappa=math.log(2), alpha=0.5, rounds=4)
    # round 4: radius 5·e^(−ln 2) = 2.5 → mean([3,6], [5,4]) = [4,5]
    assert close(rule.aggregate(*chunk(own, messages), 4), [[3.5, 4.5]])
    # round 0: radius 5 → [3,1] too → mean = [11/3, 11/3]
    assert close(rule.aggregate(*chunk(own, messages), 0), [[3 / 2 + 11 / 6, 2 + 11 / 6]])
    # defaults γ = 0.3, κ = 1: radius 1.5·e^(−1/4) ≈ 1.17 at round 1 of 4: nothing accepted
    assert close(Balance(rounds=4).aggregate(*chunk(own, messages), 1), own)


def test_balance_in_a_padded_chunk_centres_on_the_own_model_even_of_weight_zero():
    own, got = chunk([[3, 4], [0, 0], [0, 10]], [[[3, 6], [9, 9]], [[1, 1]], [[0, 11], [0, 13]]],
                     self_weight=[1 / 3, 0.5, 0.0])
    # radii 5·0.5, 0 (own norm 0), 10·0.5 → [3,6] | none | both
    rule = Balance(gamma=1.0, kappa=math.log(2), alpha=0.75, rounds=2)
    assert close(rule.aggregate(own, got, 2), [[3, 4.5], [0, 0], [0, 10.5]])


def test_cs_plus_clips_the_neighbours_carrying_twice_the_byzantine_weight():
    own, got = chunk(CLIP_OWN, CLIP_MESSAGES, self_weight=[0.25, 0.5, 0.0])
    # uniform 1/4, b = 1: the two farthest clipped at τ = 1 (distance of [0,1]) |
    # one message, weight 1/2 ≤ 2δ: own kept | own weight 0, both messages clipped to 0
    assert close(CSPlus(b=1).aggregate(own, got, 1), [[0.3, 0.65], [1, 1], [2, 0]])
    # w_ii = 1/2, four messages of 1/8 at distances 1, 2, 4, 8: δ = 1/8, cumulative ≤ 3/4 up to distance 2
    own, got = chunk([[0, 0]], [[[0, 1], [0, 2], [0, 4], [0, 8]]], [0.5], [[0.125] * 4])
    assert close(CSPlus(b=1).aggregate(own, got, 1), [[0, 0.875]])
    assert close(CSPlus(b=0).aggregate(own, got, 1), [[0, 15 / 8]])


# --- an outlier ----------------------------------------------------------------------------------

ROBUST = [Median(), TrimmedMean(trim=1), Krum(f=1), Krum(f=1, m=3), ClippedGossip(), ClippedGossip(delta=0.2),
          RemoveThenClip(q=1), Balance(gamma=2.0, rounds=10), CSPlus(b=1)]


@pytest.mark.parametrize("rule", ROBUST, ids=lambda rule: f"{rule.name}:{vars(rule)}")
def test_one_far_outlier_moves_robust_rules_by_a_bounded_amount(rule):
    rng = np.random.default_rng(3)
    own = rng.uniform(-1, 1, size=(2, 3)).tolist()
    honest = [rng.uniform(-1, 1, size=(4, 3)).tolist() for _ in range(2)]
    results, means = [], []
    for scale in (1e2, 1e6):
        outlier = [scale, -scale, scale]
        got = chunk(own, [honest[0] + [outlier], [outlier] + honest[1][:3]])
        results.append(rule.aggregate(*got, 1))
        means.append(Mean().aggregate(*got, 1))
    for out in results:
        assert out.abs().max() <= 2.0     # stays within the honest models' reach
    if not isinstance(rule, (ClippedGossip, CSPlus)):   # the outlier is left out altogether, not clipped
        assert torch.allclose(results[0], results[1], atol=1e-5)
    assert means[1].abs().max() > 1e5     # the mean follows the outlier


# --- vectorization -------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ALL_RULES + [ClippedGossip(tau=0.5), RemoveThenClip(q=2, tau=0.7), Krum(f=0, m=2)],
                         ids=lambda rule: f"{rule.name}:{vars(rule)}")
def test_a_chunk_gives_what_its_receivers_give_one_at_a_time(rule):
    rng = np.random.default_rng(7)
    models = torch.tensor(rng.normal(size=(8, 3)), dtype=torch.float32)
    senders_of = [[1, 2, 5], [0], [3, 6], [0, 1, 4, 7], [2], [1, 3], []]
    weights_of = [rng.dirichlet(np.full(len(s) + 1, 20.0)) for s in senders_of]   # unequal, near uniform
    weights_of[2] = np.array([0.0, 0.5, 0.5])                 # a receiver that does not weigh its own model
    indptr = np.cumsum([0] + [len(s) for s in senders_of])
    senders = np.concatenate(senders_of)
    weights = np.concatenate([w[1:] for w in weights_of]).astype(np.float32)
    self_weight = torch.tensor([w[0] for w in weights_of], dtype=torch.float32)
    own = models[:len(senders_of)]

    def run(chunk_nodes: int) -> torch.Tensor:
        parts = [rule.aggregate(own[got.rows], got, 2)
                 for got in received_chunks(indptr, senders, weights, self_weight, models, senders, chunk_nodes)]
        return torch.cat(parts)

    batched = run(3)
    assert torch.allclose(batched, run(1), atol=1e-6)
    assert torch.equal(batched[6], own[6])                     # received nothing: a row of padding
    assert not torch.allclose(batched, own, atol=1e-3)        # the rules did something


@pytest.mark.parametrize("rule", ALL_RULES + [ClippedGossip(tau=1.0)], ids=lambda rule: f"{rule.name}:{vars(rule)}")
def test_a_chunk_without_message_slots_keeps_its_models(rule):
    own = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    got = Received(torch.arange(2), torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0),
                   torch.zeros(2, 0, dtype=torch.bool), torch.zeros(2, 0, 2), torch.tensor([1.0, 0.0]))
    assert torch.equal(rule.aggregate(own, got, 1), own)


# --- options -------------------------------------------------------------------------------------

def test_options_are_described_and_default_as_documented():
    rules = (Median, TrimmedMean, Krum, ClippedGossip, RemoveThenClip, Balance, CSPlus)
    defaults = {rule.name: {o.name: o.default for o in options_of("aggregator", rule)} for rule in rules}
    assert defaults == {"median": {}, "trimmed_mean": {"trim": 1}, "krum": {"f": 1, "m": 1},
                        "clipped_gossip": {"tau": None, "delta": None}, "remove_then_clip": {"q": 1, "tau": None},
                        "balance": {"gamma": 0.3, "kappa": 1.0, "alpha": 0.5}, "cs_plus": {"b": 1}}
    options = [o for rule in rules for o in options_of("aggregator", rule)]
    assert all(o.description and o.annotation is not typing.Any for o in options)
