"""Robust aggregation rules: a node's mixing step that one Byzantine neighbour cannot drag anywhere.

Every rule reads a chunk of b receivers at once (``Received``: k message slots per receiver,
padding masked out) and works on (b, k, P) tensors, so the simulator runs it for all nodes
with a few batched operations. Two families:

- rules over the neighbourhood's models as a set (``median``, ``trimmed_mean``, ``krum``):
  the receiver's own model counts only where it weighs it (``self_weight > 0``; a FedAvg
  server or client does not), and the mixing weights are not used;
- rules centred on the receiver's own model (``clipped_gossip``, ``remove_then_clip``,
  ``balance``, ``cs_plus``): they move x_i towards what it received by a bounded step, so they
  centre on x_i even where its own weight is 0.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field

from meshlearn.aggregation.base import Aggregator
from meshlearn.sharing.base import Received

__all__ = ["Balance", "CSPlus", "ClippedGossip", "Krum", "Median", "RemoveThenClip", "TrimmedMean"]

_TINY = 1e-30
_WEIGHT_SLACK = 1e-6
"""Float32 sums of mixing weights compared with a bound: 1/3 + 1/3 may miss 2/3 by an ulp."""


def _messages(got: Received) -> torch.Tensor:
    """The received models as (b, k, P) float32."""
    return got.values.flatten(2).float()


def _neighbourhood(own: torch.Tensor, got: Received) -> tuple[torch.Tensor, torch.Tensor]:
    """Own model in slot 0 followed by the received ones, (b, 1 + k, P), and which slots count:
    the messages, and the own model where the receiver weighs it."""
    models = torch.cat([own.float().unsqueeze(1), _messages(got)], dim=1)
    counted = torch.cat([(got.self_weight > 0).unsqueeze(1), got.mask], dim=1)
    return models, counted


def _sorted_counted(models: torch.Tensor, counted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each coordinate's counted values in increasing order (uncounted slots, filled with +inf,
    sort last) and the number counted per receiver; sorts ``models`` in place."""
    filled = models.masked_fill_(~counted.unsqueeze(-1), math.inf)   # models is the fresh _neighbourhood
    return _sort_slots(filled), counted.sum(1)


_NETWORK_SLOTS = 24
"""Up to this many slots, sort with a compare-exchange network (3.6× faster than ``torch.sort``
along a short middle dimension, which also builds indices the rules do not need)."""


def _sort_slots(values: torch.Tensor) -> torch.Tensor:
    """``values`` (b, n, P) sorted along the slots, in place for a few slots (odd–even
    transposition: n rounds of elementwise min/max on neighbouring slots)."""
    n = values.shape[1]
    if n > _NETWORK_SLOTS:
        return values.sort(dim=1).values
    for rnd in range(n):
        low, high = values[:, rnd % 2:n - 1:2], values[:, rnd % 2 + 1:n:2]
        if low.shape[1]:
            smaller = torch.minimum(low, high)
            torch.maximum(low, high, out=high)
            low.copy_(smaller)
    return values


def _differences(own: torch.Tensor, got: Received) -> tuple[torch.Tensor, torch.Tensor]:
    """x_j − x_i for every slot (b, k, P) and its norm (b, k)."""
    differences = _messages(got) - own.float().unsqueeze(1)
    return differences, torch.linalg.vector_norm(differences, dim=2)


def _clipped_step(own: torch.Tensor, differences: torch.Tensor, distances: torch.Tensor,
                  weights: torch.Tensor, used: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """x_i + Σ_j w_ij clip(x_j − x_i, τ_i) over the ``used`` slots, clip(v, τ) = v·min(1, τ/‖v‖)."""
    radius = radius.unsqueeze(1)
    scale = torch.where(distances > radius, radius / distances.clamp_min(_TINY), 1.0)
    coefficient = torch.where(used, weights * scale, 0.0)
    return own.float() + torch.bmm(coefficient.unsqueeze(1), differences).squeeze(1)


def _ranks(order: torch.Tensor) -> torch.Tensor:
    """Each slot's position in ``order`` (a permutation per row, as argsort gives)."""
    ranks = torch.empty_like(order)
    return ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous())


def _descending(distances: torch.Tensor, mask: torch.Tensor) -> torch.return_types.sort:
    """Messages by decreasing distance (ties in slot order), padding last."""
    return distances.masked_fill(~mask, -math.inf).sort(dim=1, descending=True, stable=True)


