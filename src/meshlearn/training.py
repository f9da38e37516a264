"""Local training of a batch of nodes on their private data.

Written once for a stack of B nodes with flat parameters (see ``nodes``): per-node
gradients come from ``torch.func`` — ``vmap(grad(...))`` over chunks of nodes, or the same
``grad`` applied node by node ("loop", for models whose batching rules are slow, such as
LSTMs) — and the optimizers are torch's SGD/Adam update rules written on (B, P) rows so that
every node's update is exactly what ``torch.optim`` would do to a standalone copy.
Nodes are processed chunk by chunk, all local steps of a chunk at once, so a chunk's
weights stay in cache across its steps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from meshlearn.config import TrainingConfig
from meshlearn.nodes import NodeBatch, ParamLayout

__all__ = ["BatchSampler", "Optimizer", "LocalTrainer", "default_batching", "node_rng"]

# Batched training per model, chosen by measurement (benchmarks/sim_scaling.py):
# torch.func's LSTM batching is slow, so recurrent models train node by node.
_LOOP_MODELS = {"char_lstm"}
_CHUNK_SIZES = {"logreg": 64, "mlp": 64, "lenet": 32, "femnist_cnn": 16}


def default_batching(model_name: str) -> tuple[str, int]:
    """(strategy, chunk size) measured to be fastest for a registered model."""
    strategy = "loop" if model_name in _LOOP_MODELS else "vmap"
    return strategy, _CHUNK_SIZES.get(model_name, 16)


def node_rng(seed: int, node: int, stream: int) -> np.random.Generator:
    """An independent random stream per (experiment seed, node, purpose), whatever engine or
    worker hosts the node, so results do not depend on placement."""
    return np.random.default_rng([seed, node, stream])


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


class Optimizer:
    """torch.optim's SGD (momentum, Nesterov, weight decay) and Adam, on (B, P) rows."""

    def __init__(self, cfg: TrainingConfig):
        self.cfg = cfg

    def init_state(self, nodes: NodeBatch) -> None:
        cfg, params = self.cfg, nodes.params
        if cfg.optimizer == "sgd" and cfg.momentum > 0:
            nodes.state["momentum_buffer"] = torch.zeros_like(params)
        elif cfg.optimizer == "adam":
            nodes.state["exp_avg"] = torch.zeros_like(params)
            nodes.state["exp_avg_sq"] = torch.zeros_like(params)
            nodes.state["adam_step"] = torch.zeros(len(nodes), dtype=torch.float64)

    def step(self, params: torch.Tensor, grads: torch.Tensor, state: dict[str, torch.Tensor],
             active: torch.Tensor | None = None) -> None:
        """Update ``params`` (rows of a chunk) in place; rows where ``active`` is False keep
        their parameters and state (nodes that finished their local epochs)."""
        if active is not None and bool(active.all()):
            active = None
        if active is not None:
            saved = {"params": params.clone(), **{k: v.clone() for k, v in state.items()}}
        cfg = self.cfg
        if cfg.weight_decay:
            grads = grads.add(params, alpha=cfg.weight_decay)
        if cfg.optimizer == "sgd":
            if cfg.momentum > 0:
                buf = state["momentum_buffer"]
                buf.mul_(cfg.momentum).add_(grads)
                grads = grads.add(buf, alpha=cfg.momentum) if cfg.nesterov else buf
            params.add_(grads, alpha=-cfg.lr)
        else:
            beta1, beta2 = cfg.betas
            step = state["adam_step"]
            step += 1
            state["exp_avg"].lerp_(grads, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(grads, grads, value=1 - beta2)
            bias1 = (1 - beta1 ** step).to(params.dtype).unsqueeze(1)
            bias2_sqrt = (1 - beta2 ** step).sqrt().to(params.dtype).unsqueeze(1)
            denom = (state["exp_avg_sq"].sqrt() / bias2_sqrt).add_(cfg.eps)
            params.addcdiv_(state["exp_avg"], denom * (bias1 / cfg.lr), value=-1.0)
        if active is not None:
            keep = ~active
            params[keep] = saved["params"][keep]
            for key, value in state.items():
                value[keep] = saved[key][keep]


class LocalTrainer:
    """Runs each round's local steps (or epochs) of SGD/Adam for a batch of nodes."""

    def __init__(self, model: nn.Module, layout: ParamLayout, cfg: TrainingConfig,
                 x_train: torch.Tensor, y_train: torch.Tensor, parts: dict[int, np.ndarray],
                 seed: int, batching: str = "vmap", chunk_size: int = 16):
        self.model = model.to("meta")  # structure only: weights come from the stacked rows
        self.layout = layout
        self.cfg = cfg
        self.x_train, self.y_train = x_train, y_train
        self.batching = batching
        self.chunk_size = max(1, chunk_size)
        self.optimizer = Optimizer(cfg)
        self.samplers = {node: BatchSampler(idx, cfg.batch_size, node_rng(seed, node, 1))
                         for node, idx in parts.items()}
        self._steps = {node: self._local_steps(len(idx)) for node, idx in parts.items()}
        self._grad = grad_and_value(self._loss)
        self._vgrad = vmap(self._grad)

    def _local_steps(self, num_samples: int) -> int:
        if self.cfg.local_epochs is None:
            return int(self.cfg.local_steps)
        return max(1, math.ceil(self.cfg.local_epochs * num_samples / self.cfg.batch_size))

    def _loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(self.model, params, (x,)), y)

    def init_state(self, nodes: NodeBatch) -> None:
        self.optimizer.init_state(nodes)

    def train(self, nodes: NodeBatch) -> torch.Tensor:
        """One round of local training; returns each node's mean training loss."""
        losses = torch.zeros(len(nodes))
        ids = nodes.ids.tolist()
        for start in range(0, len(ids), self.chunk_size):
            chunk = slice(start, min(start + self.chunk_size, len(ids)))
            losses[chunk] = self._train_chunk(ids[chunk], nodes.params[chunk],
                                              {k: v[chunk] for k, v in nodes.state.items()})
        return losses

    def _train_chunk(self, ids: list[int], params: torch.Tensor, state: dict[str, torch.Tensor]) -> torch.Tensor:
        steps = [self._steps[node] for node in ids]
        total = max(steps)
        index = torch.from_numpy(np.stack([self.samplers[n].next_batches(total) if s == total else
                                           _pad_steps(self.samplers[n].next_batches(s), total)
                                           for n, s in zip(ids, steps)]))
        xs, ys = self.x_train[index], self.y_train[index]  # (c, steps, batch, ...)
        steps_t = torch.tensor(steps)
        grads = torch.empty_like(params)
        grad_views = self.layout.views(grads)
        loss_sum = torch.zeros(len(ids))
        for step in range(total):
            active = steps_t > step
            if self.batching == "vmap":
                step_grads, loss = self._vgrad(self.layout.views(params), xs[:, step], ys[:, step])
            else:
                step_grads, loss = self._loop_grads(params, xs[:, step], ys[:, step])
            for name, value in step_grads.items():
                grad_views[name].copy_(value)
            self.optimizer.step(params, grads, state, active)
            loss_sum += torch.where(active, loss.detach(), 0.0)
        return loss_sum / steps_t

    def _loop_grads(self, params, xs, ys):
        per_node = [self._grad(self.layout.views(params[i]), xs[i], ys[i]) for i in range(len(params))]
        grads = {name: torch.stack([g[name] for g, _ in per_node]) for name in self.layout.names}
        return grads, torch.stack([loss for _, loss in per_node])


def _pad_steps(batches: np.ndarray, total: int) -> np.ndarray:
    """Repeat the last batch for steps a node skips (its update is masked out)."""
    return np.concatenate([batches, np.repeat(batches[-1:], total - len(batches), axis=0)])
