"""Model quality and agreement metrics over stacked node models."""

from __future__ import annotations

import math
import resource
import sys

import torch
from torch import nn
from torch.func import functional_call, vmap

from meshlearn.nodes import ParamLayout
from meshlearn.tasks import TASKS, Task

__all__ = ["evaluate_models", "consensus_distance", "describe"]


@torch.no_grad()
def evaluate_models(model: nn.Module, layout: ParamLayout, params: torch.Tensor, x: torch.Tensor,
                    y: torch.Tensor, *, batch_size: int = 1024, chunk_size: int = 16,
                    batched: bool = True, task: Task = TASKS["classification"]) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's metric (accuracy for classification) and mean loss of each row of ``params``
    (B, P) on (x, y), on the CPU (the work runs on the device of ``params`` and the samples).

    All models see the same test batch, so the batched path shares the input across nodes
    (``in_dims=(0, None)``): for linear layers that is one large matmul.

    ``model`` only supplies the structure (weights come from ``params``); pass a copy on
    the meta device to avoid holding a second set of weights.
    """

    def forward(p, xb):
        return functional_call(model, p, (xb,))

    batched_forward = vmap(forward, in_dims=(0, None))
    num_models = params.shape[0]
    score_sum = torch.zeros(num_models, dtype=torch.float64, device=params.device)
    loss_sum = torch.zeros(num_models, dtype=torch.float64, device=params.device)
    for start in range(0, num_models, chunk_size):
        rows = params[start:start + chunk_size]
        for b in range(0, len(y), batch_size):
            xb, yb = x[b:b + batch_size], y[b:b + batch_size]
            if batched:
                outputs = batched_forward(layout.views(rows), xb)  # (c, batch, outputs)
            else:
                outputs = torch.stack([forward(layout.views(row), xb) for row in rows])
            targets = yb.expand(len(rows), *yb.shape)
            loss_sum[start:start + len(rows)] += task.losses(outputs, targets).sum(1).double()
            score_sum[start:start + len(rows)] += task.scores(outputs, targets).sum(1)
    return task.metric_of(score_sum / len(y)).float().cpu(), (loss_sum / len(y)).float().cpu()


@torch.no_grad()
def consensus_distance(params: torch.Tensor) -> float:
    """Mean squared distance of node models to their average: (1/N) Σ_i ||x_i − x̄||²."""
    mean = params.mean(0, keepdim=True)
    total = 0.0
    for start in range(0, params.shape[0], 256):  # bounded temporaries for large models
        total += float((params[start:start + 256] - mean).pow(2).sum())
    return total / params.shape[0]


def describe(values: torch.Tensor, prefix: str) -> dict[str, float]:
    """mean/min/max/std of a per-node metric, as flat result keys."""
    v = values.double()
    std = float(v.std(unbiased=False)) if v.numel() > 1 else 0.0
    out = {f"{prefix}_mean": float(v.mean()), f"{prefix}_min": float(v.min()),
           f"{prefix}_max": float(v.max()), f"{prefix}_std": std}
    return {k: (None if math.isnan(x) else x) for k, x in out.items()}


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
