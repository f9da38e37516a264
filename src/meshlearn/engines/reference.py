"""A deliberately plain D-PSGD: one ``nn.Module`` and one ``torch.optim`` optimizer per node.

No batching, no flat parameters, no shared code with the fast path beyond the data order
(``BatchSampler`` with the same per-node streams) and the initial model. It is the oracle
the simulator is tested against and the per-node baseline the benchmarks compare with.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from meshlearn.experiment import Experiment
from meshlearn import streams
from meshlearn.streams import Stream
from meshlearn.training import BatchSampler, local_steps

__all__ = ["ReferenceDPSGD"]


class ReferenceDPSGD:
    def __init__(self, experiment: Experiment):
        cfg = experiment.config
        self.experiment = experiment
        self.cfg = cfg.training
        n = experiment.num_nodes
        init = experiment.initial_params(list(range(n)))
        self.models: list[nn.Module] = []
        for node in range(n):
            model = copy.deepcopy(experiment.model)
            experiment.layout.load_into(model, init[node])
            self.models.append(model)
        self.optimizers = [self._optimizer(m) for m in self.models]
        self.samplers = [BatchSampler(experiment.parts[node], self.cfg.batch_size,
                                     streams.generator(cfg.seed, Stream.MINI_BATCH, node))
                         for node in range(n)]
        self.x = torch.from_numpy(experiment.dataset.x_train)
        self.y = torch.from_numpy(experiment.dataset.y_train)
        self.mixing = experiment.mixing.tocsr()

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.cfg
        rule = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[c.optimizer]   # the built-ins' torch twins
        return rule(model.parameters(), lr=c.lr, **c.optimizer_options)

    def train_node(self, node: int) -> None:
        model, opt = self.models[node], self.optimizers[node]
        for batch in self.samplers[node].next_batches(
                local_steps(self.cfg, len(self.experiment.parts[node]))):
            idx = torch.from_numpy(batch)
            opt.zero_grad()
            self.experiment.task.losses(model(self.x[idx]), self.y[idx]).mean().backward()
            opt.step()

    def run_round(self, rnd: int) -> None:
        for node in range(len(self.models)):
            self.train_node(node)
        snapshot = [[p.detach().clone() for p in m.parameters()] for m in self.models]
        with torch.no_grad():
            for i, model in enumerate(self.models):
                row = slice(self.mixing.indptr[i], self.mixing.indptr[i + 1])
                for k, param in enumerate(model.parameters()):
                    param.zero_()
                    for j, w in zip(self.mixing.indices[row], self.mixing.data[row]):
                        param.add_(snapshot[j][k], alpha=float(w))

    def params(self) -> torch.Tensor:
        """(N, P) flat models, in the simulator's layout, for comparison."""
        return torch.stack([self.experiment.layout.flatten(m) for m in self.models])
