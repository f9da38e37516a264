"""What a model's outputs are trained and scored by: a loss per sample and a test metric.

A data set names its task (``Dataset.task``); training, evaluation and the records take the
loss, the metric and its name from it, so nothing else assumes classification.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["Task", "Classification", "Regression", "TASKS", "by_metric"]


class Task:
    """Losses and scores of outputs (..., outputs) against targets (...)."""

    metric = ""                   # the name records give the metric: test_<metric>_mean, ...
    higher_is_better = True

    def losses(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of every sample, shaped as ``y``."""
        raise NotImplementedError

    def scores(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every sample's contribution to the metric, shaped as ``y``, to be averaged."""
        raise NotImplementedError

    def metric_of(self, mean_score: torch.Tensor) -> torch.Tensor:
        """The metric from the mean of ``scores`` over a test set."""
        return mean_score


class Classification(Task):
    """Cross-entropy of the logits; accuracy."""

    metric = "acc"

    def losses(self, outputs, y):
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), y.reshape(-1), reduction="none").view(y.shape)

    def scores(self, outputs, y):
        return (outputs.argmax(-1) == y).to(torch.float64)


class Regression(Task):
    """Squared error of the single output; root mean squared error (lower is better)."""

    metric = "rmse"
    higher_is_better = False

    def losses(self, outputs, y):
        return (outputs.squeeze(-1) - y) ** 2

    def scores(self, outputs, y):
        return ((outputs.squeeze(-1) - y) ** 2).to(torch.float64)

    def metric_of(self, mean_score):
        return mean_score.sqrt()


TASKS: dict[str, Task] = {"classification": Classification(), "regression": Regression()}


def by_metric(metric: str) -> Task:
    """The task whose records name their metric ``metric`` (classification for an unknown one)."""
    return next((t for t in TASKS.values() if t.metric == metric), TASKS["classification"])
