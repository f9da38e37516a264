"""Node-level differential privacy of local training: DP-SGD and its privacy accountant.

Every local step of a node clips each sample's whole-model gradient to L2 norm C, sums them,
adds Gaussian noise N(0, σ²C²) per coordinate and divides by the batch size (Abadi et al.,
CCS 2016). One sample then moves a step by at most C/batch, masked by the noise, and an
Opacus accountant per node (one step per local step, sample rate q = batch_size / samples)
turns the steps into the (ε, δ) the node has spent so far.

Everything random here derives from (experiment seed, node id, purpose), so a node's noise
does not depend on which engine, worker or chunk trains it.

The accountant assumes Poisson subsampling at rate q, while ``training.BatchSampler`` draws
fixed-size batches from shuffled passes over the data. That is common practice (Opacus's own
non-Poisson mode makes the same approximation) but the reported ε is not a proof for the
shuffled sampler.

Opacus is imported only here and only when DP is configured: importing it takes seconds.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import numpy as np
import torch

from meshlearn.config import ConfigError, DPConfig
from meshlearn.nodes import ParamLayout
from meshlearn import streams
from meshlearn.streams import Stream

__all__ = ["NodePrivacy", "sample_rate", "sample_multiplicity"]

# Added to the gradient norm before dividing, as Opacus does, so a zero gradient is kept as is.
_NORM_EPS = 1e-6


def sample_rate(batch_size: int, num_samples: int) -> float:
    """q of the accountant: the share of a node's samples one batch uses (at most 1)."""
    return min(1.0, batch_size / num_samples)


def sample_multiplicity(index: torch.Tensor) -> torch.Tensor:
    """How often each entry of every row of ``index`` (..., batch) occurs in its row.

    A batch that straddles two shuffles of a node's data (or any batch of a node with fewer
    samples than the batch size) holds some samples twice; each copy is then clipped to
    C / copies, so every sample still moves a step by at most C.
    """
    return (index.unsqueeze(-1) == index.unsqueeze(-2)).sum(-1)


