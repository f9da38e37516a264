"""Secure aggregation among neighbours by pairwise masking (Bonawitz et al., CCS 2017).

A receiver i must learn only the weighted sum ``sum_j w_ij x_j`` of its senders' models,
never a single ``x_j``. Each sender j in the receiver's sender set S of round r sends

    (encode(w_ij x_j) + M_j) mod 2^k,   M_j = sum_{k in S, k != j} sign(j, k) PRG(s_jk, i, r)

with sign(j, k) = +1 if j < k else -1. Every pair stream is added once and subtracted once,
so ``sum_{j in S} M_j = 0`` exactly and the receiver decodes the ring sum of the messages.
The blocks here are pure and engine-independent; an engine wires them into its rounds.

Fixed point (``FixedPoint``)
    Values live in the ring Z_{2^k}, k in {32, 64}, stored in the signed torch dtype of that
    width: two's complement wrap-around is the ring addition and the signed value of a sum
    is its centred representative. A weighted value v = w x is encoded as
    q = round(v 2^f), f = ``fraction_bits`` (default 16 for k = 32, 32 for k = 64).

    Overflow bound: a sum of n <= T = ``max_terms`` terms decodes correctly iff
    |sum q| <= 2^(k-1) - 1, so every term is clipped to |q| <= Q = floor((2^(k-1) - 1) / T)
    (for k = 64 rounded down to a float64), i.e. |w x| <= ``limit`` = Q 2^-f, about
    2^(k-1-f) / T. Defaults (T = 256): k = 32 -> limit = 128 - 2^-16; k = 64 -> about 2^23.
    NaN and +-inf count as clipped (NaN encodes as 0); ``FixedPoint.clipped`` counts them.

    Resolution: the step is ``resolution`` = 2^-f and rounding moves each term by at most
    2^-(f+1), so a decoded sum of n terms is within n 2^-(f+1) of the float64 weighted sum
    (``error_bound(n)``; k = 32: 7.6e-6 per term, k = 64: 1.2e-10 per term), plus the
    float32 rounding of the output when decoding to float32.

Keys and masks (``PairwiseMasks``)
    Each node has an X25519 key pair from OS randomness; public keys are 32 raw bytes,
    published once in a directory of all nodes (the engine's launcher collects and sends
    it, as the server of Bonawitz et al. relays keys), so any two nodes that come to share
    a receiver, also on a graph that changes every round, can derive their secret. The pair
    secret s_jk is HKDF-SHA256 of the X25519 shared secret, with salt and info naming the
    scheme and both node ids in sorted order. PRG(s, i, r) is AES-128-CTR keyed by
    HKDF(s, info = scheme, i, r), so every (pair, receiver, round) has its own stream. The
    keystream is produced in 64 KiB chunks (one ``update_into`` each, read with
    ``np.frombuffer`` as little-endian ring elements) and added straight into the mask:
    chunks that stay in cache run 2-4x faster than one ``update(bytes(n))`` per stream.
    Measured on one core of the (busy) 2-core dev machine, cryptography 50 with AES-NI:
    5000-6000 MB/s of keystream accumulated into a mask, i.e. about 5 ms for a
    1M-parameter mask among 8 senders in Z_{2^32}; raw AES-128-CTR ``update`` of a 4 MiB
    stream ran at about 6000 MB/s, ChaCha20 at about 3700 MB/s. Masks cancel exactly, so
    aggregates never depend on the (random) keys.

    A process hosting many nodes calls ``PairwiseMasks.receiver_masks`` once per receiver:
    a stream shared by two local senders is generated once and used with both signs, and
    pair secrets are cached for the whole run.

Dropouts: abort and exclude
    If any sender of S fails to deliver to i in a round, the masks of the delivered
    messages do not cancel, so i discards that round's aggregate and keeps its own model
    (``aggregate_usable`` decides). Nodes known to have left are removed from S in later
    rounds (``expected_senders``), and all senders must use the same S. Abort is safe
    because nothing is ever unmasked: the receiver holds only messages masked by streams it
    cannot compute, and no seed or mask is revealed to help it. Streams are fresh per
    (pair, receiver, round), so masks are never reused; an engine must send at most one
    value per (sender, receiver, round), since two values masked alike leak their difference.

    Not implemented: Bonawitz's recovery, where senders Shamir-share their pair-key seeds
    (and a self mask, so a late message cannot be unmasked twice) and survivors reveal the
    shares of a dropped node so the receiver can remove its masks. It costs two extra
    message rounds, O(|S|^2) shares per receiver and a threshold assumption, whereas in
    decentralized learning skipping one round's mixing at one node is cheap.

Threat model and limits
    Honest-but-curious nodes. The directory relays public keys, so against an active relay
    the keys would need authentication (e.g. signatures), which is not done here. With a
    single sender (|S| = 1) the mask is zero and the "sum" is that sender's model: secure
    aggregation hides nothing there, and the engine should treat |S| < 2 as it sees fit.
    A receiver colluding with all but two senders learns the sum of those two.
"""

