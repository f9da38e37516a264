"""Local training of a batch of nodes on their private data.

Written once for a stack of B nodes with flat parameters (see ``nodes``). Per-node
gradients come from one backward pass over the sum of the nodes' losses, with the forward
pass either batched over a chunk of nodes (``torch.func.vmap`` of ``functional_call``) or
run node by node ("loop", for models whose batched kernels are slower than their plain
ones, such as convolutions and LSTMs). The optimizers are torch's SGD/Adam update rules
written on (B, P) rows so that every node's update is exactly what ``torch.optim`` would do to a standalone copy.
Nodes are processed chunk by chunk, all local steps of a chunk at once, so a chunk's
weights stay in cache across its steps.

With ``privacy.dp`` set, each step instead computes per-sample gradients (``vmap`` of
``grad`` over the samples, nested in the ``vmap`` over nodes or per node in the loop) and
``meshlearn.privacy.dp`` clips and noises them (DP-SGD) before the same optimizer update.
"""

from __future__ import annotations

import copy
import math
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from meshlearn import plugins, streams
from meshlearn.config import DPConfig, TrainingConfig
from meshlearn.nodes import NodeBatch, ParamLayout
from meshlearn.streams import Stream
from meshlearn.tasks import TASKS, Task

__all__ = ["BatchSampler", "Optimizer", "SGD", "Adam", "OPTIMIZERS", "LocalTrainer", "default_batching", "local_steps",
           "DEFAULT_SAMPLER"]

DEFAULT_SAMPLER = "model"
"""The mini-batch sequence of a node's ordinary local training; other names draw their own."""

# With DP, a chunk's per-sample gradients (chunk × batch_size × P floats) stay under this.
_PER_SAMPLE_GRAD_BYTES = 1 << 28


def default_batching(model: nn.Module, device: torch.device = torch.device("cpu")) -> tuple[str, int]:
    """(strategy, chunk size) for a model: its class attributes ``batching`` ("vmap" or
    "loop") and ``chunk_size`` where it has them (set by measurement on the built-in models,
    benchmarks/sim_scaling.py), else vmap over chunks of 16 nodes. On an accelerator,
    ``gpu_batching`` and ``gpu_chunk_size``, else vmap over 256 nodes: a GPU needs large
    batched kernels, and node-by-node launches of small ones leave it idle."""
    cls = type(model)
    if device.type != "cpu":
        return getattr(cls, "gpu_batching", "vmap"), int(getattr(cls, "gpu_chunk_size", 256))
    return getattr(cls, "batching", "vmap"), int(getattr(cls, "chunk_size", 16))


def local_steps(cfg: TrainingConfig, num_samples: int) -> int:
    """Steps a node with ``num_samples`` training samples takes per round."""
    if cfg.local_epochs is None:
        return int(cfg.local_steps)
    return max(1, math.ceil(cfg.local_epochs * num_samples / cfg.batch_size))


