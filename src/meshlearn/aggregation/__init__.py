"""Aggregation rules: the mixing step of D-PSGD, the weighted mean or a robust rule."""

from meshlearn.aggregation.base import Aggregator, Mean, aggregate_models
from meshlearn.aggregation.rules import Balance, ClippedGossip, CSPlus, Krum, Median, RemoveThenClip, TrimmedMean

AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.name: cls for cls in (Mean, Median, TrimmedMean, Krum, ClippedGossip, RemoveThenClip, Balance, CSPlus)
}

__all__ = ["Aggregator", "Mean", "aggregate_models", "Median", "TrimmedMean", "Krum", "ClippedGossip",
           "RemoveThenClip", "Balance", "CSPlus", "AGGREGATORS"]