from __future__ import annotations

import numbers
import operator
import struct
from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "DEFAULT_FRACTION_BITS",
    "DEFAULT_MAX_TERMS",
    "KEY_BYTES",
    "RING_BITS",
    "FixedPoint",
    "PairwiseMasks",
    "aggregate_usable",
    "expected_senders",
    "generate_keys",
    "public_bytes",
    "public_keys",
]

KEY_BYTES = 32
"""Size of an X25519 public key on the wire."""

RING_BITS = (32, 64)
DEFAULT_FRACTION_BITS = {32: 16, 64: 32}
DEFAULT_MAX_TERMS = 256

_SCHEME = b"meshlearn/secagg/v1"
_PRG_KEY_BYTES = 16  # AES-128
_CHUNK_BYTES = 1 << 16
_ZEROS = memoryview(bytes(_CHUNK_BYTES))  # CTR "encrypts" zeros: the output is the keystream
# ring bits -> (signed torch dtype, unsigned numpy dtype, little-endian wire dtype)
_RINGS = {
    32: (torch.int32, np.dtype(np.uint32), np.dtype("<u4")),
    64: (torch.int64, np.dtype(np.uint64), np.dtype("<u8")),
}
_SIGNED_NUMPY = {32: np.dtype(np.int32), 64: np.dtype(np.int64)}


def _check_ring_bits(ring_bits) -> int:
    if isinstance(ring_bits, bool) or ring_bits not in RING_BITS:
        raise ValueError(f"ring_bits must be one of {RING_BITS}, got {ring_bits!r}")
    return int(ring_bits)


def _node(node) -> int:
    """Node ids are integers: they are packed into key-derivation labels."""
    try:
        return operator.index(node)
    except TypeError:
        raise ValueError(f"node ids must be integers, got {node!r}") from None


def _unsigned(t: torch.Tensor, ring_bits: int) -> np.ndarray:
    """Unsigned numpy view of a ring tensor: numpy defines unsigned wrap-around, C++ does not."""
    dtype = _RINGS[ring_bits][0]
    if t.dtype != dtype:
        raise ValueError(f"expected a ring tensor of dtype {dtype} (ring_bits={ring_bits}), got {t.dtype}")
    return t.detach().cpu().contiguous().numpy().view(_RINGS[ring_bits][1])


def _signed(a: np.ndarray, ring_bits: int) -> torch.Tensor:
    return torch.from_numpy(a.view(_SIGNED_NUMPY[ring_bits]))


