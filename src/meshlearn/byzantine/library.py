"""The built-in attacks: what Byzantine nodes send in place of their honest model.

Each crafts whole models (``Attack.craft``), one per attacker or, for a ``per_receiver``
attack, one per outgoing link (attackers in view order, receivers in increasing id). The
messages are float32 whatever the models' dtype.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Annotated

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field
from scipy.sparse.linalg import eigsh

from meshlearn.byzantine.attacks import Attack, AttackView
from meshlearn.streams import Stream, seed_of
from meshlearn.topology.schedule import RoundGraph

__all__ = ["ALIE", "IPM", "Dissensus", "GaussianNoise", "LabelFlip", "SignFlip", "Spectral"]

_DENSE_EIGEN_LIMIT = 1024
"""Honest nodes up to which the Fiedler vector comes from a dense eigendecomposition; above,
a sparse shift-invert solver finds the two smallest eigenpairs."""


class SignFlip(Attack):
    """Send −scale·x_own, the attacker's own model negated and scaled.

    The model-space "bit flipping" attack of He, Karimireddy & Jaggi, "Byzantine-robust
    decentralized learning via ClippedGossip" (arXiv:2202.01545, 2022), whose reference code sends
    −x_own (``scale = 1``, the default). Uses only the attacker's own model.
    """

    name = "sign_flip"

    def __init__(self, scale: Annotated[float, Field(gt=0, description="factor of the negated model")] = 1.0,
                 seed: int = 0):
        super().__init__(seed)
        self.scale = scale

    def craft(self, view: AttackView) -> torch.Tensor:
        return view.own.float() * -self.scale


class GaussianNoise(Attack):
    """Send x_own + std·ξ with ξ ~ N(0, I), a fresh draw per attacker and round.

    ξ comes from a torch generator seeded with ``seed_of(seed, Stream.ATTACK, node, round)``,
    so every engine sends the same noise. Default ``std = 1``. Uses only the attacker's own
    model.
    """

    name = "gaussian"

    def __init__(self, std: Annotated[float, Field(gt=0, description="standard deviation of the added noise")] = 1.0,
                 seed: int = 0):
        super().__init__(seed)
        self.std = std

    def craft(self, view: AttackView) -> torch.Tensor:
        own = view.own.float()
        noise = torch.empty_like(own)
        for row, node in enumerate(view.ids.tolist()):
            generator = torch.Generator().manual_seed(seed_of(self.seed, Stream.ATTACK, node, view.rnd))
            noise[row] = torch.randn(own.shape[1], generator=generator, dtype=torch.float32)
        return own + self.std * noise


class LabelFlip(Attack):
    """Data poisoning: train on label C − 1 − y instead of y (C classes), then follow the
    honest protocol, sending the model trained on the flipped labels.

    The "label flipping" attack of He, Karimireddy & Jaggi 2022 (reference code: 9 − y on
    10 classes). Uses only the attacker's own data and model.
    """

    name = "label_flip"

    def labels(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        return num_classes - 1 - y

    def craft(self, view: AttackView) -> torch.Tensor:
        return view.own.float()


def _received_models(view: AttackView) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What each attacker received from honest nodes, aligned with the view's attackers:
    (b, k, P) models (zero in padding), (b, k) mask, (b,) count."""
    b, size = view.own.shape
    got = view.received
    if got is None or got.values.shape[1] == 0:
        return view.own.new_zeros((b, 0, size), dtype=torch.float32), torch.zeros(b, 0, dtype=torch.bool), \
            torch.zeros(b, dtype=torch.int64)
    values = view.own.new_zeros((b, got.values.shape[1], size), dtype=torch.float32)
    values[got.rows] = got.values.flatten(2).float()
    mask = torch.zeros(b, got.mask.shape[1], dtype=torch.bool)
    mask[got.rows] = got.mask
    values = values.masked_fill(~mask.unsqueeze(-1), 0.0)
    return values, mask, mask.sum(1)


