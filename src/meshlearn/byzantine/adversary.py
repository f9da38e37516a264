"""The Byzantine nodes a host runs: engines call an ``Adversary`` around each exchange.

An engine sends its honest nodes' messages as usual; for its attackers it asks the
``Adversary`` for their crafted messages (after handing a rushing attack what they
received), so the attack is written once and every engine sends the same bytes.
"""

from __future__ import annotations

import numpy as np
import torch

from meshlearn.byzantine.attacks import AttackView
from meshlearn.nodes import NodeBatch
from meshlearn.sharing.base import Payload, Received, received_chunks

__all__ = ["Adversary", "received_view"]


class Adversary:
    """The attackers among a host's ``local_ids`` (``rows``) and their attack."""

    def __init__(self, experiment, local_ids: list[int]):
        self.rows = np.flatnonzero(~experiment.honest(local_ids))
        self.ids = torch.as_tensor(np.asarray(local_ids, dtype=np.int64)[self.rows])
        self.attack = experiment.make_attack()
        self.num_nodes, self.num_byzantine = experiment.num_nodes, len(experiment.byzantine)
        self.start: torch.Tensor | None = None

    def __bool__(self) -> bool:
        return len(self.rows) > 0

    def begin_round(self, nodes: NodeBatch) -> None:
        """Remember the attackers' models before the round's training (``AttackView.start``)."""
        self.start = nodes.params[self.rows].clone()

    def view(self, nodes: NodeBatch, rnd: int, **known) -> AttackView:
        rows = torch.from_numpy(self.rows)
        start = self.start if self.start is not None else nodes.params[rows]
        return AttackView(rnd, self.ids, nodes.params[rows], start, self.num_nodes, self.num_byzantine, **known)

    def messages(self, sharing, view: AttackView, link_senders: torch.Tensor | None = None) -> Payload:
        """The attackers' crafted models, encoded by the sharing scheme: one row per attacker
        (for a per-receiver attack, one per outgoing link; ``link_senders`` is each link's attacker)."""
        crafted = self.attack.craft(view)
        ids = link_senders if self.attack.per_receiver else self.ids
        rows = len(ids)
        if not isinstance(crafted, torch.Tensor) or tuple(crafted.shape) != (rows, view.own.shape[1]):
            raise ValueError(f"attack {type(self.attack).__name__}.craft returned "
                             f"{tuple(getattr(crafted, 'shape', ()))}, expected ({rows}, {view.own.shape[1]}): one "
                             f"model per {'outgoing link' if self.attack.per_receiver else 'attacker'}")
        return sharing.encode(NodeBatch(ids, crafted.float()), view.rnd)


    def payload_with(self, sharing, view: AttackView, payload: Payload) -> Payload:
        """``payload`` (one row per local node) with the attackers' rows replaced by their
        crafted messages (an attack that sends one message per attacker)."""
        crafted = self.messages(sharing, view)
        index = torch.from_numpy(self.rows)
        return {name: t.clone().index_copy_(0, index, crafted[name].to(t.dtype)) for name, t in payload.items()}


def received_view(rows: np.ndarray, senders: np.ndarray, weights: np.ndarray, self_weight: torch.Tensor,
                  values: torch.Tensor, value_rows: np.ndarray, receivers: int) -> Received:
    """The messages ``receivers`` attackers got, as one ``Received``: message e went to
    attacker ``rows[e]`` (sorted, senders increasing within it) from ``senders[e]`` with weight
    ``weights[e]``, and its decoded model is ``values[value_rows[e]]``."""
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=receivers))])
    return next(received_chunks(indptr, senders, weights.astype(np.float32), self_weight, values, value_rows,
                                chunk_nodes=max(1, receivers)))
