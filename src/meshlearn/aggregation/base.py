"""The aggregator interface: how a node folds the models it received into its own.

D-PSGD's mixing step is a weighted mean, x_i ← w_ii x_i + Σ_j w_ij x_j, which one faulty
or Byzantine neighbour can drag anywhere. A robust rule replaces that mean: it reads the
received models themselves, a chunk of receivers at a time (``Inbox.by_receiver``), and
returns each receiver's new model with one batched tensor operation over the chunk, so the
simulator runs it for all nodes without a loop over nodes and a worker for its share.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch

from meshlearn.sharing.base import Inbox, Payload, Received, dense_average

__all__ = ["Aggregator", "Mean", "aggregate_models"]


class Aggregator(ABC):
    """A node's mixing step: its new model from its own and the models it received.

    Its options are the keyword arguments of ``__init__``; ``rounds`` (the run's number of
    rounds) is passed by the framework to a rule that takes it. Rules are centred on the
    receiver: ``aggregate`` gets each receiver's own model next to what it received.
    """

    name: str = ""
    linear: ClassVar[bool] = False
    """The rule is the weighted mean: engines use the inbox's fast weighted sum instead of
    reading the messages one by one."""

    @abstractmethod
    def aggregate(self, own: torch.Tensor, got: Received, rnd: int) -> torch.Tensor:
        """The new (b, P) models of a chunk of receivers.

        ``own`` (b, P) holds their current models; ``got.values`` (b, k, P) the models each
        received (``got.mask`` marks real messages, padding is zero), ``got.weights`` (b, k)
        their mixing weights w_ij and ``got.self_weight`` (b,) w_ii (together they sum to one
        per receiver, renormalized over the messages that arrived). A receiver may have
        received nothing (k = 0, or a row of padding): it keeps its own model.
        """


class Mean(Aggregator):
    """The gossip average x_i ← w_ii x_i + Σ_j w_ij x_j (D-PSGD, Lian et al., NeurIPS 2017):
    optimal without faults, broken by one Byzantine neighbour."""

    name = "mean"
    linear = True

    def aggregate(self, own: torch.Tensor, got: Received, rnd: int) -> torch.Tensor:
        mixed = (got.weights.unsqueeze(-1) * got.values).sum(1)
        return mixed.addcmul_(own, got.self_weight.unsqueeze(1))


def aggregate_models(params: torch.Tensor, inbox: Inbox, decode: Callable[[Payload], torch.Tensor],
                     aggregator: Aggregator) -> torch.Tensor:
    """Every local node's new model under ``aggregator``: the inbox's weighted sum for the
    mean, the rule over each chunk of received messages otherwise."""
    if aggregator.linear:
        return dense_average(params, inbox, decode)
    out = params.clone()
    for got in inbox.by_receiver(decode):
        if got.values.shape[1]:
            out[got.rows] = aggregator.aggregate(params[got.rows], got, inbox.rnd).to(out.dtype)
    return out