class ALIE(Attack):
    """A Little Is Enough: send μ − z·σ, the coordinate-wise mean μ and standard deviation σ of
    the honest models the attacker received in this exchange.

    σ is the unbiased standard deviation (divided by m − 1 for m models; σ = 0 for a single
    one), as ``torch.std`` in the reference code. Default z: the reference's
    z_max = Φ⁻¹((n − f − s) / (n − f)) with s = ⌊n/2 + 1⌋ − f supporters, n nodes and f
    Byzantine nodes in the run (defined for n ≥ 3 and f ≤ n/2; otherwise set ``z``). An attacker that
    received nothing sends its own model. Rushing: it waits for its honest neighbours' messages.

    Baruch, Baruch & Goldberg, "A Little Is Enough: Circumventing Defenses For Distributed
    Learning", NeurIPS 2019; decentralized form of He, Karimireddy & Jaggi 2022.
    """

    name = "alie"
    rushing = True

    def __init__(self, z: Annotated[float | None, Field(description="standard deviations below the mean "
                                                                    "(default: z_max from n and f)")] = None,
                 seed: int = 0):
        super().__init__(seed)
        self.z = z

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.byzantine.options.get("z") is None:
            cls.z_max(cfg.nodes, cfg.byzantine.count_of(cfg.nodes))

    @staticmethod
    def z_max(num_nodes: int, num_byzantine: int) -> float:
        """The reference's z_max = Φ⁻¹((n − f − s) / (n − f)), s = ⌊n/2 + 1⌋ − f: the z for which
        s of the n − f honest values, if normal, lie beyond μ + z·σ (the supporters ALIE needs)."""
        n, f = num_nodes, num_byzantine
        supporters = n // 2 + 1 - f
        quantile = (n - f - supporters) / (n - f) if n > f else 0.0
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"alie's default z = Φ⁻¹((n − f − s)/(n − f)), s = ⌊n/2 + 1⌋ − f, is undefined for "
                             f"n = {n} nodes and f = {f} Byzantine nodes (it needs n ≥ 3 and f ≤ n/2); set "
                             "byzantine.options.z")
        return NormalDist().inv_cdf(quantile)

    def craft(self, view: AttackView) -> torch.Tensor:
        values, mask, count = _received_models(view)
        z = self.z if self.z is not None else self.z_max(view.num_nodes, view.num_byzantine)
        counts = count.clamp_min(1).unsqueeze(1).float()
        mean = values.sum(1) / counts
        squares = ((values - mean.unsqueeze(1)) ** 2).masked_fill(~mask.unsqueeze(-1), 0.0).sum(1)
        std = (squares / (count - 1).clamp_min(1).unsqueeze(1).float()).sqrt()
        return torch.where((count > 0).unsqueeze(1), mean - z * std, view.own.float())


class IPM(Attack):
    """Inner Product Manipulation: send −ε·μ, μ the mean of the honest models the attacker
    received in this exchange (its own model, −ε·x_own, if it received none).

    Default ``epsilon = 0.1``, the reference code's. Rushing: it waits for its honest
    neighbours' messages. Xie, Koyejo & Gupta, "Fall of Empires: Breaking Byzantine-tolerant
    SGD by Inner Product Manipulation", UAI 2019; decentralized form of He, Karimireddy &
    Jaggi 2022, whose attacker averages its target and the target's honest neighbours.
    """

    name = "ipm"
    rushing = True

    def __init__(self, epsilon: Annotated[float, Field(gt=0, description="factor of the negated mean")] = 0.1,
                 seed: int = 0):
        super().__init__(seed)
        self.epsilon = epsilon

    def craft(self, view: AttackView) -> torch.Tensor:
        values, _, count = _received_models(view)
        mean = values.sum(1) / count.clamp_min(1).unsqueeze(1).float()
        return -self.epsilon * torch.where((count > 0).unsqueeze(1), mean, view.own.float())