class Median(Aggregator):
    """Coordinate-wise median of the own and received models (BRIDGE-M; Yang & Bajwa, "BRIDGE:
    Byzantine-resilient decentralized gradient descent", arXiv:1908.08098, 2019; IEEE TSIPN 2022).

    An even count takes the mean of the two middle values, as the reference code's CM does.
    The own model counts only where ``self_weight > 0``; a receiver with nothing counted keeps
    its model. Mixing weights are not used.
    """

    name = "median"

    def aggregate(self, own: torch.Tensor, got: Received, rnd: int) -> torch.Tensor:
        ordered, count = _sorted_counted(*_neighbourhood(own, got))
        b, _, size = ordered.shape
        lower = ((count - 1).clamp_min(0) // 2).view(b, 1, 1).expand(b, 1, size)
        upper = (count // 2).view(b, 1, 1).expand(b, 1, size)
        middle = (ordered.gather(1, lower) + ordered.gather(1, upper)).squeeze(1) / 2
        return torch.where((count > 0).unsqueeze(1), middle, own.float())


class TrimmedMean(Aggregator):
    """Coordinate-wise trimmed mean of the own and received models (BRIDGE-T; Yang & Bajwa 2019):
    per coordinate, drop the ``trim`` largest and ``trim`` smallest values and average the rest.

    A receiver with n values where 2·trim ≥ n trims fewer: the largest t with n − 2t ≥ 1 (as the
    reference code's TM), so it always averages at least one value. The own model counts only
    where ``self_weight > 0``. Mixing weights are not used. Default ``trim = 1``.
    """

    name = "trimmed_mean"

    def __init__(self, trim: Annotated[int, Field(ge=0, description="values removed at each end, per coordinate "
                                                                    "(assumed Byzantine neighbours)")] = 1):
        self.trim = trim

    def aggregate(self, own: torch.Tensor, got: Received, rnd: int) -> torch.Tensor:
        ordered, count = _sorted_counted(*_neighbourhood(own, got))
        trimmed = ((count - 1).clamp_min(0) // 2).clamp_max(self.trim)
        position = torch.arange(ordered.shape[1], device=ordered.device)
        kept = (position >= trimmed.unsqueeze(1)) & (position < (count - trimmed).unsqueeze(1))
        total = torch.where(kept.unsqueeze(-1), ordered, 0.0).sum(1)
        mean = total / (count - 2 * trimmed).clamp_min(1).unsqueeze(1)
        return torch.where((count > 0).unsqueeze(1), mean, own.float())


class Krum(Aggregator):
    """Krum (``m = 1``) and multi-Krum (``m > 1``) over the own and received models (Blanchard,
    El Mhamdi, Guerraoui & Stainer, "Machine learning with adversaries: Byzantine tolerant
    gradient descent", NeurIPS 2017).

    Each candidate's score is the sum of its squared distances to its n − f − 2 closest other
    candidates (at least 1, at most the n − 1 there are); the result is the plain average of
    the m lowest-scoring candidates (all n if fewer; equal scores go to the earlier slot, the
    own model first). The own model is a candidate only where ``self_weight > 0``; mixing
    weights are not used. Defaults ``f = 1``, ``m = 1``.
    """

    name = "krum"

    def __init__(self, f: Annotated[int, Field(ge=0, description="assumed Byzantine neighbours")] = 1,
                 m: Annotated[int, Field(ge=1, description="lowest-score models averaged (1: Krum)")] = 1):
        self.f, self.m = f, m

    def aggregate(self, own: torch.Tensor, got: Received, rnd: int) -> torch.Tensor:
        models, counted = _neighbourhood(own, got)
        slots = models.shape[1]
        count = counted.sum(1)
        centred = models - own.float().unsqueeze(1)   # small vectors: the Gram form loses no precision
        gram = torch.bmm(centred, centred.transpose(1, 2))
        norms = gram.diagonal(dim1=1, dim2=2)
        squared = (norms.unsqueeze(2) + norms.unsqueeze(1) - 2 * gram).clamp_min(0)
        others = counted.unsqueeze(1) & ~torch.eye(slots, dtype=torch.bool, device=counted.device)
        closest = squared.masked_fill(~others, math.inf).sort(dim=2).values
        nearest = torch.minimum((count - self.f - 2).clamp_min(1), (count - 1).clamp_min(0))
        position = torch.arange(slots, device=counted.device)
        score = torch.where(position < nearest.view(-1, 1, 1), closest, 0.0).sum(2)
        score = score.masked_fill(~counted, math.inf)
        chosen = counted & (_ranks(score.argsort(dim=1, stable=True)) < self.m)
        mean = torch.where(chosen.unsqueeze(-1), models, 0.0).sum(1) / chosen.sum(1).clamp_min(1).unsqueeze(1)
        return torch.where((count > 0).unsqueeze(1), mean, own.float())


class ClippedGossip(Aggregator):
    """ClippedGossip / self-centred clipping (He, Karimireddy & Jaggi, "Byzantine-robust
    decentralized learning via ClippedGossip", arXiv:2202.01545, 2022): x_i + Σ_j w_ij clip(x_j − x_i, τ_i),
    clip(v, τ) = v·min(1, τ/‖v‖), with the mixing weights w_ij (the weight of the own model and
    of clipped-off mass stays on x_i).

    The radius: ``tau`` if given (``inf``: the plain weighted mean); else, with ``delta``, the
    smallest τ_i whose clipped neighbours (‖x_j − x_i‖ > τ_i) weigh at most ``delta`` in total
    (a receiver whose messages all fit within ``delta`` keeps its model); else the adaptive
    radius of the reference implementation (epfml/byzantine-robust-decentralized-optimizer,
    ``SelfCenteredClipping``): the second largest of the distances ‖x_j − x_i‖ over the
    received j, the largest if only one arrived — so exactly the farthest neighbour is clipped,
    the ``delta`` rule with uniform weights and δ one neighbour's weight. Defaults:
    ``tau = None``, ``delta = None`` (the reference rule).
    """

    name = "clipped_gossip"

    def __init__(self, tau: Annotated[float | None, Field(ge=0, description="clipping radius; none: adaptive")] = None,
                 delta: Annotated[float | None, Field(ge=0, le=1, description="adaptive radius clipping at most this "
                                                      "weight of neighbours; none: the reference rule")] = None):
        self.tau, self.delta = tau, delta

    def aggregate(self, own: torch.Tensor, got: Received, rnd: int) -> torch.Tensor:
        differences, distances = _differences(own, got)
        return _clipped_step(own, differences, distances, got.weights, got.mask, self.radius(distances, got))

    def radius(self, distances: torch.Tensor, got: Received) -> torch.Tensor:
        """Each receiver's clipping radius τ_i, (b,)."""
        if self.tau is not None:
            return distances.new_full(distances.shape[:1], self.tau)
        if not distances.shape[1]:
            return distances.new_zeros(distances.shape[:1])   # nothing received, nothing to clip
        ranked = _descending(distances, got.mask)
        count = got.mask.sum(1)
        if self.delta is None:
            return ranked.values.gather(1, (count - 1).clamp(0, 1).unsqueeze(1)).squeeze(1)
        weight = torch.where(got.mask, got.weights, 0.0).gather(1, ranked.indices)
        within = (weight.cumsum(1) <= self.delta + _WEIGHT_SLACK) & got.mask.gather(1, ranked.indices)
        clipped = within.sum(1)
        boundary = ranked.values.gather(1, clipped.clamp_max(distances.shape[1] - 1).unsqueeze(1)).squeeze(1)
        return torch.where(clipped < count, boundary, 0.0)


class RemoveThenClip(Aggregator):
    """Remove-then-clip, RTC (Yang & Ghaderi, "Byzantine-robust decentralized learning via
    remove-then-clip aggregation", AAAI 2024): drop the ``q`` received models farthest from the
    receiver's own model (their weight stays on x_i), then clip the remaining differences around
    x_i: x_i + Σ_{j∈S_i} w_ij clip(x_j − x_i, τ_i), clip(v, τ) = v·min(1, τ/‖v‖).

    The radius: ``tau`` if given; else the clipping radius of the analysis,
    τ_i = sqrt(Σ_{j∈S_i} w_ij ‖x_j − x_i‖² / δ_i), with δ_i the removed models' weight (the
    Byzantine weight the removal accounts for); no clipping when nothing was removed. A receiver
    with at most ``q`` messages removes them all and keeps its model. Equal distances are removed
    in slot order. Defaults ``q = 1``, ``tau = None``. The paper's scheme (filter the neighbours,
    then project the rest onto a sphere around x_i) is followed; removing a count ``q`` rather
    than by a bound on the Byzantine weight, and the adaptive radius, are this implementation's.
    """

    name = "remove_then_clip"

    def __init__(self, q: Annotated[int, Field(ge=0, description="farthest received models removed "
                                                                "(assumed Byzantine neighbours)")] = 1,
                 tau: Annotated[float | None, Field(ge=0, description="clipping radius; none: adaptive")] = None):
        self.q, self.tau = q, tau

    def aggregate(self, own: torch.Tensor, got: Received, rnd: int) -> torch.Tensor:
        differences, distances = _differences(own, got)
        removed = got.mask & (_ranks(_descending(distances, got.mask).indices) < self.q)
        kept = got.mask & ~removed
        if self.tau is not None:
            radius = distances.new_full((len(distances),), self.tau)
        else:
            removed_weight = torch.where(removed, got.weights, 0.0).sum(1)
            spread = torch.where(kept, got.weights * distances.square(), 0.0).sum(1)
            radius = torch.where(removed_weight > 0, (spread / removed_weight.clamp_min(_TINY)).sqrt(), math.inf)
        return _clipped_step(own, differences, distances, got.weights, kept, radius)


class Balance(Aggregator):
    """BALANCE (Fang, Zhang, Hairi, Khanduri, Liu, Lu, Liu & Gong, "Byzantine-robust decentralized
    federated learning", ACM CCS 2024, arXiv:2406.10416): a received model x_j is accepted when
    ‖x_i − x_j‖ ≤ γ·exp(−κ·t/T)·‖x_i‖ (t the round, T the run's rounds), and
    x_i ← α x_i + (1 − α)·mean(accepted), an unweighted mean; a receiver that accepts nothing
    keeps x_i. Mixing weights are not used; the own model is the reference even where its
    weight is 0. Defaults γ = 0.3, κ = 1, α = 0.5.
    """

    name = "balance"

    def __init__(self, gamma: Annotated[float, Field(gt=0, description="acceptance radius relative to the own "
                                                                     "model's norm")] = 0.3,
                 kappa: Annotated[float, Field(ge=0, description="decay rate of the radius over the run")] = 1.0,
                 alpha: Annotated[float, Field(ge=0, le=1, description="weight kept on the own model")] = 0.5,
                 rounds: int = 1):
        self.gamma, self.kappa, self.alpha, self.rounds = gamma, kappa, alpha, max(1, rounds)

    def aggregate(self, own: torch.Tensor, got: Received, rnd: int) -> torch.Tensor:
        differences, distances = _differences(own, got)
        own = own.float()
        radius = self.gamma * math.exp(-self.kappa * rnd / self.rounds) * torch.linalg.vector_norm(own, dim=1)
        accepted = got.mask & (distances <= radius.unsqueeze(1))
        count = accepted.sum(1)
        shift = torch.where(accepted.unsqueeze(-1), differences, 0.0).sum(1) / count.clamp_min(1).unsqueeze(1)
        return torch.where((count > 0).unsqueeze(1), own + (1 - self.alpha) * shift, own)


class CSPlus(Aggregator):
    """CS+-RG (Gaucher, Dieuleveut & Hendrikx, "Unified breakdown analysis for Byzantine robust
    gossip", ICML 2025, arXiv:2410.10418): clipped gossip x_i + Σ_j w_ij clip(x_j − x_i, τ_i) whose radius clips
    the farthest neighbours carrying twice the tolerated Byzantine weight.

    As in the authors' code (renaudgaucher/Byzantine-Robust-Gossip, ``cs_plus``): the tolerated
    weight is δ_i = b · max_j w_ij; the own model (distance 0, weight w_ii) and the received ones
    are sorted by distance to x_i, and τ_i is the largest distance whose cumulative weight is
    at most Σ w − 2δ_i (0 if none), so the neighbours beyond it, weight ≥ 2δ_i, are clipped —
    with uniform weights, the 2b farthest. ``b = 0`` is the weighted mean; a receiver whose
    received weight is at most 2δ_i keeps its model. Default ``b = 1``.
    """

    name = "cs_plus"

    def __init__(self, b: Annotated[int, Field(ge=0, description="assumed Byzantine neighbours per node")] = 1):
        self.b = b

    def aggregate(self, own: torch.Tensor, got: Received, rnd: int) -> torch.Tensor:
        differences, distances = _differences(own, got)
        weights = torch.where(got.mask, got.weights, 0.0)
        tolerated = self.b * (weights.amax(1) if weights.shape[1] else weights.new_zeros(len(weights)))
        candidate_distance = torch.cat([distances.new_zeros(len(distances), 1),
                                        distances.masked_fill(~got.mask, math.inf)], dim=1)
        candidate_weight = torch.cat([got.self_weight.float().unsqueeze(1), weights], dim=1)
        ranked = candidate_distance.sort(dim=1, stable=True)
        cumulative = candidate_weight.gather(1, ranked.indices).cumsum(1)
        bound = candidate_weight.sum(1) - 2 * tolerated + _WEIGHT_SLACK
        real = torch.cat([got.mask.new_ones(len(distances), 1), got.mask], dim=1).gather(1, ranked.indices)
        below = ((cumulative <= bound.unsqueeze(1)) & real).sum(1)
        radius = torch.where(below > 0, ranked.values.gather(1, (below - 1).clamp_min(0).unsqueeze(1)).squeeze(1), 0.0)
        radius = torch.where(tolerated > 0, radius, math.inf)
        return _clipped_step(own, differences, distances, got.weights, got.mask, radius)