class FixedPoint:
    """Fixed-point codec into Z_{2^k} whose sums of up to ``max_terms`` terms never overflow.

    ``clipped`` counts the coordinates clipped by ``encode`` since creation (reset it freely).
    Ring tensors live on the CPU: they are headed for the wire anyway.
    """

    def __init__(self, ring_bits: int = 32, fraction_bits: int | None = None,
                 max_terms: int = DEFAULT_MAX_TERMS):
        self.ring_bits = _check_ring_bits(ring_bits)
        if fraction_bits is None:
            fraction_bits = DEFAULT_FRACTION_BITS[self.ring_bits]
        if isinstance(max_terms, bool) or not isinstance(max_terms, numbers.Integral) or max_terms < 1:
            raise ValueError(f"max_terms must be a positive integer, got {max_terms!r}")
        if isinstance(fraction_bits, bool) or not isinstance(fraction_bits, numbers.Integral) or fraction_bits < 0:
            raise ValueError(f"fraction_bits must be a non-negative integer, got {fraction_bits!r}")
        fraction_bits, max_terms = int(fraction_bits), int(max_terms)
        q_max = ((1 << (self.ring_bits - 1)) - 1) // max_terms
        most_fraction_bits = q_max.bit_length() - 1  # keeps limit >= 1
        if fraction_bits > most_fraction_bits:
            raise ValueError(
                f"fraction_bits={fraction_bits} is too large for ring_bits={self.ring_bits} and "
                f"max_terms={max_terms}: the clip limit would fall below 1; use at most {most_fraction_bits}")
        self.fraction_bits = fraction_bits
        self.max_terms = max_terms
        self.dtype: torch.dtype = _RINGS[self.ring_bits][0]
        # Largest float64 that is <= q_max, so clamping in float64 can never exceed q_max.
        q_float = float(q_max)
        if int(q_float) > q_max:
            q_float = float(np.nextafter(q_float, 0.0))
        self._q_max = q_float
        self._scale = float(2 ** fraction_bits)
        self.limit: float = q_float / self._scale
        self.resolution: float = 2.0 ** -fraction_bits
        self.clipped = 0

    def __repr__(self) -> str:
        return (f"FixedPoint(ring_bits={self.ring_bits}, fraction_bits={self.fraction_bits}, "
                f"max_terms={self.max_terms})")

    def error_bound(self, terms: int) -> float:
        """Largest distance between a decoded sum of ``terms`` terms and the exact float64 sum."""
        return terms * self.resolution / 2

    def encode(self, x: torch.Tensor, weight: float | torch.Tensor = 1.0) -> torch.Tensor:
        """round(weight * x * 2^f) as ring elements, after clipping |weight * x| to ``limit``.

        ``weight`` broadcasts against ``x``: weights of shape (m, 1) and a model of shape (P,)
        give the m weighted copies a sender sends to m receivers.
        """
        # Scaling by 2^f is exact, so w 2^f x rounds exactly like (w x) 2^f: one pass fewer.
        if isinstance(weight, torch.Tensor):
            scale = weight.detach().to(device="cpu", dtype=torch.float64) * self._scale
        else:
            scale = float(weight) * self._scale
        scaled = x.detach().to(device="cpu", dtype=torch.float64) * scale
        clamped = scaled.clamp(-self._q_max, self._q_max)
        self.clipped += scaled.numel() - int(torch.count_nonzero(clamped == scaled))  # NaN != NaN: counted
        return clamped.nan_to_num_(0.0).round_().to(self.dtype)  # integral and in range: exact

    def decode(self, total: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The real value of a ring element (e.g. a sum of encoded terms): total / 2^f."""
        if total.dtype != self.dtype:
            raise ValueError(f"expected a ring tensor of dtype {self.dtype}, got {total.dtype}")
        return (total.to(torch.float64) / self._scale).to(dtype)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(a + b) mod 2^k, e.g. an encoded value plus its mask."""
        return _signed(_unsigned(a, self.ring_bits) + _unsigned(b, self.ring_bits), self.ring_bits)

    def sum(self, rows: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Ring sum over dim 0 of a stacked tensor, or of a sequence of equally shaped tensors."""
        if isinstance(rows, torch.Tensor):
            unsigned = _unsigned(rows, self.ring_bits)
            return _signed(np.add.reduce(unsigned, axis=0, dtype=unsigned.dtype), self.ring_bits)
        if not rows:
            raise ValueError("sum needs at least one row")
        total = _unsigned(rows[0], self.ring_bits).copy()
        for row in rows[1:]:
            np.add(total, _unsigned(row, self.ring_bits), out=total)
        return _signed(total, self.ring_bits)


def generate_keys(node_ids: Iterable[int]) -> dict[int, X25519PrivateKey]:
    """A fresh X25519 private key per node, from OS randomness."""
    return {_node(node): X25519PrivateKey.generate() for node in node_ids}


def public_bytes(private_key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of the public key a node announces."""
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def public_keys(private_keys: Mapping[int, X25519PrivateKey]) -> dict[int, bytes]:
    """The public-key directory {node: 32 bytes} of some private keys."""
    return {node: public_bytes(key) for node, key in private_keys.items()}


def expected_senders(in_neighbours: Iterable[int], departed: Collection[int] = ()) -> frozenset[int]:
    """The set S of a round: the receiver's in-neighbours minus the nodes known to have left.

    Every sender and the receiver must compute the same S, or the masks do not cancel.
    """
    gone = {_node(n) for n in departed}
    return frozenset(_node(n) for n in in_neighbours if _node(n) not in gone)


def aggregate_usable(expected: Collection[int], received: Collection[int]) -> bool:
    """Whether a receiver may decode the ring sum of what it received this round.

    Only if exactly the expected senders delivered: with one missing, the masks of the others
    do not cancel and the sum is noise; an unexpected sender used another S. Otherwise the
    receiver discards the round's aggregate and keeps its own model (abort, never unmask).
    """
    return {_node(n) for n in expected} == {_node(n) for n in received}


class PairwiseMasks:
    """The masks of the local nodes, from their private keys and the public-key directory.

    ``private_keys`` holds the keys of the nodes hosted here (one node or a whole batch);
    ``public_keys`` maps every node a local node shares a receiver with to its 32-byte key.
    Pair secrets are derived once and cached.
    """

    def __init__(self, private_keys: Mapping[int, X25519PrivateKey], public_keys: Mapping[int, bytes],
                 ring_bits: int = 32):
        self.ring_bits = _check_ring_bits(ring_bits)
        self._private = {_node(node): key for node, key in private_keys.items()}
        self._public: dict[int, X25519PublicKey] = {}
        for node, raw in public_keys.items():
            if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_BYTES:
                raise ValueError(f"public key of node {node!r} must be {KEY_BYTES} raw bytes")
            self._public[_node(node)] = X25519PublicKey.from_public_bytes(bytes(raw))
        for node, key in self._private.items():
            if node in self._public and public_bytes(key) != self._public[node].public_bytes_raw():
                raise ValueError(f"public key of node {node} does not match its private key")
            self._public.setdefault(node, key.public_key())
        self._secrets: dict[tuple[int, int], bytes] = {}

    @property
    def local_nodes(self) -> frozenset[int]:
        return frozenset(self._private)

    def pair_secret(self, a: int, b: int) -> bytes:
        """s_ab = HKDF-SHA256 of the X25519 shared secret of a and b (one of them local)."""
        lo, hi = sorted((_node(a), _node(b)))
        if lo == hi:
            raise ValueError(f"a node has no pair secret with itself (node {lo})")
        secret = self._secrets.get((lo, hi))
        if secret is None:
            own, other = (lo, hi) if lo in self._private else (hi, lo)
            if own not in self._private:
                raise ValueError(f"neither node {lo} nor node {hi} is local")
            if other not in self._public:
                raise ValueError(f"no public key for node {other}")
            shared = self._private[own].exchange(self._public[other])
            secret = HKDF(algorithm=hashes.SHA256(), length=32, salt=_SCHEME,
                          info=_SCHEME + b"/pair" + struct.pack("<qq", lo, hi)).derive(shared)
            self._secrets[(lo, hi)] = secret
        return secret

    def _add_stream(self, a: int, b: int, receiver: int, rnd: int,
                    plus: np.ndarray | None, minus: np.ndarray | None) -> None:
        """Add PRG(s_ab, receiver, rnd) to ``plus`` and subtract it from ``minus`` (mod 2^k).

        The keystream comes in 64 KiB chunks that stay in cache, each one ``update_into``
        call and an ``np.frombuffer`` view: 2-4x faster than materializing the whole stream.
        """
        key = HKDF(algorithm=hashes.SHA256(), length=_PRG_KEY_BYTES, salt=None,
                   info=_SCHEME + b"/mask" + struct.pack("<qq", receiver, rnd)).derive(self.pair_secret(a, b))
        encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        wire = _RINGS[self.ring_bits][2]
        size = len(plus if plus is not None else minus)
        step = _CHUNK_BYTES // wire.itemsize
        keystream = bytearray(_CHUNK_BYTES + 16)  # room for a block of slack
        for start in range(0, size, step):
            n = min(step, size - start)
            encryptor.update_into(_ZEROS[:n * wire.itemsize], keystream)
            chunk = np.frombuffer(keystream, dtype=wire, count=n)  # little-endian ring elements
            if plus is not None:
                np.add(plus[start:start + n], chunk, out=plus[start:start + n])
            if minus is not None:
                np.subtract(minus[start:start + n], chunk, out=minus[start:start + n])

    def receiver_masks(self, receiver: int, senders: Collection[int], rnd: int, size: int) -> dict[int, torch.Tensor]:
        """M_j for every local sender j in ``senders`` (the set S of ``receiver`` this round).

        A stream of two local senders is generated once: a batch of B local senders of S
        costs B |S| - B (B + 1) / 2 streams instead of B (|S| - 1).
        """
        receiver, group, rnd, size = _round_args(receiver, senders, rnd, size)
        local = [s for s in group if s in self._private]
        row_of = {node: row for row, node in enumerate(local)}
        rows = np.zeros((len(local), size), dtype=_RINGS[self.ring_bits][1])
        for j in local:
            for k in group:
                if k == j or (k in row_of and k < j):  # a local pair is handled from its lower end
                    continue
                lo, hi = min(j, k), max(j, k)
                self._add_stream(lo, hi, receiver, rnd,
                                 plus=rows[row_of[lo]] if lo in row_of else None,
                                 minus=rows[row_of[hi]] if hi in row_of else None)
        return {node: _signed(rows[row], self.ring_bits) for node, row in row_of.items()}

    def mask(self, sender: int, receiver: int, senders: Collection[int], rnd: int, size: int) -> torch.Tensor:
        """M_sender for ``receiver`` in round ``rnd``; ``senders`` is the whole set S, sender included."""
        sender = _node(sender)
        receiver, group, rnd, size = _round_args(receiver, senders, rnd, size)
        if sender not in self._private:
            raise ValueError(f"sender {sender} is not a local node (no private key)")
        if sender not in group:
            raise ValueError(f"sender {sender} is not in the sender set of receiver {receiver}")
        total = np.zeros(size, dtype=_RINGS[self.ring_bits][1])
        for k in group:
            if k != sender:
                self._add_stream(sender, k, receiver, rnd,
                                 plus=total if sender < k else None, minus=total if sender > k else None)
        return _signed(total, self.ring_bits)


def _round_args(receiver, senders, rnd, size) -> tuple[int, list[int], int, int]:
    """Checked (receiver, sorted S, round, size) of one receiver's round."""
    receiver = _node(receiver)
    group = sorted({_node(s) for s in senders})
    if receiver in group:
        raise ValueError(f"receiver {receiver} cannot be one of its own senders")
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0:
        raise ValueError(f"size must be a non-negative integer, got {size!r}")
    if isinstance(rnd, bool) or not isinstance(rnd, numbers.Integral):
        raise ValueError(f"rnd must be an integer, got {rnd!r}")
    return receiver, group, int(rnd), int(size)
