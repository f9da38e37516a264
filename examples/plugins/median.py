"""Coordinate-wise median gossip: each coordinate of a node's new model is the median of that
coordinate over its own model and the models it received, so one neighbour sending garbage (a
faulty or Byzantine node) cannot drag it away as it drags an average.

A sharing scheme rather than an algorithm: folding received models into one's own is the
scheme's ``aggregate``, so D-PSGD runs it unchanged (and FedAvg too: a node whose own weight
is 0, a client receiving the server's model or the server receiving its clients', leaves its
own model out). A median is no weighted sum, so it reads the messages themselves, a chunk of
receivers at a time (``Inbox.by_receiver``).
"""

from __future__ import annotations

import torch

from meshlearn.sharing import Sharing


class MedianGossip(Sharing):
    """Send the whole model; keep the coordinate-wise median of own and received models
    (the lower of the two middle values for an even count)."""

    dense = True   # every message is a whole model

    def encode(self, nodes, rnd):
        return {"params": nodes.params}

    def aggregate(self, nodes, inbox):
        out = nodes.params.clone()
        for got in inbox.by_receiver(lambda payload: payload["params"]):
            models = torch.cat([nodes.params[got.rows].unsqueeze(1), got.values], dim=1)
            counted = torch.cat([(got.self_weight > 0).unsqueeze(1), got.mask], dim=1)
            models[~counted] = float("nan")   # padding and a weightless own model: left out
            out[got.rows] = models.nanmedian(dim=1).values
        nodes.params = out
