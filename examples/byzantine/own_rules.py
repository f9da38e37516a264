"""An aggregation rule and an attack of your own, named by file path in own_rules.toml.

``NormFilter`` drops every received model farther from the receiver's own than ``radius``
times the median distance, then averages own and kept models with their mixing weights
renormalized. ``Scaled`` is a Byzantine node that sends its own model times ``factor``.
Both are written once, on stacked tensors, and run on every engine like the built-ins.
"""

from __future__ import annotations

from meshlearn.aggregation import Aggregator
from meshlearn.byzantine import Attack


class NormFilter(Aggregator):
    """Keep the received models within ``radius`` × the median distance, then average."""

    def __init__(self, radius: float = 2.0):
        self.radius = radius

    def aggregate(self, own, got, rnd):
        distance = (got.values - own.unsqueeze(1)).norm(dim=2)                  # (b, k)
        median = distance.masked_fill(~got.mask, float("nan")).nanmedian(dim=1, keepdim=True).values
        keep = got.mask & (distance <= self.radius * median)
        weights = got.weights * keep
        total = weights.sum(1) + got.self_weight                                 # renormalize over the kept
        mixed = (weights.unsqueeze(2) * got.values).sum(1) + got.self_weight.unsqueeze(1) * own
        return mixed / total.unsqueeze(1)


class Scaled(Attack):
    """Send the own model scaled by ``factor``."""

    def __init__(self, factor: float = -3.0, seed: int = 0):
        super().__init__(seed)
        self.factor = factor

    def craft(self, view):
        return self.factor * view.own