def _links(view: AttackView) -> tuple[np.ndarray, np.ndarray]:
    """Every outgoing link of the attackers, in ``craft``'s order: (attacker row, receiver id)."""
    graph = view.graph
    if graph is None:
        raise ValueError("a per-receiver attack needs view.graph")
    receivers = [graph.receivers_of(node) for node in view.ids.tolist()]
    rows = np.repeat(np.arange(len(receivers)), [len(r) for r in receivers])
    return rows, np.concatenate(receivers).astype(np.int64) if receivers else np.zeros(0, dtype=np.int64)


def _omniscient(view: AttackView) -> tuple[RoundGraph, torch.Tensor, np.ndarray]:
    """The graph, every node's model (float32) and the Byzantine mask of an omniscient view."""
    if view.graph is None or view.models is None or view.byzantine is None:
        raise ValueError("an omniscient attack needs view.graph, view.models and view.byzantine (simulator only)")
    return view.graph, view.models.float(), view.byzantine.numpy().astype(bool)


class Dissensus(Attack):
    """Dissensus: to each honest receiver i, send the model that pushes i away from its honest
    neighbours by ε times the pull they exert:

        x_i − ε · Σ_{honest j → i} w_ij (x_j − x_i) / Σ_{Byzantine k → i} w_ik.

    With gossip averaging and every Byzantine neighbour of i sending this, ε = 1 cancels i's
    honest pull exactly and ε > 1 reverses it. A Byzantine receiver gets the attacker's own
    model. Default ``epsilon = 1.5``, the value of every dissensus run in the reference code.
    Omniscient (every node's model, the weights w_ij of this exchange's graph) and per
    receiver. He, Karimireddy & Jaggi, "Byzantine-robust decentralized learning via
    ClippedGossip" (arXiv:2202.01545, 2022), where each attacker targets one honest neighbour.
    """

    name = "dissensus"
    omniscient = True
    per_receiver = True

    def __init__(self, epsilon: Annotated[float, Field(gt=0, description="multiple of the honest pull sent back "
                                                                          "(1 cancels it)")] = 1.5,
                 seed: int = 0):
        super().__init__(seed)
        self.epsilon = epsilon

    def craft(self, view: AttackView) -> torch.Tensor:
        graph, models, byzantine = _omniscient(view)
        rows, receivers = _links(view)
        targets, link_target = np.unique(receivers, return_inverse=True)
        block = graph.weights[targets]
        entry_row = np.repeat(np.arange(len(targets)), np.diff(block.indptr))
        honest_sender = ~byzantine[block.indices]
        honest_weight = np.bincount(entry_row, block.data * honest_sender, minlength=len(targets))
        byzantine_weight = np.bincount(entry_row, block.data * ~honest_sender, minlength=len(targets))
        honest_mixing = sp.csr_matrix(((block.data * honest_sender).astype(np.float32), block.indices, block.indptr),
                                      shape=block.shape)
        own_targets = models[torch.from_numpy(targets)]
        pull = torch.from_numpy(honest_mixing @ models.detach().numpy()) \
            - torch.from_numpy(honest_weight).float().unsqueeze(1) * own_targets
        scale = torch.from_numpy(np.divide(self.epsilon, byzantine_weight, out=np.zeros(len(targets)),
                                           where=byzantine_weight > 0)).float()
        crafted = (own_targets - scale.unsqueeze(1) * pull)[torch.from_numpy(link_target)]
        to_byzantine = torch.from_numpy(byzantine[receivers]).unsqueeze(1)
        return torch.where(to_byzantine, view.own.float()[torch.from_numpy(rows)], crafted)