class BatchSampler:
    """Mini-batches for one node: passes over a fresh shuffle of its samples, wrapping around
    so every batch is full (equal shapes let nodes train in one batched call)."""

    def __init__(self, indices: np.ndarray, batch_size: int, rng: np.random.Generator):
        if len(indices) == 0:
            raise ValueError("a node has no training samples")
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size
        self.rng = rng
        self._order = self.rng.permutation(self.indices)
        self._pos = 0

    def next_batches(self, steps: int) -> np.ndarray:
        """(steps, batch_size) sample indices."""
        need = steps * self.batch_size
        out = np.empty(need, dtype=np.int64)
        filled = 0
        while filled < need:
            if self._pos == len(self._order):
                self._order = self.rng.permutation(self.indices)
                self._pos = 0
            take = min(need - filled, len(self._order) - self._pos)
            out[filled:filled + take] = self._order[self._pos:self._pos + take]
            filled += take
            self._pos += take
        return out.reshape(steps, self.batch_size)

    def state_dict(self) -> dict:
        """The pass in progress, the position in it and the generator that draws the next."""
        return {"rng": self.rng.bit_generator.state, "order": self._order, "pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._order, self._pos = np.array(state["order"], dtype=np.int64), int(state["pos"])


class Optimizer:
    """A local update rule on stacked nodes (the ``optimizer`` family).

    Parameters and state are (B, P) rows; ``update`` changes the rows in place from
    per-parameter gradients, typically with ``torch._foreach_*`` ops on the per-parameter views
    of those rows (``views``), as torch.optim's foreach path does, so no gradient is copied
    into a flat buffer. Options are the keyword arguments of ``__init__`` after ``lr``.
    """

    def __init__(self, lr: float):
        self.lr = lr
        self.layout: ParamLayout | None = None

    def setup(self, layout: ParamLayout) -> None:
        self.layout = layout

    def init_state(self, nodes: NodeBatch) -> None:
        """Create per-node optimizer state (leading dimension B) in ``nodes.state``."""

    def views(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views (c, *shape) of (c, P) rows."""
        return list(self.layout.views(rows).values())

    def update(self, params: torch.Tensor, grads: list[torch.Tensor], state: dict[str, torch.Tensor]) -> None:
        """Update the (c, P) rows ``params`` and their ``state`` in place."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, params: torch.Tensor, grads: list[torch.Tensor], state: dict[str, torch.Tensor],
             active: torch.Tensor | None = None) -> None:
        """``update``, except that rows where ``active`` is False keep their parameters and
        state (nodes that already finished their local epochs this round)."""
        keep = None if active is None or bool(active.all()) else ~active
        if keep is not None:
            saved = {"params": params[keep], **{k: v[keep] for k, v in state.items()}}  # copies
        self.update(params, grads, state)
        if keep is not None:
            params[keep] = saved.pop("params")
            for key, value in saved.items():
                state[key][keep] = value


class SGD(Optimizer):
    """torch.optim.SGD's rule: weight decay, momentum, Nesterov."""

    def __init__(self, lr: float,
                 momentum: Annotated[float, Field(ge=0, lt=1, description="heavy-ball momentum")] = 0.0,
                 nesterov: Annotated[bool, Field(description="Nesterov momentum (needs momentum > 0)")] = False,
                 weight_decay: Annotated[float, Field(ge=0, description="L2 penalty")] = 0.0):
        super().__init__(lr)
        if nesterov and momentum == 0:
            raise ValueError("nesterov = true needs momentum > 0")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay

    def init_state(self, nodes: NodeBatch) -> None:
        if self.momentum > 0:
            nodes.state["momentum_buffer"] = torch.zeros_like(nodes.params)

    def update(self, params, grads, state) -> None:
        p = self.views(params)
        if self.weight_decay:
            grads = torch._foreach_add(grads, p, alpha=self.weight_decay)
        if self.momentum > 0:
            buf = self.views(state["momentum_buffer"])
            torch._foreach_mul_(buf, self.momentum)
            torch._foreach_add_(buf, grads)
            grads = torch._foreach_add(grads, buf, alpha=self.momentum) if self.nesterov else buf
        torch._foreach_add_(p, grads, alpha=-self.lr)


class Adam(Optimizer):
    """torch.optim.Adam's rule (L2 weight decay, bias correction)."""

    def __init__(self, lr: float,
                 betas: Annotated[tuple[float, float], Field(description="decay rates of the moment estimates, "
                                                             "each in [0, 1)")] = (0.9, 0.999),
                 eps: Annotated[float, Field(gt=0, description="added to the denominator")] = 1e-8,
                 weight_decay: Annotated[float, Field(ge=0, description="L2 penalty")] = 0.0):
        super().__init__(lr)
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas = {list(betas)}: each must be in [0, 1)")
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay

    def init_state(self, nodes: NodeBatch) -> None:
        nodes.state["exp_avg"] = torch.zeros_like(nodes.params)
        nodes.state["exp_avg_sq"] = torch.zeros_like(nodes.params)
        nodes.state["adam_step"] = torch.zeros(len(nodes), dtype=torch.float64, device=nodes.params.device)

    def update(self, params, grads, state) -> None:
        p = self.views(params)
        if self.weight_decay:
            grads = torch._foreach_add(grads, p, alpha=self.weight_decay)
        beta1, beta2 = self.betas
        step = state["adam_step"]
        step += 1
        exp_avg, exp_avg_sq = self.views(state["exp_avg"]), self.views(state["exp_avg_sq"])
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
        step_size = (self.lr / (1 - beta1 ** step)).to(params.dtype)
        bias2_sqrt = (1 - beta2 ** step).sqrt().to(params.dtype)
        for param, avg, avg_sq in zip(p, exp_avg, exp_avg_sq):
            shape = (-1,) + (1,) * (param.dim() - 1)
            denom = (avg_sq.sqrt() / bias2_sqrt.view(shape)).add_(self.eps)
            param.sub_(avg / denom * step_size.view(shape))


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam}


