"""Random streams: the random draws of a run come from one key, ``[seed, stream, node, round]``.

A draw depends only on the experiment seed, its purpose (a ``Stream``), the node it belongs
to and the round, never on which engine, worker or process makes it; so engines agree on the
same seed, and results do not depend on placement. The purpose comes second in every key and
each purpose has its own number, so no two purposes can ever share a stream (as they could
when each module picked its own key shape). Parts a purpose does not use are 0; some purposes
append more parts (an exchange step, a message sequence number).

Two draws do not go through a key: the synthetic dataset's own ``seed`` option, a property
of the dataset rather than of the run (runs with different seeds see the same data), and the
retry seeds a random graph generator redraws a disconnected graph with, which it derives from
the seed it is given.

Plug-ins that need randomness take ``Stream.USER`` plus a number of their own (``user(k)``).
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = ["Stream", "key", "generator", "seed_of", "user"]

_MASK = 0xFFFFFFFFFFFFFFFF   # seeds are taken modulo 2**64 (SeedSequence needs non-negative entropy)


class Stream(IntEnum):
    """The purpose of a random stream; its number is the key's second part."""

    MINI_BATCH = 1        # a node's mini-batch order
    INITIAL_MODEL = 2     # a node's own initial model (model.same_init = false)
    RANDOM_K = 3          # random-k sparsification indices of a node in a round
    QUANTIZE = 4          # stochastic rounding of a node's quantized message in a round
    DP_NOISE = 5          # a node's DP-SGD noise
    PARTITION = 6         # the split of the training set (and its redraws)
    GRAPH = 7             # a round's random graph (dynamic topologies)
    EPIDEMIC_PEERS = 8    # the peers a node pushes to in a round (Epidemic Learning)
    CLIENTS = 9           # the clients a server samples in a round (FedAvg)
    LINK_LOSS = 10        # which messages an emulated network loses in a round
    EVAL_NODES = 11       # the nodes that are evaluated
    EVAL_SAMPLES = 12     # the test samples they are evaluated on
    SPEED = 13            # a node's compute speed (asynchronous simulator)
    PEERS = 14            # a node's choice of gossip partners (asynchronous algorithms)
    MESSAGE_LOSS = 15     # whether a node's asynchronous messages are lost
    BYZANTINE = 16        # which nodes are Byzantine (placement = 'random')
    ATTACK = 17           # an attacker's random draws in a round (e.g. Gaussian noise)
    LOCAL_TEST = 18       # the share of a node's samples held out as its local test set
    PEER_PROBE = 19       # the training samples a node scores its peers' models on (PENS)
    AVAILABILITY = 20     # who is online: per round (bernoulli), or a node's on/off spells (sessions)
    JWINS_BUDGET = 21     # the share of coefficients JWINS sends in a round
    VALIDATION = 22       # the samples held out as a validation set (a node's, or the test set's)
    PEER_SAMPLING = 23    # a node's peer-sampling view: its first contacts (round 0), its shuffles
    USER = 1000           # first number free for plug-ins: user(k) = USER + k


def user(k: int) -> int:
    """Stream number ``k`` (0, 1, ...) for a plug-in's own purpose."""
    return int(Stream.USER) + int(k)


def key(seed: int, stream: int, node: int = 0, rnd: int = 0, *extra: int) -> list[int]:
    """The key of one stream: ``[seed, stream, node, round, *extra]``."""
    return [int(seed) & _MASK, int(stream), int(node), int(rnd), *(int(e) for e in extra)]


def generator(seed: int, stream: int, node: int = 0, rnd: int = 0, *extra: int) -> np.random.Generator:
    """A numpy generator for the stream."""
    return np.random.default_rng(key(seed, stream, node, rnd, *extra))


def seed_of(seed: int, stream: int, node: int = 0, rnd: int = 0, *extra: int) -> int:
    """A 63-bit integer seed for the stream (for torch generators and graph generators)."""
    return int(np.random.SeedSequence(key(seed, stream, node, rnd, *extra)).generate_state(2, np.uint64)[0] >> 1)