def fiedler_vector(graph: RoundGraph, honest: np.ndarray) -> np.ndarray:
    """Unit eigenvector of the second-smallest eigenvalue of the honest subgraph's Laplacian
    L = D − A, A = (W_HH + W_HHᵀ)/2 the mixing weights between honest nodes (``honest``: their
    ids); zero for fewer than two honest nodes. Its sign is arbitrary, and so is the vector
    within the eigenspace when that eigenvalue is repeated."""
    size = len(honest)
    if size < 2:
        return np.zeros(size)
    block = graph.weights[honest][:, honest]
    adjacency = ((block + block.T) / 2).tocsr()
    laplacian = sp.diags(np.asarray(adjacency.sum(axis=1)).ravel()) - adjacency
    if size <= _DENSE_EIGEN_LIMIT:
        vector = np.linalg.eigh(laplacian.toarray())[1][:, 1]
    else:   # shift just below 0 so that L − σI is definite and the two nearest eigenvalues are the smallest
        values, vectors = eigsh(laplacian.tocsc(), k=2, sigma=-1e-3, which="LM")
        vector = vectors[:, np.argsort(values)[1]]
    return vector / np.linalg.norm(vector)


class Spectral(Attack):
    """Spectral heterogeneity: to each honest receiver i, send x_i + λ·u_i·⟨u, X_H⟩, where u is
    the unit Fiedler vector of the honest subgraph's Laplacian (weighted by the mixing weights)
    and ⟨u, X_H⟩ = Σ_{honest k} u_k x_k.

    u is the honest graph's slowest-mixing direction: the message adds to x_i λ times its own
    component along it, so the Byzantine pull amplifies the disagreement gossip is slowest to
    remove, while its distance to x_i, λ·|u_i|·‖⟨u, X_H⟩‖, stays as small as that disagreement
    (within the clipping radius of rules centred on the receiver). u_i·u does not depend on the
    sign of u. A Byzantine receiver gets the attacker's own model. Omniscient (every node's model
    and the graph) and per receiver.

    Gaucher, Dieuleveut & Hendrikx, "Unified Breakdown Analysis for Byzantine Robust Gossip",
    ICML 2025 (authors' code: ``spectral`` in github.com/renaudgaucher/Byzantine-Robust-Gossip).
    There λ is tuned every step by a line search against the defence's output (16
    evaluations); the attack sees no aggregation rule here, so λ is the fixed ``scale``
    (default 1). The Fiedler vector is recomputed only when the graph or the Byzantine set
    changes.
    """

    name = "spectral"
    omniscient = True
    per_receiver = True

    def __init__(self, scale: Annotated[float, Field(gt=0, description="λ: multiple of the receiver's Fiedler "
                                                                        "component added to its model")] = 1.0,
                 seed: int = 0):
        super().__init__(seed)
        self.scale = scale
        self._fiedler: tuple[RoundGraph, np.ndarray, np.ndarray] | None = None

    def _direction(self, graph: RoundGraph, byzantine: np.ndarray) -> np.ndarray:
        """u spread over all nodes (0 at Byzantine ones), cached for the graph and Byzantine set."""
        cached = self._fiedler
        if cached is None or cached[0] is not graph or not np.array_equal(cached[1], byzantine):
            honest = np.flatnonzero(~byzantine)
            spread = np.zeros(len(byzantine))
            spread[honest] = fiedler_vector(graph, honest)
            self._fiedler = cached = (graph, byzantine.copy(), spread)
        return cached[2]

    def craft(self, view: AttackView) -> torch.Tensor:
        graph, models, byzantine = _omniscient(view)
        rows, receivers = _links(view)
        direction = torch.from_numpy(self._direction(graph, byzantine)).float()
        component = direction @ models
        index = torch.from_numpy(receivers)
        crafted = models[index] + self.scale * direction[index].unsqueeze(1) * component
        to_byzantine = torch.from_numpy(byzantine[receivers]).unsqueeze(1)
        return torch.where(to_byzantine, view.own.float()[torch.from_numpy(rows)], crafted)