class LocalTrainer:
    """Runs each round's local steps (or epochs) of SGD/Adam for a batch of nodes."""

    def __init__(self, model: nn.Module, layout: ParamLayout, cfg: TrainingConfig,
                 x_train: torch.Tensor, y_train: torch.Tensor, parts: dict[int, np.ndarray],
                 seed: int, batching: str = "vmap", chunk_size: int = 16,
                 dp: DPConfig | None = None, rounds: int = 1, task: Task = TASKS["classification"]):
        self.model = model.to("meta")  # structure only: weights come from the stacked rows
        self.task = task
        self.layout = layout
        self.cfg = cfg
        self.x_train, self.y_train = x_train, y_train
        self.batching = batching
        self.chunk_size = max(1, chunk_size)
        self.optimizer = plugins.build("optimizer", cfg.optimizer, cfg.optimizer_options, lr=cfg.lr)
        self.optimizer.setup(layout)
        parts = {node: idx for node, idx in parts.items() if len(idx)}  # a server holds no data
        self.seed, self.parts = seed, parts
        self.samplers = {node: BatchSampler(idx, cfg.batch_size, streams.generator(seed, Stream.MINI_BATCH, node))
                         for node, idx in parts.items()}
        self._other_samplers: dict[str, dict[int, BatchSampler]] = {}
        self._how = _How()   # what the current call to train changes (see train's keywords)
        self._steps = {node: local_steps(cfg, len(idx)) for node, idx in parts.items()}
        self.privacy = None   # DP-SGD noise and accountants (meshlearn.privacy.dp.NodePrivacy) with privacy.dp
        if dp is not None:
            from meshlearn.privacy.dp import NodePrivacy   # imports Opacus (seconds): only for DP runs

            self.privacy = NodePrivacy(dp, layout, seed, cfg.batch_size,
                                       {node: len(idx) for node, idx in parts.items()},
                                       {node: rounds * steps for node, steps in self._steps.items()})
            per_node_bytes = 4 * cfg.batch_size * layout.size
            self.chunk_size = max(1, min(self.chunk_size, _PER_SAMPLE_GRAD_BYTES // per_node_bytes))
        self._threads = threading.local()   # each training thread's copy of the model structure
        self._pools: dict[int, ThreadPoolExecutor] = {}   # loop batching's threads, by their number
        # nodes on threads draw the global generator in no set order: not with DP's noise or dropout
        self._threaded = self.privacy is None and not any(isinstance(m, nn.modules.dropout._DropoutNd)
                                                           for m in model.modules())
        self._batched_forward = vmap(self._forward)
        self._sample_grads = vmap(grad_and_value(self._sample_loss), in_dims=(None, 0, 0))  # (batch, *shape)
        self._batched_sample_grads = vmap(self._sample_grads)                             # (c, batch, *shape)

    def _forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self._module(), params, (x,))

    def _module(self) -> nn.Module:
        """The model's structure for the calling thread: ``functional_call`` swaps the weights
        into the module, so threads that train at once each need their own (a copy on the meta
        device holds no weights)."""
        module = getattr(self._threads, "model", None)
        if module is None:
            module = self._threads.model = copy.deepcopy(self.model)
        return module

    def _sample_loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of one sample (DP needs each sample's own gradient)."""
        return self.task.losses(self._forward(params, x.unsqueeze(0)), y.unsqueeze(0)).mean()

    @property
    def dp_sigma(self) -> dict[int, float]:
        """Each node's DP noise multiplier σ (given, or solved from privacy.dp.target_epsilon);
        empty without DP."""
        return {} if self.privacy is None else dict(self.privacy.sigma)

    def epsilon(self, ids) -> np.ndarray:
        """ε each of the nodes ``ids`` has spent so far at privacy.dp.delta (float64); NaN for
        nodes without DP (DP off, or a node that holds no data)."""
        if self.privacy is None:
            return np.full(len(ids), np.nan)
        return self.privacy.epsilon(ids)

    def init_state(self, nodes: NodeBatch) -> None:
        self.optimizer.init_state(nodes)

    def train(self, nodes: NodeBatch, active: torch.Tensor | None = None, *, columns: torch.Tensor | None = None,
              anchor: torch.Tensor | None = None, mu: float = 0.0, sampler: str = DEFAULT_SAMPLER) -> torch.Tensor:
        """One round of local training of the ``active`` nodes (default: all that hold data);
        returns each node's mean training loss, NaN for nodes that did not train.

        The keywords vary the objective for personalized methods: only the parameter
        ``columns`` (int64 indices of the flat parameters) change, the others keep their values
        and optimizer state (a head trained on a frozen body); ``anchor`` rows (B, P) pull
        each node towards them by ``mu / 2 · ||x - anchor||²``, applied after every update as
        its proximal step ``x ← (x + lr·mu·anchor) / (1 + lr·mu)``, stable for any ``mu`` (Ditto,
        FedProx); ``sampler`` names the sequence of mini-batches, each name its own stream, so a
        second model trained on the same node does not shift the first one's batches.
        """
        if self.privacy is not None and (sampler != DEFAULT_SAMPLER or columns is not None or anchor is not None):
            raise ValueError("privacy.dp accounts for plain training of the whole model, once per round: it cannot be "
                             "combined with an algorithm that trains parts, second models or proximal objectives")
        frozen = None
        if columns is not None:
            frozen = torch.ones(self.layout.size, dtype=torch.bool)
            frozen[columns] = False
            frozen = torch.nonzero(frozen).flatten().to(nodes.params.device)
        outer, self._how = self._how, _How(frozen, mu if anchor is not None else 0.0, sampler)
        try:
            return self._train(nodes, active, anchor)
        finally:
            self._how = outer

    def state_dict(self) -> dict:
        """Every sampler's position and the DP noise and accountants (optimizer state is in
        ``nodes.state``)."""
        samplers = {DEFAULT_SAMPLER: self.samplers, **self._other_samplers}
        return {"samplers": {name: {node: sampler.state_dict() for node, sampler in group.items()}
                             for name, group in samplers.items()},
                "privacy": self.privacy.state_dict() if self.privacy is not None else None}

    def load_state_dict(self, state: dict) -> None:
        for name, group in state["samplers"].items():
            mine = self._samplers(name)
            for node, saved in group.items():
                mine[node].load_state_dict(saved)
        if self.privacy is not None:
            self.privacy.load_state_dict(state["privacy"])

    def _samplers(self, name: str | None = None) -> dict[int, BatchSampler]:
        """The samplers called ``name`` (default: the current training's), made on first use."""
        name = name or self._how.sampler
        if name == DEFAULT_SAMPLER:
            return self.samplers
        if name not in self._other_samplers:
            extra = zlib.crc32(name.encode())
            self._other_samplers[name] = {
                node: BatchSampler(idx, self.cfg.batch_size, streams.generator(self.seed, Stream.MINI_BATCH, node, 0, extra))
                for node, idx in self.parts.items()}
        return self._other_samplers[name]

    def _train(self, nodes: NodeBatch, active: torch.Tensor | None, anchor: torch.Tensor | None) -> torch.Tensor:
        has_data = torch.tensor([node in self.samplers for node in nodes.ids.tolist()], dtype=torch.bool)
        active = has_data if active is None else active & has_data
        if not bool(active.all()):
            rows = torch.nonzero(active).flatten()
            losses = torch.full((len(nodes),), float("nan"))
            if len(rows):
                sub = NodeBatch(nodes.ids[rows], nodes.params[rows], {k: v[rows] for k, v in nodes.state.items()})
                losses[rows] = self._train(sub, None, None if anchor is None else anchor[rows])
                nodes.params[rows] = sub.params
                for key, value in sub.state.items():
                    nodes.state[key][rows] = value
            return losses
        ids = nodes.ids.tolist()
        losses = [self._train_chunk(ids[chunk], nodes.params[chunk], {k: v[chunk] for k, v in nodes.state.items()},
                                    None if anchor is None else anchor[chunk])
                  for chunk in (slice(start, start + self.chunk_size) for start in range(0, len(ids), self.chunk_size))]
        return torch.cat(losses).cpu() if losses else torch.zeros(0)

    def _train_chunk(self, ids: list[int], params: torch.Tensor, state: dict[str, torch.Tensor],
                     anchor: torch.Tensor | None) -> torch.Tensor:
        steps = [self._steps[node] for node in ids]
        total = max(steps)
        samplers = self._samplers()
        index = np.stack([_pad_steps(samplers[node].next_batches(s), total)
                          for node, s in zip(ids, steps)], axis=1)  # (steps, c, batch)
        device = params.device
        index = torch.from_numpy(index)
        on_device = index.to(device, non_blocking=True)
        xs, ys = self.x_train[on_device], self.y_train[on_device]  # step-major: each step's inputs are contiguous
        if self.batching != "vmap":
            return self._loop_chunk(ids, params, state, xs, ys, index, steps, anchor)
        steps_t = torch.tensor(steps, device=device)
        loss_sum = torch.zeros(len(ids), device=device)
        for step in range(total):
            active = steps_t > step if step >= min(steps) else None   # None: every node of the chunk steps
            loss = self._vmap_step(params, state, xs[step], ys[step], active, ids, index[step], anchor)
            loss_sum += loss if active is None else torch.where(active, loss, 0.0)
        return loss_sum / steps_t

    def _loop_chunk(self, ids, params, state, xs, ys, index, steps, anchor) -> torch.Tensor:
        """Node by node ("loop" batching): each node takes all its steps in turn, and the nodes
        are spread over one thread per intra-op thread of torch, each running its ops on one
        core. Small convolutions keep a core busier this way than split over all cores
        (benchmarks/throughput.py); nodes are independent, so the results are the same. With
        DP or dropout (random draws in an order threads would not keep) nodes train in turn."""
        threads = torch.get_num_threads()
        threaded = self._threaded and params.device.type == "cpu"   # a GPU has one queue

        def train_node(i: int) -> torch.Tensor:
            if threaded and torch.get_num_threads() > 1:
                torch.set_num_threads(1)   # this node's ops on one core (a setting of each thread)
            # rows of their own: views of the chunk would share autograd's version counter with
            # the rows other threads update meanwhile
            row, own = params[i:i + 1].clone(), {k: v[i:i + 1].clone() for k, v in state.items()}
            pull = None if anchor is None else anchor[i:i + 1]
            loss = sum(self._node_step(row, own, xs[step, i], ys[step, i], ids[i:i + 1], index[step, i:i + 1], pull)
                       for step in range(steps[i]))
            params[i:i + 1] = row
            for key, value in own.items():
                state[key][i:i + 1] = value
            return loss / steps[i]

        workers = min(threads, len(ids)) if threaded else 1
        try:
            if workers == 1:   # one core, or a chunk of one node (on one core too: the same models whatever the chunks)
                return torch.stack([train_node(i) for i in range(len(ids))])
            if workers not in self._pools:
                self._pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="meshlearn-train")
            return torch.stack(list(self._pools[workers].map(train_node, range(len(ids)))))
        finally:
            torch.set_num_threads(threads)

    def _vmap_step(self, params, state, x, y, active, ids, index, anchor) -> torch.Tensor:
        """One step of every node in the chunk: batched forward, one backward of the summed
        per-node losses (node i's gradient is that of its own loss); with DP, per-sample
        gradients of every node at once."""
        if self.privacy is not None:
            grads, losses = self._batched_sample_grads(self.layout.views(params), x, y)
            return self._private_step(params, state, grads, losses, ids, index, active)
        leaves = {k: v.detach().requires_grad_() for k, v in self.layout.views(params).items()}
        loss = self.task.losses(self._batched_forward(leaves, x), y).mean(1)
        grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        self._update(params, list(grads), state, active, anchor)
        return loss.detach()

    def _node_step(self, row, state, x, y, ids, index, anchor) -> torch.Tensor:
        """One step of one node (a (1, P) row): plain autograd on its own forward pass; with
        DP, its per-sample gradients."""
        if self.privacy is not None:
            grads, losses = self._sample_grads({k: v[0] for k, v in self.layout.views(row).items()}, x, y)
            return self._private_step(row, state, {k: g.unsqueeze(0) for k, g in grads.items()},
                                      losses.unsqueeze(0), ids, index)[0]
        leaves = {k: v[0].detach().requires_grad_() for k, v in self.layout.views(row).items()}
        loss = self.task.losses(self._forward(leaves, x), y).mean()
        grads = torch.autograd.grad(loss, list(leaves.values()))
        self._update(row, [g.unsqueeze(0) for g in grads], state, None, anchor)
        return loss.detach()

    def _private_step(self, params, state, sample_grads, sample_losses, ids, index, active=None) -> torch.Tensor:
        """A DP-SGD step of the rows ``params`` (c, P) from their per-sample gradients and
        losses (c, batch, ...): clipped, summed and noised per node, then the optimizer's update."""
        grads = self.privacy.gradients(list(sample_grads.values()), ids, index, active)
        self.optimizer.step(params, grads, state, active)
        return sample_losses.mean(1)

    @torch.no_grad()
    def _update(self, params, grads, state, active, anchor) -> None:
        """The optimizer's step of the rows ``params``, then what this call of ``train`` adds:
        the proximal pull towards ``anchor``, and frozen columns put back (values and state)."""
        how = self._how
        frozen = how.frozen
        if frozen is not None:
            kept = params.index_select(1, frozen)
            kept_state = {key: t.index_select(1, frozen) for key, t in state.items() if t.shape == params.shape}
        self.optimizer.step(params, grads, state, active)
        if how.mu:
            shrink = self.optimizer.lr * how.mu
            pulled = (params + shrink * anchor) / (1 + shrink)
            params.copy_(pulled if active is None else torch.where(active[:, None], pulled, params))
        if frozen is not None:
            params.index_copy_(1, frozen, kept)
            for key, values in kept_state.items():
                state[key].index_copy_(1, frozen, values)


@dataclass(frozen=True)
class _How:
    """What one call of ``LocalTrainer.train`` changes in the local objective."""

    frozen: torch.Tensor | None = None   # columns that keep their values and state
    mu: float = 0.0
    sampler: str = DEFAULT_SAMPLER


def _pad_steps(batches: np.ndarray, total: int) -> np.ndarray:
    """Repeat the last batch for steps a node skips (its update is masked out)."""
    if len(batches) == total:
        return batches
    return np.concatenate([batches, np.repeat(batches[-1:], total - len(batches), axis=0)])
