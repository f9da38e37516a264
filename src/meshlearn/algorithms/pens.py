"""PENS (Onoszko et al., 2021): performance-based neighbour selection.

A node learns whom to listen to from what it can measure itself: the loss of its peers'
models on its own training data. Each round it receives the models of its candidates (the
round's in-neighbours: with a dynamic topology, a fresh random sample of peers every round,
as PENS samples them), scores each on a fixed probe of its own samples, and averages its
model with the ``selected`` best, uniformly. Peers whose data resemble the node's fit its
data best, so on non-IID data nodes end up mixing with nodes like themselves. Chosen over
L2C's learned mixing weights because it needs no meta-gradient through the mixing step and
no validation split, and over DecentralizePy's KNN overlay because it needs no all-pairs
comparison: each node scores only the models it receives.

PENS's second phase, in which a node restricts its sampling to the peers it picked more often
than chance, needs each node's private choice to shape who sends to it; here every round is
a selection round.
"""

from __future__ import annotations

import copy
from typing import Annotated

import numpy as np
import torch
from pydantic import Field
from torch.func import functional_call, vmap

from meshlearn import streams
from meshlearn.algorithms.base import Algorithm, RoundContext
from meshlearn.nodes import NodeBatch
from meshlearn.sharing import DenseSharing, Sharing
from meshlearn.streams import Stream

__all__ = ["PENS"]

_PROBE_BATCH = 4096   # probe samples scored in one batched call (models × samples)


class PENS(Algorithm):
    """Local training, then an average with the ``selected`` received models that fit the node's
    own data best."""

    name = "pens"

    def __init__(self, sharing: Sharing,
                 selected: Annotated[int, Field(ge=1, description="received models a node averages with per round "
                                                "(PENS's m); it should be below the in-degree")] = 4,
                 probe: Annotated[int, Field(ge=1, le=65536, description="own training samples a node scores "
                                             "received models on (a node with fewer repeats its own)")] = 128):
        super().__init__(sharing)
        self.selected, self.probe = selected, probe

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        what = f"algorithm.name = {cfg.algorithm.name!r}"
        if not issubclass(cfg.sharing.implementation(), DenseSharing) or cfg.privacy.secagg is not None:
            raise ValueError(f"{what} scores every received model on the node's data, so it needs whole models: "
                             "use sharing.name = 'full' or 'quantize' and no secure aggregation")
        if cfg.sharing.private:
            raise ValueError(f"{what} scores whole models; remove sharing.private")
        if cfg.aggregation.name != "mean":
            raise ValueError(f"{what} chooses the models it averages itself; remove [aggregation]")

    def setup(self, nodes: NodeBatch, experiment) -> None:
        super().setup(nodes, experiment)
        self.model = copy.deepcopy(experiment.model).to("meta")
        self.layout = experiment.layout
        self.x = torch.from_numpy(experiment.dataset.x_train).to(experiment.device)
        self.y = torch.from_numpy(experiment.dataset.y_train).to(experiment.device)
        self.task = experiment.task
        probes = []   # `probe` samples per node: a shuffle of its own, repeated if it has fewer
        for node in nodes.ids.tolist():
            part = experiment.parts[node]
            rng = streams.generator(experiment.config.seed, Stream.PEER_PROBE, node)
            probes.append(np.resize(rng.permutation(part), self.probe) if len(part) else None)
        self.has_probe = torch.tensor([p is not None for p in probes], dtype=torch.bool)
        self.probes = torch.from_numpy(np.stack([p if p is not None else np.zeros(self.probe, dtype=np.int64)
                                                 for p in probes]).astype(np.int64).reshape(len(probes), self.probe))
        self._losses = vmap(self._loss)

    def _loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.task.losses(functional_call(self.model, params, (x,)), y).mean()

    @torch.no_grad()
    def scores(self, rows: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
        """Loss of ``models[r, s]`` (b, k, P) on the probe of local row ``rows[r]`` (b, k)."""
        b, k = models.shape[:2]
        owner = rows.repeat_interleave(k)
        flat = models.reshape(b * k, -1)
        out = torch.empty(b * k, device=models.device)
        group = max(1, _PROBE_BATCH // self.probe)
        for start in range(0, b * k, group):
            part = slice(start, min(start + group, b * k))
            samples = self.probes[owner[part]]   # (models, probe) rows of the training set
            out[part] = self._losses(self.layout.views(flat[part]), self.x[samples], self.y[samples])
        return out.view(b, k)

    def round(self, nodes: NodeBatch, rnd: int, ctx: RoundContext) -> torch.Tensor:
        loss = ctx.train(nodes)
        inbox = ctx.exchange(nodes, self.sharing.encode(nodes, rnd), rnd)
        mixed = nodes.params.clone()
        for got in inbox.by_receiver(self.sharing.decode):
            losses = self.scores(got.rows, got.values)
            scored = got.mask & torch.isfinite(losses) & self.has_probe[got.rows, None].to(losses.device)   # no data: nothing chosen
            losses = torch.where(scored, losses, torch.inf)
            order = torch.argsort(losses, dim=1, stable=True)[:, :self.selected]   # ties: the lower id
            chosen = torch.zeros_like(got.mask).scatter_(1, order, True) & torch.isfinite(losses)
            total = nodes.params[got.rows].clone()
            for slot in range(got.values.shape[1]):   # in slot order: every engine sums alike
                total += got.values[:, slot] * chosen[:, slot, None]
            mixed[got.rows] = total / (1 + chosen.sum(1, keepdim=True))
        nodes.params = mixed
        return loss
