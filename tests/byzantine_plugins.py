"""Attacks of a user's own, for the Byzantine tests (loaded by import path)."""

import torch

from meshlearn.byzantine import Attack


class TaggedPerReceiver(Attack):
    """Sends receiver i the model whose every coordinate is 1000·attacker + i: each message
    says who crafted it and for whom."""

    per_receiver = True

    def craft(self, view):
        rows = [torch.full((view.own.shape[1],), 1000.0 * a + dst)
                for a in view.ids.tolist() for dst in view.graph.receivers_of(a).tolist()]
        return torch.stack(rows)


class EchoReceived(Attack):
    """A rushing attack that sends the sum of the honest models it received (weighted by w_ij),
    so a test sees exactly what it was shown."""

    rushing = True

    def craft(self, view):
        got = view.received
        return (got.weights.unsqueeze(-1) * got.values).sum(1)
