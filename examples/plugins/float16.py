"""Half-precision sharing: send the model as float16, half the bytes of float32, and average
like full sharing after widening it back. A node keeps its own exact model for its self-weight,
so only what crosses the network is rounded (to about 3 significant digits)."""

from __future__ import annotations

from meshlearn.sharing import Sharing, dense_average


class Float16Sharing(Sharing):
    """x_i ← w_ii x_i + Σ_j w_ij float32(float16(x_j))."""

    dense = True   # every message is a whole model, so a server can use it too

    def encode(self, nodes, rnd):
        return {"params": nodes.params.half()}

    def aggregate(self, nodes, inbox):
        nodes.params = dense_average(nodes.params, inbox, lambda payload: payload["params"].float())
