"""Fine-tuning: D-PSGD, then each node adapts the consensus model to its own data.

The simplest personalization baseline: after the last gossip round every node trains its
model for ``epochs`` more passes over its own data, so the final evaluation (the local test
sets of ``evaluation.local_test`` above all) scores personalized models. Every round before
the last is D-PSGD's, so a D-PSGD run with the same seed is the same run without the step.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field

from meshlearn.algorithms.dpsgd import DPSGD
from meshlearn.nodes import NodeBatch
from meshlearn.sharing import Sharing
from meshlearn.training import local_steps

__all__ = ["FineTuned"]


class FineTuned(DPSGD):
    """D-PSGD, and after the last round ``epochs`` passes of local training per node."""

    name = "finetune"

    def __init__(self, sharing: Sharing,
                 epochs: Annotated[float, Field(gt=0, description="passes over a node's own data after the last "
                                                "round (rounded up to whole local trainings)")] = 1.0):
        super().__init__(sharing)
        self.epochs = epochs

    def setup(self, nodes: NodeBatch, experiment) -> None:
        super().setup(nodes, experiment)
        cfg = experiment.config
        self.last_round = cfg.rounds
        # local trainings (of local_steps each) that make up `epochs` passes, per node
        sizes = [len(experiment.parts[node]) for node in nodes.ids.tolist()]
        self.trainings = torch.tensor([
            math.ceil(self.epochs * size / (cfg.training.batch_size * local_steps(cfg.training, size))) if size else 0
            for size in sizes])

    def round(self, nodes: NodeBatch, rnd: int, ctx) -> torch.Tensor:
        loss = super().round(nodes, rnd, ctx)
        if rnd == self.last_round:
            for k in range(int(self.trainings.max()) if len(self.trainings) else 0):
                ctx.train(nodes, self.trainings > k)
        return loss