class NodePrivacy:
    """DP-SGD state of a set of nodes: noise multipliers, noise generators, accountants.

    ``num_samples`` and ``total_steps`` (local steps over the whole run) are per node id;
    with ``cfg.target_epsilon`` each node's σ is solved so that it ends the run at that ε
    (nodes that train in fewer rounds end below it).
    """

    def __init__(self, cfg: DPConfig, layout: ParamLayout, seed: int, batch_size: int,
                 num_samples: dict[int, int], total_steps: dict[int, int]):
        self.cfg = cfg
        self.layout = layout
        self.sample_rate = {node: sample_rate(batch_size, n) for node, n in num_samples.items()}
        if cfg.noise_multiplier is not None:
            self.sigma = {node: float(cfg.noise_multiplier) for node in num_samples}
        else:
            self.sigma = {node: _solve_sigma(cfg.target_epsilon, cfg.delta, self.sample_rate[node],
                                             total_steps[node], cfg.accountant) for node in num_samples}
        self.generators = {node: torch.Generator().manual_seed(streams.seed_of(seed, Stream.DP_NOISE, node))
                           for node in num_samples}
        self.accountants = {node: _accountant_class(cfg.accountant)() for node in num_samples}

    def gradients(self, per_sample: list[torch.Tensor], ids: list[int], index: torch.Tensor,
                  active: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The noisy, clipped mean gradient of each node, from per-sample gradients.

        ``per_sample`` holds one (c, batch, *shape) tensor per parameter for the nodes ``ids``,
        whose batches hold the samples ``index`` (c, batch). Each ``active`` node (default:
        all) draws its noise and takes one accountant step; the others get no noise (their
        update is masked out by the optimizer).
        """
        c, batch = index.shape
        clip = self.cfg.clip_norm
        norms = sum(g.flatten(2).pow(2).sum(2) for g in per_sample).sqrt()   # (c, batch) whole-model norms
        scale = (clip / sample_multiplicity(index) / (norms + _NORM_EPS)).clamp(max=1.0)
        noise = torch.zeros(c, self.layout.size)
        rows = range(c) if active is None else torch.nonzero(active).flatten().tolist()
        for row in rows:
            node = ids[row]
            sigma = self.sigma[node]
            noise[row] = torch.randn(self.layout.size, generator=self.generators[node]).mul_(sigma * clip)
            self.accountants[node].step(noise_multiplier=sigma, sample_rate=self.sample_rate[node])
        return [(torch.einsum("cb,cb...->c...", scale, g) + z) / batch
                for g, z in zip(per_sample, self.layout.views(noise).values())]

    def state_dict(self) -> dict:
        """Each node's noise generator and accountant history."""
        return {"generators": {node: g.get_state() for node, g in self.generators.items()},
                "history": {node: [list(entry) for entry in acc.history] for node, acc in self.accountants.items()}}

    def load_state_dict(self, state: dict) -> None:
        for node, generator_state in state["generators"].items():
            self.generators[node].set_state(generator_state)
        for node, history in state["history"].items():
            self.accountants[node].history = [tuple(entry) for entry in history]

    def epsilon(self, ids) -> np.ndarray:
        """ε spent so far by each node at the configured δ; NaN for nodes not held here."""
        return np.array([_epsilon(self.cfg.accountant, tuple(self.accountants[node].history), self.cfg.delta)
                         if node in self.accountants else np.nan for node in ids], dtype=np.float64)


def _accountant_class(name: str) -> type:
    """Opacus's accountant called ``name`` (``privacy.dp.accountant``)."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    return {"rdp": RDPAccountant, "prv": PRVAccountant}[name]


@functools.lru_cache(maxsize=None)
def _solve_sigma(target_epsilon: float, delta: float, rate: float, steps: int, accountant: str) -> float:
    """σ that makes ``steps`` steps at sample rate ``rate`` spend ``target_epsilon`` (just under)."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with _quiet_rdp():
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                              sample_rate=rate, steps=steps, accountant=accountant))
    except ValueError:  # even the largest σ Opacus tries spends more
        raise ConfigError(f"privacy.dp.target_epsilon = {target_epsilon} is out of reach for a node that takes "
                          f"{steps} local steps at sample rate {rate:.3g}; raise privacy.dp.target_epsilon or "
                          "privacy.dp.delta, or train fewer rounds / local steps") from None


def _epsilon(accountant: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """ε of an accountant ``history`` of (σ, q, steps) entries.

    σ = 0 (clipping only) protects nothing: ε = ∞. RDP composes linearly in the steps, so
    its per-step curve is cached per (q, σ) and scaled: the very sum ``RDPAccountant``
    computes, without recomputing the curve for every node and round. PRV (tighter,
    slower) is asked whole, cached per history.
    """
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return float("inf")
    if accountant != "rdp":
        return _accountant_epsilon(accountant, history, delta)
    from opacus.accountants.analysis.rdp import get_privacy_spent

    orders = _accountant_class("rdp").DEFAULT_ALPHAS
    rdp = sum(_rdp_per_step(rate, sigma) * steps for sigma, rate, steps in history)
    with _quiet_rdp():
        return float(get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0])


@contextlib.contextmanager
def _quiet_rdp():
    """Mute Opacus's warning that the best RDP order is the largest one it tries: it fires
    in every run's first rounds (few steps) and only means ε is looser there, still valid."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


@functools.lru_cache(maxsize=4096)
def _accountant_epsilon(accountant: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    acc = _accountant_class(accountant)()
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=None)
def _rdp_per_step(rate: float, sigma: float) -> np.ndarray:
    from opacus.accountants.analysis.rdp import compute_rdp

    return compute_rdp(q=rate, noise_multiplier=sigma, steps=1, orders=_accountant_class("rdp").DEFAULT_ALPHAS)
