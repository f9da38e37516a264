"""Label blocks with quantity skew: sort the training samples by label and cut them into
contiguous blocks, one per node, of log-normal sizes. A node then sees one or a few classes
(label skew) and some nodes hold many times more samples than others (quantity skew)."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field


def label_blocks(labels: np.ndarray, num_nodes: int, rng: np.random.Generator, *,
                 sigma: Annotated[float, Field(ge=0, description="σ of the log-normal block sizes "
                                               "(0: equal blocks)")] = 0.5,
                 min_samples: int = 1) -> list[np.ndarray]:
    """One contiguous block of the label-sorted samples per node."""
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]   # by label, shuffled within a label
    sizes = rng.lognormal(0.0, sigma, num_nodes)
    parts = np.split(order, np.round(np.cumsum(sizes)[:-1] / sizes.sum() * len(labels)).astype(int))
    if min(len(part) for part in parts) < min_samples:
        raise ValueError(f"data.partition_options.sigma = {sigma} leaves a node with fewer than "
                         f"data.min_samples = {min_samples} samples; lower sigma or `nodes`")
    return parts
